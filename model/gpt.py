"""A GPT-2-shaped decoder whose attention mechanism comes from the backend registry.

Module names follow the GPT-2 checkpoint layout (transformer.wte, transformer.h.N.attn.c_attn, ...), so GPT-2
weights load by a state-dict copy (with Conv1D weights transposed).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import get_backend
from model.attention.crossover import leaves_to_measure
from model.config import ModelConfig
from model.loss import linear_cross_entropy
from model.position import apply_rotary, padding_count, rotary_angles, rotary_dtype, token_positions


@dataclass
class DecodeState:
    """Per-layer attention states plus the number of tokens already consumed.

    decode() updates the layer states in place (a KV cache is written into, a recurrent state accumulated) and
    returns the state that follows; the one passed in is then spent, and decoding from it again is refused, since
    its tensors no longer hold what its position says. To branch, copy.deepcopy the state before decoding from it."""

    layers: list[Any]
    position: int = 0  # tokens consumed by every row, padding included
    pads: torch.Tensor | None = None  # (B,) padding tokens among them, per row; None while there was none
    spent: bool = False  # decode() has moved on from this state

    @property
    def rows(self) -> int:
        """The batch rows the state holds (every layer's state is a dataclass of batch-first tensors)."""
        layer = self.layers[0]
        return next(value.shape[0] for f in fields(layer)
                    if isinstance(value := getattr(layer, f.name), torch.Tensor))


def _checked_mask(idx: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The padding mask as bool, refused where it is not one flag per token id (a mask of another shape would be
    broadcast by some backends and fail deep in others)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.shape != idx.shape or mask.is_floating_point() or mask.is_complex():
        shown = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool or 0/1 integer tensor of the token ids' shape {tuple(idx.shape)} (False "
                         f"for padding), got {shown}")
    return mask.bool()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.backend = get_backend(cfg.attention, **cfg.attention_options)
        self.qk_transform = self.backend.make_qk_transform(cfg.n_head, cfg.head_dim)
        self.rope_base = cfg.rope_base if cfg.position == "rope" else None
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, state: Any = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Any]:
        """positions: (T,) or, per row, (B, T); mask: (B, T), False for padding, or None."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.rope_base is not None:
            cos, sin = rotary_angles(positions, self.head_dim, self.rope_base, rotary_dtype(q.dtype))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = self.qk_transform(q, k)
        if state is None:
            y = self.backend.forward(q, k, v, mask)
        else:
            y, state = self.backend.step(q, k, v, state, mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), state


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, state: Any = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Any]:
        attn_out, state = self.attn(self.ln_1(x), positions, state, mask)
        x = x + attn_out
        return x + self.mlp(self.ln_2(x)), state


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.n_positions, cfg.n_embd) if cfg.position == "learned" else None,
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied input and output embeddings
        self.apply(self._init_weights)
        # GPT-2: scale the init of projections into the residual stream by 1/sqrt(2 * n_layer).
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """All parameters, counting a tied embedding once (GPT-2 small: 124,439,808)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 N for the matmuls + 12 L C T for attention scores.

        N counts the parameters that multiply: not the position table, nor an untied token embedding (a lookup;
        tied, it is the LM head's matmul). The attention term is the softmax count (PaLM appendix B); the linear
        backends differ, so MFU for them is an approximation.
        """
        cfg = self.config
        lookups = cfg.n_positions * cfg.n_embd if cfg.position == "learned" else 0
        if not cfg.tie_word_embeddings:
            lookups += cfg.vocab_size * cfg.n_embd
        return 6 * (self.num_params() - lookups) + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        hidden_states: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full-sequence forward: idx (B, T) -> (logits (B, T, vocab), None) without targets; with targets
        (B, T) (-100 = ignore) -> (None, mean cross-entropy), computed chunk by chunk without the logits.

        `mask` (B, T), False (0) for padding, anywhere in a row: the padding tokens take no part in attention, and
        each row's positions count its real tokens only, so its logits are those of the row without the padding
        (a padding position's logits mean nothing; give its target -100).

        `hidden_states`, a list, receives n_layer + 1 tensors (B, T, C) in transformers' GPT-2 order: the embedding
        output, each block's output, and in the last place the last block's output after ln_f (what the LM head
        reads), so probing code sees the residual stream without hooks; None records nothing."""
        self._check_tokens(idx, 0)
        mask = _checked_mask(idx, mask)
        positions = token_positions(0, None, mask, idx.shape[1], idx.device)
        x = self._embed(idx, positions)
        for block in self.transformer.h:
            if hidden_states is not None:
                hidden_states.append(x)
            x, _ = block(x, positions, mask=mask)
        x = self.transformer.ln_f(x)  # (B, T, C)
        if hidden_states is not None:
            hidden_states.append(x)
        if targets is None:
            return self.lm_head(x), None
        return None, linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten())

    def init_decode_state(
        self, batch: int, *, dtype: torch.dtype, device: torch.device | str, capacity: int | None = None
    ) -> DecodeState:
        """Empty per-layer decode states (KV caches with room for `capacity` tokens, or recurrent states)."""
        cfg = self.config
        layers = [
            block.attn.backend.init_state(
                batch, cfg.n_head, cfg.head_dim, cfg.head_dim, dtype=dtype, device=device, capacity=capacity
            )
            for block in self.transformer.h
        ]
        return DecodeState(layers=layers)

    def decode(
        self,
        idx: torch.Tensor,
        state: DecodeState,
        *,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        hidden_states: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """Consume t >= 1 new tokens (a prompt chunk or one sampled token) after the state; logits (B, t, vocab),
        or (B, 1, vocab) for the last token only with `last_only` (a long prefill never holds t x vocab logits).

        `mask` (B, t), False (0) for padding (a left-padded batch of prompts): as in forward(), and the state
        remembers it, so each row's later tokens continue from its own count of real tokens. `hidden_states`: as in
        forward(), for the t new tokens, every one of them even with `last_only`."""
        if state.spent:
            raise ValueError("this decode state was already decoded from, and its layer states have moved on (they "
                             "are updated in place); pass the state that decode() returned, or copy.deepcopy a "
                             "state before decoding from it to branch")
        position = state.position
        self._check_tokens(idx, position)
        if state.rows != idx.shape[0]:
            raise ValueError(f"the decode state holds {state.rows} rows and the token ids {idx.shape[0]}; decode a "
                             "state with the rows it was made for (init_decode_state(batch=...))")
        mask = _checked_mask(idx, mask)
        positions = token_positions(position, state.pads, mask, idx.shape[1], idx.device)
        x = self._embed(idx, positions)
        layers = []
        for block, layer_state in zip(self.transformer.h, state.layers):
            if hidden_states is not None:
                hidden_states.append(x)
            x, layer_state = block(x, positions, layer_state, mask)
            layers.append(layer_state)
        if hidden_states is None:
            x = self.transformer.ln_f(x[:, -1:] if last_only else x)
        else:
            hidden_states.append(self.transformer.ln_f(x))
            x = hidden_states[-1][:, -1:] if last_only else hidden_states[-1]
        logits = self.lm_head(x)
        state.spent = True
        return logits, DecodeState(layers, position + idx.shape[1], padding_count(state.pads, mask))

    @torch.no_grad()
    def settle_crossovers(self, length: int, autocast: AbstractContextManager) -> None:
        """Measure now, eagerly, every crossover (model/attention/crossover.py) that sequences of `length` tokens
        under `autocast` will ask for, by one forward of such a sequence: under torch.compile it would be measured
        while the model is traced, when flex_attention (the direct form on CUDA) runs unfused, timing the direct
        form at its slowest. A forward asks with the dtypes the layers really produce (under CUDA's autocast
        taylor's normalised q and k come out in fp32). In eval mode: no dropout, no random number drawn."""
        if not any(leaves_to_measure(block.attn.backend, length) for block in self.transformer.h):
            return  # a crossover set in the config, below the measured range, or not measured: no forward needed
        training = self.training
        self.eval()
        try:
            with autocast:
                self(torch.zeros(1, length, dtype=torch.long, device=self.lm_head.weight.device))
        finally:
            self.train(training)

    @property
    def constant_memory_decoding(self) -> bool:
        """True when the decode state has a fixed size (a recurrent state), False when it grows (a KV cache)."""
        return self.transformer.h[0].attn.backend.constant_memory

    def decode_state_nbytes(self, state: DecodeState) -> int:
        """Bytes held by the decode state of all layers (a KV cache counts its whole preallocated capacity)."""
        return sum(block.attn.backend.state_nbytes(s) for block, s in zip(self.transformer.h, state.layers))

    def _check_tokens(self, idx: torch.Tensor, start: int) -> None:
        """Shape checks of token ids (B, T) that follow `start` tokens, with errors that name the fix (the token ids'
        values are left to the embedding: checking them would synchronise with the device on every call)."""
        if idx.ndim != 2 or idx.shape[1] == 0:
            raise ValueError(f"expected token ids of shape (batch, tokens) with at least one token, got shape "
                             f"{tuple(idx.shape)}")
        if self.config.position == "learned" and start + idx.shape[1] > self.config.n_positions:
            raise ValueError(
                f"cannot run past position {self.config.n_positions} (tokens {start} to {start + idx.shape[1]}): "
                "the model has learned position embeddings for that many tokens only (use a sliding window, or "
                "train with model.position=rope or none)"
            )

    def _embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(positions)  # positions (T,) or (B, T)
        return self.transformer.drop(x)
