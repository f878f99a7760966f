"""Token positions (under padding too) and the rotary position embedding (RoPE; Su et al. 2021, arXiv 2104.09864),
as pure functions.

Pairs of channels (x_{2i}, x_{2i+1}) of every query and key are rotated by the angle p * theta_i with
theta_i = base^(-2i/d) (eq. 34), so q_m · k_n depends only on m - n. Nothing is tabulated, so decoding can run
past the trained context.
"""

from __future__ import annotations

import torch


def rotary_angles(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of p * theta_i for each position p, in `dtype` (float32, or float64 for float64 activations: an
    fp32 angle p * theta is off by up to p * 6e-8 rad): (T, head_dim / 2) for positions (T,) or (B, T, head_dim / 2)
    for positions (B, T)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=dtype) / head_dim)
    angles = positions.to(dtype)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def rotary_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the rotation for activations of `dtype`: at least float32 (bf16 angles would be off by whole
    radians past position 256), float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (B, H, T, d) by the angles whose cos/sin are (T, d / 2), or (B, T, d / 2) when
    each row has its own positions; computed in `rotary_dtype(x.dtype)`, returned in x's dtype."""
    if cos.ndim == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d / 2): the same angles for every head
    xr = x.to(rotary_dtype(x.dtype))
    x_even, x_odd = xr[..., 0::2], xr[..., 1::2]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def token_positions(
    start: int, pads: torch.Tensor | None, mask: torch.Tensor | None, t: int, device: torch.device | str
) -> torch.Tensor:
    """Positions of t new tokens after `start` tokens, `pads` (B,) of which were padding in each row.

    Without padding (mask and pads None): start .. start + t - 1, shape (t,). With padding, each row counts only
    its real tokens, so a left-padded prompt starts at 0 as it would alone (what transformers' GPT-2 derives from
    the attention mask): shape (B, t), `mask` (B, t) True for real tokens. A padding token gets the position of
    the real token before it, or 0; its position is never used.
    """
    if mask is None and pads is None:
        return torch.arange(start, start + t, device=device)
    seen = start if pads is None else (start - pads)[:, None]  # real tokens before the new ones
    steps = torch.arange(1, t + 1, device=device) if mask is None else mask.cumsum(1)
    return (seen + steps - 1).clamp_min_(0)


def padding_count(pads: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """`pads` (B,) plus the padding tokens of `mask` (B, t); None while no padding was ever given."""
    if mask is None:
        return pads
    new = (~mask).sum(1)
    return new if pads is None else pads + new
