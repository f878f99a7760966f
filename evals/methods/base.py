"""What every solver method shares: the record of one solve, the options solve() passes on, and the interface.

A method is a class built once per solve for one A: its factorisation or preconditioner happens in `__init__`,
timed and counted in the SolveInfo, then `solve(problem, b, j)` returns x. The registry (evals/methods/__init__.py)
maps each problem's method names to these classes; nothing else branches on a name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from evals import problems as P
from evals.krylov import KrylovResult


class NotApplicable(P.SolverError):
    """The method does not apply to this instance (e.g. a Taylor sketch for rows too large); the message says why."""


@dataclass
class SolveInfo:
    problem: str
    method: str
    n: int
    d: int
    j: int
    eps: float
    relres: float = math.nan
    # True only where every stopping test held on a bound (not a heuristic), the factor was not numerically
    # singular, x is finite, and the final relres passes problems.residual_test (relres <= eps for gram_power and
    # exp_kernel; for a_gram_power, whose score needs x*, the necessary relres² <= 1 + eps²)
    converged: bool = True
    iterations: dict[str, int] = field(default_factory=dict)  # per stage: "ls", "level1", "level2", ...
    # products with A or Aᵀ itself (blocks count once), or with the n x n kernel for exp_kernel; sketch_cholqr's two
    # further n x d passes over A1 = A R_s^-1 (its Gram, and Q = A1 R1^-1) are not products with A and not counted
    passes: int = 0
    time_sketch: float = 0.0
    time_factor: float = 0.0
    time_iterate: float = 0.0
    sketch: str | None = None
    sketch_rows: int | None = None
    kappa_precond: float | None = None  # κ(A R^-1) for sketch preconditioners

    @property
    def time_total(self) -> float:
        return self.time_sketch + self.time_factor + self.time_iterate

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["time_total"] = self.time_total
        out["iterations_total"] = sum(self.iterations.values())
        return out

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the wall time of the block to time_<stage> (sketch, factor or iterate)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            name = f"time_{stage}"
            setattr(self, name, getattr(self, name) + time.perf_counter() - start)

    def record(self, stage: str, result: KrylovResult) -> None:
        """The iterations of one Krylov stage; the solve has converged only if every stage has."""
        self.iterations[stage] = result.iterations
        self.converged &= result.converged


@dataclass(frozen=True)
class SolveOptions:
    """The settings of solve() that some methods read; each method ignores those it has no use for."""

    seed: int = 0  # the sketch, and the random test matrices of Nyström and TensorSketch (0 <= seed < 2^32)
    sketch: str = "sparse_sign"  # the embedding of the sketch_* methods (evals/sketch.py)
    sketch_rows: int | None = None  # its rows k (None, and only None: 4d)
    maxiter: int = 2000  # iterations per Krylov stage (>= 1)
    refine: int = 0  # refinement steps after an iterative sketched least-squares stage
    rank: int | None = None  # the Nyström rank (None: min(n, 256))

    def __post_init__(self) -> None:
        _check_integer("seed", self.seed, 0, "it fixes the sketch and the random test matrices", below=MAX_SEED)
        _check_integer("sketch_rows", self.sketch_rows, 1, "or None for the default 4d", optional=True)
        _check_integer("maxiter", self.maxiter, 1, "iterations per Krylov stage")
        _check_integer("refine", self.refine, 0, "refinement steps")
        _check_integer("rank", self.rank, 1, "or None for min(n, 256)", optional=True)
        if not isinstance(self.sketch, str):
            raise P.SolverError(f"sketch must be a sketch's name, got {self.sketch!r}")


# A chosen bound: the Taylor features derive seeds seed * (MAX_TAYLOR_DEGREE + 1) + degree from one
# (kernel_preconditioners.degree_seed), which stay far below 2^63, where torch.Generator seeds end.
MAX_SEED = 1 << 32


def _check_integer(name: str, value: Any, least: int, hint: str, *, optional: bool = False,
                   below: int | None = None) -> None:
    """Raise SolverError unless value is an int (not a bool) in [least, below), or None where optional."""
    if optional and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
    if not ok or (below is not None and value >= below):
        bound = f">= {least}" if below is None else f"in [{least}, {below})"
        raise P.SolverError(f"{name} must be an integer {bound} ({hint}), got {value!r}")


class Method:
    """Base class: a solver of one or more problems for one A (float64), built by solve() with its options."""

    direct = False  # True where a factorisation solves (no iterations)
    # True where the method solves with the factorisation the float64 reference x* is built from (evals/problems.py
    # Reference): where the score is measured against x*, the factor's rounding cancels and the score flatters it
    shares_reference = False

    def __init__(self, A: torch.Tensor, info: SolveInfo, options: SolveOptions) -> None:
        self.A, self.info, self.options = A, info, options

    def solve(self, problem: str, b: torch.Tensor, j: int) -> torch.Tensor:
        """x for `problem` with right-hand side b and power j."""
        raise NotImplementedError

    def kappa_precond(self) -> float | None:
        """κ(A R^-1) where the method builds a sketch preconditioner R (an extra O(n d²)), else None."""
        return None
