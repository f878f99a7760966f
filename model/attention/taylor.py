"""TaylorShift (Nauen et al., arXiv 2403.02920): the 2nd-order Taylor expansion of exp as attention weight,

    w = a s² + b s + c   (a = 1/2, b = c = 1 by default),   s = q·k = τ_h cos(q, k),

with c >= b²/(4a) so that w >= 0 for every s. As in the official code, q and k are L2-normalised per token and q is
scaled by a learnable per-head temperature τ_h (`TaylorQKTransform`, applied by the model before the kernel), so
the kernel itself sees plain dot products. The official repository only has a bidirectional form; this one is
causal: the direct tiled O(n² d) form below `crossover` tokens, above it the chunked linear form with the features
φ_q = [c | b q | a·pairs(q)], φ_k = [1 | k | pairs(k)], D = 1 + d + d(d+1)/2 (model/attention/linear.py), whose
decode state is S: D × d_v, z: D per head, constant in the context length.

Crossover: the paper's FLOP count puts it at N0 = d² + d + 1 (4161 for d = 64) and its memory analysis at N1 = 2174.
Measured here (scripts/bench_attention.py: one thread, B = 1, H = 12, d = 64, fp32, on the 2-vCPU EPYC Zen 4 of
docs/anchors.md), direct vs linear form, seconds:

    n       fwd+bwd direct / linear    fwd direct / linear
    4096         1.80 / 2.87             0.51 / 0.78
    5120         2.81 / 3.14             1.03 / 0.77
    5632         3.69 / 3.63             1.17 / 0.93
    6144         4.31 / 3.77             1.21 / 0.87
    8192         5.93 / 5.56             2.07 / 1.35
    16384       27.4  / 9.91             9.29 / 2.92

so the linear form wins forward from about 5k tokens and forward+backward from about 5.6k (1.2-1.35 × N0: its
GEMMs run near the 76 GFLOP/s peak, but the feature maps, their gradients and the per-chunk steps add ~40%).
`crossover` defaults to 6144, the first measured length where it wins both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.attention.linear import QuadraticKernel, QuadraticKernelAttention
from model.attention.options import check_count, check_option, check_positive_real, is_real


class TaylorQKTransform(nn.Module):
    """q, k -> (τ_h q / |q|, k / |k|): per-token L2 normalisation and a learnable temperature per head."""

    def __init__(self, n_head: int, temperature_init: float):
        super().__init__()
        self.temperature = nn.Parameter(torch.full((n_head,), float(temperature_init)))  # τ_h, shape (n_head,)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(q, dim=-1) * self.temperature[:, None, None].to(q.dtype)  # (B, H, T, d)
        return q, F.normalize(k, dim=-1)


@dataclass(frozen=True)
class TaylorAttention(QuadraticKernelAttention):
    """TaylorShift attention, causal: direct below `crossover` tokens, chunked linear form with a constant state above."""

    name = "taylor"

    a: float = 0.5  # w = a s² + b s + c; a > 0
    b: float = 1.0
    c: float = 1.0  # c >= b² / (4a), so that w >= 0
    temperature_init: float = 1.0  # initial τ_h (the official code starts at 1: s = cos(q, k) in [-1, 1])
    chunk_size: int = 64  # tokens per chunk of the linear form
    crossover: int = 6144  # linear form from this length on (measured 5k-6.5k over two runs; paper's N0 = 4161)
    block_size: int = 128  # tile of the direct form

    def __post_init__(self):
        check_positive_real(self.name, "a", self.a)
        check_option(self.name, "b", self.b, is_real(self.b), "a finite number")
        check_option(
            self.name, "c", self.c, is_real(self.c) and is_real(self.b) and self.c >= self.b**2 / (4 * self.a),
            f"a finite number >= b²/(4a) = {self.b**2 / (4 * self.a) if is_real(self.b) else 'b²/(4a)'}",
        )
        check_positive_real(self.name, "temperature_init", self.temperature_init)
        check_count(self.name, "chunk_size", self.chunk_size)
        check_count(self.name, "crossover", self.crossover)
        check_count(self.name, "block_size", self.block_size)

    def kernel(self, d: int) -> QuadraticKernel:
        return QuadraticKernel(self.a, self.b, self.c)

    def make_qk_transform(self, n_head: int, head_dim: int) -> nn.Module:
        return TaylorQKTransform(n_head, self.temperature_init)
