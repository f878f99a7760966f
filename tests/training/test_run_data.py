"""What a run trains on: prepared text windows or MQAR, each with a fixed val set whose score is computed right."""

import math

import pytest
import torch

from data import mqar
from training import runtime as rt
from training.config import load_config
from training.run_data import RecallData, TextData, open_run_data
from typedconfig.parsing import ConfigError

CPU = rt.Runtime(torch.device("cpu"), torch.float32)


class Uniform(torch.nn.Module):
    """Equal logits for every token: its loss is ln(vocab) exactly, whatever the data."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, x, targets=None):
        logits = torch.zeros(*x.shape, self.vocab)
        if targets is None:
            return logits, None
        return None, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def test_text_data_batches_are_a_function_of_the_index_and_the_val_set_is_fixed(prepared_dir):
    cfg = load_config("configs/tiny.yaml", [f"data.prepared_dir={prepared_dir}"])
    data = open_run_data(cfg, CPU)
    assert isinstance(data, TextData)
    x, y = data.batch(3)
    assert x.shape == (cfg.train.batch_size, cfg.data.block_size) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(data.batch(3)[0], x) and not torch.equal(data.batch(4)[0], x)
    assert data.fingerprint == open_run_data(cfg, CPU).fingerprint
    assert data.evaluate(Uniform(cfg.model.vocab_size))["val_loss"] == pytest.approx(math.log(cfg.model.vocab_size))


def test_recall_data_scores_the_answers_only():
    cfg = load_config("configs/tiny.yaml", ["data.source=mqar", "model.vocab_size=64", "data.mqar.vocab_size=64",
                                            "data.mqar.num_pairs=4", "data.mqar.num_queries=4"])
    data = open_run_data(cfg, CPU)
    assert isinstance(data, RecallData)
    scores = data.evaluate(Uniform(64))
    assert scores["val_loss"] == pytest.approx(math.log(64))  # answers only: the IGNORE_INDEX targets do not count
    x, y = data.batch(0)
    answers = (y != mqar.IGNORE_INDEX).sum(dim=1)
    assert torch.all(answers == 4)  # one answer per query


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused(prepared_dir):
    cfg = load_config("configs/tiny.yaml", [f"data.prepared_dir={prepared_dir}", "model.vocab_size=1000"])
    with pytest.raises(ConfigError, match=r"model.vocab_size \(1000\) is smaller than the tokenizer's vocabulary"):
        open_run_data(cfg, CPU)
