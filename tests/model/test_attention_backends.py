"""The contract every attention backend meets: training form == decode steps == the naive reference.

Each backend runs with its defaults and, where it has several code paths, with small chunk/tile sizes (and a
crossover of 1 for the linear form) so that the short test sequences cross chunk and tile boundaries.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.attention import BACKENDS, get_backend
from model.attention.crossover import DEFAULT_CROSSOVER
from model.attention.kv_cache import append_kv, empty_kv_cache

# (backend, options): every registered backend with its defaults, plus each alternative code path.
CASES = [(name, {}) for name in BACKENDS] + [
    ("softmax", {"blocked": False}),
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
# Relative (Frobenius) error of bf16 against fp32 on the same inputs: ~2.5 bf16 unit roundoffs (2^-8); measured
# 1-4e-3 for the outputs and 2-6e-3 for the gradients.
BF16_TOL = 1e-2


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.double() - reference.double()).norm() / reference.double().norm()).item()


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


def test_a_full_kv_cache_doubles_so_that_appends_are_amortised():
    """Growing by what the new tokens need would copy the whole cache at every decoded token: O(n²) in all."""
    cache = empty_kv_cache(1, 2, 3, 3, dtype=torch.float32, device="cpu", capacity=4)
    capacities = []
    for t in (5, 1, 1, 1, 1):  # 5 > 4: grows to 8; the next three fit; the ninth token doubles it
        cache = append_kv(cache, torch.randn(1, 2, t, 3), torch.randn(1, 2, t, 3))
        capacities.append(cache.capacity)
    assert capacities == [8, 8, 8, 8, 16] and cache.length == 9
    cache = append_kv(cache, torch.randn(1, 2, 40, 3), torch.randn(1, 2, 40, 3))
    assert cache.capacity == 49  # a prefill past double the capacity takes what it needs


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
    """Every token of a 12-token prefill and 8 steps, within BF16_TOL of the fp32 forward on the same (bf16-rounded)
    inputs."""
    backend = get_backend(name, **options)
    q, k, v = (x.bfloat16() for x in kernel_inputs(backend, 20, dtype=torch.float32))
    state = backend.init_state(B, H, D, D_V, dtype=torch.bfloat16, device="cpu")
    with torch.no_grad():
        y, state = backend.step(q[:, :, :12], k[:, :, :12], v[:, :, :12], state)
        outputs = [y]
        for i in range(12, 20):
            y, state = backend.step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], state)
            outputs.append(y)
        expected = backend.forward(q.float(), k.float(), v.float())
    assert all(y.dtype == torch.bfloat16 for y in outputs)
    assert relative_error(torch.cat(outputs, dim=2), expected) <= BF16_TOL


# Softmax runs torch's SDPA, whose dtype under autocast is autocast's to choose, as in any torch model.
KERNEL_CASES = [(case, case_id) for case, case_id in zip(CASES, CASE_IDS) if case[0] != "softmax"]


@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("name", "options"), [c for c, _ in KERNEL_CASES], ids=[i for _, i in KERNEL_CASES])
def test_autocast_leaves_the_kernels_training_and_decode_forms_unchanged(name, options, autocast):
    # train.py trains under bf16 autocast and its evaluation decodes under it: the kernels choose their own dtypes
    # (fp32 states and sums), which autocast must not round to half precision.
    backend = get_backend(name, **options)
    q, k, v = (x.requires_grad_() for x in kernel_inputs(backend, 45, dtype=torch.float32))
    grad_out = torch.randn(B, H, 45, D_V, generator=torch.Generator().manual_seed(1))

    def forms() -> list[torch.Tensor]:
        """The forward output, its gradients and the decode steps' outputs (a prefill, then token by token)."""
        y = backend.forward(q, k, v)
        grads = torch.autograd.grad((y * grad_out).sum(), (q, k, v))
        state = backend.init_state(B, H, D, D_V, dtype=torch.float32, device="cpu")
        steps = []
        with torch.no_grad():
            for t0, t1 in [(0, 30)] + [(t, t + 1) for t in range(30, 45)]:
                y_t, state = backend.step(q[:, :, t0:t1], k[:, :, t0:t1], v[:, :, t0:t1], state)
                steps.append(y_t)
        return [y, *grads, torch.cat(steps, dim=2)]

    expected = forms()
    with torch.autocast("cpu", dtype=autocast):
        got = forms()
    for what, a, b in zip(["forward", "dq", "dk", "dv", "steps"], got, expected):
        assert a.dtype == torch.float32, what
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m, what=what: f"{what}: {m}")


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
    crossover = getattr(backend, "crossover", float("inf"))
    feature_space = (DEFAULT_CROSSOVER if crossover is None else crossover) <= q.shape[2]  # None: the suite's default
    tolerance = 1e-2 if feature_space else 1e-4
    torch.testing.assert_close(y.double(), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_bf16_inputs_run_and_stay_close_to_fp32(name, options):
    """The training form's output and gradients in bf16, against fp32 on the same (bf16-rounded) inputs."""
    backend = get_backend(name, **options)
    q, k, v = kernel_inputs(backend, 100, dtype=torch.float32)
    grad_out = torch.randn(B, H, 100, D_V, generator=torch.Generator().manual_seed(3))
    low = [x.bfloat16().requires_grad_() for x in (q, k, v)]
    y16 = backend.forward(*low)
    assert y16.dtype == torch.bfloat16
    y16.float().backward(grad_out)
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 for x in low)
    full = [x.detach().float().requires_grad_() for x in low]
    y32 = backend.forward(*full)
    y32.backward(grad_out)
    assert relative_error(y16, y32) <= BF16_TOL
    for x16, x32 in zip(low, full):
        assert relative_error(x16.grad, x32.grad) <= 2 * BF16_TOL  # the gradients' products cancel more


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
    ("expressive", "temperature", 0.0), ("expressive", "temperature", -1.0), ("expressive", "temperature", 1e20),
    ("expressive", "temperature", 1e-30), ("expressive_sq", "temperature", 1e20), ("expressive", "eps", -1e-6),
    ("expressive", "block_size", 0), ("expressive", "block_size", 2.5),
    ("expressive_sq", "temperature", float("nan")), ("expressive_sq", "eps", "small"),
    ("expressive_sq", "chunk_size", 0), ("expressive_sq", "crossover", -5),
    ("logexp", "chunk_size", 0), ("logexp", "chunk_size", True), ("softmax", "blocked", "yes"),
    ("taylor", "a", 0.0), ("taylor", "c", 0.4), ("taylor", "b", float("inf")), ("taylor", "temperature_init", 0.0),
    ("taylor", "chunk_size", 0), ("taylor", "crossover", 0), ("taylor", "block_size", -1),
]


@pytest.mark.parametrize(("name", "option", "value"), INVALID)
def test_invalid_option_values_are_errors_that_name_the_option_and_range(name, option, value):
    with pytest.raises(ValueError, match=rf"{option}=.*allowed"):
        get_backend(name, **{option: value})


def mismatched_inputs(backend):
    """(what, q, k, v, mask) a caller can get wrong, each with the phrase its error names."""
    q, k, v = kernel_inputs(backend, 6)
    real = torch.ones(B, 6, dtype=torch.bool)
    return [
        ("short keys", q, k[:, :, :4], v, None, r"k \(1, 2, 4, 8\)"),
        ("short values", q, k, v[:, :, :4], None, r"v \(1, 2, 4, 5\)"),
        ("key head size", q, k[..., :4], v, None, r"same B, H and T"),
        ("other heads", q, k[:, :1], v[:, :1], None, r"q \(1, 2, 6, 8\)"),
        ("3-D", q[0], k[0], v[0], None, r"\(B, H, T, d\)"),
        ("no tokens", q[:, :, :0], k[:, :, :0], v[:, :, :0], None, r"needs at least one token"),
        ("mask of one row per head", q, k, v, torch.ones(B * H, 6, dtype=torch.bool), r"mask .* \(1, 6\)"),
        ("broadcast mask", q, k, v, real[:, :1], r"got torch.bool of shape \(1, 1\)"),
        ("integer mask", q, k, v, real.long(), r"must be a bool tensor .* got torch.int64"),
        ("list mask", q, k, v, [[True] * 6], r"got list"),
    ]


@pytest.mark.parametrize("name", BACKENDS)
def test_every_form_refuses_q_k_v_and_mask_that_do_not_fit_together_naming_the_shapes(name):
    backend = get_backend(name)
    for what, q, k, v, mask, named in mismatched_inputs(backend):
        calls = {
            "reference": lambda: backend.reference(q, k, v, mask),
            "forward": lambda: backend.forward(q, k, v, mask),
            "step": lambda: backend.step(q, k, v, backend.init_state(B, H, D, D_V, dtype=q.dtype, device="cpu"), mask),
        }
        for form, call in calls.items():
            with pytest.raises(ValueError, match=rf"^{name} attention.*{named}") as error:
                call()
            assert "\n" not in str(error.value), (what, form)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(("batch", "heads", "d", "d_v"), [(2, H, D, D_V), (B, 3, D, D_V), (B, H, 4, D_V), (B, H, D, 3)])
def test_step_refuses_a_state_made_for_other_rows_heads_or_head_sizes(name, batch, heads, d, d_v):
    backend = get_backend(name)
    q, k, v = kernel_inputs(backend, 3)
    state = backend.init_state(batch, heads, d, d_v, dtype=q.dtype, device="cpu")
    with pytest.raises(ValueError, match=rf"^{name} attention: the decode state's .* init_state"):
        backend.step(q, k, v, state)


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_are_frozen_dataclasses_whose_fields_are_the_options(name):
    backend = get_backend(name)
    options = {f.name: getattr(backend, f.name) for f in dataclasses.fields(backend)}
    assert get_backend(name, **options) == backend
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(backend, "name", "other")


# --- padding: `mask` (B, T), False for padding, in every form ---


def padding_mask(t: int) -> torch.Tensor:
    """Three rows: left padding longer than a chunk of 16, right padding, padding scattered through the row."""
    mask = torch.ones(3, t, dtype=torch.bool)
    mask[0, : 2 * t // 3] = False
    mask[1, t // 2 :] = False
    mask[2] = torch.rand(t, generator=torch.Generator().manual_seed(5)) > 0.4
    return mask


def padded_inputs(name: str, options: dict, t: int):
    """The backend, q, k, v for a batch of 3 rows, and their padding mask."""
    backend = get_backend(name, **options)
    return (backend, *kernel_inputs(backend, t, batch=3), padding_mask(t))


def garbage_at_padding(x: torch.Tensor, mask: torch.Tensor, scale: float = 1e3) -> torch.Tensor:
    """x with large random values at the padding positions: whatever sits there must not matter."""
    noise = scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    return torch.where(mask[:, None, :, None], x, noise)


@pytest.mark.parametrize("t", [17, 70])
@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_padded_forward_matches_the_padded_reference_fp64(name, options, t):
    backend, q, k, v, mask = padded_inputs(name, options, t)
    y = backend.forward(q, k, v, mask)
    torch.testing.assert_close(y, backend.reference(q, k, v, mask), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_padding_changes_nothing_for_the_real_tokens_and_padding_queries_give_zero(name, options):
    # Each row's real tokens, attended alone (no padding at all), against the padded batch whose padding positions
    # hold large garbage: a padding key adds nothing to a numerator, a normaliser or a state.
    backend, q, k, v, mask = padded_inputs(name, options, 70)
    y = backend.forward(*(garbage_at_padding(x, mask) for x in (q, k, v)), mask)
    for row in range(3):
        real = mask[row].nonzero()[:, 0]
        alone = backend.forward(q[row : row + 1, :, real], k[row : row + 1, :, real], v[row : row + 1, :, real])
        torch.testing.assert_close(y[row : row + 1, :, real], alone, atol=1e-10, rtol=1e-10)
    assert (y.masked_select(~mask[:, None, :, None]) == 0).all()


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_padded_prefill_then_ragged_chunks_then_single_tokens_match_the_padded_forward(name, options):
    # Padding also in the decode steps (the right-padded and scattered rows): the state remembers it.
    backend, q, k, v, mask = padded_inputs(name, options, 45)
    state = backend.init_state(3, H, D, D_V, dtype=q.dtype, device=q.device, capacity=4)  # the cache must grow
    outputs, t0 = [], 0
    with torch.no_grad():
        for size in [17, 3, 1, 5, 2] + [1] * 17:
            chunk = slice(t0, t0 + size)
            y, state = backend.step(q[:, :, chunk], k[:, :, chunk], v[:, :, chunk], state, mask[:, chunk])
            outputs.append(y)
            t0 += size
    torch.testing.assert_close(torch.cat(outputs, dim=2), backend.forward(q, k, v, mask), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("name", "options"), CASES, ids=CASE_IDS)
def test_padded_gradients_pass_gradcheck_fp64(name, options):
    backend = get_backend(name, **options)
    backend = dataclasses.replace(backend, **{f: 4 for f in ("chunk_size", "block_size") if hasattr(backend, f)})
    q, k, v = (x.requires_grad_() for x in kernel_inputs(backend, 9, batch=3, heads=1, d=4, d_v=3))
    mask = padding_mask(9)
    assert torch.autograd.gradcheck(lambda q, k, v: backend.forward(q, k, v, mask), (q, k, v))


@pytest.mark.parametrize("name", [name for name in BACKENDS if get_backend(name).constant_memory])
def test_left_padding_leaves_a_constant_size_state_as_the_real_tokens_alone_make_it(name):
    backend = get_backend(name, chunk_size=16)
    q, k, v = kernel_inputs(backend, 40, batch=1)
    mask = torch.arange(40)[None] >= 25  # 25 padding tokens, then 15 real ones
    padded = backend.init_state(1, H, D, D_V, dtype=q.dtype, device="cpu")
    alone = backend.init_state(1, H, D, D_V, dtype=q.dtype, device="cpu")
    with torch.no_grad():
        _, padded = backend.step(*(garbage_at_padding(x, mask) for x in (q, k, v)), padded, mask)
        _, alone = backend.step(q[:, :, 25:], k[:, :, 25:], v[:, :, 25:], alone)
    assert backend.state_nbytes(padded) == backend.state_nbytes(alone)
    torch.testing.assert_close(padded.kv, alone.kv, atol=1e-12, rtol=1e-12)  # S and z
    if name == "logexp":  # the running key max ignores the padding keys
        torch.testing.assert_close(padded.m, alone.m, atol=0, rtol=0)
