"""One entry point for every solver of the three regression proxies (see evals/problems.py):

    x, info = solve(problem, A, b, *, j=1, eps=1e-8, method=..., seed=0)
    x, info = least_squares(A, b, *, eps=1e-10, method=..., seed=0)     # the tall least-squares stage on its own

Methods (float64 throughout; A and b are converted), named in the registry evals/methods/__init__.py:

  gram_power (a), a_gram_power (b), least_squares
    qr, svd, lstsq, gram_cholesky          dense factorisations (evals/methods/dense.py)
    cg, lsqr                               unpreconditioned Krylov (evals/methods/unpreconditioned.py)
    sketch_gd                              the paper's pipeline, Song, Yin & Zhang, arXiv 2308.14304: sketch S,
                                           R = qr(SA).R, preconditioned gradient descent (evals/methods/sketch_gd.py)
    sketch_pcg, sketch_lsqr, sketch_cholqr the same R with CG or LSQR, or as sketched Cholesky-QR
                                           (evals/methods/sketched.py)
  exp_kernel (c), exp(A Aᵀ) = D K_G D (D = diag(exp(||a_i||²/2)))
    cholesky, cg, jacobi_pcg, nystrom_pcg, tensorsketch_pcg, tensorsketch_gd     (evals/methods/kernel.py)

Nested levels (j > 1, and the Gram levels after (b)'s least-squares stage) share one factor or one sketch
preconditioner; each level's tolerance is tightened by σ_max(A)² per remaining level, so the final relres (a) /
pred_err (b) meets eps. `info` records relres, iterations per stage, passes over A (or kernel products), the wall
time of sketch / factor / iterate, and κ(A R^-1) where a sketch preconditioner was built (`diagnostics=False`
skips that extra O(n d²)).

info.converged is True only where the solve can vouch for eps: every stopping test held on a bound, no factor was
numerically singular, x is finite, and the final relres passes problems.residual_test (relres <= eps for
gram_power and exp_kernel; for a_gram_power, scored by pred_err against x*, only the necessary relres² <= 1 + eps²
can be checked). Instances float64 cannot solve (a rank-deficient A, κ(M) beyond 1/u) return x with its honest
relres and converged = False; input no solve can use (a zero A or b, non-finite entries, exp_kernel rows with
||a_i||² > 709.78, whose x underflows float64) raises SolverError.
"""

from __future__ import annotations

import torch

from evals import problems as P
from evals.krylov import weighted_norm
from evals.methods import DEFAULT_METHOD, DIRECT, LEAST_SQUARES_METHODS, METHODS, get_method
from evals.methods.base import NotApplicable, SolveInfo, SolveOptions


def solve(problem: str, A: torch.Tensor, b: torch.Tensor, *, j: int = 1, eps: float = 1e-8, method: str | None = None,
          seed: int = 0, sketch: str = "sparse_sign", sketch_rows: int | None = None, maxiter: int = 2000,
          refine: int = 0, rank: int | None = None, diagnostics: bool = True) -> tuple[torch.Tensor, SolveInfo]:
    """Solve `problem` (gram_power, a_gram_power, exp_kernel) for A (n, d) and b with `method` (default per
    problem: sketch_pcg, sketch_lsqr, jacobi_pcg) to relative accuracy eps; returns x and a SolveInfo.

    sketch / sketch_rows: the embedding of the sketch methods (default sparse_sign with 4d rows, sketch_rows=None;
    at least 2d for the iterative ones, d for sketch_cholqr); seed: an integer in [0, 2^32); maxiter: >= 1, per
    Krylov stage; refine: refinement steps after an iterative sketched least-squares stage (each costs about as
    many iterations again and brings the forward error in y towards Householder QR's; measured in
    results/bench_solvers.md); rank: the Nyström rank (default min(n, 256)). Raises SolverError for bad input,
    NotApplicable where a method cannot handle an instance."""
    P.check_problem(problem, A, b, j)
    method = method or DEFAULT_METHOD[problem]
    cls = get_method(problem, method)
    _check_eps(eps)
    options = SolveOptions(seed=seed, sketch=sketch, sketch_rows=sketch_rows, maxiter=maxiter, refine=refine,
                           rank=rank)
    A, b = A.double(), b.double()
    info = SolveInfo(problem, method, A.shape[0], A.shape[1], j, eps)
    solver = cls(A, info, options)
    x = solver.solve(problem, b, j)
    info.converged &= bool(torch.isfinite(x).all())  # a factor with a zero pivot gives inf or nan, never a solution
    if diagnostics:
        info.kappa_precond = solver.kappa_precond()
    info.relres = P.relres(problem, A, x, b, j)
    info.converged &= P.residual_test(problem, A, x, b, j, info.relres, eps)
    return x, info


def least_squares(A: torch.Tensor, b: torch.Tensor, *, eps: float = 1e-10, method: str = "sketch_lsqr", seed: int = 0,
                  sketch: str = "sparse_sign", sketch_rows: int | None = None, maxiter: int = 2000, refine: int = 0,
                  diagnostics: bool = True) -> tuple[torch.Tensor, SolveInfo]:
    """min_y ||A y - b|| for a tall A: the first stage of a_gram_power, timed on its own (and `lstsq`, torch's
    default LAPACK driver, as a further reference). info.relres is ||A y - b|| / ||b||."""
    P.check_problem("a_gram_power", A, b, 1)
    _check_eps(eps)
    cls = get_method("least_squares", method)
    options = SolveOptions(seed=seed, sketch=sketch, sketch_rows=sketch_rows, maxiter=maxiter, refine=refine)
    A, b = A.double(), b.double()
    info = SolveInfo("least_squares", method, A.shape[0], A.shape[1], 0, eps)
    solver = cls(A, info, options)
    y = solver.least_squares(b, eps)
    info.converged &= bool(torch.isfinite(y).all())
    if diagnostics:
        info.kappa_precond = solver.kappa_precond()
    info.relres = weighted_norm(A @ y - b) / weighted_norm(b)
    info.converged &= P.residual_test("least_squares", A, y, b, 0, info.relres, eps)
    return y, info


def _check_eps(eps: float) -> None:
    if not 0 < eps < 1:  # also rejects nan; eps >= 1 asks for nothing (x = 0 has relres 1)
        raise P.SolverError(f"eps must be a relative accuracy in (0, 1), got {eps}")


__all__ = ["DIRECT", "LEAST_SQUARES_METHODS", "METHODS", "NotApplicable", "SolveInfo", "least_squares", "solve"]
