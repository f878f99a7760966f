"""Tiny checkpoints for the evaluation package's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data.config import DataConfig
from model.config import ModelConfig
from model.gpt import GPT
from training.checkpoint import TrainState, save_checkpoint
from training.config import RunConfig, config_to_dict


def write_checkpoint(run_dir: Path, data: DataConfig, **model) -> Path:
    """A run directory with one checkpoint of a random 2-layer, 2-head model whose attention is not near uniform."""
    cfg = RunConfig(model=ModelConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32, **model}),
                    data=data)
    torch.manual_seed(0)
    gpt = GPT(cfg.model)
    for block in gpt.transformer.h:
        torch.nn.init.normal_(block.attn.c_attn.weight, std=0.2)  # q·k of order 1 rather than 1e-2
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir, gpt, TrainState(step=7), config_to_dict(cfg), keep=1)
    return run_dir


@pytest.fixture(scope="session")
def checkpoint_writer():
    """write_checkpoint(run_dir, data_config, **model_overrides) -> run_dir."""
    return write_checkpoint


@pytest.fixture(scope="session")
def softmax_run(tmp_path_factory, prepared_dir) -> Path:
    data = DataConfig(prepared_dir=prepared_dir, block_size=32, eval_windows=4)
    return write_checkpoint(tmp_path_factory.mktemp("softmax"), data)
