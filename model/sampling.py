"""Autoregressive sampling with the backends' decode states: prefill the prompt in one chunk, then one token a step."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from model.gpt import GPT


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top_k largest and outside the smallest set whose probability >= top_p."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token is always kept)
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Sample ids (B, 1) from the last-position logits (B, vocab); greedy when temperature == 0."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate_tokens(
    model: GPT,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield sampled ids (B, 1) one step at a time after the prompt ids (B, T)."""
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError("the prompt must hold at least one token")
    state = model.init_decode_state(
        prompt.shape[0], dtype=next(model.parameters()).dtype, device=prompt.device,
        capacity=prompt.shape[1] + max_new_tokens,
    )
    logits, state = model.decode(prompt, state)
    for i in range(max_new_tokens):
        token = next_token(logits[:, -1], temperature, top_k, top_p, generator)
        yield token
        if i + 1 < max_new_tokens:
            logits, state = model.decode(token, state)
