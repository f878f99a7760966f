"""Cross-entropy of the LM head, in the form that is fastest for the device and dtype.

For hidden states h (N, C), head W (V, C) and targets t, the loss is
    L = (1 / N') sum_{i: t_i >= 0} [ logsumexp_v (h_i · W_v) - h_i · W_{t_i} ]      (N' = number of targets >= 0)
with gradients dL/dh_i = (softmax(h_i Wᵀ) - e_{t_i}) W / N' and dL/dW = sum_i (softmax(h_i Wᵀ) - e_{t_i})ᵀ h_i / N'.
A negative target marks a position without one (torch and transformers write -100 there): it adds nothing, and a
batch without any target has loss 0.

Two forms compute it:
- full: the logits of all N rows, then their cross-entropy (`linear_cross_entropy_reference`, nanoGPT's form);
- chunked: rows are processed in chunks and the gradients are formed during the forward pass, so peak memory holds
  one chunk of logits instead of all of them (GPT-2 small, 16 × 1024 tokens: 3.3 GB of fp32 logits). Each chunk
  makes one softmax over its (n, V) logits, written straight in the GEMM operands' dtype under bf16 autocast
  (computed in fp32 inside the kernel; in fp32 for fp16, whose subnormal range would take the probabilities'
  precision) as the operand of the gradient's two products, and one row reduction in that dtype (the sum of the
  softmax without the target's entry, which torch accumulates in fp32 and rounds once: asking it for an fp32 result
  would first copy the whole (n, V) softmax to fp32), from which the targets' log probabilities and the one-hot's
  entries follow (`target_log_probs`); the scale 1/N' and the mask of rows without a target are applied to the
  (n, C) side, never to the (n, V) logits (under fp16, 1/N' goes on the weight gradient's GEMM result instead, in
  fp32, with a fixed power of two before it, `FP16_PRESCALE`: 1/N' before the GEMM would push that fp16 result into
  fp16's subnormals, and nothing before it could overflow it). The head's rows are padded with zeros to a multiple of `VOCAB_ALIGN`
  (50,257 -> 50,304, as nanoGPT pads its vocabulary) in the copy that the GEMMs read anyway, and the padding's
  logits set to -inf, so its probabilities are exactly 0 and the loss and gradients are those of the V real rows:
  aligned rows make the GEMMs faster, the weight gradient's (V, C) product most (results/bench_loss.md).
`LOSS_FORMS` picks one by device type and autocast dtype, from the measurements in results/bench_loss.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (device type, autocast dtype or None) -> rows per chunk of the chunked form, or None where the full form is faster.
# Chosen from scripts/bench_loss.py; the measurements are in results/bench_loss.md, where the chunked form beats the
# full one in every round and 1,024 and 2,048 rows are not told apart (their ranges overlap: either would do).
# Pairs not measured take DEFAULT_CHUNK_ROWS: the chunked form's memory.
LOSS_FORMS: dict[tuple[str, torch.dtype | None], int | None] = {
    ("cpu", None): 2048,
    ("cpu", torch.bfloat16): 1024,
}
DEFAULT_CHUNK_ROWS = 1024
VOCAB_ALIGN = 64  # the chunked form's head rows are padded to a multiple of this (module docstring)
# Under fp16, the weight gradient's GEMM sums a chunk's rows of (softmax - one-hot) h unscaled but for this power of
# two: a token that is every row's target sums up to 1,024 rows of h, 64 |h| at most after it (fp16 overflows at
# 65,504), while a row rarely a target sums ~1e-3 |h|, still within fp16's normal range (from 6.1e-5).
FP16_PRESCALE = 2.0**-4
# Device types whose kernels run synchronously, so that reading a tensor's values on the host costs no wait.
SYNCHRONOUS_DEVICES = frozenset({"cpu"})


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (N, V) over the targets (N,) >= 0, in fp32 or wider; 0 when there are none."""
    scored = targets >= 0
    losses = F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.clamp(min=0), reduction="none"
    )
    return (losses * scored).sum() / scored.sum().clamp(min=1)


def linear_cross_entropy_reference(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The definition, and the full form: all logits, then their cross-entropy."""
    return cross_entropy(h @ weight.T, targets)


def chunk_rows(device_type: str, autocast_dtype: torch.dtype | None) -> int | None:
    """Rows per chunk of the chunked form for this device and autocast dtype (None: the full form is faster)."""
    return LOSS_FORMS.get((device_type, autocast_dtype), DEFAULT_CHUNK_ROWS)


def target_log_probs(logits: torch.Tensor, probs: torch.Tensor, p_t: torch.Tensor, others: torch.Tensor,
                     targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """log p_t of each row's target t, in `dtype`, from the logits x (n, V), their softmax p (n, V) and its target
    entries p_t as stored (their dtype's rounding included), and the sums of each row's entries but the target's.

    log p_t is read off p_t, but for two kinds of rows. Stored in bf16, p_t is off by up to 2^-8 of itself, which
    near p_t = 1 is all of 1 - p_t; so where p_t >= 1/2 it is taken as 1 minus the others' sum instead, whose terms'
    rounding errors average out. Where p_t underflowed (below the dtype's smallest normal: a loss past ~87 nats in
    fp32 or bf16), log p_t = x_t - x_j + log p_j, which holds for every j, is taken at the row's most probable token j
    (max x_j and max p_j: the softmax and its rounding are monotone), whose p_j >= 1/V does not underflow. Those maxima
    are read from the underflowed rows alone on `SYNCHRONOUS_DEVICES`, and from every row elsewhere, where picking
    the rows would wait for the device, and under torch.compile, where their data-dependent number would break the
    graph.
    """
    x_t = logits.gather(1, targets[:, None]).squeeze(1).to(dtype)
    log_p = torch.where(p_t >= 0.5, 1.0 - others.to(dtype), p_t.to(dtype)).log()
    underflow = p_t < torch.finfo(p_t.dtype).tiny
    pick_rows = logits.device.type in SYNCHRONOUS_DEVICES and not torch.compiler.is_compiling()
    rows = underflow.nonzero().squeeze(1) if pick_rows else slice(None)
    via_top = x_t[rows] - logits[rows].amax(dim=-1).to(dtype) + probs[rows].amax(dim=-1).to(dtype).log()
    log_p[rows] = torch.where(underflow[rows], via_top, log_p[rows])
    return log_p


def padded_head(weight: torch.Tensor, dtype: torch.dtype, align: int) -> torch.Tensor:
    """weight (V, C) in `dtype`, with zero rows appended up to a multiple of `align` rows (a copy when any are)."""
    vocab = weight.shape[0]
    if vocab % align == 0:
        return weight.to(dtype)
    padded = weight.new_zeros(-(-vocab // align) * align, weight.shape[1], dtype=dtype)
    padded[:vocab] = weight
    return padded


def _loss_and_grads(h, weight, targets, chunk_size: int, with_grads: bool, vocab_align: int):
    """Mean loss and, if asked, its gradients with respect to h and weight, one chunk of rows at a time, the head
    padded to a multiple of `vocab_align` rows."""
    device = h.device.type
    matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    loss_dtype = torch.promote_types(matmul_dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    # The softmax is written in the GEMM operands' dtype, except fp16: its entries, the largest too (as small as 1/V),
    # may lie in fp16's subnormal range, where their logarithms would lose their precision.
    probs_dtype = loss_dtype if matmul_dtype == torch.float16 else matmul_dtype
    valid = targets >= 0
    inverse_count = 1 / valid.sum().clamp(min=1).to(loss_dtype)  # 1/N', on the device (no host sync)
    row_scale = valid.to(loss_dtype) * inverse_count  # 1/N' where a target is, else 0
    # fp16: 1/N' (as small as ~6e-5) on the (n, C) side would leave the weight gradient's sums for vocabulary rows
    # that are rarely a target (probabilities ~1/V) in fp16's subnormal range at the GEMM's output; there the GEMM
    # takes the mask times FP16_PRESCALE, and 1/N' / FP16_PRESCALE multiplies its result in fp32
    scale_after = matmul_dtype == torch.float16
    vocab = weight.shape[0]
    w = padded_head(weight, matmul_dtype, vocab_align)
    total = torch.zeros((), dtype=loss_dtype, device=h.device)
    grad_h = torch.empty_like(h) if with_grads else None
    grad_w = None
    with torch.autocast(device, enabled=False):  # the dtypes are set explicitly below
        for start in range(0, h.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h_chunk, t_chunk, scale = h[rows], targets[rows].clamp(min=0), row_scale[rows]
            logits = h_chunk.to(matmul_dtype) @ w.T  # (n, V + padding)
            logits[:, vocab:] = float("-inf")  # the padding's probabilities are exactly 0
            probs = torch.softmax(logits, dim=-1, dtype=probs_dtype)
            at_target = (torch.arange(len(t_chunk), device=h.device), t_chunk)
            p_t = probs[at_target]
            probs[at_target] = 0.0  # no row maximum moves where p_t underflowed: the rows whose maxima are used
            others = probs.sum(dim=-1)  # accumulated in fp32 (or wider), rounded once to the softmax's dtype
            total -= (target_log_probs(logits, probs, p_t, others, t_chunk, loss_dtype) * scale).sum()
            if not with_grads:
                continue
            # p_t - 1 as minus the sum of the others: p_t's own rounding would swamp 1 - p_t near 1
            probs[at_target] = -others
            probs = probs.to(matmul_dtype)  # (n, V): softmax - one-hot, the operand of the two matmuls
            grad_h[rows] = (probs @ w).to(h.dtype) * scale[:, None].to(h.dtype)
            h_side = h_chunk * (valid[rows, None] * FP16_PRESCALE if scale_after else scale[:, None])
            part = (probs.T @ h_side.to(matmul_dtype))[:vocab]  # (V, C)
            if scale_after:
                part = part.to(loss_dtype) * (inverse_count / FP16_PRESCALE)
            grad_w = part.to(loss_dtype) if grad_w is None else grad_w.add_(part)
    if with_grads and grad_w is None:  # no rows
        grad_w = torch.zeros_like(weight, dtype=loss_dtype)
    return total, grad_h, grad_w


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk_size: int, vocab_align: int):
        loss, grad_h, grad_w = _loss_and_grads(h, weight, targets, chunk_size, True, vocab_align)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None


def chunked_linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int, vocab_align: int = VOCAB_ALIGN
) -> torch.Tensor:
    """The chunked form: `chunk_size` rows of logits at a time, gradients formed during the forward pass; the GEMMs
    see the head padded to a multiple of `vocab_align` rows (1: unpadded)."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedLinearCrossEntropy.apply(h, weight, targets, chunk_size, vocab_align)
    return _loss_and_grads(h, weight, targets, chunk_size, False, vocab_align)[0]


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits h @ weightᵀ against the targets >= 0, in the form `LOSS_FORMS` picks for the
    device and autocast dtype. h: (N, C), weight: (V, C), targets: (N,) int64."""
    device = h.device.type
    rows = chunk_rows(device, torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
    if rows is None:
        return linear_cross_entropy_reference(h, weight, targets)
    return chunked_linear_cross_entropy(h, weight, targets, rows)
