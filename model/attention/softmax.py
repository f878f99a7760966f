"""Standard scaled dot-product attention (Vaswani et al. 2017, arXiv 1706.03762): w = exp(q·k / sqrt(d))."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.attention.base import AttentionBackend
from model.attention.kv_cache import KVCache, append_kv, causal_mask, empty_kv_cache, kv_cache_bytes


@dataclass(frozen=True)
class SoftmaxAttention(AttentionBackend):
    """softmax(q kᵀ / sqrt(d) + causal mask) v. Training uses torch SDPA (flash / memory-efficient kernels)."""

    name = "softmax"

    def reference(self, q, k, v):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T)
        t = q.shape[-2]
        scores = scores.masked_fill(~causal_mask(t, 0, q.device), float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def init_state(self, batch, heads, d, d_v, *, dtype, device, capacity=None) -> KVCache:
        return empty_kv_cache(batch, heads, d, d_v, dtype=dtype, device=device, capacity=capacity)

    def step(self, q, k, v, state: KVCache):
        past = state.length
        state = append_kv(state, k, v)
        t = q.shape[-2]
        # is_causal=True would align the mask top-left, wrong when the queries come after cached keys.
        mask = None if t == 1 else causal_mask(t, past, q.device)
        y = F.scaled_dot_product_attention(q, state.keys(), state.values(), attn_mask=mask)
        return y, state

    def state_nbytes(self, state: KVCache) -> int:
        return kv_cache_bytes(state)
