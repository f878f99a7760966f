"""What a run trains on: prepared text windows or MQAR, each with a fixed val set whose score is computed right."""

import math

import pytest
import torch

from data import mqar
from training import runtime as rt
from training.config import load_config
from data.config import DataConfig
from data.prepare import dataset_dir, prepare
from training.run_data import RecallData, TextData, open_run_data, preparing_message, wait_until_prepared
from typedconfig.parsing import ConfigError

CPU = rt.Runtime(torch.device("cpu"), torch.float32)


def small_text(tmp_path) -> DataConfig:
    """Three short text files, quick to prepare."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"document {i} " * 50)
    return DataConfig(source=str(folder), prepared_dir=str(tmp_path / "prepared"), val_every=3)


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


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused_before_the_data_is_prepared(tmp_path, monkeypatch):
    prepared = []
    monkeypatch.setattr("training.run_data.prepare", prepared.append)
    cfg = load_config("configs/tiny.yaml", [f"data.prepared_dir={tmp_path}", "model.vocab_size=1000"])
    with pytest.raises(ConfigError, match=r"set model.vocab_size >= 50257"):
        open_run_data(cfg, CPU)
    assert prepared == []


def test_prepared_data_opens_without_loading_a_tokenizer(prepared_dir, monkeypatch):
    """A hub tokenizer needs the network: a run on data prepared earlier must not ask for it."""
    def no_tokenizer(name):
        raise AssertionError(f"loaded tokenizer {name}")

    monkeypatch.setattr("training.run_data.load_tokenizer", no_tokenizer)
    cfg = load_config("configs/tiny.yaml", [f"data.prepared_dir={prepared_dir}"])
    assert TextData(cfg, CPU).description.endswith("from shakespeare")
    with pytest.raises(ConfigError, match=r"model.vocab_size \(1000\) is smaller than the tokenizer's vocabulary"):
        TextData(load_config("configs/tiny.yaml", [f"data.prepared_dir={prepared_dir}", "model.vocab_size=1000"]), CPU)


def test_ranks_other_than_0_open_prepared_data_without_a_collective(prepared_dir):
    """No process group exists here, so a barrier would fail: the rank waits for the files instead."""
    cfg = load_config("configs/tiny.yaml", [f"data.prepared_dir={prepared_dir}"])
    rank1 = rt.Runtime(torch.device("cpu"), torch.float32, rank=1, world_size=2)
    assert TextData(cfg, rank1).fingerprint == TextData(cfg, CPU).fingerprint


def test_a_waiting_rank_polls_until_the_data_is_prepared_and_says_why_it_waits(tmp_path, capsys):
    data = small_text(tmp_path)
    sleeps = []

    def sleep(seconds):  # rank 0 finishes preparing during the fifth poll
        sleeps.append(seconds)
        if len(sleeps) == 5:
            prepare(data)

    wait_until_prepared(data, rank=3, poll_s=2.0, remind_s=4.0, sleep=sleep)
    assert sleeps == [2.0] * 5
    reminder = ("rank 3: waited {} s for rank 0 to prepare " + str(dataset_dir(data)) +
                " (every machine must see that directory: a shared filesystem)\n")
    assert capsys.readouterr().out == reminder.format(4) + reminder.format(8)


def test_the_main_rank_says_the_others_wait_while_it_prepares(tmp_path):
    data = small_text(tmp_path)
    assert preparing_message(data, world_size=4) == (
        f"preparing {dataset_dir(data)} before training; ranks 1..3 wait for it (run python -m data.prepare first "
        "to start training at once)")
    assert preparing_message(data, world_size=2).endswith("rank 1 waits for it (run python -m data.prepare first "
                                                          "to start training at once)")
    assert preparing_message(data, world_size=1) is None  # nobody waits
    prepare(data)
    assert preparing_message(data, world_size=4) is None  # nothing to prepare
