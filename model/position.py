"""Rotary position embedding (RoPE; Su et al. 2021, arXiv 2104.09864) as pure functions.

Pairs of channels (x_{2i}, x_{2i+1}) of every query and key are rotated by the angle p * theta_i with
theta_i = base^(-2i/d) (eq. 34), so q_m · k_n depends only on m - n. Nothing is tabulated, so decoding can run
past the trained context.
"""

from __future__ import annotations

import torch


def rotary_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of p * theta_i for each position p: two (T, head_dim / 2) float32 tensors."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (B, H, T, d) by the angles whose cos/sin are (T, d / 2)."""
    x_even, x_odd = x.float()[..., 0::2], x.float()[..., 1::2]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)
