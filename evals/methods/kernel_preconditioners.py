"""Preconditioners for the Jacobi-scaled exp kernel K_G (n x n, symmetric positive semi-definite), each returned as
a function v -> P^-1 v: a randomized Nyström approximation, and the paper's Taylor-polynomial sketch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy.stats import poisson

from evals import problems as P
from evals.methods.base import NotApplicable
from evals.sketch import tensor_sketch

Preconditioner = Callable[[torch.Tensor], torch.Tensor]
MAX_TAYLOR_DEGREE = 16
TAYLOR_TAIL = 1e-6


def nystrom_preconditioner(K: torch.Tensor, rank: int, seed: int) -> Preconditioner:
    """Randomized Nyström approximation K ~ U Λ Uᵀ of rank r from K Ω (Ω a Gaussian test matrix, one GEMM; shifted
    by ν ~ u ||KΩ|| for stability) and the preconditioner P^-1 = λ_r U Λ^-1 Uᵀ + (I - U Uᵀ) (Frangella, Tropp &
    Udell, SIAM J. Matrix Anal. Appl. 2023, Alg. 2.1 and eq. 5.3 with μ = 0)."""
    n = K.shape[0]
    omega = torch.linalg.qr(torch.randn(n, rank, dtype=K.dtype, generator=torch.Generator().manual_seed(seed)))[0]
    Y = K @ omega
    nu = math.sqrt(n) * P.UNIT_ROUNDOFF * float(torch.linalg.matrix_norm(Y, 2))
    Y = Y + nu * omega
    C = torch.linalg.cholesky(omega.T @ Y)
    U, s, _ = torch.linalg.svd(torch.linalg.solve_triangular(C, Y.T, upper=False).T, full_matrices=False)
    lam = (s**2 - nu).clamp_min(0)
    keep = lam > lam[0] * P.UNIT_ROUNDOFF * n
    U, lam = U[:, keep], lam[keep]
    floor = lam[-1]

    def apply(v: torch.Tensor) -> torch.Tensor:
        coef = U.T @ v
        return v + U @ (coef * (floor / lam - 1.0))

    return apply


def degree_seed(seed: int, degree: int) -> int:
    """The TensorSketch seed of one degree of one solve's features: distinct for every (seed, degree) with
    0 <= degree <= MAX_TAYLOR_DEGREE, so no two solves' sketches share a factor (seed + degree would give seed 0's
    degree 3 and seed 1's degree 2 the same hashes)."""
    return seed * (MAX_TAYLOR_DEGREE + 1) + degree


def taylor_features(A: torch.Tensor, seed: int) -> torch.Tensor:
    """Φ with Φ Φᵀ ~ Σ_{l<=q} (A Aᵀ)^{∘l} / l! ~ exp(A Aᵀ) (Song, Yin & Zhang, arXiv 2308.14304): TensorSketches
    of degree 0 .. q, 2d features each, with q the smallest degree whose Taylor tail at t = max ||a_i||² is <= 1e-6
    of exp(t) (a Poisson tail). NotApplicable where q would exceed MAX_TAYLOR_DEGREE."""
    t = float((A * A).sum(1).max())
    q = int(poisson.isf(TAYLOR_TAIL, t)) if t > 0 else 0  # isf: the least q with P(X > q) <= TAYLOR_TAIL
    if q > MAX_TAYLOR_DEGREE:
        raise NotApplicable(f"the Taylor-polynomial sketch needs degree {q} > {MAX_TAYLOR_DEGREE} for max ||a_i||² = "
                            f"{t:.3g} (the degree grows ~2x the squared row norm); use jacobi_pcg or nystrom_pcg")
    m = 2 * A.shape[1]
    return torch.cat([tensor_sketch(A, ell, m, degree_seed(seed, ell)) / math.sqrt(math.factorial(ell))
                      for ell in range(q + 1)], 1)


def woodbury_inverse(features: torch.Tensor, shift: float) -> Preconditioner:
    """(Φ Φᵀ + μ I)^-1 v = (v - Φ (μ I + Φᵀ Φ)^-1 Φᵀ v) / μ, with one Cholesky of the small m x m core."""
    core = torch.linalg.cholesky(features.T @ features + shift * torch.eye(features.shape[1], dtype=features.dtype))

    def apply(v: torch.Tensor) -> torch.Tensor:
        return (v - features @ torch.cholesky_solve((features.T @ v)[:, None], core)[:, 0]) / shift

    return apply
