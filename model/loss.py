"""Cross-entropy of the LM head without materialising the (tokens × vocab) logits.

For hidden states h (N, C), head W (V, C) and targets t, the loss is
    L = (1 / N') sum_{i: t_i >= 0} [ logsumexp_v (h_i · W_v) - h_i · W_{t_i} ]      (N' = number of targets >= 0)
with gradients dL/dh_i = (softmax(h_i Wᵀ) - e_{t_i}) W / N' and dL/dW = sum_i (softmax(h_i Wᵀ) - e_{t_i})ᵀ h_i / N'.
A negative target marks a position without one (torch and transformers write -100 there): it adds nothing, and a
batch without any target has loss 0. Rows are processed in chunks and the gradients are formed during the forward
pass, so peak memory holds one chunk of logits (in fp32) instead of all of them (GPT-2 small, 16 × 1024 tokens:
3.3 GB of fp32 logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (N, V) over the targets (N,) >= 0, in fp32 or wider; 0 when there are none."""
    scored = targets >= 0
    losses = F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.clamp(min=0), reduction="none"
    )
    return (losses * scored).sum() / scored.sum().clamp(min=1)


def linear_cross_entropy_reference(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The definition: full logits, then their cross-entropy."""
    return cross_entropy(h @ weight.T, targets)


def _loss_and_grads(h, weight, targets, chunk_size: int, with_grads: bool):
    """Mean loss and, if asked, its gradients with respect to h and weight, one chunk of rows at a time."""
    valid = targets >= 0
    count = valid.sum().clamp(min=1)
    grad_h = torch.zeros_like(h) if with_grads else None
    grad_w = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) if with_grads else None
    total = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
    autocast = torch.is_autocast_enabled(h.device.type)
    for start in range(0, h.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        h_chunk, t_chunk, v_chunk = h[rows], targets[rows].clamp(min=0), valid[rows]
        logits = h_chunk @ weight.T  # (n, V) in the autocast dtype; softmax in fp32 (or fp64 for fp64 inputs)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        lse = torch.logsumexp(logits, dim=-1)
        target_logit = logits.gather(1, t_chunk[:, None]).squeeze(1)
        total += ((lse - target_logit) * v_chunk).sum()
        if with_grads:
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place over the logits buffer
            probs[torch.arange(len(t_chunk), device=h.device), t_chunk] -= 1.0
            probs.mul_((v_chunk / count)[:, None])
            # cast once for the two matmuls below
            probs = probs.to(torch.get_autocast_dtype(h.device.type) if autocast else weight.dtype)
            grad_h[rows] = probs @ weight
            grad_w += probs.T @ h_chunk
    return total / count, grad_h, grad_w


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk_size: int):
        loss, grad_h, grad_w = _loss_and_grads(h, weight, targets, chunk_size, with_grads=True)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Mean cross-entropy of logits h @ weightᵀ against the targets >= 0, computed chunk by chunk.

    h: (N, C), weight: (V, C), targets: (N,) int64. Equal to `linear_cross_entropy_reference` up to rounding.
    """
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedLinearCrossEntropy.apply(h, weight, targets, chunk_size)
    return _loss_and_grads(h, weight, targets, chunk_size, with_grads=False)[0]
