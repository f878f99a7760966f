"""The contract every attention backend meets: training form == decode steps == the naive reference.

Each backend runs with its defaults and, where it has several code paths, with small chunk/tile sizes (and a
crossover of 1 for the linear form) so that the short test sequences cross chunk and tile boundaries.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.attention import BACKENDS, get_backend

# (backend, options): every registered backend with its defaults, plus each alternative code path.
CASES = [(name, {}) for name in BACKENDS] + [
    ("expressive", {"block_size": 16}),
    ("expressive_sq", {"crossover": 1, "chunk_size": 16}),
    ("expressive_sq", {"crossover": 10**9, "block_size": 16}),
    ("logexp", {"chunk_size": 16}),
    ("taylor", {"crossover": 1, "chunk_size": 16}),
    ("taylor", {"crossover": 10**9, "block_size": 16}),
    ("taylor", {"output_normalized": True}),
    ("taylor", {"crossover": 1, "chunk_size": 16, "output_normalized": True}),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in CASES]
LENGTHS = [1, 2, 17, 64, 257]
B, H, D, D_V = 1, 2, 8, 5  # d_v != d on purpose


def kernel_inputs(backend, t, *, dtype=torch.float64, seed=0, batch=B, heads=H, d=D, d_v=D_V):
    """q, k, v as the kernel sees them: random projections passed through the backend's qk transform."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, heads, t, d, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(batch, heads, t, d_v, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        q, k = backend.make_qk_transform(heads, d).double()(q, k)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_registry_lists_the_five_backends():
    assert set(BACKENDS) == {"softmax", "expressive", "expressive_sq", "logexp", "taylor"}
    for name in BACKENDS:
        assert get_backend(name).name == name


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_forward_matches_reference_fp64(name, options, t):
    backend = get_backend(name, **options)
    q, k, v = kernel_inputs(backend, t)
    y = backend.forward(q, k, v)
    assert y.shape == (B, H, t, D_V) and y.dtype == torch.float64
    torch.testing.assert_close(y, backend.reference(q, k, v), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_forward_matches_reference_fp32(name, options, t):
    backend = get_backend(name, **options)
    q, k, v = kernel_inputs(backend, t, dtype=torch.float32)
    y = backend.forward(q, k, v)
    assert y.dtype == torch.float32
    expected = backend.reference(q.double(), k.double(), v.double())
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_prefill_then_ragged_chunks_then_single_tokens_match_forward(name, options):
    backend = get_backend(name, **options)
    t = 45
    q, k, v = kernel_inputs(backend, t)
    sizes = [17, 3, 1, 5, 2] + [1] * 17  # prefill, ragged chunks, then token by token
    assert sum(sizes) == t
    state = backend.init_state(B, H, D, D_V, dtype=q.dtype, device=q.device, capacity=4)  # the cache must grow
    outputs, t0 = [], 0
    with torch.no_grad():
        for size in sizes:
            y, state = backend.step(q[:, :, t0 : t0 + size], k[:, :, t0 : t0 + size], v[:, :, t0 : t0 + size], state)
            assert y.shape == (B, H, size, D_V)
            outputs.append(y)
            t0 += size
    torch.testing.assert_close(torch.cat(outputs, dim=2), backend.forward(q, k, v), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", BACKENDS)
def test_decoding_works_with_autograd_enabled(name):
    # The model decodes without torch.no_grad(); the recurrent states update in place and detach.
    backend = get_backend(name)
    q, k, v = (x.requires_grad_() for x in kernel_inputs(backend, 6))
    state = backend.init_state(B, H, D, D_V, dtype=q.dtype, device="cpu")
    y1, state = backend.step(q[:, :, :5], k[:, :, :5], v[:, :, :5], state)
    y2, state = backend.step(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], state)
    torch.testing.assert_close(torch.cat([y1, y2], dim=2), backend.forward(q, k, v), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_decode_in_bf16_keeps_input_dtype_and_tracks_fp32(name, options):
    backend = get_backend(name, **options)
    q, k, v = kernel_inputs(backend, 20, dtype=torch.float32)
    state = backend.init_state(B, H, D, D_V, dtype=torch.bfloat16, device="cpu")
    with torch.no_grad():
        y, state = backend.step(*(x[:, :, :12].bfloat16() for x in (q, k, v)), state)
        for i in range(12, 20):
            y, state = backend.step(*(x[:, :, i : i + 1].bfloat16() for x in (q, k, v)), state)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), backend.forward(q, k, v)[:, :, -1:], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_gradients_pass_gradcheck_fp64(name, options):
    backend = get_backend(name, **options)
    # Chunks and tiles of 4 tokens, so that 9 tokens cross their boundaries.
    backend = dataclasses.replace(backend, **{f: 4 for f in ("chunk_size", "block_size") if hasattr(backend, f)})
    q, k, v = (x.requires_grad_() for x in kernel_inputs(backend, 9, heads=1, d=4, d_v=3))
    assert torch.autograd.gradcheck(backend.forward, (q, k, v))


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_gradients_match_reference_fp32(name, options):
    backend = get_backend(name, **options)
    q, k, v = (x.requires_grad_() for x in kernel_inputs(backend, 70, dtype=torch.float32))
    grad_out = torch.randn(B, H, 70, D_V, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((backend.forward(q, k, v) * grad_out).sum(), (q, k, v))
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    expected = torch.autograd.grad((backend.reference(q64, k64, v64) * grad_out.double()).sum(), (q64, k64, v64))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-3)


def _adversarial(backend, dtype):
    """q and k scaled by 30, and one key 1000 times larger than the rest."""
    q, k, v = kernel_inputs(backend, 70)
    q, k = 30 * q, 30 * k
    k[:, :, 33] *= 1000.0
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_adversarial_inputs_match_reference_fp64(name, options):
    backend = get_backend(name, **options)
    q, k, v = _adversarial(backend, torch.float64)
    expected = backend.reference(q, k, v)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(backend.forward(q, k, v), expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_adversarial_inputs_stay_finite_fp32(name, options):
    backend = get_backend(name, **options)
    q, k, v = (x.requires_grad_() for x in _adversarial(backend, torch.float32))
    y = backend.forward(q, k, v)
    grads = torch.autograd.grad(y.sum(), (q, k, v))
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    expected = backend.reference(q.detach().double(), k.detach().double(), v.detach().double())
    # The feature-space sums of the linear forms cancel: with one key 3e4 times the others they keep ~3 digits in
    # fp32 (fp64 keeps 1e-8, checked above). The other forms stay at fp32 rounding.
    feature_space = getattr(backend, "crossover", float("inf")) <= q.shape[2]
    tolerance = 1e-2 if feature_space else 1e-4
    torch.testing.assert_close(y.double(), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_bf16_inputs_run_and_stay_close_to_fp32(name, options):
    backend = get_backend(name, **options)
    q, k, v = kernel_inputs(backend, 100, dtype=torch.float32)
    q16, k16, v16 = (x.bfloat16().requires_grad_() for x in (q, k, v))
    y16 = backend.forward(q16, k16, v16)
    assert y16.dtype == torch.bfloat16
    y16.float().sum().backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 for x in (q16, k16, v16))
    expected = backend.forward(q16.detach().float(), k16.detach().float(), v16.detach().float())
    torch.testing.assert_close(y16.float(), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", BACKENDS)
def test_state_size_is_constant_exactly_for_recurrent_backends(name):
    backend = get_backend(name)
    q, k, v = kernel_inputs(backend, 5000, heads=1, d=4, d_v=4)
    sizes = {}
    for t in (10, 5000):
        state = backend.init_state(B, 1, 4, 4, dtype=q.dtype, device="cpu", capacity=1)
        with torch.no_grad():
            _, state = backend.step(q[:, :, :t], k[:, :, :t], v[:, :, :t], state)
        sizes[t] = backend.state_nbytes(state)
    if backend.constant_memory:
        assert sizes[10] == sizes[5000]
    else:
        assert sizes[5000] >= 500 * sizes[10]


@pytest.mark.parametrize("name", BACKENDS)
def test_unknown_option_is_an_error_that_names_it(name):
    with pytest.raises(ValueError, match="no_such_option"):
        get_backend(name, no_such_option=1)


INVALID = [
    ("expressive", "temperature", 0.0), ("expressive", "temperature", -1.0), ("expressive", "eps", -1e-6),
    ("expressive", "block_size", 0), ("expressive", "block_size", 2.5),
    ("expressive_sq", "temperature", float("nan")), ("expressive_sq", "eps", "small"),
    ("expressive_sq", "chunk_size", 0), ("expressive_sq", "crossover", -5),
    ("logexp", "chunk_size", 0), ("logexp", "chunk_size", True),
    ("taylor", "a", 0.0), ("taylor", "c", 0.4), ("taylor", "b", float("inf")), ("taylor", "temperature_init", 0.0),
    ("taylor", "chunk_size", 0), ("taylor", "crossover", 0), ("taylor", "block_size", -1),
]


@pytest.mark.parametrize(("name", "option", "value"), INVALID)
def test_invalid_option_values_are_errors_that_name_the_option_and_range(name, option, value):
    with pytest.raises(ValueError, match=rf"{option}=.*allowed"):
        get_backend(name, **{option: value})


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_are_frozen_dataclasses_whose_fields_are_the_options(name):
    backend = get_backend(name)
    options = {f.name: getattr(backend, f.name) for f in dataclasses.fields(backend)}
    assert get_backend(name, **options) == backend
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(backend, "name", "other")
