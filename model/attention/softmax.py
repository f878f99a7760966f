"""Standard scaled dot-product attention (Vaswani et al. 2017, arXiv 1706.03762): w = exp(q·k / sqrt(d))."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F

from model.attention.base import AttentionBackend, check_inputs, zero_masked_queries
from model.attention.blocked_softmax import blocked_causal_softmax, runs_blocked
from model.attention.direct import naive_causal_softmax
from model.attention.kv_cache import (
    KVCache,
    append_kv,
    causal_mask,
    check_kv_cache,
    empty_kv_cache,
    kv_cache_bytes,
    padded_causal_mask,
)
from model.attention.options import check_option


@dataclass(frozen=True)
class SoftmaxAttention(AttentionBackend):
    """softmax(q kᵀ / sqrt(d) + causal mask) v. On the CPU the blocked form of model/attention/blocked_softmax.py
    where `runs_blocked` allows it (training, and evaluation of short sequences); elsewhere, and with padding (an
    explicit boolean mask), torch SDPA (flash / memory-efficient kernels)."""

    name = "softmax"

    # False: torch SDPA on the CPU too, whose memory is O(T) where the blocked form keeps O(T²) weights per layer
    blocked: bool = True

    def __post_init__(self):
        check_option(self.name, "blocked", self.blocked, isinstance(self.blocked, bool), "True or False")

    def reference(self, q, k, v, mask=None):
        check_inputs(self.name, q, k, v, mask)
        return naive_causal_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), v, mask)  # logits (B, H, T, T)

    def forward(self, q, k, v, mask=None):
        check_inputs(self.name, q, k, v, mask)
        if mask is None:
            if self.blocked and runs_blocked(q):
                return blocked_causal_softmax(q, k, v)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        visible = padded_causal_mask(q.shape[-2], 0, mask, mask)
        return zero_masked_queries(F.scaled_dot_product_attention(q, k, v, attn_mask=visible), mask)

    def init_state(self, batch, heads, d, d_v, *, dtype, device, capacity=None) -> KVCache:
        return empty_kv_cache(batch, heads, d, d_v, dtype=dtype, device=device, capacity=capacity)

    def step(self, q, k, v, state: KVCache, mask=None):
        check_inputs(self.name, q, k, v, mask)
        check_kv_cache(self.name, state, k, v)
        past = state.length
        state = append_kv(state, k, v, mask)
        t = q.shape[-2]
        keys_valid = state.valid_keys()
        if keys_valid is None:
            # is_causal=True would align the mask top-left, wrong when the queries come after cached keys.
            visible = None if t == 1 else causal_mask(t, past, q.device)
        else:
            visible = padded_causal_mask(t, past, keys_valid, mask)
        y = F.scaled_dot_product_attention(q, state.keys(), state.values(), attn_mask=visible)
        return zero_masked_queries(y, mask), state

    def state_nbytes(self, state: KVCache) -> int:
        return kv_cache_bytes(state)
