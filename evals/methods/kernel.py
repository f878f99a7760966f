"""The methods of exp_kernel (c), exp(A Aᵀ) x = b, through its Jacobi-scaled form exp(A Aᵀ) = D K_G D with
D = diag(exp(||a_i||² / 2)) and K_G the unit-diagonal Gaussian kernel (evals/problems.py): K_G z = D^-1 b, x = D^-1 z.

    cholesky          Cholesky of K_G: the direct reference
    cg                plain CG on exp(A Aᵀ) itself (its entries exist in float64 only for ||a_i||² <= 709.78)
    jacobi_pcg        CG on K_G: Jacobi scaling removes the row-norm part of the conditioning
    nystrom_pcg       CG on K_G with a randomized Nyström preconditioner of rank r
    tensorsketch_pcg  CG on K_G with the paper's Taylor-polynomial preconditioner P = D^-1 Φ Φᵀ D^-1 + μ I, where
                      the rows are small enough for a low degree (else NotApplicable)
    tensorsketch_gd   the same preconditioner with the paper's gradient descent (arXiv 2308.14304)
"""

from __future__ import annotations

import torch

from evals import problems as P
from evals.krylov import KrylovResult, cg, power_norm, preconditioned_gd, weighted_norm
from evals.methods.base import Method, SolveInfo, SolveOptions
from evals.methods.kernel_preconditioners import (Preconditioner, nystrom_preconditioner, taylor_features,
                                                  woodbury_inverse)

DEFAULT_NYSTROM_RANK = 256
TAYLOR_SHIFT = 1e-2  # μ in P = Φ Φᵀ + μ I (scaled)
GD_MARGIN = 1.5  # power iteration underestimates λ_max(P^-1 K_G): the step stays below 2 / (margin · estimate)


class KernelMethod(Method):
    """Base class: K_G and log D, formed once (one kernel evaluation, counted as a pass); subclasses solve the
    scaled system in `solve_scaled`."""

    timed_against_n = True  # in the report's time against n, which wants a method that applies at every size

    def __init__(self, A: torch.Tensor, info: SolveInfo, options: SolveOptions) -> None:
        super().__init__(A, info, options)
        with info.timed("factor"):
            self.half = P.log_jacobi(A)
            self.K = P.gaussian_kernel(A)
        info.passes += 1

    def kernel(self, v: torch.Tensor) -> torch.Tensor:
        """K_G v, counted as a pass."""
        self.info.passes += 1
        return self.K @ v

    def solve(self, problem: str, b: torch.Tensor, j: int) -> torch.Tensor:
        with self.info.timed("factor"):
            c = b * torch.exp(-self.half)  # D^-1 b
        return self.solve_scaled(c) * torch.exp(-self.half)

    def solve_scaled(self, c: torch.Tensor) -> torch.Tensor:
        """z with K_G z = c."""
        raise NotImplementedError

    def score_weights(self) -> torch.Tensor:
        """D / max(D): the residual of K_G z = c enters the score as D (K_G z - c) (relres ||D (K_G z - c)|| / ||D c||,
        D c = b), so the iterations stop on this weighted norm. Scaled by its largest entry, D cannot overflow."""
        return torch.exp(self.half - self.half.max())


class KernelCholesky(KernelMethod):
    direct = True
    shares_reference = True  # problems.Reference solves exp_kernel with this Cholesky factor where K_G has full rank

    def solve_scaled(self, c: torch.Tensor) -> torch.Tensor:
        with self.info.timed("factor"):
            L, status = torch.linalg.cholesky_ex(self.K)
        with self.info.timed("iterate"):
            z = torch.cholesky_solve(c[:, None], L)[:, 0] if not status else torch.full_like(c, torch.nan)
        self.info.converged = not status
        return z


class KernelCG(KernelMethod):
    def solve(self, problem: str, b: torch.Tensor, j: int) -> torch.Tensor:
        with self.info.timed("factor"):
            d = torch.exp(self.half)
        with self.info.timed("iterate"):
            res = cg(lambda v: d * self.kernel(d * v), b, tol=self.info.eps, maxiter=self.options.maxiter)
        self.info.record("cg", res)
        return res.x


class JacobiPCG(KernelMethod):
    """CG on K_G, with `preconditioner` (none: the Jacobi scaling alone) and `iterate` as subclasses set them."""

    stage = "pcg"

    def preconditioner(self) -> Preconditioner | None:
        return None

    def iterate(self, c: torch.Tensor, precond: Preconditioner | None) -> KrylovResult:
        return cg(self.kernel, c, tol=self.info.eps, maxiter=self.options.maxiter, precond=precond,
                  weights=self.score_weights())

    def solve_scaled(self, c: torch.Tensor) -> torch.Tensor:
        precond = self.preconditioner()
        with self.info.timed("iterate"):
            res = self.iterate(c, precond)
        self.info.record(self.stage, res)
        return res.x


class NystromPCG(JacobiPCG):
    def preconditioner(self) -> Preconditioner:
        rank = min(self.A.shape[0], self.options.rank or DEFAULT_NYSTROM_RANK)
        with self.info.timed("factor"):
            precond = nystrom_preconditioner(self.K, rank, self.options.seed)
        self.info.passes += rank
        return precond


class TensorSketchPCG(JacobiPCG):
    timed_against_n = False  # the Taylor sketch needs small rows, so it rarely applies

    def preconditioner(self) -> Preconditioner:
        with self.info.timed("sketch"):
            features = taylor_features(self.A, self.options.seed) * torch.exp(-self.half)[:, None]
        with self.info.timed("factor"):
            return woodbury_inverse(features, shift=TAYLOR_SHIFT)


class TensorSketchGD(TensorSketchPCG):
    stage = "gd"

    def iterate(self, c: torch.Tensor, precond: Preconditioner | None) -> KrylovResult:
        lam = power_norm(lambda v: precond(self.kernel(v)), self.A.shape[0], dtype=self.A.dtype, iterations=30,
                         seed=self.options.seed)
        weights = self.score_weights()
        return preconditioned_gd(lambda z: c - self.kernel(z), precond(c), step=1.0 / (GD_MARGIN * lam),
                                 target=self.info.eps * weighted_norm(c, weights),
                                 maxiter=self.options.maxiter, precond=precond, weights=weights)
