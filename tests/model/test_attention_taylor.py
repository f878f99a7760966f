"""TaylorShift (Nauen et al., arXiv 2403.02920): w = a s² + b s + c, s = τ_h cos(q, k), made causal."""

from __future__ import annotations

import pytest
import torch

from model.attention import get_backend
from model.attention.linear import QuadraticKernel
from model.attention.taylor import TaylorQKTransform


def _qkv(t=40, d=6, d_v=5, heads=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, heads, t, n, generator=gen, dtype=torch.float64) for n in (d, d, d_v))


@pytest.mark.parametrize(("a", "b", "c"), [(0.5, 1.0, 1.0), (0.5, 1.0, 0.5), (2.0, -3.0, 1.2), (1.0, 0.0, 0.0)])
def test_weights_are_non_negative_and_positive_when_c_exceeds_the_bound(a, b, c):
    kernel = QuadraticKernel(a, b, c)  # the kernel itself; the taylor backend refuses c = b²/(4a)
    s = torch.linspace(-50, 50, 100_001, dtype=torch.float64)
    w = kernel(s.clone())
    torch.testing.assert_close(w, a * s**2 + b * s + c)
    assert (w >= 0).all()
    if c > b**2 / (4 * a):
        assert (w > 0).all()


@pytest.mark.parametrize("crossover", [1, 10**9], ids=["linear", "direct"])
def test_outputs_are_convex_combinations_of_the_values(crossover, forms_run):
    # Positive weights, normalised by their sum: every output lies within the range of the values it sees.
    backend = get_backend("taylor", crossover=crossover, chunk_size=8, block_size=8)
    q, k, v = _qkv()
    q, k = backend.make_qk_transform(3, 6).double()(q, k)
    y = backend.forward(q.detach(), k.detach(), v)
    assert forms_run == ["linear" if crossover == 1 else "direct"]
    running_min = torch.cummin(v, dim=2).values
    running_max = torch.cummax(v, dim=2).values
    assert (y >= running_min - 1e-12).all() and (y <= running_max + 1e-12).all()


@pytest.mark.parametrize("form", ["direct", "linear", "decode"])
def test_the_options_a_b_c_are_the_weights_coefficients(form):
    """Against w = a s² + b s + c written out here, not the backend's own kernel (its reference uses that kernel,
    so a mapping of the options to the wrong coefficients would pass every comparison with it)."""
    a, b, c = 0.3, -0.7, 2.0
    backend = get_backend("taylor", a=a, b=b, c=c, crossover=1 if form == "linear" else 10**9, chunk_size=8,
                          block_size=8)
    q, k, v = _qkv(t=23)
    s = q @ k.transpose(-1, -2)
    w = (a * s**2 + b * s + c).masked_fill(~torch.ones(23, 23, dtype=torch.bool).tril(), 0.0)
    expected = (w @ v) / w.sum(-1, keepdim=True)
    if form == "decode":
        state, outputs = backend.init_state(2, 3, 6, 5, dtype=torch.float64, device="cpu"), []
        for i in range(23):
            y_i, state = backend.step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], state)
            outputs.append(y_i)
        y = torch.cat(outputs, dim=2)
    else:
        y = backend.forward(q, k, v)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)


def test_qk_transform_normalises_keys_and_scales_queries_by_a_learnable_per_head_temperature():
    transform = get_backend("taylor", temperature_init=1.5).make_qk_transform(n_head=3, head_dim=6)
    assert isinstance(transform, TaylorQKTransform)
    assert transform.temperature.shape == (3,) and transform.temperature.requires_grad
    torch.testing.assert_close(transform.temperature.detach(), torch.full((3,), 1.5))
    with torch.no_grad():
        transform.temperature.copy_(torch.tensor([0.5, 1.0, 4.0]))
    q, k, _ = (x.float() for x in _qkv())
    q_out, k_out = transform(100 * q, k)
    torch.testing.assert_close(k_out.norm(dim=-1), torch.ones(2, 3, 40))
    torch.testing.assert_close(q_out.norm(dim=-1), torch.tensor([0.5, 1.0, 4.0])[None, :, None].expand(2, 3, 40))
    torch.testing.assert_close(q_out / q_out.norm(dim=-1, keepdim=True), q / q.norm(dim=-1, keepdim=True))
    # s = τ_h cos(q, k), so the temperature learns.
    backend = get_backend("taylor")
    y = backend.forward(*transform(q, k), _qkv()[2].float())
    y.square().sum().backward()
    assert transform.temperature.grad is not None and (transform.temperature.grad != 0).all()


def test_official_initialisation_gives_scores_in_minus_one_one():
    transform = get_backend("taylor").make_qk_transform(n_head=3, head_dim=6)
    torch.testing.assert_close(transform.temperature.detach(), torch.ones(3))  # as the official code
    q, k, _ = _qkv()
    q, k = transform.double()(q, k)
    s = q @ k.transpose(-1, -2)
    assert s.abs().max() <= 1 + 1e-12


def _transformed_qkv(t, seed=0):
    q, k, v = _qkv(t=t, seed=seed)
    with torch.no_grad():
        q, k = get_backend("taylor").make_qk_transform(3, 6).double()(q, k)
    return q, k, v


@pytest.mark.parametrize(("t", "form"), [(49, "direct"), (50, "linear"), (51, "linear")])
def test_the_crossover_switches_from_the_direct_to_the_linear_form(t, form, forms_run):
    q, k, v = _transformed_qkv(t)
    backend = get_backend("taylor", crossover=50, chunk_size=16, block_size=16)
    y = backend.forward(q, k, v)
    assert forms_run == [form]
    torch.testing.assert_close(y, backend.reference(q, k, v), atol=1e-12, rtol=1e-12)


def _normalized_by_hand(q, k, v, a=0.5, b=1.0, c=1.0):
    """The definition: the causal average of the values under w = a s² + b s + c, times sqrt((i + 1) / d)."""
    s = q @ k.transpose(-1, -2)
    w = (a * s**2 + b * s + c).tril()
    attended = torch.arange(1, q.shape[2] + 1, dtype=q.dtype)[:, None]  # N_i = i + 1
    return (w @ v) / w.sum(-1, keepdim=True) * torch.sqrt(attended / q.shape[-1])


@pytest.mark.parametrize("crossover", [1, 10**9], ids=["linear", "direct"])
def test_output_normalized_multiplies_each_row_by_sqrt_of_its_attended_tokens_over_d(crossover, forms_run):
    q, k, v = _transformed_qkv(37)
    backend = get_backend("taylor", output_normalized=True, crossover=crossover, chunk_size=8, block_size=8)
    expected = _normalized_by_hand(q, k, v)
    torch.testing.assert_close(backend.reference(q, k, v), expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(backend.forward(q, k, v), expected, atol=1e-12, rtol=1e-12)
    assert forms_run == ["linear" if crossover == 1 else "direct"]


@pytest.mark.parametrize("crossover", [1, 10**9], ids=["linear", "direct"])
def test_output_normalized_gradients_match_the_definition(crossover):
    q, k, v = (x.requires_grad_() for x in _transformed_qkv(21))
    backend = get_backend("taylor", output_normalized=True, crossover=crossover, chunk_size=4, block_size=4)
    dy = torch.randn(2, 3, 21, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(backend.forward(q, k, v), (q, k, v), dy)
    expected = torch.autograd.grad(_normalized_by_hand(q, k, v), (q, k, v), dy)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("prefill", [1, 5, 8, 9, 30])
def test_output_normalized_decoding_counts_the_tokens_already_in_the_state(prefill):
    # After a prefill of any length (within a chunk, on a chunk boundary, across several), each new token's
    # factor is that of its absolute position: the tokens folded into the state count.
    q, k, v = _transformed_qkv(40)
    backend = get_backend("taylor", output_normalized=True, chunk_size=8)
    state = backend.init_state(2, 3, 6, 5, dtype=torch.float64, device="cpu")
    y, state = backend.step(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill], state)
    outputs = [y]
    for i in range(prefill, 40):
        y, state = backend.step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], state)
        outputs.append(y)
    assert state.length == 40
    torch.testing.assert_close(torch.cat(outputs, dim=2), _normalized_by_hand(q, k, v), atol=1e-12, rtol=1e-12)


def test_decode_state_is_D_by_d_v_plus_one_with_D_from_the_taylor_features():
    backend = get_backend("taylor")
    assert backend.constant_memory
    d, d_v = 64, 64
    state = backend.init_state(1, 12, d, d_v, dtype=torch.bfloat16, device="cpu")
    features = 1 + d + d * (d + 1) // 2  # 2145
    assert state.S.shape == (1, 12, features, d_v) and state.z.shape == (1, 12, features)
    assert backend.state_nbytes(state) == 12 * features * (d_v + 1) * 4


@pytest.mark.parametrize(("options", "bad"), [
    ({"a": -0.5}, "a"), ({"c": 0.49}, "c"), ({"c": float("nan")}, "c"),
    ({"c": 0.5}, "c"),  # c = b²/(4a): w = 0 at s = -1, where a row could sum to 0/0
    ({"a": 2.0, "b": 0.0, "c": 0.0}, "c"),  # a pure square: w = 0 for orthogonal q and k
    ({"b": 1e200, "c": 1e300}, "b"),  # b² overflows: refused, not an OverflowError
])
def test_coefficients_must_keep_every_weight_positive(options, bad):
    with pytest.raises(ValueError, match=rf"{bad}=.*allowed: a finite number"):
        get_backend("taylor", **options)
    get_backend("taylor", a=0.5, b=1.0, c=0.5000001)  # just above the boundary


def test_weights_at_the_smallest_allowed_offset_stay_finite_where_a_key_sits_on_the_zero_of_the_square():
    """q = -k with τ = 1 puts s = -1, the vertex of ½(s + 1)², where c = b²/(4a) would divide 0 by 0."""
    q, k = torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)
    k[..., 0], q[..., 0] = 1.0, -1.0
    v = torch.randn(1, 1, 3, 4)
    y = get_backend("taylor", a=0.5, b=1.0, c=0.5 + 1e-3, crossover=1000).forward(q, k, v)
    assert torch.isfinite(y).all()


def test_output_normalized_must_be_a_bool():
    with pytest.raises(ValueError, match="output_normalized=1.*allowed"):
        get_backend("taylor", output_normalized=1)
