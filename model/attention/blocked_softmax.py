"""Exact causal softmax attention by blocks of query rows: the softmax backend's form on the CPU in training, and in
evaluation up to NO_GRAD_MAX_LENGTH tokens.

    y_i = sum_{j <= i} softmax_j(q_i·k_j / sqrt(d)) v_j

Each block of `block` queries [a, b) sees all of its keys [0, b) at once, so its weights are an ordinary row
softmax over one (BH, b - a, b) score tile: no running maximum is needed (FlashAttention's online softmax, Dao et
al. 2022, arXiv 2205.14135, merges key tiles; here no row spans two tiles), and the tiles right of the diagonal
block are never formed, which halves the work of a full T × T product. Each step is one batched GEMM over all heads
or one softmax pass; torch's CPU flash-attention kernel takes longer forward+backward at every shape measured, in
bf16 and fp32 (results/bench_blocked_softmax.md).

The forward pass keeps the weights for the backward pass, B·H·T·(T + block)/2 numbers per layer, against O(T) for
flash attention; `runs_blocked` sends a layer whose weights would exceed SAVED_BYTES_LIMIT to torch SDPA instead.
The backward pass is the row softmax's: with g = dy_i·v_j, ds_ij = p_ij (g_ij - sum_j p_ij g_ij).

Precision, as FlashAttention keeps it: the scores are formed and kept in fp32 (fp64 for fp64 inputs, the tests'
exact mode) from the input-dtype q and k, whose products are exact in fp32, so they are those of a bf16 GEMM that
accumulates in fp32; the softmax is computed in fp32 and written in the input dtype, the operand of the product with
v. The backward GEMMs take input-dtype operands and accumulate in fp32; dk and dv, summed over query blocks, stay in
fp32 until the end. The error against the fp64 reference, beside torch SDPA's: results/bench_blocked_softmax.md.
"""

from __future__ import annotations

import torch

from model.attention.numerics import accumulation_dtype, chunk_bounds, fold_heads, unfold_heads, without_autocast
from model.cpu import cpu_multiplies_bf16

SAVED_BYTES_LIMIT = 1 << 28  # weights kept per layer for the backward pass (256 MiB); beyond it, torch SDPA
NO_GRAD_MAX_LENGTH = 1024  # without gradients, longer sequences take SDPA (runs_blocked says why)


def block_rows(dtype: torch.dtype) -> int:
    """Query rows per block: of 64, 128 and 256, the fastest at most lengths measured on the CPU for each dtype (not at
    every one: results/bench_blocked_softmax.md)."""
    return 128 if dtype == torch.bfloat16 else 64


def saved_bytes(q: torch.Tensor, block: int | None = None) -> int:
    """Bytes of the weights the blocked form keeps for the backward pass, for queries q of shape (B, H, T, d)."""
    b, h, t, _ = q.shape
    block = block or block_rows(q.dtype)
    return b * h * sum((end - start) * end for start, end in chunk_bounds(t, block)) * q.element_size()


def runs_blocked(q: torch.Tensor) -> bool:
    """Whether causal attention on queries q (B, H, T, d) takes the blocked form: on the CPU, in fp32, fp64, or bf16
    where the CPU multiplies it natively (elsewhere oneDNN emulates bf16 GEMMs slower than fp32); in training (a
    gradient wanted) within SAVED_BYTES_LIMIT, and without gradients up to NO_GRAD_MAX_LENGTH tokens, the longest
    measured length at which its forward alone beat SDPA's in both bf16 and fp32 (results/bench_blocked_softmax.md;
    2,048 was not measured). GPUs keep torch SDPA's fused kernels; so does fp16, for which this form was not
    measured."""
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64, torch.bfloat16):
        return False
    if q.dtype == torch.bfloat16 and not cpu_multiplies_bf16():
        return False
    if torch.is_grad_enabled() and q.requires_grad:
        return saved_bytes(q) <= SAVED_BYTES_LIMIT
    return q.shape[-2] <= NO_GRAD_MAX_LENGTH


class _BlockedCausalSoftmax(torch.autograd.Function):
    @staticmethod
    @without_autocast  # the inputs' dtype is the GEMMs' dtype (module docstring)
    def forward(ctx, q, k, v, block: int, grad_enabled: bool):
        acc = accumulation_dtype(q.dtype)
        scores_q = q.to(acc) * q.shape[-1] ** -0.5  # the scale on the (BH, T, d) side, not on the scores
        scores_k = k.to(acc)
        above = torch.ones(block, block, dtype=torch.bool, device=q.device).triu_(1)
        # else each block's weights are freed as soon as they are used (forward itself runs with grad disabled)
        keep = grad_enabled and any(ctx.needs_input_grad[:3])
        weights, out = [], []
        for start, end in chunk_bounds(q.shape[1], block):
            scores = torch.bmm(scores_q[:, start:end], scores_k[:, :end].transpose(1, 2))
            scores[:, :, start:].masked_fill_(above[: end - start, : end - start], float("-inf"))
            p = torch.softmax(scores, dim=-1).to(v.dtype)
            out.append(torch.bmm(p, v[:, :end]))
            if keep:
                weights.append(p)
        if keep:
            ctx.save_for_backward(q, k, v, *weights)
            ctx.block = block
        return torch.cat(out, dim=1)

    @staticmethod
    @without_autocast
    def backward(ctx, dy):
        q, k, v, *weights = ctx.saved_tensors
        acc = accumulation_dtype(q.dtype)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        dq = []
        for (start, end), p in zip(chunk_bounds(q.shape[1], ctx.block), weights):
            g = dy[:, start:end]
            dv[:, :end] += torch.bmm(p.transpose(1, 2), g)
            ds = torch._softmax_backward_data(torch.bmm(g, v[:, :end].transpose(1, 2)), p, -1, p.dtype)
            dq.append(torch.bmm(ds, k[:, :end]))
            dk[:, :end] += torch.bmm(ds.transpose(1, 2), q[:, start:end])
        scale = q.shape[-1] ** -0.5
        return torch.cat(dq, dim=1).mul_(scale), dk.mul_(scale).to(k.dtype), dv.to(v.dtype), None, None


def blocked_causal_softmax(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int | None = None
) -> torch.Tensor:
    """Causal softmax attention of (B, H, T, d) queries, keys and (B, H, T, d_v) values, computed `block` query rows
    at a time (by default `block_rows`) in the inputs' dtype (module docstring); equal to SoftmaxAttention.reference
    up to rounding."""
    block = block or block_rows(q.dtype)
    y = _BlockedCausalSoftmax.apply(*(fold_heads(x, q.dtype) for x in (q, k, v)), block, torch.is_grad_enabled())
    return unfold_heads(y, q)
