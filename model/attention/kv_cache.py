"""A preallocated key/value cache: the decode state of the backends whose memory grows with the context."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.attention.base import check_state


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, in buffers of `capacity` positions (first `length` filled)."""

    k: torch.Tensor  # (B, H, capacity, d)
    v: torch.Tensor  # (B, H, capacity, d_v)
    length: int = 0
    valid: torch.Tensor | None = None  # (B, capacity) bool, False for padding; None while none was appended

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def keys(self) -> torch.Tensor:
        return self.k[:, :, : self.length]  # (B, H, length, d)

    def values(self) -> torch.Tensor:
        return self.v[:, :, : self.length]  # (B, H, length, d_v)

    def valid_keys(self) -> torch.Tensor | None:
        return None if self.valid is None else self.valid[:, : self.length]  # (B, length)


def empty_kv_cache(
    batch: int, heads: int, d: int, d_v: int, *, dtype: torch.dtype, device: torch.device | str, capacity: int | None
) -> KVCache:
    """A cache with room for `capacity` tokens (default 256; it doubles when full, so appends are amortised O(1))."""
    capacity = 256 if capacity is None else capacity
    if capacity < 1:
        raise ValueError(f"KV cache capacity must be >= 1, got {capacity}")
    return KVCache(
        k=torch.empty(batch, heads, capacity, d, dtype=dtype, device=device),
        v=torch.empty(batch, heads, capacity, d_v, dtype=dtype, device=device),
    )


def check_kv_cache(name: str, cache: KVCache, k: torch.Tensor, v: torch.Tensor) -> None:
    """Refuse a cache made for other rows, heads or head sizes than the new keys `k` and values `v`."""
    b, h, _, d = k.shape
    check_state(name, "keys", cache.k.shape, (b, h, None, d))
    check_state(name, "values", cache.v.shape, (b, h, None, v.shape[-1]))


def append_kv(cache: KVCache, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> KVCache:
    """Write t new keys/values (`mask` (B, t): False for padding) after the cached ones, in place; grows the
    buffers only when they are full. The validity of every cached key is kept from the first mask on."""
    t = k.shape[2]
    needed = cache.length + t
    if mask is not None and cache.valid is None:
        cache.valid = torch.ones(k.shape[0], cache.capacity, dtype=torch.bool, device=k.device)
    if needed > cache.capacity:
        new_capacity = max(needed, 2 * cache.capacity)
        grown_k = cache.k.new_empty(*cache.k.shape[:2], new_capacity, cache.k.shape[3])
        grown_v = cache.v.new_empty(*cache.v.shape[:2], new_capacity, cache.v.shape[3])
        grown_k[:, :, : cache.length] = cache.keys()
        grown_v[:, :, : cache.length] = cache.values()
        grown_valid = None
        if cache.valid is not None:
            grown_valid = cache.valid.new_ones(cache.valid.shape[0], new_capacity)
            grown_valid[:, : cache.length] = cache.valid_keys()
        cache = KVCache(grown_k, grown_v, cache.length, grown_valid)
    cache.k[:, :, cache.length : needed] = k
    cache.v[:, :, cache.length : needed] = v
    if cache.valid is not None:
        cache.valid[:, cache.length : needed] = True if mask is None else mask
    cache.length = needed
    return cache


def kv_cache_bytes(cache: KVCache) -> int:
    """Bytes allocated by the cache (its capacity, not only the filled part)."""
    buffers = (cache.k, cache.v) if cache.valid is None else (cache.k, cache.v, cache.valid)
    return sum(x.numel() * x.element_size() for x in buffers)


def causal_mask(t: int, past: int, device: torch.device | str) -> torch.Tensor:
    """Boolean (t, past + t) mask: query i (absolute position past + i) may see keys 0 .. past + i."""
    rows = torch.arange(t, device=device)[:, None] + past
    cols = torch.arange(past + t, device=device)[None, :]
    return cols <= rows


def padded_causal_mask(
    t: int, past: int, keys_valid: torch.Tensor, queries_valid: torch.Tensor | None
) -> torch.Tensor:
    """causal_mask without the padding keys: (B, 1, t, past + t) for keys_valid (B, past + t), queries_valid (B, t).

    A padding query keeps every causal key, so that no row is empty (its softmax finite); its output is discarded.
    """
    visible = keys_valid[:, None, None, :]
    if queries_valid is not None:
        visible = visible | ~queries_valid[:, None, :, None]
    return causal_mask(t, past, keys_valid.device) & visible
