"""Expressive attention (Gros, arXiv 2407.18601): w = s²/(1+s²) (`expressive`) and w = s² (`expressive_sq`)."""

from __future__ import annotations

import math

import pytest
import torch

from model.attention import get_backend
from model.attention.expressive import SaturatingSquare

# Both backends, and expressive_sq through both of its forms (direct tiled / chunked linear).
EXPRESSIVE = [
    ("expressive", {"block_size": 8}),
    ("expressive_sq", {"crossover": 10**9, "block_size": 8}),
    ("expressive_sq", {"crossover": 1, "chunk_size": 8}),
]
IDS = ["expressive", "expressive_sq-direct", "expressive_sq-linear"]


def _qkv(t=30, d=6, d_v=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, t, n, generator=gen, dtype=torch.float64) for n in (d, d, d_v))


@pytest.mark.parametrize(("name", "options"), EXPRESSIVE, ids=IDS)
def test_output_is_even_in_the_query(name, options):
    backend = get_backend(name, **options)
    q, k, v = _qkv()
    torch.testing.assert_close(backend.forward(-q, k, v), backend.forward(q, k, v), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("name", "options"), EXPRESSIVE, ids=IDS)
def test_future_keys_with_huge_scores_change_nothing(name, options):
    # The mask comes after the nonlinearity: masking the scores first gives NaN (-inf squared) or weight 1 (-1e20).
    backend = get_backend(name, **options)
    q, k, v = _qkv()
    huge = k.clone()
    huge[:, :, 20:] *= 1e6
    expected = backend.forward(q, k, v)[:, :, :20]
    torch.testing.assert_close(backend.forward(q, huge, v)[:, :, :20], expected, atol=1e-12, rtol=1e-12)
    state = backend.init_state(2, 3, 6, 4, dtype=q.dtype, device="cpu")
    with torch.no_grad():
        y, _ = backend.step(q, huge, v, state)
    torch.testing.assert_close(y[:, :, :20], expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("name", "options"), EXPRESSIVE, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_a_row_whose_weights_all_vanish_gives_zero_not_nan(name, options, dtype):
    backend = get_backend(name, **options)
    q, k, v = (x.to(dtype) for x in _qkv())
    q[:, :, 7] = 0.0  # s = 0 against every key: all weights of row 7 are 0, the sum is eps
    q.requires_grad_()
    y = backend.forward(q, k, v)
    assert torch.isfinite(y).all()
    assert (y[:, :, 7] == 0).all()
    y.float().sum().backward()
    assert torch.isfinite(q.grad).all()
    state = backend.init_state(2, 3, 6, 4, dtype=dtype, device="cpu")
    with torch.no_grad():
        y_step, _ = backend.step(q[:, :, :8], k[:, :, :8], v[:, :, :8], state)
    assert (y_step[:, :, 7] == 0).all()


@pytest.mark.parametrize(("name", "options"), EXPRESSIVE, ids=IDS)
def test_default_temperature_is_inverse_sqrt_head_dim(name, options):
    q, k, v = _qkv(d=9)
    default = get_backend(name, **options)
    explicit = get_backend(name, **options, temperature=1 / 3)
    torch.testing.assert_close(default.forward(q, k, v), explicit.forward(q, k, v), atol=1e-12, rtol=1e-12)
    # The temperature scales the score s = τ q·k, so τ = 2 equals τ = 1 on 2q.
    twice = get_backend(name, **options, temperature=2.0)
    once = get_backend(name, **options, temperature=1.0)
    torch.testing.assert_close(twice.forward(q, k, v), once.forward(2 * q, k, v), atol=1e-12, rtol=1e-12)


def test_saturating_weight_is_s2_over_1_plus_s2_with_exact_ends_and_derivative():
    s = torch.tensor([0.0, 1e-30, 1e-3, 0.5, -2.0, 1e3, 1e30, float("inf")], dtype=torch.float64)
    weight = SaturatingSquare()
    expected = torch.tensor([0.0, 1e-60, 1e-6 / (1 + 1e-6), 0.2, 0.8, 1e6 / (1 + 1e6), 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(weight(s.clone()), expected, atol=0.0, rtol=1e-12)
    finite = s[:-1]
    _, derivative = weight.with_derivative(finite.clone())
    torch.testing.assert_close(derivative, 2 * finite / (1 + finite**2) ** 2, atol=0.0, rtol=1e-12)
    small = finite[:5].clone().requires_grad_()  # where differentiating the formula itself does not cancel
    (autograd,) = torch.autograd.grad((small**2 / (1 + small**2)).sum(), small)
    torch.testing.assert_close(derivative[:5], autograd, atol=0.0, rtol=1e-12)


@pytest.mark.parametrize("scale", [0.125, 32**-0.5, 3.0])
def test_a_scaled_saturating_weight_is_the_weight_of_the_scaled_score(scale):
    """w(scale · s) and its derivative in s, the scale applied inside the weight's passes."""
    s = torch.tensor([0.0, 1e-3, 0.5, -2.0, 7.0, 1e3, float("inf")], dtype=torch.float64)
    weight = SaturatingSquare(scale)
    torch.testing.assert_close(weight(s.clone()), SaturatingSquare()(scale * s), atol=0.0, rtol=1e-12)
    finite = s[:-1]
    w, derivative = weight.with_derivative(finite.clone())
    torch.testing.assert_close(w, SaturatingSquare()(scale * finite), atol=0.0, rtol=1e-12)
    closed_form = 2 * scale**2 * finite / (1 + (scale * finite) ** 2) ** 2
    torch.testing.assert_close(derivative, closed_form, atol=0.0, rtol=1e-12)
    small = finite[:4].clone().requires_grad_()  # where differentiating the formula itself does not cancel
    (autograd,) = torch.autograd.grad(((scale * small) ** 2 / (1 + (scale * small) ** 2)).sum(), small)
    torch.testing.assert_close(derivative[:4], autograd, atol=0.0, rtol=1e-12)
    torch.testing.assert_close(weight.log(finite)[1:], w[1:].log(), atol=1e-14, rtol=1e-12)


def test_saturating_weights_are_bounded_by_one():
    s = torch.randn(10_000, dtype=torch.float64) * 10.0**torch.randint(-3, 4, (10_000,))
    w = SaturatingSquare()(s)
    assert ((w >= 0) & (w < 1) | (w == 1) & (s.abs() > 1e7)).all()


def test_squared_form_has_the_degree_2_state_size():
    backend = get_backend("expressive_sq")
    assert backend.constant_memory and not get_backend("expressive").constant_memory
    state = backend.init_state(1, 2, 64, 64, dtype=torch.bfloat16, device="cpu")
    assert state.S.shape == (1, 2, 2080, 64) and state.z.shape == (1, 2, 2080)  # D = d(d+1)/2
    assert state.kv.dtype == torch.float32  # accumulated in fp32 whatever the input dtype
    assert backend.state_nbytes(state) == 2 * 2080 * 65 * 4


@pytest.mark.parametrize(("t", "form"), [(49, "direct"), (50, "linear")])
def test_squared_form_switches_to_the_linear_form_at_the_crossover(t, form, forms_run):
    q, k, v = _qkv(t=t)
    backend = get_backend("expressive_sq", crossover=50, chunk_size=16, block_size=16)
    y = backend.forward(q, k, v)
    assert forms_run == [form]
    torch.testing.assert_close(y, backend.reference(q, k, v), atol=1e-12, rtol=1e-12)


def test_squared_form_is_the_squared_score():
    q, k, v = _qkv(t=5, d=4)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(4)
    w = (s**2).tril()
    expected = (w @ v) / (w.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(get_backend("expressive_sq").reference(q, k, v), expected, atol=1e-12, rtol=1e-12)
