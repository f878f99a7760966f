"""The blocked causal softmax (model/attention/blocked_softmax.py): exact in fp64 over any block split, as precise
as torch SDPA in bf16, keeping the weights it says it keeps, and chosen where its rule says.

The bf16 bound: the output and gradients stay within 1e-2 / 2e-2 of the fp64 reference (as the direct forms' in
tests/model/test_attention_direct.py) and within 1.5 times torch SDPA's own error on the same inputs; scores
rounded to bf16 (instead of kept in fp32) give about three times SDPA's error, which this bound catches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.attention import blocked_softmax, get_backend, softmax
from model.attention.blocked_softmax import blocked_causal_softmax, block_rows, runs_blocked, saved_bytes

FORWARD_TOL, GRADIENT_TOL, SDPA_FACTOR = 1e-2, 2e-2, 1.5


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.double() - reference).norm() / reference.norm()).item()


def outputs_and_grads(form, inputs, grad_out):
    inputs = [x.clone().requires_grad_() for x in inputs]
    y = form(*inputs)
    y.backward(grad_out)
    return [y] + [x.grad for x in inputs]


@pytest.mark.parametrize("t, block", [(1, 64), (37, 64), (64, 64), (300, 64), (300, 128)])
def test_fp64_matches_the_reference_for_any_split_into_blocks(t, block):
    gen = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(2, 3, t, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    v = v[..., :8].contiguous()  # d_v != d
    grad_out = torch.randn(2, 3, t, 8, generator=gen, dtype=torch.float64)
    found = outputs_and_grads(lambda *x: blocked_causal_softmax(*x, block=block), (q, k, v), grad_out)
    expected = outputs_and_grads(get_backend("softmax").reference, (q, k, v), grad_out)
    for x, x_ref in zip(found, expected):
        torch.testing.assert_close(x, x_ref, rtol=1e-12, atol=1e-12)


def test_gradients_pass_gradcheck_fp64():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 11, 5, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda *x: blocked_causal_softmax(*x, block=4), (q, k, v))


def test_bf16_is_within_tolerance_of_fp64_and_as_precise_as_sdpa():
    gen = torch.Generator().manual_seed(0)
    b, h, t, d = 2, 3, 300, 64  # a realistic head size, so the scores have their usual scale; 3 blocks of 128
    q, k, v, grad_out = (torch.randn(b, h, t, d, generator=gen).bfloat16() for _ in range(4))
    q = q * 2  # peakier weights than unit scores give
    exact = outputs_and_grads(get_backend("softmax").reference, [x.double() for x in (q, k, v)], grad_out.double())
    found = outputs_and_grads(blocked_causal_softmax, (q, k, v), grad_out)
    sdpa = outputs_and_grads(lambda *x: F.scaled_dot_product_attention(*x, is_causal=True), (q, k, v), grad_out)
    assert all(x.dtype == torch.bfloat16 for x in found)
    for i, (x, x_sdpa, x_ref) in enumerate(zip(found, sdpa, exact)):
        error = relative_error(x, x_ref)
        assert error <= (FORWARD_TOL if i == 0 else GRADIENT_TOL)
        assert error <= SDPA_FACTOR * relative_error(x_sdpa, x_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_weights_kept_for_backward_are_what_saved_bytes_says_and_none_without_grad(dtype):
    q, k, v = (torch.randn(2, 3, 200, 16, dtype=dtype) for _ in range(3))
    assert 200 > block_rows(dtype)  # several blocks, the last one partial
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: kept.append(x) or x, lambda x: x):
        blocked_causal_softmax(*(x.clone().requires_grad_() for x in (q, k, v)))
        inputs_bytes = 3 * q.numel() * q.element_size()
        assert sum(x.numel() * x.element_size() for x in kept) == saved_bytes(q) + inputs_bytes
        kept.clear()
        with torch.no_grad():
            blocked_causal_softmax(*(x.clone().requires_grad_() for x in (q, k, v)))
        blocked_causal_softmax(q, k, v)  # no input needs a gradient
    assert kept == []


@pytest.mark.parametrize(
    "dtype, device, native_bf16, limit, expected",
    [
        (torch.float32, "cpu", False, None, True),
        (torch.float64, "cpu", False, None, True),
        (torch.bfloat16, "cpu", True, None, True),
        (torch.bfloat16, "cpu", False, None, False),  # oneDNN would emulate the bf16 GEMMs
        (torch.float16, "cpu", True, None, False),
        (torch.float32, "meta", True, None, False),  # not a CPU: SDPA's fused kernels
        (torch.float32, "cpu", True, 1000, False),  # the weights would exceed the limit
    ],
)
def test_runs_blocked_follows_device_dtype_and_memory(monkeypatch, dtype, device, native_bf16, limit, expected):
    monkeypatch.setattr(blocked_softmax, "cpu_multiplies_bf16", lambda: native_bf16)
    if limit is not None:
        monkeypatch.setattr(blocked_softmax, "SAVED_BYTES_LIMIT", limit)
    assert runs_blocked(torch.empty(1, 2, 64, 8, dtype=dtype, device=device, requires_grad=True)) is expected


@pytest.mark.parametrize("t, with_grad, expected", [(1024, False, True), (1025, False, False), (4096, True, True)])
def test_without_gradients_only_sequences_up_to_the_length_limit_take_the_blocked_form(t, with_grad, expected):
    q = torch.empty(1, 2, t, 8).requires_grad_()
    assert blocked_softmax.NO_GRAD_MAX_LENGTH == 1024
    with torch.set_grad_enabled(with_grad):
        assert runs_blocked(q) is expected
    assert runs_blocked(q.detach()) is (t <= 1024)


def test_softmax_backend_takes_the_blocked_form_only_where_the_rule_and_its_option_allow_and_without_padding(
    monkeypatch,
):
    calls = []
    monkeypatch.setattr(softmax, "blocked_causal_softmax", lambda *x: calls.append(1) or blocked_causal_softmax(*x))
    q, k, v = (torch.randn(2, 2, 40, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    y = get_backend("softmax").forward(q, k, v)
    assert calls == [1]
    mask = torch.ones(2, 40, dtype=torch.bool)
    sdpa_paths = [
        lambda: get_backend("softmax").forward(q, k, v, mask=mask),  # padding
        lambda: get_backend("softmax", blocked=False).forward(q, k, v),
    ]
    for run in sdpa_paths:
        torch.testing.assert_close(run(), y, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(softmax, "runs_blocked", lambda q: False)
    torch.testing.assert_close(get_backend("softmax").forward(q, k, v), y, rtol=1e-12, atol=1e-12)
    assert calls == [1]
