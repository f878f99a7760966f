"""sketch_gd: the pipeline of Song, Yin & Zhang (arXiv 2308.14304) for (a), (b) and least squares: the
sketch preconditioner R = qr(SA).R (sketched.py), then gradient descent on the preconditioned system with the step
the subspace-embedding bound gives, nested over the Gram levels."""

from __future__ import annotations

import math

import torch

from evals.krylov import KrylovResult, preconditioned_gd
from evals.methods.sketched import SketchPreconditioned


class SketchGD(SketchPreconditioned):
    def step(self) -> float:
        """2 / (lo + hi) for BᵀB's spectrum in [(1 + e0)^-2, (1 - e0)^-2], e0 = sqrt(d / k): the subspace-embedding
        bound the paper's step size rests on (a Gaussian sketch's distortion; sparse sketches are near it)."""
        e0 = math.sqrt(self.A.shape[1] / self.info.sketch_rows)
        return 2.0 / ((1 + e0) ** -2 + (1 - e0) ** -2)

    def normal_solve(self, rhs: torch.Tensor, x0: torch.Tensor, target: float) -> KrylovResult:
        # BᵀB is symmetric: where this sketch's distortion exceeds e0, backtracking halves the step instead of diverging
        return preconditioned_gd(lambda z: rhs - self.BtB(z), x0, step=self.step(), target=target,
                                 maxiter=self.options.maxiter, backtrack=True)
