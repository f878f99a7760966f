"""Choosing the next token: greedy is argmax; top-k and top-p keep exactly the right tokens, ties together."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from model.sampling import Sampler, filter_logits, next_token


def kept(logits: list[float], **filters) -> list[int]:
    """Ids that survive the filters."""
    out = filter_logits(torch.tensor([logits]), **filters)[0]
    return torch.isfinite(out).nonzero().flatten().tolist()


def log_probs(probs: list[float]) -> list[float]:
    return [math.log(p) for p in probs]


def test_top_k_keeps_the_k_largest_logits():
    assert kept([1.0, 3.0, 2.0, 0.0], top_k=2) == [1, 2]
    assert kept([1.0, 3.0, 2.0, 0.0], top_k=1) == [1]
    assert kept([1.0, 3.0, 2.0, 0.0], top_k=10) == [0, 1, 2, 3]  # k beyond the vocabulary keeps everything


def test_top_k_keeps_every_token_tied_with_the_kth():
    assert kept([3.0, 2.0, 1.0, 2.0], top_k=2) == [0, 1, 3]
    assert kept([5.0, 5.0, 1.0], top_k=1) == [0, 1]


def test_top_p_keeps_the_smallest_most_likely_set_reaching_p():
    probs = log_probs([0.1, 0.5, 0.3, 0.1])
    assert kept(probs, top_p=0.4) == [1]  # the top token alone reaches 0.4
    assert kept(probs, top_p=0.7) == [1, 2]  # 0.5 < 0.7 <= 0.5 + 0.3
    assert kept(probs, top_p=0.85) == [0, 1, 2, 3]  # 0.8 < 0.85: the 0.1s are tied, both are kept
    assert kept(probs, top_p=1.0) == [0, 1, 2, 3]


def test_top_p_always_keeps_the_most_likely_token():
    assert kept(log_probs([0.2, 0.7, 0.1]), top_p=1e-6) == [1]
    assert kept(log_probs([0.45, 0.1, 0.45]), top_p=0.3) == [0, 2]  # a tie at the top is kept whole


def test_top_p_keeps_a_tie_group_whole():
    # 0.4 comes first; each 0.2 has only 0.4 strictly above it, which is less than 0.5
    assert kept(log_probs([0.2, 0.4, 0.2, 0.2]), top_p=0.5) == [0, 1, 2, 3]
    assert kept(log_probs([0.2, 0.4, 0.2, 0.2]), top_p=0.4) == [1]


def test_top_k_applies_before_top_p():
    # top-k 2 leaves 0.5 and 0.3, renormalised to 0.625 and 0.375; top-p 0.6 then keeps only the first
    assert kept(log_probs([0.5, 0.3, 0.2]), top_k=2, top_p=0.6) == [0]
    assert kept(log_probs([0.5, 0.3, 0.2]), top_k=2, top_p=0.7) == [0, 1]


def test_filters_work_row_by_row():
    logits = torch.tensor([log_probs([0.6, 0.3, 0.1]), log_probs([0.1, 0.2, 0.7])])
    out = filter_logits(logits, top_p=0.8)
    assert torch.isfinite(out).tolist() == [[True, True, False], [False, True, True]]


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, -1.0, 0.0]])
    assert next_token(logits, Sampler(temperature=0)).tolist() == [[1], [0]]


# 5e-39 and 1e-35 (above GREEDY_BELOW, so sampled): the logits / T overflow fp32 to inf (NaN after softmax) unless
# shifted first; 1e-40 takes the greedy path
@pytest.mark.parametrize(("temperature", "scale"), [(1e-30, 1.0), (5e-39, 1.0), (1e-35, 1e4), (1e-40, 1.0)])
def test_a_tiny_temperature_samples_the_argmax_instead_of_failing(temperature, scale):
    logits = torch.tensor([[0.1, 2.0, 1.9, float("-inf")], [3.0, -1.0, 0.0, 2.5]]) * scale
    generator = torch.Generator().manual_seed(0)
    assert next_token(logits, Sampler(temperature=temperature), generator).tolist() == [[1], [0]]


def test_samples_come_only_from_the_kept_tokens():
    logits = torch.tensor([log_probs([0.05, 0.5, 0.3, 0.15])]).expand(2000, 4)
    generator = torch.Generator().manual_seed(0)
    ids = next_token(logits, Sampler(temperature=1.0, top_p=0.7), generator).flatten()
    assert set(ids.tolist()) == {1, 2}
    assert (ids == 1).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.05)  # renormalised over the kept


def test_ids_past_the_tokenizer_vocabulary_are_never_chosen():
    logits = torch.tensor([[0.0, 1.0, 9.0, 9.0]])  # a model vocabulary padded to 4 for a tokenizer of 2
    assert next_token(logits, Sampler(temperature=0, vocab_size=2)).item() == 1
    generator = torch.Generator().manual_seed(0)
    assert next_token(logits.expand(100, 4), Sampler(vocab_size=2), generator).max().item() <= 1


SAMPLERS = [Sampler(), Sampler(temperature=0.7, top_k=20), Sampler(temperature=1.3, top_p=0.8, vocab_size=40)]


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_generator_per_row_samples_each_row_as_alone(sampler):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    batch, alone = seeded(5, 6, 5), [seeded(seed)[0] for seed in (5, 6, 5)]
    for _ in range(20):  # the generators go on from step to step, as they do in generate
        expected = torch.cat([next_token(logits[i : i + 1], sampler, alone[i]) for i in range(3)])  # each row alone
        assert torch.equal(next_token(logits, sampler, batch), expected)


def test_rows_with_the_same_logits_and_seed_sample_the_same_token():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).expand(4, 50)
    generators = seeded(7, 7, 7, 8)
    ids = torch.cat([next_token(logits, Sampler(), generators) for _ in range(20)], dim=1)
    assert torch.equal(ids[0], ids[1]) and torch.equal(ids[0], ids[2]) and not torch.equal(ids[0], ids[3])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_generator_draws_the_whole_batch_from_one_stream(sampler):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    shifted = logits[:, : sampler.vocab_size] - logits[:, : sampler.vocab_size].amax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(shifted / sampler.temperature, sampler.top_k, sampler.top_p), dim=-1)
    reference = torch.Generator().manual_seed(3)
    expected = [torch.multinomial(probs, 1, generator=reference) for _ in range(5)]
    generator = torch.Generator().manual_seed(3)
    assert all(torch.equal(next_token(logits, sampler, generator), ids) for ids in expected)


def test_the_generators_must_match_the_rows():
    with pytest.raises(ValueError, match="got 2 generators for 3 rows"):
        next_token(torch.zeros(3, 5), Sampler(), seeded(0, 1))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": -0.5}, "temperature must be a finite number >= 0 .0 = greedy., got -0.5"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0 .*got nan"),
        ({"temperature": "1"}, "temperature must be a finite number >= 0 .*got '1'"),
        ({"temperature": True}, "temperature must be a finite number >= 0 .*got True"),
        ({"top_k": -1}, "top_k must be >= 0 .an integer; 0 = no limit., got -1"),
        ({"top_k": 2.5}, "top_k must be >= 0 .an integer.*got 2.5"),  # top-k would keep the 2.5th largest
        ({"top_k": 3.0}, "top_k must be >= 0 .an integer.*got 3.0"),
        ({"top_k": True}, "top_k must be >= 0 .an integer.*got True"),  # would silently mean greedy
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\] \(1 = no limit\), got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\] .*got 1.5"),
        ({"top_p": float("nan")}, r"top_p must be in \(0, 1\] .*got nan"),
        ({"top_p": "0.5"}, r"top_p must be in \(0, 1\] .*got '0.5'"),
        ({"vocab_size": 0}, "vocab_size must be >= 1 .an integer; None = every id., got 0"),
        ({"vocab_size": 2.5}, "vocab_size must be >= 1 .an integer; None = every id., got 2.5"),
    ],
)
def test_invalid_sampling_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        Sampler(**options)


def test_numpy_and_integer_valued_options_are_accepted():
    sampler = Sampler(temperature=1, top_k=np.int64(3), top_p=np.float32(0.5), vocab_size=np.int32(4))
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 9.0]])
    assert next_token(logits, dataclasses.replace(sampler, temperature=0)).item() == 3  # id 4 is past vocab_size
    generator = torch.Generator().manual_seed(0)
    assert set(next_token(logits[:, :4].expand(200, 4), sampler, generator).flatten().tolist()) == {3}


@pytest.mark.parametrize("options", [dict(temperature=1e-300), dict(temperature=1e-39), dict(top_p=1e-300)])
def test_a_temperature_or_top_p_too_small_for_float32_picks_the_most_likely_token(options):
    """Cast to the logits' float32 they became 0 (or 1 / T overflowed, as CUDA divides): NaN probabilities, and
    top-p kept no token."""
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9]])
    sampler = Sampler(**options)
    for seed in range(5):
        assert next_token(logits, sampler, torch.Generator().manual_seed(seed)).item() == 1
    assert Sampler(temperature=3e-39).greedy is False and Sampler(temperature=2.9e-39).greedy is True
