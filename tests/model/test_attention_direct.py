"""The tiled direct form (model/attention/direct.py) in bf16: GEMMs on bf16 operands, sums in fp32.

The tolerance: a bf16 GEMM rounds each tile's product to bf16 (unit roundoff u = 2⁻⁸ ≈ 0.0039), and the fp32
paths round the output to bf16 anyway. The outputs of the bf16 path stay within 1e-2 (≈ 2.5 u) of the fp64
reference and the gradients within 2e-2 (≈ 5 u), in relative Frobenius norm; the gradients get more because
g·v_j - g·y_i cancels, most for the first queries of a row, which see few keys. The reference runs on the same
bf16-rounded inputs, so only the kernel's own rounding is measured. fp32 and fp64 inputs keep the fp32/fp64 path
(tests/model/test_attention_backends.py holds them to 1e-10 in fp64).
"""

from __future__ import annotations

import pytest
import torch

from model.attention import direct, get_backend
from model.attention.direct import gemm_dtype, tiled_direct_attention
from model.attention.expressive import SaturatingSquare

FORWARD_TOL, GRADIENT_TOL = 1e-2, 2e-2
B, H, T = 2, 2, 100  # 4 blocks of 32


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.double() - reference).norm() / reference.norm()).item()


def weight(backend, d):
    if backend.name == "expressive":
        return SaturatingSquare(1.0 / d**0.5)
    return backend.kernel(d)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("name", ["expressive", "expressive_sq", "taylor"])
def test_bf16_path_is_within_bf16_tolerance_of_the_fp64_reference(name, padded, monkeypatch):
    monkeypatch.setattr(direct, "cpu_multiplies_bf16", lambda: True)  # bf16 GEMMs, emulated where not native
    d = 64  # a realistic head size, so the scores have their usual scale
    backend = get_backend(name, crossover=10**9) if name != "expressive" else get_backend(name)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, d, generator=gen) for _ in range(3))
    with torch.no_grad():
        q, k = backend.make_qk_transform(H, d)(q, k)
    q, k, v = (x.bfloat16() for x in (q, k, v))
    grad_out = torch.randn(B, H, T, d, generator=gen).bfloat16()
    # Row 1 starts with 23 padding tokens: its first real queries see few keys, the worst-conditioned rows.
    mask = torch.arange(T)[None] >= torch.tensor([[0], [23]]) if padded else None
    real = (torch.ones(B, 1, T, 1) if mask is None else mask[:, None, :, None].float()).bfloat16()

    exact = [x.double().requires_grad_() for x in (q, k, v)]
    y_ref = backend.reference(*exact, mask=mask)
    y_ref.backward(grad_out.double())

    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    y = tiled_direct_attention(*inputs, weight(backend, d), eps=backend.eps, block=32, mask=mask) * real
    y.backward(grad_out)

    assert y.dtype == torch.bfloat16 and all(x.grad.dtype == torch.bfloat16 for x in inputs)
    assert relative_error(y, y_ref) <= FORWARD_TOL
    for x, x_ref in zip(inputs, exact):
        assert relative_error(x.grad, x_ref.grad) <= GRADIENT_TOL


@pytest.mark.parametrize("d", [8, 32, 128])
def test_bf16_scores_take_the_scale_in_fp32(d, monkeypatch):
    """1/sqrt(d) is exact in bf16 only for d = 4^n: applied to bf16 q it rounded q twice, and with large scores on
    nearly orthogonal pairs the gradients came out at 2-8e-2 of the reference (1.6e-2 at most with the scale
    applied to the fp32 scores, as a decoding step does)."""
    monkeypatch.setattr(direct, "cpu_multiplies_bf16", lambda: True)
    backend = get_backend("expressive")
    gen = torch.Generator().manual_seed(0)
    q, k = ((10 * torch.randn(B, H, 64, d, generator=gen) / d**0.25).bfloat16() for _ in range(2))
    v = torch.randn(B, H, 64, d, generator=gen).bfloat16()
    exact = [x.double().requires_grad_() for x in (q, k, v)]
    y_ref = backend.reference(*exact)
    grad_out = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64)
    y_ref.backward(grad_out)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    y = backend.forward(*inputs)
    y.backward(grad_out.bfloat16())
    assert relative_error(y, y_ref) <= FORWARD_TOL
    for x, x_ref in zip(inputs, exact):
        assert relative_error(x.grad, x_ref.grad) <= GRADIENT_TOL


def test_bf16_gemms_run_on_bf16_operands_and_fp32_ones_on_fp32(monkeypatch):
    seen = []
    bmm = torch.bmm

    def spy(a, b, *args, **kwargs):
        seen.append((a.dtype, b.dtype))
        return bmm(a, b, *args, **kwargs)

    monkeypatch.setattr(direct, "cpu_multiplies_bf16", lambda: True)
    for dtype in (torch.bfloat16, torch.float32):
        seen.clear()
        q, k, v = (torch.randn(1, 2, 40, 8, dtype=dtype, requires_grad=True) for _ in range(3))
        with monkeypatch.context() as patch:
            patch.setattr(torch, "bmm", spy)
            patch.setattr(torch, "baddbmm", lambda h, a, b, beta=1: spy(a, b) + beta * h)
            y = tiled_direct_attention(q, k, v, SaturatingSquare(), eps=1e-6, block=16)
            y.sum().backward()
        assert y.dtype == dtype
        assert set(seen) == {(dtype, dtype)}


@pytest.mark.parametrize(
    ("dtype", "device", "native_bf16", "expected"),
    [
        (torch.bfloat16, "cpu", True, torch.bfloat16),
        (torch.bfloat16, "cpu", False, torch.float32),  # emulated bf16 GEMMs are slower than fp32 ones
        (torch.bfloat16, "cuda", False, torch.bfloat16),
        (torch.float16, "cuda", True, torch.float32),  # g = dy / den may pass fp16's 65504
        (torch.float32, "cpu", True, torch.float32),
        (torch.float64, "cpu", True, torch.float64),
    ],
)
def test_gemm_dtype_keeps_bf16_only_where_the_device_multiplies_it_natively(
    monkeypatch, dtype, device, native_bf16, expected
):
    monkeypatch.setattr(direct, "cpu_multiplies_bf16", lambda: native_bf16)
    assert gemm_dtype(dtype, torch.device(device)) == expected
