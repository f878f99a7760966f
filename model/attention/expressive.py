"""Expressive attention (Gros, arXiv 2407.18601): weights from the squared score, so parallel and antiparallel
query/key pairs attend and orthogonal ones do not.

- `expressive`: `w = s² / (1 + s²)`, `s = τ q·k` (τ = 1/sqrt(d) by default), `y_i = sum_j w_ij v_j / (sum_j w_ij + ε)`.
  The weight is bounded in [0, 1), so the exact O(n·block)-memory tiled kernel needs no running max; decode keeps a
  KV cache.
- `expressive_sq`: the pure square `w = s²`, a degree-2 polynomial kernel, so it also has an exact linear-time
  chunked form and a constant-size decode state (S: D × d_v, z: D, D = d(d+1)/2). This goes beyond the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model.attention.base import AttentionBackend, check_inputs, zero_masked_queries
from model.attention.direct import naive_causal_average, safe_denominator, tiled_numerator_and_denominator
from model.attention.flex import WEIGHT_FLOOR, direct_form
from model.attention.kv_cache import KVCache, append_kv, check_kv_cache, empty_kv_cache, kv_cache_bytes
from model.attention.linear import QuadraticKernel, QuadraticKernelAttention
from model.attention.numerics import accumulation_dtype, autocast_off, fold_heads, fold_mask, unfold_heads
from model.attention.options import check_count, check_option, check_positive_real, is_real


@dataclass(frozen=True)
class SaturatingSquare:
    """w(s) = u² / (1 + u²) of u = scale · s, evaluated as 1 / (1 + c/s²) with c = 1/scale²: exact at s = 0 (w = 0)
    and at |s| = inf (w = 1). The scale rides on an add's alpha, at no pass of its own, and applies to the scores in
    their own dtype (fp32 for bf16 inputs), where scaling bf16 q would round q a second time.

    Both methods overwrite their argument (a fresh score tile).
    """

    scale: float = 1.0

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        inverse = s.square_().reciprocal_()
        if inverse.requires_grad:  # decoding with autograd on: out= would raise there; this runs (not differentiable)
            return inverse.mul_(self.scale**-2).add_(1.0).reciprocal_()
        return _one_plus(inverse, self.scale**-2, out=inverse).reciprocal_()

    def with_derivative(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w(s), w'(s)), for the tiled form's backward pass (autograd off)."""
        a = self.scale**2
        s2 = s.square()
        t = _one_plus(s2, a).reciprocal_()  # 1 / (1 + u²)
        w = _one_plus(s2.reciprocal_(), 1 / a, out=s2).reciprocal_()
        return w, s.mul_(t).mul_(t).mul_(2.0 * a)  # w' = 2 scale² s / (1 + u²)²

    def log(self, s: torch.Tensor) -> torch.Tensor:
        """log w = log u² - log(1 + u²), u² floored at WEIGHT_FLOOR: its derivative stays finite (the form
        -log(1 + 1/u²) would square 1/u² on the way back, past fp32's range)."""
        u2 = (s * s * self.scale**2).clamp(min=WEIGHT_FLOOR)
        return u2.log() - u2.log1p()


def _one_plus(x: torch.Tensor, c: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """1 + c·x in one pass over x (mul_ then add_ would take two); the 1 a Python number, not a tensor made on x's
    device per tile."""
    return torch.add(1.0, x, alpha=c, out=out)


# τ's range: τ² and 1/τ² are fp32 constants of the weights (SaturatingSquare's alpha, expressive_sq's kernel), which
# fp32 holds only well inside 1e±38
TEMPERATURE_RANGE = (1e-15, 1e15)


def _check_temperature(backend: str, temperature: float | None) -> None:
    low, high = TEMPERATURE_RANGE
    check_option(
        backend, "temperature", temperature,
        temperature is None or (is_real(temperature) and low <= temperature <= high),
        f"None (1/sqrt(d)) or a number in [{low:g}, {high:g}]",
    )


def _temperature(temperature: float | None, d: int) -> float:
    return 1.0 / math.sqrt(d) if temperature is None else temperature


@dataclass(frozen=True)
class ExpressiveAttention(AttentionBackend):
    """Saturating expressive attention, w = s²/(1+s²): tiled exact training form, KV-cache decoding."""

    name = "expressive"

    temperature: float | None = None  # τ in s = τ q·k; None means 1/sqrt(head_dim)
    eps: float = 1e-6  # added to every row's weight sum (> 0), so a row whose weights all vanish gives y = 0
    block_size: int = 128  # query/key tile of the training form (extra memory O(n · block_size) per head)

    def __post_init__(self):
        _check_temperature(self.name, self.temperature)
        check_positive_real(self.name, "eps", self.eps)
        check_count(self.name, "block_size", self.block_size)

    def weight(self, d: int) -> SaturatingSquare:
        """w of the unscaled score q·k at head size d: its temperature (or 1/sqrt(d)) rides in the weight."""
        return SaturatingSquare(_temperature(self.temperature, d))

    def reference(self, q, k, v, mask=None):
        check_inputs(self.name, q, k, v, mask)
        s = _temperature(self.temperature, q.shape[-1]) * (q @ k.transpose(-2, -1))  # (B, H, T, T)
        return naive_causal_average(s**2 / (1 + s**2), v, self.eps, mask)

    def forward(self, q, k, v, mask=None):
        check_inputs(self.name, q, k, v, mask)
        y = direct_form(q, k, v, self.weight(q.shape[-1]), eps=self.eps, block=self.block_size, mask=mask)
        return zero_masked_queries(y, mask)

    def init_state(self, batch, heads, d, d_v, *, dtype, device, capacity=None) -> KVCache:
        # Cached in the accumulation dtype, so a step never re-converts the whole cache.
        return empty_kv_cache(
            batch, heads, d, d_v, dtype=accumulation_dtype(dtype), device=device, capacity=capacity
        )

    def step(self, q, k, v, state: KVCache, mask=None):
        check_inputs(self.name, q, k, v, mask)
        check_kv_cache(self.name, state, k, v)
        past = state.length
        state = append_kv(state, k, v, mask)
        b, h, t, d = q.shape
        keys = state.keys().reshape(b * h, past + t, d)
        values = state.values().reshape(b * h, past + t, v.shape[-1])
        keys_valid = state.valid_keys()
        with autocast_off(q.device):  # the cache is in the accumulation dtype; autocast would round its GEMMs
            num, den = tiled_numerator_and_denominator(
                fold_heads(q), keys, values, self.weight(d), past, self.block_size,
                None if keys_valid is None else fold_mask(keys_valid, h),
            )
        den = safe_denominator(den, self.eps, None if mask is None else fold_mask(mask, h))
        return zero_masked_queries(unfold_heads(num / den[..., None], q), mask), state

    def state_nbytes(self, state: KVCache) -> int:
        return kv_cache_bytes(state)


@dataclass(frozen=True)
class ExpressiveSquaredAttention(QuadraticKernelAttention):
    """Pure squared expressive attention, w = s² = τ² (q·k)²: linear-time chunked form, constant-size state."""

    name = "expressive_sq"

    temperature: float | None = None  # τ in s = τ q·k; None means 1/sqrt(head_dim)
    eps: float = 1e-6  # added to every row's weight sum (> 0: s² vanishes for keys orthogonal to the query)

    def __post_init__(self):
        super().__post_init__()
        _check_temperature(self.name, self.temperature)
        check_positive_real(self.name, "eps", self.eps)

    def kernel(self, d: int) -> QuadraticKernel:
        return QuadraticKernel(a=_temperature(self.temperature, d) ** 2)
