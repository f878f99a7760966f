"""Autoregressive generation with the backends' decode states: the prompt is prefilled in one parallel chunk, then
every sampled token is fed back as a one-token step. Prompts of different lengths form one batch, left-padded
(`left_pad`): the padding takes no part in attention and each row's positions count its own tokens, so a row
generates greedily what its prompt generates alone. Sampled, it does so too when each row has its own generator
(a list, one per row, seeded as that prompt's generator alone would be): one generator for the batch is one stream
of draws shared by the rows, so a row's sample then depends on the rows before it.

Context limit: the most tokens a decode state may hold (`context_limit`).
- learned positions: the n_positions rows of the position table (max_context may only lower it);
- a KV cache (softmax, expressive): max_context, by default n_positions, since the cache grows with the context;
- a constant-size state (logexp, taylor, expressive_sq) with rope or no positions: max_context, by default none, so
  generation runs on at the memory of the first token.
A prompt longer than the limit is an error unless a window is given (then its last `window` tokens are used).
When the state is full, generation stops with ContextLimitReached, or, with a window, re-prefills the last `window`
tokens into a fresh state (positions restart at 0) and goes on. A padded batch counts its columns: it reaches the
limit when its longest row does.

KV caches are preallocated for every token the state will take (the prompt plus the new tokens, capped at the
limit), so decoding never reallocates them. The first state is allocated when generate() is called, so a request
too large for memory fails there (DecodeStateTooLarge, naming the bytes it needs), before any token is yielded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from model.compiling import out_of_memory
from model.gpt import GPT, DecodeState
from model.sampling import Sampler, next_token, per_row_generators

NAMED_PROMPTS = 5  # an error names at most this many of a batch's over-long prompts, then counts the rest


class ContextLimitReached(Exception):
    """The decode state is full and no window was given; the tokens yielded so far are the whole generation."""


class DecodeStateTooLarge(ValueError):
    """The decode state asked for does not fit in memory: `needs` says what it is and how many bytes it takes, `over`
    what it exceeds."""

    def __init__(self, needs: str, over: str):
        super().__init__(f"{needs}, {over}; lower max_new_tokens or max_context")
        self.needs, self.over = needs, over


@dataclass(frozen=True)
class ContextLimit:
    tokens: int | None  # the most tokens a decode state may hold; None = no limit
    reason: str  # why, for messages


@dataclass
class DecodeStats:
    """Work and time of prefill and decode steps, accumulated over generate calls."""

    prefill_tokens: int = 0  # prompt (and window) tokens run through parallel prefills, padding not counted
    prefill_s: float = 0.0
    decode_tokens: int = 0  # tokens sampled, counting every row of the batch
    decode_s: float = 0.0  # sampling plus the one-token decode steps
    state_bytes: int = 0  # the largest decode state held

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else float("nan")


def context_limit(model: GPT, max_context: int | None = None) -> ContextLimit:
    """The most tokens a decode state of `model` may hold (see the module docstring)."""
    cfg = model.config
    if max_context is not None and max_context < 1:
        raise ValueError(f"max_context must be >= 1, got {max_context}")
    if cfg.position == "learned":
        if max_context is not None and max_context > cfg.n_positions:
            raise ValueError(
                f"max_context ({max_context}) exceeds the model's {cfg.n_positions} learned positions "
                "(only models with rope or no position encoding decode past them)"
            )
        if max_context is None:
            return ContextLimit(cfg.n_positions, "the size of the learned position table")
    elif max_context is None:
        if model.constant_memory_decoding:
            return ContextLimit(None, f"the {cfg.attention} state has a constant size")
        return ContextLimit(
            cfg.n_positions, f"a {cfg.attention} KV cache holds n_positions tokens unless max_context raises it"
        )
    return ContextLimit(max_context, "max_context")


def left_pad(prompts: list[list[int]], *, pad_id: int = 0, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists of any lengths as one batch for generate(): ids (B, T) and mask (B, T), each prompt at the right
    end of its row after `pad_id`s (mask False)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, -len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, -len(prompt):] = True
    return ids.to(device), mask.to(device)


def generate(
    model: GPT,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    mask: torch.Tensor | None = None,
    sampler: Sampler = Sampler(),
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    stop_id: int | None = None,
    window: int | None = None,
    max_context: int | None = None,
    stats: DecodeStats | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), up to max_new_tokens times after the prompt ids (B, T).

    `mask` (B, T), False at the left padding of the shorter prompts (see `left_pad`); None when every row is full.
    `generator`: one for the whole batch, or a list of B, row i sampling with generator[i] (see the module docstring).
    Ends early once every row has produced `stop_id` (a row's tokens after its first stop_id are to be ignored).
    Arguments are checked here, before the first token; ContextLimitReached is raised by the iteration.
    """
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError("the prompt must hold at least one token")
    if mask is not None:
        mask = mask.bool()
        if mask.shape != prompt.shape:
            raise ValueError(f"the mask has shape {tuple(mask.shape)}, the prompt {tuple(prompt.shape)}")
        if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError("prompts must be left-padded, each with at least one token (mask 0 ... 0 1 ... 1)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    generator = per_row_generators(generator, prompt.shape[0])  # checked before the prefill's work
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    limit = context_limit(model, max_context)
    if limit.tokens is None:
        window = None  # the state never fills up
    elif window is not None and window >= limit.tokens:
        raise ValueError(f"window must be in [1, {limit.tokens}) (the context limit: {limit.reason}), got {window}")
    if limit.tokens is not None and prompt.shape[1] > limit.tokens:
        if window is None:
            which, pronoun = _long_prompts(prompt, mask, limit.tokens)
            raise ValueError(f"{which}, more than the context limit of {limit.tokens} ({limit.reason}); "
                             f"shorten {pronoun}, or give a window to slide")
        prompt = prompt[:, -window:]
        mask = None if mask is None else mask[:, -window:]
    state = _empty_state(model, prompt, max_new_tokens, limit)
    return _generate(model, prompt, mask, [state], max_new_tokens, sampler, generator, stop_id, window, limit,
                     DecodeStats() if stats is None else stats)


def _long_prompts(prompt: torch.Tensor, mask: torch.Tensor | None, limit: int) -> tuple[str, str]:
    """Which prompts of the batch are longer than `limit` tokens and how long (the first `NAMED_PROMPTS` of them,
    counted from 1, where the batch is left-padded), and the pronoun for them."""
    rows, columns = prompt.shape
    if mask is None:
        if rows == 1:
            return f"the prompt has {columns} tokens", "it"
        return f"the prompts have {columns} tokens", "them"
    lengths = mask.sum(dim=1).tolist()
    over = [row for row, length in enumerate(lengths) if length > limit]
    if not over:  # padding columns that no row needs
        return f"the {'prompt' if rows == 1 else 'batch'} has {columns} columns, its left padding included", "it"
    if rows == 1:
        return f"the prompt has {lengths[0]} tokens", "it"
    if len(over) == 1:
        return f"prompt {over[0] + 1} (of {rows}) has {lengths[over[0]]} tokens", "it"
    more = f" (and {len(over) - NAMED_PROMPTS} more)" if len(over) > NAMED_PROMPTS else ""
    numbers = ", ".join(str(row + 1) for row in over[:NAMED_PROMPTS])
    sizes = ", ".join(str(lengths[row]) for row in over[:NAMED_PROMPTS])
    return f"prompts {numbers}{more} (of {rows}) have {sizes} tokens", "them"


@torch.no_grad()
def _generate(
    model: GPT, context: torch.Tensor, mask: torch.Tensor | None, first_state: list[DecodeState], max_new_tokens: int,
    sampler: Sampler, generator: torch.Generator | list[torch.Generator] | None, stop_id: int | None,
    window: int | None, limit: ContextLimit, stats: DecodeStats,
) -> Iterator[torch.Tensor]:
    device, rows = context.device, context.shape[0]
    # taken out of its list: torch.no_grad's wrapper keeps the arguments for the generator's life, and a full state
    # must be freed before a sliding window makes the next one
    logits, state = _prefill(model, context, mask, first_state.pop(), stats)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
        start = _synced_clock(device)
        token = next_token(logits[:, -1], sampler, generator)  # (B, 1)
        stats.decode_s += _synced_clock(device) - start
        stats.decode_tokens += rows
        yield token[:, 0]
        if stop_id is not None:
            stopped |= token[:, 0] == stop_id
        remaining = max_new_tokens - i - 1
        if remaining == 0 or bool(stopped.all()):
            return
        if window is not None:
            context = torch.cat([context, token], dim=1)[:, -window:]
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(token, dtype=torch.bool)], dim=1)[:, -window:]
        if state.position == limit.tokens:
            if window is None:
                raise ContextLimitReached(f"stopped at the context limit of {limit.tokens} tokens ({limit.reason})")
            del state  # freed first: its memory is available to the new state, and the memory check counts it so
            logits, state = _prefill(model, context, mask, _empty_state(model, context, remaining, limit), stats)
            continue
        start = _synced_clock(device)
        logits, state = model.decode(token, state)
        stats.decode_s += _synced_clock(device) - start
        stats.state_bytes = max(stats.state_bytes, model.decode_state_nbytes(state))


def _empty_state(model: GPT, context: torch.Tensor, new_tokens: int, limit: ContextLimit) -> DecodeState:
    """An empty decode state for the rows of `context` (B, T) with room for them and the `new_tokens` to come
    (capped at the limit); DecodeStateTooLarge, naming the bytes it needs, when memory cannot hold it."""
    capacity = context.shape[1] + new_tokens
    if limit.tokens is not None:
        capacity = min(capacity, limit.tokens)
    dtype, rows = next(model.parameters()).dtype, context.shape[0]
    kind = f"{model.config.attention} {'decode state' if model.constant_memory_decoding else 'KV cache'}"
    prompts = f"{rows} prompt{'s' if rows > 1 else ''}"
    try:  # the same state on the meta device takes no memory and counts the bytes
        needed = model.decode_state_nbytes(model.init_decode_state(rows, dtype=dtype, device="meta",
                                                                   capacity=capacity))
    except (RuntimeError, TypeError) as exc:  # a size past what a tensor can address: "Storage size calculation
        # overflowed", or, for a capacity past 2**63, "Overflow when unpacking long long" as a TypeError
        if "overflow" not in str(exc).lower():
            raise
        raise DecodeStateTooLarge(f"a {kind} of {capacity:,} tokens for {prompts} needs more bytes than a tensor "
                                  "can address", "more than any machine has") from None
    needs = f"a {kind} of {capacity:,} tokens for {prompts} needs {needed / 2**30:,.1f} GiB"
    available = available_bytes(context.device)
    # checked first: with overcommit a CPU allocation larger than memory succeeds, then swaps or gets killed later
    if available is not None and needed > available:
        raise DecodeStateTooLarge(needs, f"more than the {available / 2**30:,.1f} GiB available")
    try:
        return model.init_decode_state(rows, dtype=dtype, device=context.device, capacity=capacity)
    except (MemoryError, RuntimeError) as exc:  # CPU allocators raise RuntimeError, CUDA torch.OutOfMemoryError
        if out_of_memory(exc) is None:
            raise
    raise DecodeStateTooLarge(needs, "more than could be allocated")


def available_bytes(device: torch.device) -> int | None:
    """Memory a new tensor could take on `device` now: a GPU's free memory, Linux's MemAvailable for the CPU; None
    where unknown."""
    if device.type == "cuda":  # free memory, and what torch's caching allocator holds without using it
        unused_cache = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + unused_cache
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024  # kB
    except (OSError, KeyError, ValueError):  # not Linux, or a kernel without MemAvailable
        return None


def _prefill(
    model: GPT, context: torch.Tensor, mask: torch.Tensor | None, state: DecodeState, stats: DecodeStats
) -> tuple[torch.Tensor, DecodeState]:
    """The empty decode `state` after `context` (`mask`: its padding), and its last logits."""
    start = _synced_clock(context.device)
    logits, state = model.decode(context, state, mask=mask, last_only=True)
    stats.prefill_s += _synced_clock(context.device) - start
    stats.prefill_tokens += context.numel() if mask is None else int(mask.sum())
    stats.state_bytes = max(stats.state_bytes, model.decode_state_nbytes(state))
    return logits, state


def _synced_clock(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
