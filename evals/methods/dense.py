"""The dense methods for (a), (b) and least squares: one factorisation of A, then exact solves.

    qr             Householder QR (LAPACK geqrf / ormqr): the reference
    svd            the thin SVD, the factor of the problems' reference x* (so never judged against it)
    lstsq          torch.linalg.lstsq (LAPACK gelsy on the CPU): least squares only, a further reference
    gram_cholesky  Cholesky of AᵀA: fast, but its error grows as u·κ(A)² (the fragile baseline)
"""

from __future__ import annotations

import torch

from evals.methods.gram import DirectMethod, GramMethod, TriangularFactor
from evals.methods.operators import UpperTriangular, cholesky_upper


class HouseholderQR(TriangularFactor):
    def factor(self, A: torch.Tensor) -> None:
        self.reflectors = torch.geqrf(A)
        self.R = UpperTriangular(self.reflectors[0][: A.shape[1]].triu())

    def ls_solve(self, b: torch.Tensor) -> torch.Tensor:
        a, tau = self.reflectors
        return self.R.solve(torch.ormqr(a, tau, b[:, None], left=True, transpose=True)[: self.A.shape[1], 0])


class SVD(DirectMethod):
    shares_reference = True

    def factor(self, A: torch.Tensor) -> None:
        self.U, self.s, self.Vh = torch.linalg.svd(A, full_matrices=False)

    def singular_values(self) -> torch.Tensor:
        return self.s

    def ls_solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.Vh.T @ ((self.U.T @ b) / self.s)

    def gram_solve(self, c: torch.Tensor) -> torch.Tensor:
        return self.Vh.T @ ((self.Vh @ c) / self.s**2)


class GramCholesky(TriangularFactor):
    from_gram = True

    def factor(self, A: torch.Tensor) -> None:
        self.R = UpperTriangular(cholesky_upper(A.T @ A, self.info))

    def ls_solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.gram_solve(self.A.T @ b)  # the normal equations AᵀA y = Aᵀb


class Lstsq(GramMethod):
    """Factorises and solves in one LAPACK call: least squares only."""

    direct = True

    def least_squares(self, b: torch.Tensor, tol: float) -> torch.Tensor:
        with self.info.timed("factor"):
            y = torch.linalg.lstsq(self.A, b[:, None]).solution[:, 0]
        self.info.passes += 1
        return y
