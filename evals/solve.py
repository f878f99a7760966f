"""One entry point for every solver of the three regression proxies (see evals/problems.py):

    x, info = solve(problem, A, b, *, j=1, eps=1e-8, method=..., seed=0)
    x, info = least_squares(A, b, *, eps=1e-10, method=..., seed=0)     # the tall least-squares stage on its own

Methods (float64 throughout; A and b are converted):

  gram_power (a) / a_gram_power (b)
    qr             Householder QR of A (LAPACK geqrf/ormqr): the reference; R solves every Gram level directly
    svd            the SVD of A: the other reference
    gram_cholesky  Cholesky of the Gram matrix AᵀA: fast, but its error grows as u·κ(A)² (the fragile baseline)
    cg / lsqr      unpreconditioned: CG on AᵀA per level; for (b) LSQR on min ||A y - b|| first
    sketch_gd      the paper's pipeline (Song, Yin & Zhang, arXiv 2308.14304): sketch S, R = qr(SA).R, gradient
                   descent on the preconditioned system with the step the embedding bound gives, nested over levels
    sketch_pcg     the same R with conjugate gradients, warm-started at sketch-and-solve; for (b) CG on the
                   preconditioned normal equations (A R^-1)ᵀ(A R^-1) z = R^-T Aᵀ b, whose product reads A once
    sketch_lsqr    (b) LSQR on A R^-1 warm-started at sketch-and-solve (two reads of A per iteration), then PCG for
                   the Gram levels
    sketch_cholqr  sketched Cholesky-QR: R_s = qr(SA).R, R = chol((A R_s^-1)ᵀ(A R_s^-1)) R_s — QR accuracy, BLAS-3 only
  exp_kernel (c), exp(A Aᵀ) = D K_G D (D = diag(exp(||a_i||²/2)))
    cholesky       Cholesky of the Jacobi-scaled K_G: the direct reference
    cg             plain CG on exp(A Aᵀ) (needs ||a_i||² <= 709.78 for its entries to exist in float64)
    jacobi_pcg     CG on K_G z = D^-1 b, x = D^-1 z: Jacobi preconditioning removes the row-norm conditioning
    nystrom_pcg    CG on K_G with a randomized Nyström preconditioner of rank r (Frangella, Tropp & Udell 2023)
    tensorsketch_pcg / tensorsketch_gd
                   the paper's Taylor-polynomial preconditioner: exp(A Aᵀ) ~ Σ_l (A Aᵀ)^{∘l} / l! sketched with
                   TensorSketch into features Φ, P = D^-1 Φ Φᵀ D^-1 + μ I; only where the rows are small enough for
                   a low degree (else NotApplicable)

Nested levels (j > 1, and the Gram levels after (b)'s least-squares stage) share one sketch and one R; each level's
tolerance is tightened by σ_max(A)² per remaining level, so the final relres (a) / pred_err (b) meets eps.
`info` records relres, iterations per stage, passes over A (or kernel products), the wall time of sketch / factor /
iterate, and κ(A R^-1) where a sketch preconditioner was built (`diagnostics=False` skips that extra O(n d²)).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from scipy.stats import poisson

from evals import problems as P
from evals.krylov import cg, lsqr, power_norm, preconditioned_gd
from evals.sketch import SKETCHES, Sketch, tensor_sketch

METHODS = {
    "gram_power": ("qr", "svd", "gram_cholesky", "cg", "sketch_gd", "sketch_pcg", "sketch_cholqr"),
    "a_gram_power": ("qr", "svd", "gram_cholesky", "lsqr", "sketch_gd", "sketch_pcg", "sketch_lsqr", "sketch_cholqr"),
    "exp_kernel": ("cholesky", "cg", "jacobi_pcg", "nystrom_pcg", "tensorsketch_pcg", "tensorsketch_gd"),
}
LEAST_SQUARES_METHODS = ("qr", "svd", "lstsq", "gram_cholesky", "lsqr", "sketch_gd", "sketch_pcg", "sketch_lsqr",
                         "sketch_cholqr")
DEFAULT_METHOD = {"gram_power": "sketch_pcg", "a_gram_power": "sketch_lsqr", "exp_kernel": "jacobi_pcg"}
SKETCHED = {"sketch_gd", "sketch_pcg", "sketch_lsqr", "sketch_cholqr"}
DIRECT = {"qr", "svd", "gram_cholesky", "sketch_cholqr", "cholesky"}  # no iterations: a factorisation solves
FUSED_MIN_ENTRIES = 1 << 22  # from this size of A, Aᵀ(A v) runs in cache-sized row blocks (one read of A)
FUSED_BLOCK_ROWS = 512
MAX_TAYLOR_DEGREE = 16
TAYLOR_TAIL = 1e-6
GD_MARGIN = 1.5


class NotApplicable(P.SolverError):
    """The method does not apply to this instance (e.g. a Taylor sketch for rows too large); the message says why."""


@dataclass
class SolveInfo:
    problem: str
    method: str
    n: int
    d: int
    j: int
    eps: float
    relres: float = math.nan
    converged: bool = True
    iterations: dict[str, int] = field(default_factory=dict)  # per stage: "ls", "level1", "level2", ...
    # products with A or Aᵀ itself (blocks count once), or with the n x n kernel for exp_kernel; sketch_cholqr's two
    # further n x d passes over A1 = A R_s^-1 (its Gram, and Q = A1 R1^-1) are not products with A and not counted
    passes: int = 0
    time_sketch: float = 0.0
    time_factor: float = 0.0
    time_iterate: float = 0.0
    sketch: str | None = None
    sketch_rows: int | None = None
    kappa_precond: float | None = None  # κ(A R^-1) for sketch preconditioners

    @property
    def time_total(self) -> float:
        return self.time_sketch + self.time_factor + self.time_iterate

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["time_total"] = self.time_total
        out["iterations_total"] = sum(self.iterations.values())
        return out


class _Clock:
    """Adds the wall time of `with clock("factor"):` blocks to info.time_factor (and likewise sketch, iterate)."""

    def __init__(self, info: SolveInfo) -> None:
        self.info = info

    def __call__(self, stage: str) -> _Clock:
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        name = f"time_{self._stage}"
        setattr(self.info, name, getattr(self.info, name) + time.perf_counter() - self._start)


# ------------------------------------------------------------------------------------------------ entry points

def solve(problem: str, A: torch.Tensor, b: torch.Tensor, *, j: int = 1, eps: float = 1e-8, method: str | None = None,
          seed: int = 0, sketch: str = "sparse_sign", sketch_rows: int | None = None, maxiter: int = 2000,
          refine: int = 0, rank: int | None = None, diagnostics: bool = True) -> tuple[torch.Tensor, SolveInfo]:
    """Solve `problem` (gram_power, a_gram_power, exp_kernel) for A (n, d) and b with `method` (default per
    problem: sketch_pcg, sketch_lsqr, jacobi_pcg) to relative accuracy eps; returns x and a SolveInfo.

    sketch / sketch_rows: the embedding of the sketch methods (default sparse_sign with 4d rows); maxiter: per
    Krylov stage; refine: refinement steps after an iterative sketched least-squares stage (each costs about as
    many iterations again and brings the forward error in y towards Householder QR's; measured in
    results/bench_solvers.md); rank: the Nyström rank (default min(n, 256)). Raises SolverError for bad input,
    NotApplicable where a method cannot handle an instance."""
    P.check_problem(problem, A, b, j)
    method = method or DEFAULT_METHOD[problem]
    if method not in METHODS[problem]:
        raise P.SolverError(f"{problem} has no method {method!r}; choose one of {', '.join(METHODS[problem])}")
    if not eps > 0:
        raise P.SolverError(f"eps must be > 0, got {eps}")
    A, b = A.double(), b.double()
    info = SolveInfo(problem, method, A.shape[0], A.shape[1], j, eps)
    if problem == "exp_kernel":
        x = _solve_exp(A, b, info, seed=seed, maxiter=maxiter, rank=rank)
    else:
        solver = _GramSolver(A, info, method, seed=seed, sketch=sketch, sketch_rows=sketch_rows, maxiter=maxiter,
                             refine=refine)
        if problem == "gram_power":
            x = solver.gram_levels(b, j, float(torch.linalg.vector_norm(b)), extra_power=0)
        else:
            y = solver.least_squares(b, eps / (j + 1))
            x = solver.gram_levels(y, j, float(torch.linalg.vector_norm(b)), extra_power=1)
        if diagnostics:
            info.kappa_precond = solver.kappa_precond()
    info.relres = P.relres(problem, A, x, b, j)
    return x, info


def least_squares(A: torch.Tensor, b: torch.Tensor, *, eps: float = 1e-10, method: str = "sketch_lsqr", seed: int = 0,
                  sketch: str = "sparse_sign", sketch_rows: int | None = None, maxiter: int = 2000, refine: int = 0,
                  diagnostics: bool = True) -> tuple[torch.Tensor, SolveInfo]:
    """min_y ||A y - b|| for a tall A: the first stage of a_gram_power, timed on its own (and `lstsq`, torch's
    default LAPACK driver, as a further reference). info.relres is ||A y - b|| / ||b||."""
    P.check_problem("a_gram_power", A, b, 1)
    if not eps > 0:
        raise P.SolverError(f"eps must be > 0, got {eps}")
    if method not in LEAST_SQUARES_METHODS:
        raise P.SolverError(f"least_squares has no method {method!r}; choose one of {', '.join(LEAST_SQUARES_METHODS)}")
    A, b = A.double(), b.double()
    info = SolveInfo("least_squares", method, A.shape[0], A.shape[1], 0, eps)
    if method == "lstsq":
        with _Clock(info)("factor"):
            y = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
        info.passes = 1
    else:
        solver = _GramSolver(A, info, method, seed=seed, sketch=sketch, sketch_rows=sketch_rows, maxiter=maxiter,
                             refine=refine)
        y = solver.least_squares(b, eps)
        if diagnostics:
            info.kappa_precond = solver.kappa_precond()
    info.relres = float(torch.linalg.vector_norm(A @ y - b) / torch.linalg.vector_norm(b))
    return y, info


# ------------------------------------------------------------------------------------- (a), (b) and least squares

class _GramSolver:
    """The machinery shared by gram_power, a_gram_power and least_squares for one A and one method: a triangular
    factor R (exact for qr / sketch_cholqr / gram_cholesky, a sketch preconditioner for the sketch_* iterations)
    and the iteration that uses it."""

    def __init__(self, A: torch.Tensor, info: SolveInfo, method: str, *, seed: int, sketch: str,
                 sketch_rows: int | None, maxiter: int, refine: int) -> None:
        if refine < 0:
            raise P.SolverError(f"refine must be >= 0 refinement steps, got {refine}")
        self.A, self.info, self.method, self.maxiter, self.refine = A, info, method, maxiter, refine
        self.clock = _Clock(info)
        self.R: torch.Tensor | None = None
        self.qr: tuple[torch.Tensor, torch.Tensor] | None = None
        self.svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.sketch_qr: tuple[torch.Tensor, torch.Tensor] | None = None  # (Q_s, R_s) of SA, for sketch-and-solve
        self.Q: torch.Tensor | None = None  # A R^-1 of the sketched Cholesky-QR
        self._r_norm_value: float | None = None
        n, d = A.shape
        if method in SKETCHED:
            if sketch not in SKETCHES:
                raise P.SolverError(f"unknown sketch {sketch!r}; choose one of {', '.join(SKETCHES)}")
            k = sketch_rows or 4 * d
            if not d <= k:
                raise P.SolverError(f"sketch_rows must be >= d = {d} for R = qr(SA).R to be invertible, got {k}")
            info.sketch, info.sketch_rows = sketch, k
            self.S = Sketch(sketch, n, k, seed)
            with self.clock("sketch"):
                SA = self.S(A)
            self._passes(1)
            with self.clock("factor"):
                self.sketch_qr = torch.linalg.qr(SA)
                self.R = self.sketch_qr[1]
                if method == "sketch_cholqr":  # A1 = A R_s^-1 is well conditioned, so its Cholesky-QR is accurate
                    A1 = torch.linalg.solve_triangular(self.R, A, upper=True, left=False)
                    R1 = self._cholesky_upper(A1.T @ A1)
                    self.Q = torch.linalg.solve_triangular(R1, A1, upper=True, left=False)
                    self.R = R1 @ self.R
                    self._passes(1)
        elif method == "qr":
            with self.clock("factor"):
                self.qr = torch.geqrf(A)
                self.R = self.qr[0][:d].triu()
            self._passes(1)
        elif method == "svd":
            with self.clock("factor"):
                self.svd = torch.linalg.svd(A, full_matrices=False)
            self._passes(1)
        elif method == "gram_cholesky":
            with self.clock("factor"):
                self.R = self._cholesky_upper(A.T @ A)
            self._passes(1)

    # -- helpers

    def _passes(self, count: int) -> None:
        self.info.passes += count

    def _cholesky_upper(self, G: torch.Tensor) -> torch.Tensor:
        L, status = torch.linalg.cholesky_ex(G)
        if status:  # not positive definite in floating point: κ(A)² beyond 1/u; the fragile route fails here
            self.info.converged = False
            return torch.full_like(G, math.nan)
        return L.T

    def _rinv(self, v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.R, v[:, None], upper=True)[:, 0]

    def _rinv_t(self, v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.R.T, v[:, None], upper=False)[:, 0]

    def _A(self, v: torch.Tensor) -> torch.Tensor:
        self._passes(1)
        return self.A @ v

    def _At(self, u: torch.Tensor) -> torch.Tensor:
        self._passes(1)
        return self.A.T @ u

    def _gram(self, v: torch.Tensor) -> torch.Tensor:
        """Aᵀ(A v). For a large A in row blocks that stay in cache, so A is read once instead of twice: the
        iterations are memory-bound, and this is ~1.5x faster at 2^18 x 768 on one core."""
        A = self.A
        if A.numel() < FUSED_MIN_ENTRIES:
            self._passes(2)
            return A.T @ (A @ v)
        self._passes(1)
        out = torch.zeros(A.shape[1], dtype=A.dtype)
        for start in range(0, A.shape[0], FUSED_BLOCK_ROWS):
            block = A[start:start + FUSED_BLOCK_ROWS]
            out.addmv_(block.T, block @ v)
        return out

    def _B(self, z: torch.Tensor) -> torch.Tensor:  # B = A R^-1, never formed
        return self._A(self._rinv(z))

    def _Bt(self, u: torch.Tensor) -> torch.Tensor:
        return self._rinv_t(self._At(u))

    def _BtB(self, z: torch.Tensor) -> torch.Tensor:
        return self._rinv_t(self._gram(self._rinv(z)))

    def _gd_step(self) -> float:
        """2 / (lo + hi) for BᵀB's spectrum in [(1 + e0)^-2, (1 - e0)^-2], e0 = sqrt(d / k): the subspace-embedding
        bound the paper's step size rests on (a Gaussian sketch's distortion; sparse sketches are near it)."""
        e0 = min(math.sqrt(self.A.shape[1] / self.info.sketch_rows), 0.9)  # k = d gives no bound: cap it
        return 2.0 / ((1 + e0) ** -2 + (1 - e0) ** -2)

    def sigma_max(self) -> float:
        """||A||_2: exact from an exact factor, ||R||_2 from a sketch preconditioner (within the embedding's
        distortion), by power iteration on AᵀA for the unpreconditioned methods (counted passes)."""
        if self.svd is not None:
            return float(self.svd[1][0])
        if self.R is not None:
            return self._r_norm()
        with self.clock("factor"):
            return math.sqrt(power_norm(self._gram, self.A.shape[1], dtype=self.A.dtype, iterations=10))

    def _r_norm(self) -> float:
        """||R||_2 by power iteration on RᵀR (d x d, cheap), computed once."""
        if self._r_norm_value is None:
            R = self.R
            if torch.isfinite(R).all():
                self._r_norm_value = math.sqrt(power_norm(lambda v: R.T @ (R @ v), R.shape[0], dtype=R.dtype))
            else:  # a failed Cholesky (gram_cholesky)
                self._r_norm_value = math.nan
        return self._r_norm_value

    def kappa_precond(self) -> float | None:
        if self.method not in SKETCHED or self.method == "sketch_cholqr":
            return None
        s = torch.linalg.svdvals(torch.linalg.solve_triangular(self.R, self.A, upper=True, left=False))
        return float(s[0] / s[-1])

    # -- the least-squares stage

    def least_squares(self, b: torch.Tensor, tol: float) -> torch.Tensor:
        """y ~ argmin ||A y - b|| with ||Bᵀ(b - A y)|| <= tol ||b|| for the iterative methods (B = A R^-1 or A)."""
        info, m = self.info, self.method
        if m == "qr":
            a, tau = self.qr
            with self.clock("iterate"):
                qtb = torch.ormqr(a, tau, b[:, None], left=True, transpose=True)[: self.A.shape[1], 0]
                y = self._rinv(qtb)
            self._passes(1)
            return y
        if m == "svd":
            U, s, Vh = self.svd
            with self.clock("iterate"):
                y = Vh.T @ ((U.T @ b) / s)
            self._passes(1)
            return y
        if m == "sketch_cholqr":
            with self.clock("iterate"):
                y = self._rinv(self.Q.T @ b)
            self._passes(1)
            return y
        if m == "gram_cholesky":
            with self.clock("iterate"):
                y = self._rinv(self._rinv_t(self._At(b)))
            return y
        with self.clock("iterate"):
            if m == "lsqr":
                res = lsqr(self._A, self._At, b, tol=tol, maxiter=self.maxiter)
                info.iterations["ls"] = res.iterations
                info.converged &= res.converged
                return res.x
            Q_s, _ = self.sketch_qr
            z0 = Q_s.T @ self.S(b[:, None])[:, 0]  # sketch-and-solve: argmin ||S A y - S b|| = R^-1 Q_sᵀ S b
            self._passes(1)
            y = self._rinv(self._preconditioned_ls(b, z0, tol, "ls"))
            # Iterative refinement (sketch-and-precondition with iterative refinement, Epperly, Meier & Nakatsukasa,
            # arXiv 2311.04362): preconditioned LSQR alone leaves a forward error up to ~u·κ(A)² in y; re-solving for
            # the correction from the residual computed in y, from zero, brings it towards Householder QR's.
            for step in range(1, self.refine + 1):
                r = b - self._A(y)
                # from zero, the correction must be resolved as accurately as the first solve's: its stopping test
                # is relative to its own starting gradient Bᵀr, not to ||b|| (which it would meet at once)
                start = float(torch.linalg.vector_norm(self._Bt(r)) / torch.linalg.vector_norm(r))
                correction = self._preconditioned_ls(r, torch.zeros_like(z0), tol * start, f"refine{step}")
                y = y + self._rinv(correction)
            return y

    def _preconditioned_ls(self, b: torch.Tensor, z0: torch.Tensor, tol: float, stage: str) -> torch.Tensor:
        """z ~ argmin ||B z - b|| (B = A R^-1, ||B|| ~ 1) from z0, until ||Bᵀ(b - B z)|| <= tol ||b||."""
        m, target = self.method, tol * float(torch.linalg.vector_norm(b))
        if m == "sketch_lsqr":
            res = lsqr(self._B, self._Bt, b, tol=tol, maxiter=self.maxiter, x0=z0)
        else:  # the normal equations BᵀB z = Bᵀb (κ(B)² is small): CG, or the paper's gradient descent
            rhs = self._Bt(b)
            if m == "sketch_pcg":
                res = cg(self._BtB, rhs, x0=z0, tol=_relative(target, rhs), maxiter=self.maxiter)
            else:
                res = preconditioned_gd(lambda z: rhs - self._BtB(z), z0, step=self._gd_step(), target=target,
                                        maxiter=self.maxiter)
        self.info.iterations[stage] = res.iterations
        self.info.converged &= res.converged
        return res.x

    # -- the Gram levels

    def gram_levels(self, c: torch.Tensor, levels: int, bnorm: float, *, extra_power: int) -> torch.Tensor:
        """Apply (AᵀA)^-levels to c, level by level. Level l's residual r_l enters the final residual multiplied by
        (AᵀA)^{l-1} (and by A once more for problem b: extra_power = 1), so it must satisfy
        ||r_l|| <= eps ||b|| / (levels' share · σ_max^{2(l-1)+extra_power})."""
        info = self.info
        share = levels + extra_power
        sigma = 1.0 if self.method in DIRECT else self.sigma_max()  # direct levels need no tolerance
        y = c
        for level in range(1, levels + 1):
            target = info.eps * bnorm / (share * sigma ** (2 * (level - 1) + extra_power))
            y = self._gram_level(y, target, f"level{level}")
        return y

    def _gram_level(self, c: torch.Tensor, target: float, stage: str) -> torch.Tensor:
        """y with ||AᵀA y - c|| <= target (iterative) or y = R^-1 R^-T c (direct)."""
        info, m = self.info, self.method
        with self.clock("iterate"):
            if m == "svd":
                _, s, Vh = self.svd
                return Vh.T @ ((Vh @ c) / s**2)
            if m in DIRECT:  # qr, gram_cholesky, sketch_cholqr: R is an exact factor
                return self._rinv(self._rinv_t(c))
            if m in ("cg", "lsqr"):
                res = cg(self._gram, c, tol=_relative(target, c), maxiter=self.maxiter)
                info.iterations[stage] = res.iterations
                info.converged &= res.converged
                return res.x
            # preconditioned in z = R y: BᵀB z = R^-T c, whose residual is R^-T times the original one
            rhs = self._rinv_t(c)
            z_target = target / self._r_norm()
            if m == "sketch_gd":
                res = preconditioned_gd(lambda z: rhs - self._BtB(z), rhs, step=self._gd_step(),
                                        target=z_target, maxiter=self.maxiter)
            else:
                res = cg(self._BtB, rhs, x0=rhs, tol=_relative(z_target, rhs), maxiter=self.maxiter)
            info.iterations[stage] = res.iterations
            info.converged &= res.converged
            return self._rinv(res.x)


def _relative(target: float, v: torch.Tensor) -> float:
    return target / max(float(torch.linalg.vector_norm(v)), torch.finfo(v.dtype).tiny)


# ---------------------------------------------------------------------------------------------------------- (c)

def _solve_exp(A: torch.Tensor, b: torch.Tensor, info: SolveInfo, *, seed: int, maxiter: int,
               rank: int | None) -> torch.Tensor:
    clock, m, n = _Clock(info), info.method, A.shape[0]
    with clock("factor"):
        half = P.log_jacobi(A)
        K = P.gaussian_kernel(A)
        c = b * torch.exp(-half)  # D^-1 b
    info.passes += 1

    def kernel(v: torch.Tensor) -> torch.Tensor:
        info.passes += 1
        return K @ v

    if m == "cg":
        with clock("factor"):
            d = torch.exp(half)
        with clock("iterate"):
            res = cg(lambda v: d * kernel(d * v), b, tol=info.eps, maxiter=maxiter)
        info.iterations["cg"], info.converged = res.iterations, res.converged
        return res.x
    if m == "cholesky":
        with clock("factor"):
            L, status = torch.linalg.cholesky_ex(K)
        with clock("iterate"):
            z = torch.cholesky_solve(c[:, None], L)[:, 0] if not status else torch.full_like(c, math.nan)
        info.converged = not status
        return z * torch.exp(-half)

    precond = None
    if m == "nystrom_pcg":
        rank = min(n, rank or 256)
        with clock("factor"):
            precond = _nystrom_preconditioner(K, rank, seed)
        info.passes += rank
    elif m.startswith("tensorsketch"):
        with clock("sketch"):
            features = _taylor_features(A, seed) * torch.exp(-half)[:, None]
        with clock("factor"):
            precond = _woodbury_inverse(features, shift=1e-2)
    with clock("iterate"):
        if m == "tensorsketch_gd":
            # the step must stay below 2 / λ_max(P^-1 K_G); power iteration underestimates λ_max, hence the margin
            lam = power_norm(lambda v: precond(kernel(v)), n, dtype=A.dtype, iterations=30, seed=seed)
            res = preconditioned_gd(lambda z: c - kernel(z), precond(c), step=1.0 / (GD_MARGIN * lam),
                                    target=info.eps * float(torch.linalg.vector_norm(c)), maxiter=maxiter,
                                    precond=precond)
        else:
            res = cg(kernel, c, tol=info.eps, maxiter=maxiter, precond=precond)
    info.iterations[m.split("_")[-1]], info.converged = res.iterations, res.converged
    return res.x * torch.exp(-half)


def _nystrom_preconditioner(K: torch.Tensor, rank: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
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


def _taylor_features(A: torch.Tensor, seed: int) -> torch.Tensor:
    """Φ with Φ Φᵀ ~ Σ_{l<=q} (A Aᵀ)^{∘l} / l! ~ exp(A Aᵀ): TensorSketches of degree 0 .. q, 2d features each, with q
    the smallest degree whose Taylor tail at t = max ||a_i||² is <= 1e-6 of exp(t) (a Poisson tail)."""
    t = float((A * A).sum(1).max())
    q = int(poisson.isf(TAYLOR_TAIL, t)) + 1 if t > 0 else 0
    if q > MAX_TAYLOR_DEGREE:
        raise NotApplicable(f"the Taylor-polynomial sketch needs degree {q} > {MAX_TAYLOR_DEGREE} for max ||a_i||² = "
                            f"{t:.3g} (the degree grows ~2x the squared row norm); use jacobi_pcg or nystrom_pcg")
    m = 2 * A.shape[1]
    return torch.cat([tensor_sketch(A, ell, m, seed + ell) / math.sqrt(math.factorial(ell)) for ell in range(q + 1)], 1)


def _woodbury_inverse(features: torch.Tensor, shift: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """(Φ Φᵀ + μ I)^-1 v = (v - Φ (μ I + Φᵀ Φ)^-1 Φᵀ v) / μ, with one Cholesky of the small m x m core."""
    core = torch.linalg.cholesky(features.T @ features + shift * torch.eye(features.shape[1], dtype=features.dtype))

    def apply(v: torch.Tensor) -> torch.Tensor:
        return (v - features @ torch.cholesky_solve((features.T @ v)[:, None], core)[:, 0]) / shift

    return apply
