"""Log-exp attention (Heinsen, arXiv 2404.05843): w_ij = sum_l exp(q_il + k_jl), with signed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.attention import get_backend

CHUNKS = [4, 64]  # several chunks per sequence / one chunk


def _qkv(t=40, d=6, d_v=5, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, t, n, generator=gen, dtype=torch.float64).to(dtype) for n in (d, d, d_v))


def test_reference_is_the_definition_and_not_softmax_of_the_dot_product():
    q, k, v = _qkv(t=6, d=3)
    w = torch.exp(q[..., :, None, :] + k[..., None, :, :]).sum(-1).tril()  # sum_l exp(q_il + k_jl), causal
    expected = (w @ v) / w.sum(-1, keepdim=True)
    backend = get_backend("logexp")
    torch.testing.assert_close(backend.reference(q, k, v), expected, atol=1e-12, rtol=1e-12)
    assert not torch.allclose(expected, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_invariant_to_a_per_query_shift_of_q(chunk):
    backend = get_backend("logexp", chunk_size=chunk)
    q, k, v = _qkv()
    shift = 50.0 * torch.randn(2, 3, 40, 1, dtype=torch.float64)
    torch.testing.assert_close(backend.forward(q + shift, k, v), backend.forward(q, k, v), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_invariant_to_a_global_key_shift(chunk):
    backend = get_backend("logexp", chunk_size=chunk)
    q, k, v = _qkv()
    for shift in (-300.0, 0.7, 300.0):
        torch.testing.assert_close(backend.forward(q, k + shift, v), backend.forward(q, k, v), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_signed_values_are_averaged_not_log_transformed(chunk):
    # The official code feeds log V and so needs V > 0; here y is a convex combination of signed values.
    backend = get_backend("logexp", chunk_size=chunk)
    q, k, v = _qkv()
    y = backend.forward(q, k, v)
    assert (v < 0).any() and (y < 0).any()
    torch.testing.assert_close(y, backend.reference(q, k, v), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(backend.forward(q, k, -v), -y, atol=1e-12, rtol=1e-12)
    constant = torch.full_like(v, -3.0)
    torch.testing.assert_close(backend.forward(q, k, constant), constant, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_huge_key_in_the_same_chunk_does_not_underflow_the_earlier_queries(dtype):
    # Shifting the intra-chunk terms by a max over the whole chunk would let key 30 wipe out queries 0..29.
    backend = get_backend("logexp", chunk_size=64)
    q, k, v = _qkv(dtype=dtype)
    huge = k.clone()
    huge[:, :, 30] = 1e4
    y = backend.forward(q, huge, v)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:, :, :30], backend.forward(q, k, v)[:, :, :30], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(y[:, :, 30:], v[:, :, 30:31].expand_as(y[:, :, 30:]), atol=1e-6, rtol=1e-6)


def _underflowing_pairs(dtype):
    """Query 1 is large where both keys are very negative and vice versa: exp(q - max q) exp(k - max k)ᵀ underflows
    to 0 for both of its pairs (NaN without the fallback), while both true logits are log 2."""
    q = torch.tensor([[0.0, 0.0], [400.0, -400.0]], dtype=dtype)[None, None]
    k = torch.tensor([[-400.0, 400.0], [-400.0, 400.0]], dtype=dtype)[None, None]
    v = torch.tensor([[1.0], [-1.0]], dtype=dtype)[None, None]
    return tuple(x.requires_grad_() for x in (q, k, v))


@pytest.mark.parametrize(
    ("dtype", "autocast"),
    [(torch.float64, None), (torch.float32, None), (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
     (torch.bfloat16, None), (torch.bfloat16, torch.bfloat16)],
    ids=["fp64", "fp32", "fp32-bf16-autocast", "fp32-fp16-autocast", "bf16", "bf16-bf16-autocast"],
)
def test_pairs_whose_factored_sum_underflows_are_recomputed_exactly(dtype, autocast):
    # Under autocast (train.py's CPU default is bf16) the kernel still computes in fp32, as it does for bf16 inputs:
    # autocast's half-precision sums could not take the fp32 log-space logits of these pairs.
    q, k, v = _underflowing_pairs(dtype)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-6
    backend = get_backend("logexp")
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        y = backend.forward(q, k, v)
        grads = torch.autograd.grad(y.sum(), (q, k, v))
    expected = backend.reference(q.double(), k.double(), v.double())
    torch.testing.assert_close(expected, torch.tensor([[[[1.0], [0.0]]]], dtype=torch.float64))
    torch.testing.assert_close(y.double(), expected, atol=tolerance, rtol=tolerance)
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want.double(), atol=tolerance, rtol=tolerance)


def test_state_is_S_z_and_the_running_key_max():
    backend = get_backend("logexp")
    state = backend.init_state(1, 2, 6, 5, dtype=torch.bfloat16, device="cpu")
    assert state.S.shape == (1, 2, 6, 5) and state.z.shape == (1, 2, 6) and state.m.shape == (1, 2, 6)
    assert state.kv.dtype == state.m.dtype == torch.float32
    assert (state.m == float("-inf")).all() and (state.kv == 0).all()  # empty, not a phantom key at 0
    q, k, v = _qkv(t=9)
    with torch.no_grad():
        state = backend.init_state(2, 3, 6, 5, dtype=torch.float64, device="cpu")
        _, state = backend.step(q, k, v, state)
    torch.testing.assert_close(state.m, k.amax(2))
    torch.testing.assert_close(state.z, torch.exp(k - state.m[:, :, None]).sum(2))
    torch.testing.assert_close(state.S, torch.exp(k - state.m[:, :, None]).transpose(-1, -2) @ v)
    assert backend.state_nbytes(state) == 2 * 3 * (6 * 6 + 6) * 8
