"""A preallocated key/value cache: the decode state of the backends whose memory grows with the context."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, in buffers of `capacity` positions (first `length` valid)."""

    k: torch.Tensor  # (B, H, capacity, d)
    v: torch.Tensor  # (B, H, capacity, d_v)
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def keys(self) -> torch.Tensor:
        return self.k[:, :, : self.length]  # (B, H, length, d)

    def values(self) -> torch.Tensor:
        return self.v[:, :, : self.length]  # (B, H, length, d_v)


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


def append_kv(cache: KVCache, k: torch.Tensor, v: torch.Tensor) -> KVCache:
    """Write t new keys/values after the cached ones, in place; grows the buffers only when they are full."""
    t = k.shape[2]
    needed = cache.length + t
    if needed > cache.capacity:
        new_capacity = max(needed, 2 * cache.capacity)
        grown_k = cache.k.new_empty(*cache.k.shape[:2], new_capacity, cache.k.shape[3])
        grown_v = cache.v.new_empty(*cache.v.shape[:2], new_capacity, cache.v.shape[3])
        grown_k[:, :, : cache.length] = cache.keys()
        grown_v[:, :, : cache.length] = cache.values()
        cache = KVCache(grown_k, grown_v, cache.length)
    cache.k[:, :, cache.length : needed] = k
    cache.v[:, :, cache.length : needed] = v
    cache.length = needed
    return cache


def kv_cache_bytes(cache: KVCache) -> int:
    """Bytes allocated by the cache (its capacity, not only the filled part)."""
    return cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()


def causal_mask(t: int, past: int, device: torch.device | str) -> torch.Tensor:
    """Boolean (t, past + t) mask: query i (absolute position past + i) may see keys 0 .. past + i."""
    rows = torch.arange(t, device=device)[:, None] + past
    cols = torch.arange(past + t, device=device)[None, :]
    return cols <= rows
