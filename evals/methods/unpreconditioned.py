"""The unpreconditioned iterative methods for (a), (b) and least squares: their iteration counts grow with κ(A).

    cg    (a) CG on AᵀA per Gram level
    lsqr  (b) and least squares: LSQR on min ||A y - b|| first, then CG per Gram level
"""

from __future__ import annotations

import math

import torch

from evals.krylov import cg, lsqr, power_norm
from evals.methods.gram import IterativeMethod, relative_tolerance


class PlainCG(IterativeMethod):
    def sigma_max(self) -> float:
        """||A||_2 by power iteration on AᵀA (its products count as passes)."""
        with self.info.timed("factor"):
            return math.sqrt(power_norm(self.op.gram, self.A.shape[1], dtype=self.A.dtype, iterations=10))

    def gram_level(self, c: torch.Tensor, target: float, stage: str) -> torch.Tensor:
        res = cg(self.op.gram, c, tol=relative_tolerance(target, c), maxiter=self.options.maxiter)
        self.info.record(stage, res)
        return res.x


class PlainLSQR(PlainCG):
    def least_squares(self, b: torch.Tensor, tol: float) -> torch.Tensor:
        with self.info.timed("iterate"):
            res = lsqr(self.op.matvec, self.op.rmatvec, b, tol=tol, maxiter=self.options.maxiter)
        self.info.record("ls", res)
        return res.x
