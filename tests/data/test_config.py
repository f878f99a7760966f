"""DataConfig: impossible values fail when the config is built, naming the key."""

import pytest

from data.config import DataConfig


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"source": ""}, "^data.source is empty; give 'shakespeare', a file, directory or glob, 'hf:<dataset>' or"),
        ({"source": "  "}, "^data.source is empty"),
        ({"prepared_dir": ""}, "^data.prepared_dir is empty; give the folder for prepared token files"),
        ({"split": ""}, "^data.split is empty; give the hub split to read, e.g. data.split=train"),
        ({"source": "mqar", "split": "validation"}, r"^data.split \('validation'\) applies to hub sources only"),
        ({"source": "mqar", "subset": "x"}, r"^data.subset \('x'\) applies to hub sources only; remove it for 'mqar'"),
        ({"val_every": 1}, "data.val_every must be >= 2"),
        ({"max_documents": 0}, "data.max_documents must be >= 1 or null"),
        ({"max_tokens": -5}, "data.max_tokens must be >= 1 or null"),
        ({"eval_windows": 0}, "data.eval_windows must be >= 1"),
    ],
)
def test_impossible_values_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**fields)


def test_defaults_prepare_shakespeare_with_gpt2():
    cfg = DataConfig()
    assert (cfg.source, cfg.tokenizer, cfg.val_every, cfg.max_tokens) == ("shakespeare", "gpt2", 20, None)
