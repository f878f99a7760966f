"""The shape of every method for problems (a) and (b) and the tall least-squares stage (evals/problems.py):

    gram_power     (AᵀA)^j x = b                 j Gram levels, c <- (AᵀA)^-1 c
    a_gram_power   min_x ||A (AᵀA)^j x - b||     the least-squares stage y ~ argmin ||A y - b||, then j Gram levels

A direct method applies an exact factor at every level; an iterative one solves each level to a tolerance chosen
so that the final relres (a) / pred_err (b) meets eps.
"""

from __future__ import annotations

import torch

from evals import problems as P
from evals.krylov import weighted_norm
from evals.methods.base import Method, SolveInfo, SolveOptions
from evals.methods.operators import TallMatrix, UpperTriangular


class GramMethod(Method):
    """Base class: subclasses implement `least_squares` (where they solve (b)) and `gram_levels`."""

    def __init__(self, A: torch.Tensor, info: SolveInfo, options: SolveOptions) -> None:
        super().__init__(A, info, options)
        self.op = TallMatrix(A, info)

    def solve(self, problem: str, b: torch.Tensor, j: int) -> torch.Tensor:
        bnorm = weighted_norm(b)
        if problem == "gram_power":
            return self.gram_levels(b, j, bnorm, extra_power=0)
        y = self.least_squares(b, self.info.eps / (j + 1))
        return self.gram_levels(y, j, bnorm, extra_power=1)

    def least_squares(self, b: torch.Tensor, tol: float) -> torch.Tensor:
        """y ~ argmin ||A y - b|| with ||A (y - y*)|| <= tol ||b||: exactly (to rounding) for a direct method, by a
        stopping test that bounds it for a sketch-preconditioned one, and by Paige & Saunders' test, which does not
        bound it when κ(A) is large, for plain LSQR."""
        raise NotImplementedError

    def gram_levels(self, c: torch.Tensor, levels: int, bnorm: float, *, extra_power: int) -> torch.Tensor:
        """(AᵀA)^-levels c, for a right-hand side of norm bnorm; extra_power = 1 when A multiplies the result (b)."""
        raise NotImplementedError


class DirectMethod(GramMethod):
    """A factorisation of A (one pass over it) solves the least-squares stage and every level exactly: no
    iterations, no tolerances. Subclasses give `factor`, `singular_values`, `ls_solve` and `gram_solve`.

    A numerically rank-deficient A (a singular value at or below n u σ_max) leaves the factor a pivot of rounding
    noise: the solve still returns x (relres ~1e15 and beyond on (a) and (b)), marked as not converged."""

    direct = True
    from_gram = False  # the factor comes from the rounded AᵀA (problems.numerically_singular)

    def __init__(self, A: torch.Tensor, info: SolveInfo, options: SolveOptions) -> None:
        super().__init__(A, info, options)
        with info.timed("factor"):
            self.factor(A)
        # a diagnostic, not part of the solve: outside the factor's time (the report's time against n)
        if P.numerically_singular(self.singular_values(), A.shape[0], self.from_gram):
            info.converged = False
        info.passes += 1

    def factor(self, A: torch.Tensor) -> None:
        raise NotImplementedError

    def singular_values(self) -> torch.Tensor:
        """A's singular values, descending, from the factor (O(d³) at most)."""
        raise NotImplementedError

    def least_squares(self, b: torch.Tensor, tol: float) -> torch.Tensor:
        with self.info.timed("iterate"):
            y = self.ls_solve(b)
        self.info.passes += 1
        return y

    def ls_solve(self, b: torch.Tensor) -> torch.Tensor:
        """argmin ||A y - b|| from the factor and one product with A or Aᵀ."""
        raise NotImplementedError

    def gram_levels(self, c: torch.Tensor, levels: int, bnorm: float, *, extra_power: int) -> torch.Tensor:
        with self.info.timed("iterate"):
            for _ in range(levels):
                c = self.gram_solve(c)
        return c

    def gram_solve(self, c: torch.Tensor) -> torch.Tensor:
        """(AᵀA)^-1 c from the factor."""
        raise NotImplementedError


class TriangularFactor(DirectMethod):
    """A = Q R with R exact (Householder QR, Cholesky of the Gram matrix, sketched Cholesky-QR): AᵀA = RᵀR."""

    R: UpperTriangular

    def singular_values(self) -> torch.Tensor:
        R = self.R.R
        return torch.linalg.svdvals(R) if torch.isfinite(R).all() else torch.full_like(R[0], torch.nan)

    def gram_solve(self, c: torch.Tensor) -> torch.Tensor:
        return self.R.solve(self.R.solve_t(c))


class IterativeMethod(GramMethod):
    """Each level is a Krylov solve stopped at a tolerance; subclasses give `sigma_max` and `gram_level`."""

    def gram_levels(self, c: torch.Tensor, levels: int, bnorm: float, *, extra_power: int) -> torch.Tensor:
        """Level l's residual r_l enters the final residual multiplied by (AᵀA)^{l-1} (and by A once more for
        problem b: extra_power = 1), so it must satisfy ||r_l|| <= eps ||b|| / (levels' share · σ_max^{2(l-1)+
        extra_power})."""
        share, sigma = levels + extra_power, self.sigma_max()
        for level in range(1, levels + 1):
            # 0 where σ_max^power exceeds float64 (large j): that level cannot be certified, and is not
            target = self.info.eps * bnorm / (share * P.power_of(sigma, 2 * (level - 1) + extra_power))
            with self.info.timed("iterate"):
                c = self.gram_level(c, target, f"level{level}")
        return c

    def sigma_max(self) -> float:
        """||A||_2, or an estimate of it."""
        raise NotImplementedError

    def gram_level(self, c: torch.Tensor, target: float, stage: str) -> torch.Tensor:
        """y with ||AᵀA y - c|| <= target; records the stage's iterations."""
        raise NotImplementedError


def relative_tolerance(target: float, v: torch.Tensor) -> float:
    """The tol at which a solver stopping at ||r|| <= tol ||v|| meets the absolute target."""
    return target / max(weighted_norm(v), torch.finfo(v.dtype).tiny)

