"""Loss against position on val sequences longer than a model was trained on: where the mechanisms differ most.

    python scripts/eval_context.py --ckpt runs/ctx-softmax --ckpt runs/ctx-logexp --max-length 2048 --out runs/ctx

Each checkpoint is scored on the same val sequences of `max_length` + 1 tokens (spread evenly over the val split,
like the training run's val windows): the mean next-token loss in buckets one training context wide, so the first
bucket is the trained regime and the others are extrapolation. Models with `rope` or `none` positions take any
length; a model with learned positions has no embedding past `n_positions` and is scored on the first
`n_positions` tokens of the same sequences (the page says so). The full sequence goes through the backend's own
training form (`model(x)`); a constant-memory backend can also be scored chunk by chunk through its decode state
(`form="decode"`), which must give the same losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.errors import DataError
from data.loader import gather_windows, val_windows
from model.gpt import GPT
from typedconfig.cli import with_flag_names

FORMS = ("forward", "decode")
# the val_windows keys that this tool's flags set: a sequence is a window of --max-length + 1 tokens
SEQUENCE_FLAGS = {"data.eval_windows": "--sequences", "data.block_size": "--max-length"}


@dataclass(frozen=True)
class ContextCurve:
    """One checkpoint's mean loss per position bucket [edges[i], edges[i + 1])."""

    label: str
    train_context: int  # data.block_size the model was trained on
    length: int  # positions scored (max_length, or n_positions for learned positions)
    edges: tuple[int, ...]
    loss: tuple[float, ...]
    sequences: int
    note: str = ""  # why `length` is shorter than asked, if it is


def scored_length(model: GPT, max_length: int) -> tuple[int, str]:
    """The length a model can be scored at, and a note when that is less than `max_length`."""
    cfg = model.config
    if cfg.position == "learned" and max_length > cfg.n_positions:
        return cfg.n_positions, f"learned positions: scored up to n_positions = {cfg.n_positions}"
    return max_length, ""


def bucket_edges(train_context: int, length: int) -> tuple[int, ...]:
    """0, c, 2c, ... up to `length` (c = the training context); the last bucket may be shorter."""
    return tuple(sorted({*range(0, length, train_context), length}))


@torch.no_grad()
def token_losses(model: GPT, x: torch.Tensor, y: torch.Tensor, form: str = "forward", chunk: int = 256) -> torch.Tensor:
    """Per-token next-token losses (B, T), fp32: through the training form, or `chunk` tokens at a time through the
    decode state (constant-memory backends: the state never grows)."""
    if form == "forward":
        logits = model(x)[0]
    elif form == "decode":
        state = model.init_decode_state(x.shape[0], dtype=next(model.parameters()).dtype, device=x.device,
                                        capacity=x.shape[1])
        pieces = []
        for part in x.split(chunk, dim=1):
            logits, state = model.decode(part, state)
            pieces.append(logits)
        logits = torch.cat(pieces, dim=1)
    else:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    return F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")


def sequence_starts(val_tokens: np.ndarray, max_length: int, sequences: int) -> np.ndarray:
    """Where the `sequences` val sequences of `max_length` + 1 tokens start, spread evenly over the val split, each a
    different sequence (`data.loader.val_windows`, which refuses a split too short for that many)."""
    try:
        return val_windows(val_tokens, max_length, sequences)
    except DataError as exc:
        raise DataError(with_flag_names(str(exc), SEQUENCE_FLAGS)) from None


def val_sequences(val_tokens: np.ndarray, max_length: int, sequences: int) -> np.ndarray:
    """The tokens every checkpoint is scored on, (sequences, max_length + 1): equal arrays mean equal inputs."""
    return np.stack([val_tokens[s : s + max_length + 1] for s in sequence_starts(val_tokens, max_length, sequences)])


def context_curve(model: GPT, val_tokens: np.ndarray, *, label: str, train_context: int, max_length: int,
                  sequences: int, form: str = "forward") -> ContextCurve:
    """The mean loss per bucket over `sequences` val sequences, each the first `length` (+ 1) tokens of the
    sequence of `max_length` + 1 tokens at the same start for every model: a model scored up to n_positions reads
    the same text as the others, only less of it."""
    length, note = scored_length(model, max_length)
    starts = sequence_starts(val_tokens, max_length, sequences)
    total = torch.zeros(length, dtype=torch.float64)
    for start in starts:
        x, y = gather_windows(val_tokens, [start], length)
        total += token_losses(model, x, y, form).double().sum(dim=0)
    mean = total / len(starts)
    edges = bucket_edges(train_context, length)
    loss = tuple(float(mean[a:b].mean()) for a, b in zip(edges, edges[1:]))
    return ContextCurve(label, train_context, length, edges, loss, len(starts), note)


def records(curves: list[ContextCurve]) -> list[dict]:
    """One CSV row per (checkpoint, bucket)."""
    return [
        {"label": c.label, "bucket_start": a, "bucket_end": b, "loss": round(loss, 5),
         "times_train_context": round(b / c.train_context, 3), "sequences": c.sequences}
        for c in curves for a, b, loss in zip(c.edges, c.edges[1:], c.loss)
    ]


def ratio_to_first_bucket(curve: ContextCurve) -> float:
    """Loss of the last bucket over that of the first: > 1 means the model gets worse past its training context."""
    return curve.loss[-1] / curve.loss[0] if curve.loss[0] > 0 else math.nan
