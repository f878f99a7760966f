"""Multi-query associative recall (MQAR), generated on the fly (Arora et al. 2023, "Zoology", arXiv 2312.04927).

A sequence of block_size + 1 tokens opens with `num_pairs` key-value pairs, k1 v1 k2 v2 ..., and then asks for
`num_queries` of the keys again, each query at a random slot of the rest of the sequence (the gaps hold the filler
token 0):

    k1 v1 k2 v2 k3 v3 k4 v4 | 0 0 k3 v3 0 0 0 0 k1 v1 0 0 0 ...
                                  ^ answer position: x = k3, the target y = v3 must be recalled from the context

x and y are the sequence and the sequence shifted by one, as for text, but y is -100 (ignored by the loss) everywhere
except at the answer positions, so the loss and `answer_accuracy` score recall only. Keys and values come from
disjoint halves of the token ids 1 .. vocab_size - 1 and are distinct within a sequence.

Training batches are a pure function of (seed, index), like data.loader.TrainWindows; the val set and the holdout
set are drawn from two more random streams that no training seed reaches, so each is the same for every run with the
same knobs. The holdout set stays out of choices made on val accuracy (scripts/recall_grid.py picks each backend's
learning rate on val and reports holdout accuracy).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from data.config import MQARConfig, check_fits
from data.errors import DataError

IGNORE_INDEX = -100  # target of the positions that are not answers: negative, so the model's loss skips them
FILLER = 0  # token id of the gaps between queries
_TRAIN_STREAM, _VAL_STREAM, _HOLDOUT_STREAM = 0, 1, 2  # first word of the random seed: the three never share a stream


def elimination_accuracy(num_pairs: int, num_queries: int) -> float:
    """Answer accuracy reachable without recall: guess uniformly among the values of the context that no earlier
    query has asked for. The i-th query (from 0) then has num_pairs - i candidates, so the accuracy is
    (1 / num_queries) * sum_i 1 / (num_pairs - i); with num_queries = num_pairs it is H(num_pairs) / num_pairs
    (0.75 for 2 pairs, 0.52 for 4, 0.34 for 8). Only accuracy above it shows associative recall."""
    return sum(1 / (num_pairs - i) for i in range(num_queries)) / num_queries


def sequences(rng: np.random.Generator, cfg: MQARConfig, seq_len: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` recall sequences drawn from `rng` as (x, y), each (count, seq_len) int64; y is -100 except at the
    answer positions, where it is the value of the key in x."""
    check_fits(cfg, seq_len)
    pairs, queries = cfg.num_pairs, cfg.num_queries
    keys = 1 + _distinct(rng, count, cfg.num_keys, pairs)  # (N, P)
    values = 1 + cfg.num_keys + _distinct(rng, count, cfg.vocab_size - 1 - cfg.num_keys, pairs)  # (N, P)
    asked = _distinct(rng, count, pairs, queries)  # (N, Q) which pairs are queried, in query order
    slots = np.sort(_distinct(rng, count, (seq_len + 1 - 2 * pairs) // 2, queries), axis=1)  # (N, Q)

    tokens = np.full((count, seq_len + 1), FILLER, dtype=np.int64)  # (N, T + 1)
    tokens[:, 0 : 2 * pairs : 2], tokens[:, 1 : 2 * pairs : 2] = keys, values
    rows, at = np.arange(count)[:, None], 2 * pairs + 2 * slots  # (N, 1), (N, Q) positions of the query keys
    tokens[rows, at] = np.take_along_axis(keys, asked, axis=1)
    tokens[rows, at + 1] = np.take_along_axis(values, asked, axis=1)
    targets = np.full((count, seq_len), IGNORE_INDEX, dtype=np.int64)  # (N, T)
    targets[rows, at] = tokens[rows, at + 1]
    return torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(targets)


class MQARBatches:
    """Training batches of `batch_size` sequences, drawn from np.random.default_rng([0, seed, index])."""

    def __init__(self, cfg: MQARConfig, seq_len: int, batch_size: int, seed: int) -> None:
        check_fits(cfg, seq_len)
        if seed < 0:
            raise DataError(f"the data seed must be >= 0, got {seed}")
        self.cfg, self.seq_len, self.batch_size, self.seed = cfg, seq_len, batch_size, seed

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of micro-batch `index` (the global micro-batch number, as for TrainWindows), each (B, T) int64."""
        rng = np.random.default_rng([_TRAIN_STREAM, self.seed, index])
        return sequences(rng, self.cfg, self.seq_len, self.batch_size)


def val_set(cfg: MQARConfig, seq_len: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed val sequences (x, y), each (count, seq_len) int64: the same for every run with the same knobs,
    seq_len and count, and drawn from a stream that training batches never use."""
    return sequences(np.random.default_rng([_VAL_STREAM]), cfg, seq_len, count)


def holdout_set(cfg: MQARConfig, seq_len: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed holdout sequences (x, y), like val_set's but from a stream of their own."""
    return sequences(np.random.default_rng([_HOLDOUT_STREAM]), cfg, seq_len, count)


def val_fingerprint(cfg: MQARConfig, seq_len: int, count: int) -> str:
    """A short hash of the val set's tokens: equal for two runs exactly when they evaluate on the same sequences
    (the counterpart of data.loader.windows_fingerprint)."""
    x, y = val_set(cfg, seq_len, count)
    return hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]


def answer_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, total) over the answer positions (y != -100) of logits (B, T, vocab) and targets y (B, T), as int64
    scalars on the logits' device: an answer is correct when its most likely token is the target. Masks instead of
    picking the answers' rows, whose data-dependent number would make a GPU wait for every batch."""
    answers = y != IGNORE_INDEX
    return ((logits.argmax(dim=-1) == y) & answers).sum(), answers.sum()


def _distinct(rng: np.random.Generator, rows: int, n: int, k: int) -> np.ndarray:
    """`k` distinct integers from 0 .. n - 1 per row, uniformly and in random order: (rows, k) int64."""
    return np.argsort(rng.random((rows, n)), axis=1)[:, :k].astype(np.int64)
