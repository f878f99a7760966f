"""Learning-rate schedule: linear warm-up, cosine decay, floor."""

import math

import pytest

from training.schedule import learning_rate

KW = dict(lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)


def test_warmup_is_linear_and_reaches_the_peak():
    assert learning_rate(0, **KW) == pytest.approx(0.1)
    assert learning_rate(4, **KW) == pytest.approx(0.5)
    assert learning_rate(10, **KW) == pytest.approx(1.0)


def test_cosine_midpoint_and_floor():
    assert learning_rate(60, **KW) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(110, **KW) == pytest.approx(0.1)
    assert learning_rate(10_000, **KW) == pytest.approx(0.1)


def test_a_schedule_that_ends_within_its_warmup_stays_at_the_floor_from_its_end():
    short = dict(KW, decay_steps=4)  # 4 steps of a 10-step warm-up, then extended
    assert [learning_rate(s, **short) for s in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [learning_rate(s, **short) for s in (4, 9, 10, 50)] == pytest.approx([0.1] * 4)


def test_monotone_after_warmup():
    values = [learning_rate(s, **KW) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
