"""Precision and layout helpers shared by the kernels.

Kernels fold the batch and head dimensions into one (`(B, H, T, d) -> (B*H, T, d)`, so every product is one batched
GEMM over all heads) and compute in the accumulation dtype: float32 for float32/bfloat16/float16 inputs (sums of
squared scores overflow half precision, and states summed over thousands of tokens need fp32), float64 for float64
(the tests' exact mode). The direct forms' tiles are the exception: their GEMMs take bf16 operands where the device
multiplies bf16 natively, summed in fp32 (model/attention/direct.py). The kernels run with autocast off
(`autocast_off`): under autocast they compute what they compute without it, in the dtypes chosen here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_off(device: torch.device) -> torch.autocast:
    """A context in which the kernels keep the dtypes they chose: under autocast their GEMMs would round fp32 states
    and sums to half precision (fp16 overflows past 65504, bf16 keeps 3 digits) and mix dtypes in in-place ops."""
    return torch.autocast(device.type, enabled=False)


def without_autocast(method: Callable) -> Callable:
    """An autograd Function's forward(ctx, x, ...) or backward(ctx, x, ...) run under `autocast_off` on x's device."""
    @functools.wraps(method)
    def run(ctx, x: torch.Tensor, *args):
        with autocast_off(x.device):
            return method(ctx, x, *args)

    return run


def fold_heads(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, H, T, d) in any float dtype -> (B*H, T, d) in `dtype`, by default the accumulation dtype."""
    b, h, t, d = x.shape
    return x.reshape(b * h, t, d).to(dtype or accumulation_dtype(x.dtype))


def fold_mask(mask: torch.Tensor, heads: int) -> torch.Tensor:
    """A (B, T) token mask for the folded layout: (B*H, T), each row repeated for its heads."""
    return mask[:, None].expand(mask.shape[0], heads, mask.shape[1]).reshape(-1, mask.shape[1])


def unfold_heads(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B*H, T, d_v) -> (B, H, T, d_v) in the dtype of `like` (the input queries)."""
    b, h = like.shape[:2]
    return y.reshape(b, h, *y.shape[1:]).to(like.dtype)


def with_ones_column(v: torch.Tensor) -> torch.Tensor:
    """(..., T, d_v) -> (..., T, d_v + 1): a GEMM against [v | 1] yields the weighted values and the row sum at once."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def split_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(BH, T, f) -> (BH, ceil(T / chunk), chunk, f), zero-padded at the end."""
    return F.pad(x, (0, 0, 0, -x.shape[1] % chunk)).unflatten(1, (-1, chunk))


def merge_chunks(x: torch.Tensor, t: int) -> torch.Tensor:
    """Inverse of split_chunks: (BH, n, chunk, f) -> (BH, t, f)."""
    return x.flatten(1, 2)[:, :t]


def chunk_bounds(t: int, chunk: int) -> list[tuple[int, int]]:
    """(start, end) of the consecutive chunks of t tokens."""
    return [(t0, min(t0 + chunk, t)) for t0 in range(0, t, chunk)]


# Numbers the intra-chunk pair tensors of one group of chunks may hold, by device type (others: GROUP_ELEMENTS_DEFAULT).
# On the CPU, bounding them keeps them in cache and below the allocator's mmap threshold (fresh page faults on every
# allocation above ~32 MB). A GPU's memory holds more, and every group costs a round of kernel launches (for logexp
# also a host synchronisation): there a group of 16M numbers (64 MB in fp32) takes GPT-2 small's 1,024 tokens at once.
GROUP_ELEMENTS = {"cpu": 1 << 21}
GROUP_ELEMENTS_DEFAULT = 1 << 24


def chunk_groups(t: int, chunk: int, batch: int, device: torch.device) -> list[tuple[int, int]]:
    """Token ranges of whole chunks whose (batch, tokens, chunk) pair tensors hold at most about the device's
    GROUP_ELEMENTS numbers: peak memory O(that) instead of O(n · chunk)."""
    elements = GROUP_ELEMENTS.get(device.type, GROUP_ELEMENTS_DEFAULT)
    return chunk_bounds(t, max(1, elements // (batch * chunk * chunk)) * chunk)


def head_groups(batch: int, chunk: int, features: int, elements: int = 1 << 18) -> list[tuple[int, int]]:
    """Ranges of the folded batch*heads dimension whose (heads, chunk, features) feature blocks hold at most
    ~`elements` numbers (at least one head per group).

    The state sweeps of the linear forms compute a chunk's features, multiply them with the state and take their
    vector-Jacobian product one chunk at a time; with all heads at once these (heads, chunk, D) temporaries outgrow
    the core's cache, and the memory-bound feature maps slow down (timings: results/bench_attention.md).
    """
    group = max(1, elements // (chunk * features))
    return [(h0, min(h0 + group, batch)) for h0 in range(0, batch, group)]
