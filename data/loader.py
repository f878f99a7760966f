"""Windows of block_size + 1 consecutive tokens from memory-mapped token files, as (x, y) with y = x shifted by one.

Training windows are random but a pure function of (seed, index), where index is the global micro-batch number
data_position + micro * world_size + rank (data_position: the micro-batches the run has consumed, saved in its
checkpoints): ranks draw different windows and a resumed run draws the same ones as an uninterrupted run. Val
windows are a fixed, evenly spaced set that depends only on the val tokens, block_size and count, so every
evaluation of every run on the same data agrees.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import torch

from data.errors import DataError


def gather_windows(tokens: np.ndarray, starts: np.ndarray, block_size: int,
                   vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x = tokens[s : s + block_size], y = tokens[s + 1 : s + block_size + 1] for each start s, as int64; with
    `vocab_size`, ids at or past it (a damaged token file) are a DataError."""
    rows = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(block_size + 1)  # (B, T + 1)
    ids = np.asarray(tokens[rows], dtype=np.int64)  # (B, T + 1)
    if vocab_size is not None and ids.size and (top := int(ids.max())) >= vocab_size:
        # checked on the host: on a GPU the embedding's out-of-range index is a device-side assert
        where = getattr(tokens, "filename", None) or "the token file"
        raise DataError(f"token id {top:,} in {where} is past the tokenizer's {vocab_size:,} ids: the file is "
                        "damaged; delete its folder and prepare the data again (python -m data.prepare)")
    windows = torch.from_numpy(ids)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T), (B, T)


class TrainWindows:
    """Batches of `batch_size` windows at uniformly random offsets, drawn from np.random.default_rng([seed, index])."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 vocab_size: int | None = None) -> None:
        _check_length(tokens, block_size, "train")
        if seed < 0:
            raise DataError(f"the data seed must be >= 0, got {seed}")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self.vocab_size = vocab_size

    def starts(self, index: int) -> np.ndarray:
        """The window offsets of micro-batch `index`."""
        rng = np.random.default_rng([self.seed, index])
        return rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of micro-batch `index`, each (batch_size, block_size) int64."""
        return gather_windows(self.tokens, self.starts(index), self.block_size, self.vocab_size)


def distinct_windows(tokens: np.ndarray, block_size: int) -> int:
    """How many different windows (block_size + 1 tokens: inputs and shifted targets) `tokens` holds."""
    return len(tokens) - block_size


def val_windows(tokens: np.ndarray, block_size: int, count: int) -> np.ndarray:
    """`count` different window offsets spread evenly from the first to the last full window of `tokens` (int64). A
    split holding fewer than `count` different windows is refused: a repeated window would count twice in every
    evaluation."""
    _check_length(tokens, block_size, "val")
    distinct = distinct_windows(tokens, block_size)
    if count > distinct:
        raise DataError(
            f"data.eval_windows ({count:,}) is more than the val split holds: its {len(tokens):,} tokens hold "
            f"{distinct:,} different windows of data.block_size + 1 = {block_size + 1:,} tokens; lower "
            "data.eval_windows or data.block_size, or prepare more val data (a lower data.val_every)"
        )
    last = distinct - 1
    return np.arange(count, dtype=np.int64) * last // max(count - 1, 1)


def eval_batches(
    tokens: np.ndarray, starts: np.ndarray, block_size: int, batch_size: int, vocab_size: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) for the windows at `starts`, in order, `batch_size` windows at a time (the last batch may be smaller);
    `vocab_size` as for gather_windows."""
    for i in range(0, len(starts), batch_size):
        yield gather_windows(tokens, starts[i : i + batch_size], block_size, vocab_size)


def windows_fingerprint(meta: dict, block_size: int, count: int) -> str:
    """A short hash that is equal for two runs exactly when they evaluate on the same val windows: the windows are
    a function of the val tokens (hashed into meta.json by prepare), block_size and count."""
    identity = {key: meta[key] for key in ("tokenizer", "val_tokens", "val_sha256")}
    identity.update(block_size=block_size, count=count)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _check_length(tokens: np.ndarray, block_size: int, split: str) -> None:
    if len(tokens) < block_size + 1:
        raise DataError(
            f"the {split} split has {len(tokens):,} tokens but one window needs data.block_size + 1 = "
            f"{block_size + 1:,}; lower data.block_size or prepare more data (a higher data.max_tokens where it is "
            "set; for val, a lower data.val_every)"
        )
