"""The shared chunked linear-attention core of the quadratic kernels (expressive_sq, taylor)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.attention import get_backend
from model.attention.linear import (
    QuadraticKernel,
    chunked_linear_attention,
    pair_feature_dim,
    pair_products,
    pair_products_vjp,
)
from model.attention.numerics import head_groups

KERNELS = [QuadraticKernel(0.5, 1.0, 1.0), QuadraticKernel(0.3), QuadraticKernel(2.0, -1.0, 0.5)]
KERNEL_IDS = ["taylor", "square", "negative-b"]


@pytest.mark.parametrize("d", [1, 2, 3, 8, 9, 64])
def test_pair_products_hold_every_pair_once(d):
    x = torch.randn(3, d, dtype=torch.float64)
    features = pair_products(x, torch.empty(3, pair_feature_dim(d), dtype=torch.float64), 1.0, 1.0)
    i, j = torch.triu_indices(d, d)
    expected = (x[:, i] * x[:, j]).sort(dim=-1).values
    torch.testing.assert_close(features.sort(dim=-1).values, expected)


@pytest.mark.parametrize("d", [1, 2, 5, 8])
@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
def test_feature_maps_reproduce_the_kernel(kernel, d):
    q, k = torch.randn(2, 7, d, dtype=torch.float64), torch.randn(2, 7, d, dtype=torch.float64)
    size = kernel.feature_dim(d)
    assert size == (d if kernel.b else 0) + (1 if kernel.c else 0) + d * (d + 1) // 2
    phi_q = kernel.query_features(q, torch.empty(2, 7, size, dtype=torch.float64))
    phi_k = kernel.key_features(k, torch.empty(2, 7, size, dtype=torch.float64))
    s = q @ k.transpose(-1, -2)
    torch.testing.assert_close(phi_q @ phi_k.transpose(-1, -2), kernel.a * s**2 + kernel.b * s + kernel.c)


@pytest.mark.parametrize("d", [1, 2, 5, 8])
@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.3, 0.6), (2.0, 0.5)])
def test_pair_products_vjp_is_the_gradient(d, scales):
    # The features are quadratic, so a central difference with step 1 is exact: <g, φ(x+u) - φ(x-u)> / 2 = <vjp, u>.
    x, u = torch.randn(4, 6, d, dtype=torch.float64), torch.randn(4, 6, d, dtype=torch.float64)
    grad = torch.randn(4, 6, pair_feature_dim(d), dtype=torch.float64)

    def features(y):
        return pair_products(y, torch.empty_like(grad), *scales)

    directional = (grad * (features(x + u) - features(x - u))).sum(-1) / 2
    torch.testing.assert_close((pair_products_vjp(x, grad, *scales) * u).sum(-1), directional)


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
def test_result_does_not_depend_on_the_chunk_size(kernel):
    q, k, v = (torch.randn(6, 53, n, dtype=torch.float64) for n in (5, 5, 3))
    results = [chunked_linear_attention(q, k, v, kernel, eps=0.0, chunk=c) for c in (1, 7, 16, 53, 100)]
    for y in results[1:]:
        torch.testing.assert_close(y, results[0], atol=1e-12, rtol=1e-12)


def test_head_groups_cover_the_heads_within_the_budget():
    assert head_groups(12, 64, 2145) == [(h, h + 1) for h in range(12)]  # one head: 64 x 2145 > 2^18 / 2
    assert head_groups(5, 16, 100, elements=3200) == [(0, 2), (2, 4), (4, 5)]
    assert head_groups(3, 8, 10) == [(0, 3)]


@pytest.mark.parametrize("kernel", KERNELS[:2], ids=KERNEL_IDS[:2])
def test_head_groups_compute_each_head_with_its_own_state(kernel):
    # d = 64 features do not fit two heads of a chunk in the budget, so every head is its own group (forward and
    # both state sweeps of the backward); the heads differ, so mixing up their states or gradients would show.
    q, k, v = (torch.randn(3, 130, n, dtype=torch.float64, requires_grad=True) for n in (64, 64, 24))
    assert len(head_groups(3, 64, kernel.feature_dim(64))) == 3
    y = chunked_linear_attention(q, k, v, kernel, eps=0.0, chunk=64)
    s = q @ k.transpose(-1, -2)
    w = (kernel.a * s**2 + kernel.b * s + kernel.c).tril()
    expected = (w @ v) / w.sum(-1, keepdim=True)
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=1e-10)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), dy)
    expected_grads = torch.autograd.grad(expected, (q, k, v), dy)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def _large_state_inputs(name: str, dtype: torch.dtype, t: int = 256, d: int = 8):
    """q, k, v (1, 2, t, d) in `dtype` whose state [S | z] passes fp16's 65504 within t tokens: values with a common
    offset, as a residual stream has, and for expressive_sq keys of norm ~10 (taylor normalises them)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, t, d, generator=gen, dtype=torch.float64) for _ in range(3))
    if name == "taylor":
        q, k, v = 2 * F.normalize(q, dim=-1), F.normalize(k, dim=-1), 300 * (v + 1)
    else:
        k, v = 4 * k, 30 * (v + 1)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


# Relative error (norm) the plain path meets against the fp64 reference: the unit roundoff of half-precision inputs;
# fp32 inputs are computed in fp32 throughout.
AUTOCAST_TOLERANCE = {torch.bfloat16: 2**-8, torch.float16: 2**-11, torch.float32: 1e-5}


@pytest.mark.parametrize(
    ("dtype", "autocast"),
    [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.float32, torch.bfloat16),
     (torch.float32, torch.float16)],
    ids=["bf16", "fp16", "fp32-bf16-autocast", "fp32-fp16-autocast"],
)
@pytest.mark.parametrize("name", ["taylor", "expressive_sq"])
def test_the_linear_form_under_autocast_is_as_accurate_as_without_it(name, dtype, autocast):
    # train.py trains under bf16 autocast: the state's GEMMs must stay in fp32 (in fp16 it overflows to inf, in
    # bf16 the sums over the chunks lose digits), the plain path's accuracy whether autocast is on or not.
    backend = get_backend(name, crossover=1, chunk_size=16)
    q, k, v = (x.requires_grad_() for x in _large_state_inputs(name, dtype))
    grad_out = torch.randn(q.shape[:3] + v.shape[-1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    expected = backend.reference(q64, k64, v64)
    expected_grads = torch.autograd.grad((expected * grad_out).sum(), (q64, k64, v64))
    for enabled in (False, True):
        with torch.autocast("cpu", dtype=autocast, enabled=enabled):
            y = backend.forward(q, k, v)
            grads = torch.autograd.grad((y * grad_out.to(y.dtype)).sum(), (q, k, v))
        assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads), f"autocast={enabled}"
        errors = [_relative_error(got, want) for got, want in zip((y, *grads), (expected, *expected_grads))]
        assert max(errors) < AUTOCAST_TOLERANCE[dtype], f"autocast={enabled}: relative errors {errors}"


def test_chunk_groups_bound_the_pair_tensors_by_the_devices_budget():
    from model.attention.numerics import GROUP_ELEMENTS, GROUP_ELEMENTS_DEFAULT, chunk_groups

    # GPT-2 small's logexp micro-batch: 16 rows x 12 heads, 1,024 tokens in chunks of 64
    cpu = chunk_groups(1024, 64, 192, torch.device("cpu"))
    assert len(cpu) == 8 and all(192 * (t1 - t0) * 64 <= GROUP_ELEMENTS["cpu"] for t0, t1 in cpu)
    assert chunk_groups(1024, 64, 192, torch.device("cuda")) == [(0, 1024)]  # one group: one round of launches
    assert 192 * 1024 * 64 <= GROUP_ELEMENTS_DEFAULT
    assert chunk_groups(100, 64, 10**9, torch.device("cpu")) == [(0, 64), (64, 100)]  # at least a chunk a group
