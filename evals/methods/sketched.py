"""Sketch-preconditioned methods for (a), (b) and least squares (Song, Yin & Zhang, arXiv 2308.14304): a
subspace embedding S (k x n, evals/sketch.py) and R = qr(SA).R make B = A R^-1 well conditioned
(cond(B) <= (1 + e0) / (1 - e0)), so the iterations do not depend on κ(A). Every level and stage shares one S and
one R; the iteration on BᵀB z = R^-T c is the subclass's (CG here, the paper's gradient descent in sketch_gd.py).

    sketch_pcg     CG on the preconditioned normal equations, warm-started at sketch-and-solve; for (b)'s
                   least-squares stage BᵀB z = Bᵀb, whose product reads A once
    sketch_lsqr    (b) LSQR on B warm-started at sketch-and-solve (two reads of A per iteration), then CG per level
    sketch_cholqr  sketched Cholesky-QR: R_s = qr(SA).R, R = chol((A R_s^-1)ᵀ(A R_s^-1)) R_s, an exact factor with
                   QR's accuracy from BLAS-3 alone
"""

from __future__ import annotations

import math

import torch

from evals import problems as P
from evals.krylov import KrylovResult, cg, lsqr, weighted_norm
from evals.methods.base import SolveInfo, SolveOptions
from evals.methods.gram import IterativeMethod, TriangularFactor, relative_tolerance
from evals.methods.operators import UpperTriangular, cholesky_upper
from evals.sketch import SKETCHES, Sketch

# A lower bound on σ_min(B), B = A R^-1: for z = R y, ||z|| = ||S A y|| <= (1 + e0) ||A y|| = (1 + e0) ||B z|| for an
# e0-subspace embedding, so σ_min(B) >= 1 / (1 + e0) > 1/2 whatever e0 < 1
SIGMA_MIN_B = 0.5


def sketch_factor(A: torch.Tensor, info: SolveInfo, options: SolveOptions, *, min_rows: int = 1,
                  why: str = "for R = qr(SA).R to be invertible") -> tuple[Sketch, torch.Tensor, torch.Tensor]:
    """S (options.sketch with options.sketch_rows rows, 4d by default, at least min_rows · d) and the QR factors
    (Q_s, R_s) of SA."""
    n, d = A.shape
    if options.sketch not in SKETCHES:
        raise P.SolverError(f"unknown sketch {options.sketch!r} (allowed: {', '.join(SKETCHES)})")
    k = 4 * d if options.sketch_rows is None else options.sketch_rows
    if not min_rows * d <= k:
        raise P.SolverError(f"sketch_rows must be >= {min_rows}d = {min_rows * d} {why}, got {k}")
    info.sketch, info.sketch_rows = options.sketch, k
    S = Sketch(options.sketch, n, k, options.seed)
    with info.timed("sketch"):
        SA = S(A)
    info.passes += 1
    with info.timed("factor"):
        Q_s, R_s = torch.linalg.qr(SA)
    return S, Q_s, R_s


class SketchPreconditioned(IterativeMethod):
    """Base class: the sketch preconditioner R and the products with B = A R^-1 (never formed); subclasses give
    `normal_solve`, the iteration on BᵀB z = rhs."""

    def __init__(self, A: torch.Tensor, info: SolveInfo, options: SolveOptions) -> None:
        super().__init__(A, info, options)
        # With k near d, SA's distortion can exceed what the stopping tests' bound σ_min(B) >= SIGMA_MIN_B assumes,
        # and solves they stop miss their tolerance; 2d leaves that bound a margin.
        self.S, self.Q_s, R_s = sketch_factor(A, info, options, min_rows=2,
                                              why="for the stopping tests' bound on σ_min(A R^-1) to hold")
        self.R = UpperTriangular(R_s)

    def sigma_max(self) -> float:
        """||R||_2: ||A||_2 within the embedding's distortion."""
        return self.R.norm()

    def kappa_precond(self) -> float | None:
        B = self.R.right_solve(self.A)
        if not torch.isfinite(B).all():
            return math.inf  # R is singular: SA, and so A, is rank-deficient
        s = torch.linalg.svdvals(B)
        return float(s[0] / s[-1]) if s[-1] > 0 else math.inf

    def B(self, z: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(self.R.solve(z))

    def Bt(self, u: torch.Tensor) -> torch.Tensor:
        return self.R.solve_t(self.op.rmatvec(u))

    def BtB(self, z: torch.Tensor) -> torch.Tensor:
        return self.R.solve_t(self.op.gram(self.R.solve(z)))

    def normal_solve(self, rhs: torch.Tensor, x0: torch.Tensor, target: float) -> KrylovResult:
        """z ~ BᵀB^-1 rhs from x0, until ||rhs - BᵀB z|| <= target."""
        raise NotImplementedError

    def least_squares(self, b: torch.Tensor, tol: float) -> torch.Tensor:
        with self.info.timed("iterate"):
            z0 = self.Q_s.T @ self.S(b[:, None])[:, 0]  # sketch-and-solve: argmin ||S A y - S b|| = R^-1 Q_sᵀ S b
            self.info.passes += 1
            first = self.preconditioned_ls(b, z0, tol)
            self.info.record("ls", first)
            y = self.R.solve(first.x)
            # Iterative refinement (sketch-and-precondition with iterative refinement, Epperly, Meier & Nakatsukasa,
            # arXiv 2311.04362): preconditioned LSQR alone leaves a forward error up to ~u·κ(A)² in y; re-solving for
            # the correction from the residual computed in y, from zero, brings it towards Householder QR's.
            for step in range(1, self.options.refine + 1):
                r = b - self.op.matvec(y)
                rnorm = weighted_norm(r)
                if rnorm == 0:  # solved exactly: nothing to refine, and no scale to refine against
                    break
                # from zero, the correction must be resolved as accurately as the first solve's: its stopping test
                # is relative to its own starting gradient Bᵀr, not to ||b|| (which it would meet at once)
                start = weighted_norm(self.Bt(r)) / rnorm
                correction = self.preconditioned_ls(r, torch.zeros_like(z0), tol * start)
                self.info.iterations[f"refine{step}"] = correction.iterations
                if not correction.converged:  # floored by rounding or out of iterations: its x is noise, y stands
                    break
                y = y + self.R.solve(correction.x)
        return y

    def preconditioned_ls(self, b: torch.Tensor, z0: torch.Tensor, tol: float) -> KrylovResult:
        """z ~ argmin ||B z - b|| from z0 with ||B (z - z*)|| <= tol ||b||, by the normal equations BᵀB z = Bᵀb
        (κ(B)² is small). Bᵀr = BᵀB (z* - z) for r = b - B z gives ||B (z - z*)|| <= ||Bᵀr|| / σ_min(B), so the
        stage stops at ||Bᵀr|| <= SIGMA_MIN_B tol ||b||."""
        return self.normal_solve(self.Bt(b), z0, SIGMA_MIN_B * tol * weighted_norm(b))

    def gram_level(self, c: torch.Tensor, target: float, stage: str) -> torch.Tensor:
        # preconditioned in z = R y: BᵀB z = R^-T c, whose residual is R^-T times the original one
        rhs = self.R.solve_t(c)
        res = self.normal_solve(rhs, rhs, target / self.R.norm())
        self.info.record(stage, res)
        return self.R.solve(res.x)


class SketchPCG(SketchPreconditioned):
    def normal_solve(self, rhs: torch.Tensor, x0: torch.Tensor, target: float) -> KrylovResult:
        return cg(self.BtB, rhs, x0=x0, tol=relative_tolerance(target, rhs), maxiter=self.options.maxiter)


class SketchLSQR(SketchPCG):
    def preconditioned_ls(self, b: torch.Tensor, z0: torch.Tensor, tol: float) -> KrylovResult:
        return lsqr(self.B, self.Bt, b, tol=tol, maxiter=self.options.maxiter, x0=z0, sigma_min=SIGMA_MIN_B)


class SketchCholQR(TriangularFactor):
    def __init__(self, A: torch.Tensor, info: SolveInfo, options: SolveOptions) -> None:
        _, _, self.R_s = sketch_factor(A, info, options)
        super().__init__(A, info, options)

    def factor(self, A: torch.Tensor) -> None:
        # A1 = A R_s^-1 is well conditioned, so its Cholesky-QR is accurate
        A1 = UpperTriangular(self.R_s).right_solve(A)
        R1 = UpperTriangular(cholesky_upper(A1.T @ A1, self.info))
        self.Q = R1.right_solve(A1)
        self.R = UpperTriangular(R1.R @ self.R_s)

    def ls_solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.R.solve(self.Q.T @ b)
