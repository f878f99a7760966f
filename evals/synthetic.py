"""Synthetic controls with known conditioning, to read results on extracted attention matrices against.

    conditioned(n, d, kappa, seed)                 A = Q diag(s) Vᵀ, Q and V orthonormal, s geometric from 1 to 1/kappa
    conditioned(n, d, kappa, seed, coherent=True)  the same spectrum with A's leverage packed into d rows (a uniform
                                                   row sample misses them; sketches that mix every row do not)
    exp_rows(n, d, norm_sq_min, norm_sq_max, seed, rank=None)
                                                   rows for exp(A Aᵀ): random directions (in a rank-dim subspace when
                                                   given) with squared norms spread from min to max
    rhs(n, seed)                                   a standard normal right-hand side
"""

from __future__ import annotations

import math

import torch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conditioned(n: int, d: int, kappa: float, seed: int = 0, *, coherent: bool = False) -> torch.Tensor:
    """An n x d float64 matrix with singular values exactly geomspace(1, 1/kappa, d) (to rounding)."""
    if not (n >= d >= 1 and kappa >= 1):
        raise ValueError(f"conditioned needs n >= d >= 1 and kappa >= 1, got n={n}, d={d}, kappa={kappa}")
    gen = _generator(seed)
    basis = torch.randn(n, d, dtype=torch.float64, generator=gen)
    if coherent:
        basis[:d] += 1e4 * torch.eye(d, dtype=torch.float64)  # the first d rows carry almost all the leverage
    Q = torch.linalg.qr(basis)[0]
    V = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen))[0]
    s = torch.logspace(0, -math.log10(kappa), d, dtype=torch.float64)
    return (Q * s) @ V.T


def exp_rows(n: int, d: int, norm_sq_min: float, norm_sq_max: float, seed: int = 0,
             rank: int | None = None) -> torch.Tensor:
    """n rows in R^d, directions uniform on the sphere of a random rank-dim subspace (all of R^d by default),
    squared norms uniform in [norm_sq_min, norm_sq_max]: heterogeneous rows make exp(A Aᵀ) ill-conditioned through
    D; small or low-dimensional rows make it nearly low rank."""
    gen = _generator(seed)
    rank = rank or d
    directions = torch.randn(n, rank, dtype=torch.float64, generator=gen)
    if rank < d:
        directions = directions @ torch.linalg.qr(torch.randn(d, rank, dtype=torch.float64, generator=gen))[0].T
    directions /= torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    norms_sq = norm_sq_min + (norm_sq_max - norm_sq_min) * torch.rand(n, dtype=torch.float64, generator=gen)
    return directions * norms_sq.sqrt()[:, None]


def rhs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dtype=torch.float64, generator=_generator(10_000 + seed))
