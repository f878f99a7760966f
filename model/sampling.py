"""Choosing the next token from the logits: greedy, or temperature sampling restricted by top-k and top-p.

Both filters depend only on the logit values, never on token ids, so tokens with equal logits are kept or dropped
together: top-k keeps every token whose logit is at least the k-th largest (ties at the k-th place are all kept),
top-p (nucleus, Holtzman et al. 2019, arXiv 1904.09751) keeps every token whose more probable tokens hold less than
top_p of the probability in total, i.e. the smallest set of most probable tokens whose mass reaches top_p, widened
to the whole tie group at its edge. The most probable token is always kept.

Randomness: `next_token` draws from one torch.Generator for the whole batch, or from a list of generators, one per
row. With one generator a row's draw depends on the rows before it (they consume the same stream), so a prompt
samples differently in a batch than alone; with a generator per row, each row is sampled by its own
`torch.multinomial` call, exactly the call a batch of that row alone makes, so a row seeded like a prompt sampled
alone draws what that prompt draws.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.attention.options import is_real


# Below this, 1 / temperature overflows float32 (CUDA divides by a scalar as a * (1/b)), or float32 rounds the
# temperature itself to 0: the logits' division would give NaN
GREEDY_BELOW = 1 / torch.finfo(torch.float32).max


@dataclass(frozen=True)
class Sampler:
    """How the next token is chosen; invalid values raise ValueError naming the option."""

    temperature: float = 1.0  # divides the logits; 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens (ties included); 0 = no limit
    top_p: float = 1.0  # keep the most likely tokens up to this much probability mass, in (0, 1]; 1 = no limit
    vocab_size: int | None = None  # sample only ids below this (a model vocabulary padded past the tokenizer's)

    def __post_init__(self) -> None:
        if not (is_real(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not (_is_integer(self.top_k) and self.top_k >= 0):
            raise ValueError(f"top_k must be >= 0 (an integer; 0 = no limit), got {self.top_k!r}")
        if not (is_real(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1 = no limit), got {self.top_p!r}")
        if self.vocab_size is not None and not (_is_integer(self.vocab_size) and self.vocab_size >= 1):
            raise ValueError(f"vocab_size must be >= 1 (an integer; None = every id), got {self.vocab_size!r}")

    @property
    def greedy(self) -> bool:
        """Temperature 0, or one too small to divide float32 logits by (GREEDY_BELOW): argmax, the limit of sampling
        as the temperature falls."""
        return self.temperature < GREEDY_BELOW


def _is_integer(value: object) -> bool:
    """An int of any kind (numpy's too) but not a bool: top_k=True would silently mean 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """True for the tokens whose logit is at least the k-th largest of their row: (..., V) -> (..., V) bool."""
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits >= kth


def top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """True for the tokens whose strictly more probable tokens hold less than p of the probability in total."""
    probs = torch.softmax(logits.float(), dim=-1)
    ranked = torch.sort(probs, dim=-1, descending=True).values
    mass_before = ranked.cumsum(dim=-1) - ranked  # mass of the tokens ranked before each place
    # A token's tie group starts at the first place holding its probability; the mass before that place is the
    # mass of the strictly more probable tokens.
    group_start = torch.searchsorted(-ranked, -probs, side="left")
    # the most probable tie group is kept whatever p is (a p that float32 rounds to 0 would keep no token)
    return (mass_before.gather(-1, group_start) < p) | (group_start == 0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The logits with -inf for every token outside top-k (if top_k > 0), then outside top-p (if top_p < 1)."""
    if top_k > 0:
        logits = logits.masked_fill(~top_k_mask(logits, top_k), float("-inf"))
    if top_p < 1.0:
        logits = logits.masked_fill(~top_p_mask(logits, top_p), float("-inf"))
    return logits


def per_row_generators(generator: torch.Generator | Sequence[torch.Generator] | None,
                       rows: int) -> torch.Generator | list[torch.Generator] | None:
    """`generator` as next_token takes it: None or one generator as it is, a sequence as a list of one per row."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generator = list(generator)
    if len(generator) != rows:
        raise ValueError(f"got {len(generator)} generators for {rows} rows (one per row, or one in all)")
    return generator


def next_token(logits: torch.Tensor, sampler: Sampler,
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Ids (B, 1) chosen from the last-position logits (B, vocab): argmax if `sampler.greedy`, else a sample drawn
    with `generator`: one for the whole batch, or B of them, row i drawing with generator[i] (see the module
    docstring)."""
    generator = per_row_generators(generator, logits.shape[0])
    logits = logits[..., : sampler.vocab_size].float()
    if sampler.greedy:
        return logits.argmax(dim=-1, keepdim=True)
    # Shifted so that the largest logit is 0 before dividing: the same distribution, but a tiny temperature sends
    # the others to -inf instead of every logit to +-inf (whose softmax is NaN).
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(shifted / sampler.temperature, sampler.top_k, sampler.top_p), dim=-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)
    return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs.split(1), generator)])
