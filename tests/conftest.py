"""Tests never touch the network: Hugging Face libraries run offline (set before they are imported), wandb quietly.
They never spend time measuring either: taylor's and expressive_sq's crossover takes its default value.
End-to-end tests share one prepared copy of the Shakespeare corpus (`prepared_dir`)."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["ATTNLAB_CROSSOVER"] = "default"  # inherited by the command-line tools the tests start


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> str:
    """The Shakespeare corpus, prepared once for every test in the session."""
    from data.config import DataConfig
    from data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(DataConfig(prepared_dir=str(out)))
    return str(out)


@pytest.fixture
def one_thread():
    """Torch on one CPU thread for the test: tiny models gain nothing from more, and on a loaded machine the
    threads' synchronisation makes their small ops many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def env_without_malloc_setup() -> dict[str, str]:
    """This process's environment less whatever sets up malloc (a developer's LD_PRELOAD of jemalloc, say), for the
    tools whose tests need training/malloc.py to take effect."""
    from training.malloc import user_chose_malloc

    return {name: value for name, value in os.environ.items() if not user_chose_malloc({name: value})}
