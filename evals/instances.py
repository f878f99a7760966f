"""The matrices the report solves on: attention matrices from an extraction directory, and synthetic controls.

From a checkpoint (per extracted layer L and head h), as float64:
    K        the keys of every window stacked, (windows·T, d): tall, for gram_power and a_gram_power
    X        the attention's input hidden states stacked, (windows·T, C), once per layer: tall and wide
    K/d^¼    the keys of window 0 scaled by d^-1/4, (T, d), for exp_kernel: softmax weighs exp(q·k / √d), and
             exp(A Aᵀ) with A = K d^-1/4 is its symmetric analogue. Exactly repeated rows (the same token at layer 0
             without a position encoding, or at the same position in two windows) would make it singular, so
             only the first copy of each row is kept (`distinct_rows`)
Synthetic controls (see evals/synthetic.py): A = Q diag(s) Vᵀ with κ(A) from 1e2 to 1e8, incoherent and coherent,
and exp_kernel rows with heterogeneous, small and low-dimensional norms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from evals import synthetic as syn
from evals.extract import Extraction

GRAM_PROBLEMS = ("gram_power", "a_gram_power")


def distinct_rows(A: torch.Tensor) -> torch.Tensor:
    """A without exact repeats of a row, the first copy of each kept in its original order."""
    _, inverse = torch.unique(A, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), A.shape[0], dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(A.shape[0]), reduce="amin")
    return A[first.sort().values]


@dataclass(frozen=True)
class Instance:
    source: str  # "checkpoint" or "synthetic"
    label: str  # what the matrix is, e.g. "L0 H3 K" or "kappa=1e+04 coherent"
    problem: str
    A: torch.Tensor
    js: tuple[int, ...]
    layer: int | None = None
    head: int | None = None


def from_extraction(extraction: Extraction, *, js: tuple[int, ...], max_rows: int | None = None,
                    hidden_states: bool = True) -> Iterator[Instance]:
    """Every (layer, head) of the extraction: K for (a) and (b), K/d^¼ of window 0 for (c); X per layer."""
    manifest = extraction.manifest
    for layer in manifest["layers"]:
        for head in manifest["heads"]:
            keys = extraction.k(layer, head).double()
            for problem in GRAM_PROBLEMS:
                yield Instance("checkpoint", f"L{layer} H{head} K", problem, keys[:max_rows], js, layer, head)
            window = distinct_rows(extraction.k(layer, head, stacked=False)[0].double())
            yield Instance("checkpoint", f"L{layer} H{head} K/d^1/4", "exp_kernel", window * window.shape[1] ** -0.25,
                           (1,), layer, head)
        if hidden_states:
            x = extraction.x(layer).double()[:max_rows]
            for problem in GRAM_PROBLEMS:
                yield Instance("checkpoint", f"L{layer} X", problem, x, js, layer, None)


def check_rows(manifest: dict, max_rows: int | None, *, hidden_states: bool) -> None:
    """Raise ValueError unless the stacked rows (every window's tokens, at most max_rows) leave each Gram instance
    tall, as (AᵀA)^j needs: K has head_dim columns, X has n_embd."""
    windows = manifest["windows"]
    available = windows["count"] * windows["block_size"]
    rows = available if max_rows is None else min(available, max_rows)
    widths = {"the keys K": ("head_dim", manifest["model"]["head_dim"])}
    if hidden_states:
        widths["the hidden states X"] = ("n_embd", manifest["model"]["n_embd"])
    for what, (name, columns) in widths.items():
        if rows < columns:
            skip = " or pass --no-hidden-states" if what == "the hidden states X" else ""
            # --max-rows only cuts: it helps where it cut below the columns, not where the windows hold too few rows
            fix = (f"--max-rows >= {columns}" if available >= columns else
                   f"--windows >= {-(-columns // windows['block_size'])} (an extraction of that many)")
            cut = f"--max-rows {max_rows}, " if max_rows is not None else ""
            raise ValueError(f"{rows} stacked rows ({cut}{windows['count']} windows of {windows['block_size']} "
                             f"tokens) leave {what} wide ({name} = {columns} columns), and the Gram problems need "
                             f"n >= d: use {fix}{skip}")


def synthetic_controls(*, js: tuple[int, ...], n: int = 4096, d: int = 64, kernel_n: int = 512) -> Iterator[Instance]:
    for kappa in (1e2, 1e4, 1e6, 1e8):
        for problem in GRAM_PROBLEMS:
            yield Instance("synthetic", f"kappa={kappa:.0e}", problem, syn.conditioned(n, d, kappa, seed=0), js)
    for problem in GRAM_PROBLEMS:
        yield Instance("synthetic", "kappa=1e+04 coherent", problem,
                       syn.conditioned(n, d, 1e4, seed=0, coherent=True), js)
    for label, lo, hi, rank in (("heterogeneous norms 2-40", 2.0, 40.0, None), ("small norms 0.1-0.5", 0.1, 0.5, None),
                                ("low-dimensional (rank 4) norms 0.5-2", 0.5, 2.0, 4)):
        yield Instance("synthetic", label, "exp_kernel", syn.exp_rows(kernel_n, d, lo, hi, seed=0, rank=rank), (1,))
