"""The decode state of linear attention: the running sums of the keys' features against [v | 1], in one buffer.

With the features φ(k_j) of the keys seen so far, `S = sum_j φ(k_j) v_jᵀ` and `z = sum_j φ(k_j)`; a GEMM of the
queries' features against `[S | z]` gives each query's weighted values and its normaliser at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinearAttentionState:
    """`[S | z]` of every head in one buffer."""

    kv: torch.Tensor  # (B, H, D, d_v + 1), accumulation dtype

    @property
    def S(self) -> torch.Tensor:
        return self.kv[..., :-1]  # (B, H, D, d_v)

    @property
    def z(self) -> torch.Tensor:
        return self.kv[..., -1]  # (B, H, D)
