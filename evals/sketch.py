"""Random sketches S (k x n, k << n) that embed the column space of a tall A: ||S A x|| ~ ||A x|| for every x.

Song, Yin & Zhang (arXiv 2308.14304) build their preconditioner from R = qr(S A).R with S a subspace embedding
(SRHT, CountSketch, OSNAP / sparse sign); cond(A R^-1) <= (1 + eps0) / (1 - eps0). Each sketch here is a
deterministic function of its seed, so the same S applies to A and to b (sketch-and-solve needs both):

    S = Sketch("sparse_sign", n, k, seed=0)
    SA, Sb = S(A), S(b[:, None])

Kinds (all scaled so that E[SᵀS] = I):
    gaussian     S_ij ~ N(0, 1/k), generated in column blocks (never k x n at once); the reference embedding
    srht         sqrt(N/k) · P H D / sqrt(N): random signs D, the Walsh-Hadamard transform H of the rows zero-padded
                 to N = 2^p (fast transform, O(N log N) per column), P samples k of the N rows without replacement
                 (the subsampled randomized Hadamard transform; Ailon & Chazelle 2006, Tropp arXiv 1011.1595)
    countsketch  one ±1 per column of S in a hashed row: one pass over A, O(nnz(A)) (Clarkson & Woodruff,
                 arXiv 1207.6365)
    sparse_sign  zeta = 4 entries ±zeta^-1/2 per column in independently hashed rows (zeta CountSketches summed):
                 an OSNAP-style sparse embedding (Nelson & Nguyen, arXiv 1211.1002) that needs fewer rows than
                 CountSketch for the same distortion

`tensor_sketch(A, degree, m, seed)` sketches the rows' tensor powers a^{⊗l} into m features (Pham & Pagh 2013):
<TS(a), TS(b)> ~ (a·b)^l, the building block of the Taylor-polynomial preconditioner for exp(A Aᵀ).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from evals.problems import SolverError

SKETCHES = ("gaussian", "srht", "countsketch", "sparse_sign")
SPARSE_SIGN_ZETA = 4
_GAUSSIAN_BLOCK = 8192


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Walsh-Hadamard transform H x along dim 0 (length a power of two), H = [[1, 1], [1, -1]]^{⊗p}:
    p butterfly passes of additions, O(N log N) per column instead of the O(N²) dense product."""
    n = x.shape[0]
    if n & (n - 1) or n == 0:
        raise ValueError(f"fwht needs a power-of-two length along dim 0, got {n}; zero-pad the rows first")
    rest = x.shape[1:]
    y = x.reshape(n, -1)
    h = 1
    while h < n:
        pairs = y.view(n // (2 * h), 2, h, -1)
        y = torch.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), dim=1).view(n, -1)
        h *= 2
    return y.reshape(n, *rest)


def hadamard(n: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The dense n x n Sylvester-Hadamard matrix (n a power of two): the definition `fwht` is tested against."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    if h.shape[0] != n:
        raise ValueError(f"hadamard needs a power of two, got {n}")
    return h


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class Sketch:
    """A k x n sketching operator of one kind, fixed by its seed; `S(M)` maps an (n, m) matrix to (k, m)."""

    def __init__(self, kind: str, n: int, k: int, seed: int = 0) -> None:
        if kind not in SKETCHES:
            raise SolverError(f"unknown sketch {kind!r}; choose one of {', '.join(SKETCHES)}")
        if not 1 <= k:
            raise SolverError(f"a sketch needs k >= 1 rows, got {k}")
        if kind == "srht" and k > _power_of_two_at_least(n):
            raise SolverError(f"an SRHT samples k of the {_power_of_two_at_least(n)} padded rows; k = {k} is too many; "
                              "pass fewer sketch rows or another sketch")
        self.kind, self.n, self.k, self.seed = kind, n, k, seed
        self._matrix: torch.Tensor | None = None
        self._apply: Callable[[torch.Tensor], torch.Tensor] = getattr(self, f"_{kind}")

    def __repr__(self) -> str:
        return f"Sketch({self.kind!r}, n={self.n}, k={self.k}, seed={self.seed})"

    def __call__(self, m: torch.Tensor) -> torch.Tensor:
        if m.ndim != 2 or m.shape[0] != self.n:
            raise ValueError(f"{self!r} applies to (n={self.n}, m) matrices, got shape {tuple(m.shape)}")
        return self._apply(m)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def _gaussian(self, m: torch.Tensor) -> torch.Tensor:
        gen, out = self._generator(), m.new_zeros(self.k, m.shape[1])
        for start in range(0, self.n, _GAUSSIAN_BLOCK):
            block = m[start:start + _GAUSSIAN_BLOCK]
            s = torch.randn(self.k, block.shape[0], generator=gen, dtype=m.dtype)
            out.addmm_(s, block)
        return out / math.sqrt(self.k)

    def _srht(self, m: torch.Tensor) -> torch.Tensor:
        gen = self._generator()
        size = _power_of_two_at_least(self.n)
        signs = torch.randint(0, 2, (self.n, 1), generator=gen).to(m.dtype).mul_(2).sub_(1)
        rows = torch.randperm(size, generator=gen)[: self.k]
        padded = m.new_zeros(size, m.shape[1])
        padded[: self.n] = signs * m
        return fwht(padded)[rows] / math.sqrt(self.k)

    def _countsketch(self, m: torch.Tensor) -> torch.Tensor:
        return self._sparse(1).to(m.dtype) @ m

    def _sparse_sign(self, m: torch.Tensor) -> torch.Tensor:
        return self._sparse(SPARSE_SIGN_ZETA).to(m.dtype) @ m

    def _sparse(self, zeta: int) -> torch.Tensor:
        """S as a sparse k x n matrix with zeta entries ±zeta^-1/2 per column, in rows hashed independently (built
        once; one sparse-dense product costs O(zeta · nnz(A)), several times faster than zeta index_adds)."""
        if self._matrix is None:
            gen = self._generator()
            rows = torch.randint(0, self.k, (zeta * self.n,), generator=gen)
            signs = torch.randint(0, 2, (zeta * self.n,), generator=gen).to(torch.float64).mul_(2).sub_(1)
            cols = torch.arange(self.n).repeat(zeta)
            self._matrix = torch.sparse_coo_tensor(torch.stack((rows, cols)), signs / math.sqrt(zeta),
                                                   (self.k, self.n), check_invariants=False).coalesce()
        return self._matrix


def tensor_sketch(a: torch.Tensor, degree: int, m: int, seed: int = 0) -> torch.Tensor:
    """TensorSketch of the rows' degree-l tensor powers: (n, d) -> (n, m) with <TS(a_i), TS(a_j)> ~ (a_i·a_j)^l.

    Each of the l factors is a CountSketch of the row (hash [d] -> [m], random signs); the sketch of the tensor
    product is their circular convolution, computed as the product of their FFTs (Pham & Pagh, KDD 2013).
    Degree 0 is the constant feature 1, degree 1 the row itself (exact, m ignored)."""
    if degree < 0:
        raise ValueError(f"tensor_sketch needs degree >= 0, got {degree}")
    n, d = a.shape
    if degree == 0:
        return a.new_ones(n, 1)
    if degree == 1:
        return a
    gen = torch.Generator().manual_seed(seed)
    spectrum = None
    for _ in range(degree):
        cols = torch.randint(0, m, (d,), generator=gen)
        signs = torch.randint(0, 2, (d,), generator=gen).to(a.dtype).mul_(2).sub_(1)
        factor = torch.fft.rfft(a.new_zeros(n, m).index_add_(1, cols, a * signs), dim=1)
        spectrum = factor if spectrum is None else spectrum * factor
    return torch.fft.irfft(spectrum, n=m, dim=1)
