"""TaylorShift (Nauen et al., arXiv 2403.02920): the 2nd-order Taylor expansion of exp as attention weight,

    w = a s² + b s + c   (a = 1/2, b = c = 1 by default),   s = q·k = τ_h cos(q, k),

with c > b²/(4a) so that w > 0 for every s (there is no eps: no row may sum to zero). As in the official code, q
and k are L2-normalised per token and q is scaled by a learnable per-head temperature τ_h (`TaylorQKTransform`,
applied by the model before the kernel), so the kernel itself sees plain dot products. The official repository only
has a bidirectional form; this one is causal: the direct tiled O(n² d) form below `crossover` tokens, above it the
chunked linear form with the features
φ_q = [c | b q | a·pairs(q)], φ_k = [1 | k | pairs(k)], D = 1 + d + d(d+1)/2 (model/attention/linear.py), whose
decode state is S: D × d_v, z: D per head, constant in the context length. The paper puts the crossover of the two
forms at N0 = d² + d + 1 tokens by FLOPs; where it lies on our CPU is measured in results/bench_attention.md.

With `output_normalized`, the output of a query that attends N tokens is multiplied by sqrt(N / d), as the
official training code does in both forms (`output_normalized=True` in its ViT and Transformer models); causal,
N is the query's own count of visible tokens:

    y_i = sqrt(N_i / d) · sum_{j <= i} w_ij v_j / sum_{j <= i} w_ij,   N_i = i + 1 (positions from 0),

and under padding N_i counts only the real tokens up to i (the padding ones are not attended).

An average of N independent values has about 1/sqrt(N) of their norm, so without the factor the output's scale
falls with the context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.attention.linear import QuadraticKernel, QuadraticKernelAttention, QuadraticKernelState
from model.attention.options import check_option, check_positive_real, is_real
from model.position import token_positions


class TaylorQKTransform(nn.Module):
    """q, k -> (τ_h q / |q|, k / |k|): per-token L2 normalisation and a learnable temperature per head."""

    def __init__(self, n_head: int, temperature_init: float):
        super().__init__()
        self.temperature = nn.Parameter(torch.full((n_head,), float(temperature_init)))  # τ_h, shape (n_head,)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(q, dim=-1) * self.temperature[:, None, None].to(q.dtype)  # (B, H, T, d)
        return q, F.normalize(k, dim=-1)


def output_scale(attended: torch.Tensor, d: int, *, dtype: torch.dtype) -> torch.Tensor:
    """sqrt(N_i / d) for queries that attend N_i tokens, to multiply y (B, H, t, d_v): (t,) -> (t, 1), or per row
    (B, t) -> (B, 1, t, 1)."""
    scale = (attended.to(torch.float64) / d).sqrt_().to(dtype)[..., None]
    return scale if attended.ndim == 1 else scale[:, None]


@dataclass(frozen=True)
class TaylorAttention(QuadraticKernelAttention):
    """TaylorShift attention, causal: direct below `crossover` tokens, chunked linear form with a constant state above."""

    name = "taylor"

    a: float = 0.5  # w = a s² + b s + c; a > 0
    b: float = 1.0  # the linear coefficient (a, b, c = 1/2, 1, 1: exp's second-order Taylor polynomial)
    c: float = 1.0  # c > b² / (4a), so that w > 0 and no row's weights sum to zero (taylor adds no eps)
    temperature_init: float = 1.0  # initial τ_h (the official code starts at 1: s = cos(q, k) in [-1, 1])
    # Multiply the output of a query that attends N tokens by sqrt(N / d) (d = head size), as the official training
    # code does; off, the output is the plain weighted average of the values.
    output_normalized: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_positive_real(self.name, "a", self.a)
        # b * b, not b**2, which raises OverflowError for a huge b
        floor = self.b * self.b / (4 * self.a) if is_real(self.b) else math.nan
        check_option(self.name, "b", self.b, math.isfinite(floor), "a finite number whose b²/(4a) is finite")
        check_option(self.name, "c", self.c, is_real(self.c) and self.c > floor,
                     f"a finite number > b²/(4a) = {floor:g}, so that every weight is positive")
        check_positive_real(self.name, "temperature_init", self.temperature_init)
        check_option(self.name, "output_normalized", self.output_normalized,
                     isinstance(self.output_normalized, bool), "True or False")

    def kernel(self, d: int) -> QuadraticKernel:
        return QuadraticKernel(self.a, self.b, self.c)

    def make_qk_transform(self, n_head: int, head_dim: int) -> nn.Module:
        return TaylorQKTransform(n_head, self.temperature_init)

    def reference(self, q, k, v, mask=None):
        return self._normalize_output(super().reference(q, k, v, mask), q.shape[-1], mask)

    def forward(self, q, k, v, mask=None):
        return self._normalize_output(super().forward(q, k, v, mask), q.shape[-1], mask)

    def step(self, q, k, v, state: QuadraticKernelState, mask=None):
        start, pads = state.length, state.pads  # the tokens before the new ones
        y, state = super().step(q, k, v, state, mask)
        return self._normalize_output(y, q.shape[-1], mask, start, pads), state

    def _normalize_output(
        self, y: torch.Tensor, d: int, mask: torch.Tensor | None, start: int = 0, pads: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y times sqrt(N_i / d), N_i the real tokens up to query i after `start` tokens (`pads` of them padding)."""
        if not self.output_normalized:
            return y
        attended = token_positions(start, pads, mask, y.shape[-2], y.device) + 1
        return y * output_scale(attended, d, dtype=y.dtype)
