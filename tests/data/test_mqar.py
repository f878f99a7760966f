"""MQAR: sequences are a pure function of (seed, index), every answer is the value paired with the queried key,
only answers are scored, the val set is fixed and apart from training, and impossible knobs name the fix."""

import numpy as np
import pytest
import torch

from data.config import DataConfig
from data.mqar import (
    FILLER, IGNORE_INDEX, MQARBatches, MQARConfig, answer_accuracy, elimination_accuracy, holdout_set, val_fingerprint,
    val_set,
)
from training.config import load_config
from typedconfig.parsing import ConfigError

CFG = MQARConfig(vocab_size=64, num_pairs=6, num_queries=4)
SEQ_LEN = 40


def pairs_in_context(x_row: torch.Tensor, cfg: MQARConfig) -> dict[int, int]:
    context = x_row[: 2 * cfg.num_pairs].tolist()
    return dict(zip(context[0::2], context[1::2]))


def test_a_training_batch_depends_only_on_seed_and_index():
    x, y = MQARBatches(CFG, SEQ_LEN, batch_size=8, seed=3).batch(5)
    again_x, again_y = MQARBatches(CFG, SEQ_LEN, batch_size=8, seed=3).batch(5)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (8, SEQ_LEN)
    assert not torch.equal(x, MQARBatches(CFG, SEQ_LEN, batch_size=8, seed=3).batch(6)[0])
    assert not torch.equal(x, MQARBatches(CFG, SEQ_LEN, batch_size=8, seed=4).batch(5)[0])


def test_every_answer_is_the_value_paired_with_the_queried_key():
    x, y = MQARBatches(CFG, SEQ_LEN, batch_size=32, seed=0).batch(0)
    for x_row, y_row in zip(x, y):
        pairs = pairs_in_context(x_row, CFG)
        assert len(pairs) == CFG.num_pairs and len(set(pairs.values())) == CFG.num_pairs  # distinct keys and values
        assert all(0 < key <= CFG.num_keys < value < CFG.vocab_size for key, value in pairs.items())
        answers = (y_row != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(answers) == CFG.num_queries
        assert all(answer >= 2 * CFG.num_pairs for answer in answers)  # queries come after the context
        queried = [x_row[answer].item() for answer in answers]
        assert len(set(queried)) == CFG.num_queries
        assert [y_row[answer].item() for answer in answers] == [pairs[key] for key in queried]


def test_y_is_x_shifted_by_one_and_the_gaps_hold_the_filler():
    x, y = MQARBatches(CFG, SEQ_LEN, batch_size=4, seed=1).batch(2)
    answers = y != IGNORE_INDEX
    assert torch.equal(y[:, :-1][answers[:, :-1]], x[:, 1:][answers[:, :-1]])  # the answer is the next token
    occupied = answers | answers.roll(1, dims=1)  # the query keys and the values after them
    gaps = ~occupied[:, 2 * CFG.num_pairs :]
    assert gaps.any() and (x[:, 2 * CFG.num_pairs :][gaps] == FILLER).all()


def test_answer_accuracy_counts_only_answer_positions():
    x, y = MQARBatches(CFG, SEQ_LEN, batch_size=4, seed=0).batch(0)
    answers = y != IGNORE_INDEX
    perfect = torch.nn.functional.one_hot(y.clamp(min=0), CFG.vocab_size).float()
    perfect[~answers] = 0.0
    perfect[~answers, 5] = 1.0  # wrong everywhere else: must not matter
    assert [int(n) for n in answer_accuracy(perfect, y)] == [4 * CFG.num_queries, 4 * CFG.num_queries]
    one_wrong = perfect.clone()
    row, col = answers.nonzero()[0].tolist()
    one_wrong[row, col] = one_wrong[row, col].roll(1)
    assert [int(n) for n in answer_accuracy(one_wrong, y)] == [4 * CFG.num_queries - 1, 4 * CFG.num_queries]


def test_the_val_set_is_fixed_and_apart_from_training():
    x, y = val_set(CFG, SEQ_LEN, count=16)
    again_x, again_y = val_set(CFG, SEQ_LEN, count=16)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    assert val_fingerprint(CFG, SEQ_LEN, 16) == val_fingerprint(CFG, SEQ_LEN, 16)
    assert len(val_fingerprint(CFG, SEQ_LEN, 16)) == 16
    val_rows = {tuple(row) for row in x.tolist()}
    for seed in range(4):
        for index in range(8):
            train_x, _ = MQARBatches(CFG, SEQ_LEN, batch_size=16, seed=seed).batch(index)
            assert val_rows.isdisjoint(tuple(row) for row in train_x.tolist())


def test_the_holdout_set_is_fixed_and_apart_from_val_and_training():
    x, y = holdout_set(CFG, SEQ_LEN, count=16)
    again_x, again_y = holdout_set(CFG, SEQ_LEN, count=16)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    holdout_rows = {tuple(row) for row in x.tolist()}
    assert holdout_rows.isdisjoint(tuple(row) for row in val_set(CFG, SEQ_LEN, count=16)[0].tolist())
    for seed in range(4):
        for index in range(8):
            train_x, _ = MQARBatches(CFG, SEQ_LEN, batch_size=16, seed=seed).batch(index)
            assert holdout_rows.isdisjoint(tuple(row) for row in train_x.tolist())


@pytest.mark.parametrize("change", [{"num_pairs": 5}, {"num_queries": 3}, {"vocab_size": 65}])
def test_the_val_fingerprint_follows_the_knobs(change):
    other = MQARConfig(**{**vars(CFG), **change})
    assert val_fingerprint(other, SEQ_LEN, 16) != val_fingerprint(CFG, SEQ_LEN, 16)
    assert val_fingerprint(CFG, SEQ_LEN + 2, 16) != val_fingerprint(CFG, SEQ_LEN, 16)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_pairs": 0}, "data.mqar.num_pairs must be >= 1"),
        ({"num_queries": 0}, "data.mqar.num_queries must be >= 1"),
        ({"num_pairs": 4, "num_queries": 5}, "data.mqar.num_queries \\(5\\) must be <= data.mqar.num_pairs \\(4\\)"),
        ({"vocab_size": 16, "num_pairs": 8}, "data.mqar.vocab_size \\(16\\) is too small .* >= 17"),
    ],
)
def test_impossible_knobs_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        MQARConfig(**fields)


def test_the_sequence_must_hold_the_pairs_and_the_queries():
    with pytest.raises(ValueError, match="data.block_size \\(19\\) is too short for data.mqar: .* = 20 tokens"):
        DataConfig(source="mqar", block_size=19, mqar=MQARConfig(num_pairs=6, num_queries=4))
    DataConfig(source="mqar", block_size=20, mqar=MQARConfig(num_pairs=6, num_queries=4))
    DataConfig(source="shakespeare", block_size=19, mqar=MQARConfig(num_pairs=6, num_queries=4))  # unused: no check
    with pytest.raises(ValueError, match="data.block_size \\(19\\) is too short"):
        MQARBatches(MQARConfig(num_pairs=6, num_queries=4), 19, batch_size=1, seed=0)


def test_the_run_config_reads_the_knobs_and_checks_them_against_the_model():
    knobs = ["data.source=mqar", "data.mqar.vocab_size=128", "data.mqar.num_pairs=4", "data.mqar.num_queries=2"]
    cfg = load_config("configs/tiny.yaml", knobs)
    assert (cfg.data.mqar.vocab_size, cfg.data.mqar.num_pairs, cfg.data.mqar.num_queries) == (128, 4, 2)
    with pytest.raises(ConfigError, match="data.mqar.vocab_size \\(60000\\) > model.vocab_size \\(50257\\)"):
        load_config("configs/tiny.yaml", ["data.source=mqar", "data.mqar.vocab_size=60000"])
    with pytest.raises(ConfigError, match="unknown key data.mqar.pairs"):
        load_config("configs/tiny.yaml", ["data.mqar.pairs=4"])


@pytest.mark.parametrize("pairs, queries", [(2, 2), (4, 4), (8, 8), (8, 3)])
def test_elimination_accuracy_is_what_guessing_among_unasked_values_scores(pairs, queries):
    cfg = MQARConfig(vocab_size=64, num_pairs=pairs, num_queries=queries)
    x, y = val_set(cfg, 4 * pairs + 8, 4000)
    rng = np.random.default_rng(0)
    hits = total = 0
    for tokens, targets in zip(x.numpy(), y.numpy()):
        values = set(tokens[1 : 2 * pairs : 2].tolist())
        for at in np.flatnonzero(targets != IGNORE_INDEX):
            asked = set(tokens[2 * pairs : at].tolist())  # values already revealed after earlier queries
            guess = rng.choice(sorted(values - asked))
            hits += guess == targets[at]
            total += 1
    assert hits / total == pytest.approx(elimination_accuracy(pairs, queries), abs=0.02)
    assert elimination_accuracy(4, 4) == pytest.approx((1 / 4 + 1 / 3 + 1 / 2 + 1) / 4)
