"""Solver registry: the one place where a method name becomes an implementation, per problem.

Adding a method means one new class and one line in `_REGISTRY` for each problem it solves ("least_squares" is the
tall least-squares stage on its own); solve() and least_squares() never branch on the name.
"""

from __future__ import annotations

from evals import problems as P
from evals.methods.base import Method, NotApplicable, SolveInfo, SolveOptions
from evals.methods.dense import SVD, GramCholesky, HouseholderQR, Lstsq
from evals.methods.kernel import (JacobiPCG, KernelCG, KernelCholesky, NystromPCG, TensorSketchGD,
                                  TensorSketchPCG)
from evals.methods.sketch_gd import SketchGD
from evals.methods.sketched import SketchCholQR, SketchLSQR, SketchPCG
from evals.methods.unpreconditioned import PlainCG, PlainLSQR

_REGISTRY: dict[str, dict[str, type[Method]]] = {
    "gram_power": {
        "qr": HouseholderQR, "svd": SVD, "gram_cholesky": GramCholesky, "cg": PlainCG, "sketch_gd": SketchGD,
        "sketch_pcg": SketchPCG, "sketch_cholqr": SketchCholQR,
    },
    "a_gram_power": {
        "qr": HouseholderQR, "svd": SVD, "gram_cholesky": GramCholesky, "lsqr": PlainLSQR, "sketch_gd": SketchGD,
        "sketch_pcg": SketchPCG, "sketch_lsqr": SketchLSQR, "sketch_cholqr": SketchCholQR,
    },
    "exp_kernel": {
        "cholesky": KernelCholesky, "cg": KernelCG, "jacobi_pcg": JacobiPCG, "nystrom_pcg": NystromPCG,
        "tensorsketch_pcg": TensorSketchPCG, "tensorsketch_gd": TensorSketchGD,
    },
    "least_squares": {
        "qr": HouseholderQR, "svd": SVD, "lstsq": Lstsq, "gram_cholesky": GramCholesky, "lsqr": PlainLSQR,
        "sketch_gd": SketchGD, "sketch_pcg": SketchPCG, "sketch_lsqr": SketchLSQR, "sketch_cholqr": SketchCholQR,
    },
}

METHODS: dict[str, tuple[str, ...]] = {problem: tuple(_REGISTRY[problem]) for problem in P.PROBLEMS}
LEAST_SQUARES_METHODS: tuple[str, ...] = tuple(_REGISTRY["least_squares"])
DEFAULT_METHOD = {"gram_power": "sketch_pcg", "a_gram_power": "sketch_lsqr", "exp_kernel": "jacobi_pcg"}
# the methods that solve by a factorisation, without iterations
DIRECT: frozenset[str] = frozenset(name for methods in _REGISTRY.values() for name, cls in methods.items()
                                   if cls.direct)


def get_method(problem: str, name: str) -> type[Method]:
    """The class of `problem`'s method called `name` (problem: one of P.PROBLEMS or "least_squares")."""
    methods = _REGISTRY[problem]
    if name not in methods:
        raise P.SolverError(f"{problem} has no method {name!r} (allowed: {', '.join(methods)})")
    return methods[name]


__all__ = ["DEFAULT_METHOD", "DIRECT", "LEAST_SQUARES_METHODS", "METHODS", "Method", "NotApplicable", "SolveInfo",
           "SolveOptions", "get_method"]
