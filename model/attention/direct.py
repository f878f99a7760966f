"""Exact causal attention for a pointwise weight `w(s)` of the score `s = q·k`, tiled (O(n·block) extra memory).

    y_i = sum_{j <= i} w(q_i·k_j) v_j / (sum_{j <= i} w(q_i·k_j) + eps)

This is the direct O(n² d) form of every mechanism whose weight is a bounded or positive function of the score
(expressive's `s²/(1+s²)`, the quadratic kernels below their crossover). Unlike softmax, the row sum needs no
running max, so each (query block, key block) tile adds its weighted values and weights straight into the
accumulators, and tiles above the diagonal are skipped. The backward pass recomputes the tiles instead of storing
the n × n weights (as FlashAttention does, Dao et al. 2022, arXiv 2205.14135), so training memory stays O(n·block).
The causal mask is applied to the weights, after the nonlinearity: masking the scores first (-inf, -1e20) and then
squaring gives NaN or weight 1 on future tokens. Padding keys are masked the same way (their weights set to 0);
a padding query, which may see no key at all, divides by 1 instead of its sum so that its discarded output stays
finite.

Precision (`gemm_dtype`): bf16 inputs keep bf16 GEMM operands where the device multiplies bf16 natively, as
FlashAttention does: scores from bf16 q, k; the weights, cast to bf16, times v; the same for the backward products.
Each tile's product is added into fp32 accumulators (num, den, dq, dk, dv), and the weight and its derivative are
evaluated in fp32 from the scores (a weight's own score scale too: scaling bf16 q would round it twice). Other dtypes
run every step in their accumulation dtype (fp32, fp64), and so does fp16: g = dy / den of a row whose weights nearly
vanish would overflow its 65504 range. Where the time goes, and the error against the fp64 reference:
results/bench_direct_bf16.md, tests/model/test_attention_direct.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from model.attention.base import zero_masked_queries
from model.attention.kv_cache import causal_mask, padded_causal_mask
from model.attention.numerics import accumulation_dtype, fold_heads, fold_mask, unfold_heads, without_autocast
from model.cpu import cpu_multiplies_bf16


class PointwiseWeight(Protocol):
    """An elementwise weight function of the scores. Both methods may overwrite `s` (a fresh score tile)."""

    def __call__(self, s: torch.Tensor) -> torch.Tensor: ...

    def with_derivative(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w(s), w'(s))."""
        ...


def visible_keys(t: int, device: torch.device, mask: torch.Tensor | None) -> torch.Tensor:
    """The keys each of t queries sees in the reference forms: (T, T) causal, or with `mask` (B, T) also without the
    padding keys, (B, 1, T, T)."""
    return causal_mask(t, 0, device) if mask is None else padded_causal_mask(t, 0, mask, mask)


def naive_causal_average(
    weights: torch.Tensor, v: torch.Tensor, eps: float = 0.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference normalisation: mask the (B, H, T, T) weights causally and, with `mask` (B, T), the padding
    keys, then average the values by them; padding queries give 0."""
    weights = weights.masked_fill(~visible_keys(weights.shape[-1], weights.device, mask), 0.0)  # after the nonlinearity
    return zero_masked_queries((weights @ v) / (weights.sum(-1, keepdim=True) + eps), mask)


def naive_causal_softmax(logits: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The reference for weights exp(logits): softmax over the visible keys of the (B, H, T, T) logits (causal, and
    not padding where `mask` (B, T) says so), then the average of the values by it; padding queries give 0."""
    logits = logits.masked_fill(~visible_keys(logits.shape[-1], logits.device, mask), float("-inf"))
    return zero_masked_queries(torch.softmax(logits, dim=-1) @ v, mask)


def safe_denominator(den: torch.Tensor, eps: float, queries_valid: torch.Tensor | None) -> torch.Tensor:
    """den + eps, with 1 for the padding queries (False in queries_valid): they may see no key, and their output,
    discarded, must stay finite (a NaN there would reach the next layer's keys)."""
    den = den + eps
    return den if queries_valid is None else den.masked_fill_(~queries_valid, 1.0)


def gemm_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the tiles' GEMM operands for inputs of `dtype` on `device` (the module docstring says why)."""
    # with AVX512-BF16 or AMX, bf16 GEMMs are several times faster than fp32 ones; without them, far slower
    if dtype == torch.bfloat16 and (device.type != "cpu" or cpu_multiplies_bf16()):
        return dtype
    return accumulation_dtype(dtype)


def _scores(q: torch.Tensor, k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q kᵀ of one tile (BH, queries, keys), a fresh tensor in `dtype` for the weight to overwrite."""
    return torch.bmm(q, k.transpose(1, 2)).to(dtype)


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out += a @ b: fused where all three share a dtype; else the tile's product, in the operands' dtype, is added
    into `out` (fp32), so that sums over many tiles accumulate in fp32."""
    return out.baddbmm_(a, b) if a.dtype == out.dtype else out.add_(torch.bmm(a, b))


def _product_minus(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b - h, in h's dtype (fp32 from bf16 operands)."""
    return torch.baddbmm(h, a, b, beta=-1) if a.dtype == h.dtype else torch.sub(torch.bmm(a, b), h)


def _tiles(t: int, past: int, block: int) -> Iterator[tuple[int, int, list[tuple[int, int, int | None]]]]:
    """Query blocks (i0, i1) with their key blocks (j0, j1, diagonal): every tile with a visible pair.

    Queries sit at absolute positions past + i; `diagonal` is None when the whole tile is visible, else the
    offset for `tril_` (query i may see key j iff j - j0 <= (i - i0) + diagonal).
    """
    for i0 in range(0, t, block):
        i1 = min(i0 + block, t)
        keys = []
        for j0 in range(0, past + i1, block):
            j1 = min(j0 + block, past + i1)
            keys.append((j0, j1, None if j1 - 1 <= past + i0 else past + i0 - j0))
        yield i0, i1, keys


def _causal_(
    w: torch.Tensor, diagonal: int | None, padding: torch.Tensor | None = None, j0: int = 0
) -> torch.Tensor:
    """Zero the weights of the future keys in place (after the nonlinearity, so inf or NaN there is harmless), and
    those of the padding keys (True in `padding` (BH, keys), of which the tile holds keys j0 ..)."""
    if diagonal is not None:
        w.tril_(diagonal)
    if padding is not None:
        w.masked_fill_(padding[:, None, j0 : j0 + w.shape[-1]], 0.0)
    return w


def tiled_numerator_and_denominator(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: PointwiseWeight, past: int, block: int,
    keys_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j w_ij v_j and sum_j w_ij for queries at positions past..past+T-1 over keys 0..past+T-1, the padding
    keys (False in keys_valid (BH, past + T)) left out. The GEMMs run in the inputs' dtype, the weights and the sums
    in its accumulation dtype.

    q: (BH, T, d), k: (BH, past + T, d), v: (BH, past + T, d_v); returns (BH, T, d_v), (BH, T).
    """
    acc = accumulation_dtype(q.dtype)
    padding = None if keys_valid is None else ~keys_valid
    num = q.new_empty(q.shape[0], q.shape[1], v.shape[-1], dtype=acc)
    den = q.new_empty(q.shape[0], q.shape[1], dtype=acc)
    for i0, i1, keys in _tiles(q.shape[1], past, block):
        # Per-block accumulators: baddbmm_ into a strided slice would fall back to one GEMM per head.
        num_i = q.new_zeros(q.shape[0], i1 - i0, v.shape[-1], dtype=acc)
        den_i = q.new_zeros(q.shape[0], i1 - i0, dtype=acc)
        for j0, j1, diagonal in keys:
            w = _causal_(weight(_scores(q[:, i0:i1], k[:, j0:j1], acc)), diagonal, padding, j0)
            _add_product(num_i, w.to(v.dtype), v[:, j0:j1])
            den_i += w.sum(-1)
        num[:, i0:i1], den[:, i0:i1] = num_i, den_i
    return num, den


def _blocked(x: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """Zeros shaped (n_blocks, BH, block, f): one contiguous accumulator per key block."""
    n_blocks = -(-x.shape[1] // block)
    return x.new_zeros(n_blocks, x.shape[0], block, x.shape[2], dtype=dtype)


def _unblocked(x: torch.Tensor, t: int) -> torch.Tensor:
    return x.transpose(0, 1).flatten(1, 2)[:, :t]


class _TiledCausalAttention(torch.autograd.Function):
    @staticmethod
    @without_autocast  # the caller chose the dtypes; autocast would mix them
    def forward(ctx, q, k, v, weight: PointwiseWeight, eps: float, block: int, valid: torch.Tensor | None):
        num, den = tiled_numerator_and_denominator(q, k, v, weight, 0, block, valid)
        den = safe_denominator(den, eps, valid)
        y = num / den[..., None]
        ctx.save_for_backward(q, k, v, y, den, valid)
        ctx.weight, ctx.block = weight, block
        return y

    @staticmethod
    @without_autocast
    def backward(ctx, dy):
        q, k, v, y, den, valid = ctx.saved_tensors
        block, acc = ctx.block, y.dtype
        padding = None if valid is None else ~valid
        # y_i = num_i / den_i, so dL/dw_ij = (dy_i · v_j - dy_i · y_i) / den_i = g_i · v_j - h_i.
        g_op = (dy / den[..., None]).to(v.dtype)  # (BH, T, d_v), the GEMM operand
        # h from the operand itself, so that g·v_j - h cancels exactly as far as the products' rounding allows.
        h = (g_op * y).sum(-1, keepdim=True)  # (BH, T, 1), in y's dtype
        dq = q.new_empty(q.shape, dtype=acc)
        dk, dv = _blocked(k, block, acc), _blocked(v, block, acc)
        for i0, i1, keys in _tiles(q.shape[1], 0, block):
            dq_i = q.new_zeros(q.shape[0], i1 - i0, q.shape[2], dtype=acc)
            for j0, j1, diagonal in keys:
                w, dw_ds = ctx.weight.with_derivative(_scores(q[:, i0:i1], k[:, j0:j1], acc))
                _causal_(w, diagonal, padding, j0)
                ds = _product_minus(h[:, i0:i1], g_op[:, i0:i1], v[:, j0:j1].transpose(1, 2)).mul_(dw_ds)
                _causal_(ds, diagonal, padding, j0)
                ds, w = ds.to(q.dtype), w.to(v.dtype)
                _add_product(dq_i, ds, k[:, j0:j1])
                jb = j0 // block
                _add_product(dk[jb, :, : j1 - j0], ds.transpose(1, 2), q[:, i0:i1])
                _add_product(dv[jb, :, : j1 - j0], w.transpose(1, 2), g_op[:, i0:i1])
            dq[:, i0:i1] = dq_i
        t = q.shape[1]
        dk, dv = _unblocked(dk, t), _unblocked(dv, t)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def tiled_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: PointwiseWeight, *, eps: float, block: int,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable causal attention (BH, T, d) x 3 -> (BH, T, d_v) in O(T·block) memory; `q` carries any scale.
    The GEMMs run in the inputs' dtype (see `gemm_dtype`), the output is in its accumulation dtype.
    `valid` (BH, T): False for padding (keys left out; the queries' outputs are finite, for the caller to zero)."""
    return _TiledCausalAttention.apply(q, k, v, weight, eps, block, valid)


def tiled_direct_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: PointwiseWeight, *, eps: float, block: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention with weights w(q·k), (B, H, T, d) x 3 -> (B, H, T, d_v) in q's dtype, through the tiled
    kernel with its GEMMs in `gemm_dtype`. `mask` (B, T): False for padding (keys left out; the queries' outputs are
    finite, for the caller to zero)."""
    dtype = gemm_dtype(q.dtype, q.device)
    valid = None if mask is None else fold_mask(mask, q.shape[1])
    y = tiled_causal_attention(fold_heads(q, dtype), fold_heads(k, dtype), fold_heads(v, dtype), weight, eps=eps,
                               block=block, valid=valid)
    return unfold_heads(y, q)
