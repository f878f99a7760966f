"""The linear operators the Gram methods apply: products with a tall A (each counted as passes over A) and solves
with an upper-triangular factor R (exact, or a sketch preconditioner)."""

from __future__ import annotations

import math

import torch

from evals.krylov import power_norm
from evals.methods.base import SolveInfo

FUSED_MIN_ENTRIES = 1 << 22  # from this size of A, Aᵀ(A v) runs in cache-sized row blocks (one read of A)
FUSED_BLOCK_ROWS = 512


class TallMatrix:
    """A (n, d) as an operator whose products add the passes they make over A to info.passes."""

    def __init__(self, A: torch.Tensor, info: SolveInfo) -> None:
        self.A, self.info = A, info

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.info.passes += 1
        return self.A @ v

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        self.info.passes += 1
        return self.A.T @ u

    def gram(self, v: torch.Tensor) -> torch.Tensor:
        """Aᵀ(A v). For a large A in row blocks that stay in cache, so A is read once instead of twice: the
        iterations are memory-bound, and the reads of A are what they spend their time on."""
        A = self.A
        if A.numel() < FUSED_MIN_ENTRIES:
            self.info.passes += 2
            return A.T @ (A @ v)
        self.info.passes += 1
        out = A.new_zeros(A.shape[1])
        for start in range(0, A.shape[0], FUSED_BLOCK_ROWS):
            block = A[start:start + FUSED_BLOCK_ROWS]
            out.addmv_(block.T, block @ v)
        return out


class UpperTriangular:
    """R (d, d), upper triangular: R^-1 v, R^-T v and ||R||_2."""

    def __init__(self, R: torch.Tensor) -> None:
        self.R = R
        self._norm: float | None = None

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.R, v[:, None], upper=True)[:, 0]

    def solve_t(self, v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.R.T, v[:, None], upper=False)[:, 0]

    def right_solve(self, M: torch.Tensor) -> torch.Tensor:
        """M R^-1 for a matrix M (n, d)."""
        return torch.linalg.solve_triangular(self.R, M, upper=True, left=False)

    def norm(self) -> float:
        """||R||_2 by power iteration on RᵀR (d x d, cheap), computed once."""
        if self._norm is None:
            R = self.R
            self._norm = math.sqrt(power_norm(lambda v: R.T @ (R @ v), R.shape[0], dtype=R.dtype))
        return self._norm


def cholesky_upper(G: torch.Tensor, info: SolveInfo) -> torch.Tensor:
    """R with RᵀR = G. Where G is not positive definite in floating point (κ(A)² beyond 1/u: the fragile route fails
    here) R is all nan and the solve is marked as not converged."""
    L, status = torch.linalg.cholesky_ex(G)
    if status:
        info.converged = False
        return torch.full_like(G, math.nan)
    return L.T
