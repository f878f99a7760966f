"""The three regression proxies of Song, Yin & Zhang (arXiv 2308.14304) on a tall A (n x d), and how to score them.

    gram_power     (a)  min_x ||(AᵀA)^j x - b||,      b in R^d   consistent: OPT = 0
    a_gram_power   (b)  min_x ||A (AᵀA)^j x - b||,    b in R^n   inconsistent in general: OPT = ||(I - P_A) b||
    exp_kernel     (c)  min_x ||exp(A Aᵀ) x - b||,    b in R^n   exp entrywise (the attention kernel regression)

exp(A Aᵀ) is never formed as such: exp(A Aᵀ) = D K_G D with D = diag(exp(||a_i||² / 2)) and K_G the unit-diagonal
Gaussian kernel exp(-||a_i - a_j||² / 2), whose entries lie in [0, 1] whatever the row norms. Its entries overflow
float64 once ||a_i||² > 709.78, and cond(exp(A Aᵀ)) >= exp(max ||a_i||² - min ||a_i||²). Beyond that limit x itself
(~exp(-||a_i||²) b) underflows float64, so exp_kernel refuses such rows (check_problem).

A solve is scored by the paper's criterion (`score` <= eps): ||M x - b|| <= eps ||b|| for (a) and (c), and for (b),
whose residual cannot go below OPT, the analogue ||M (x - x*)|| <= eps ||b||. `float64_predicted_ok` is the a-priori
worst-case bound for a backward-stable float64 solve to meet it, eps >= 100 u κ(M) (u = 1.1e-16): a prediction
reported beside the score, never a reason not to score.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from evals.krylov import weighted_norm

PROBLEMS = ("gram_power", "a_gram_power", "exp_kernel")
UNIT_ROUNDOFF = torch.finfo(torch.float64).eps / 2
EXP_OVERFLOW = math.log(torch.finfo(torch.float64).max)  # 709.78: exp(t) overflows float64 beyond this
GATE = 100.0  # float64 is predicted to reach eps where eps >= GATE * u * κ(M)
SCORED_AGAINST_REFERENCE = frozenset({"a_gram_power"})  # score = pred_err, which needs x*


class SolverError(ValueError):
    """Bad input to a solver or a problem: the message names the problem and the fix."""


def check_problem(problem: str, A: torch.Tensor, b: torch.Tensor, j: int) -> None:
    """Raise SolverError unless (problem, A, b, j) is a well-posed instance: known problem, 2-D finite A with n >= d
    and not all zero for the Gram problems, squared row norms <= 709.78 for exp_kernel, 1-D finite nonzero b of the
    right length, integer j >= 1 (exp_kernel has no power: j = 1)."""
    if problem not in PROBLEMS:
        raise SolverError(f"unknown problem {problem!r}; choose one of {', '.join(PROBLEMS)}")
    if not isinstance(A, torch.Tensor) or A.ndim != 2 or not A.is_floating_point():
        raise SolverError(f"A must be a 2-D floating-point tensor (n, d), got {_describe(A)}")
    if not isinstance(b, torch.Tensor) or b.ndim != 1 or not b.is_floating_point():
        raise SolverError(f"b must be a 1-D floating-point tensor, got {_describe(b)}")
    n, d = A.shape
    want = d if problem == "gram_power" else n
    if b.shape[0] != want:
        side = "d = A.shape[1]" if problem == "gram_power" else "n = A.shape[0]"
        raise SolverError(f"{problem}: b must have length {side} = {want}, got {b.shape[0]}")
    if problem != "exp_kernel" and n < d:
        raise SolverError(f"{problem} needs a tall A (n >= d), got {n} x {d}; stack more rows or transpose")
    if isinstance(j, bool) or not isinstance(j, int) or j < 1:
        raise SolverError(f"the power j must be an integer >= 1, got {j!r}")
    if problem == "exp_kernel" and j != 1:
        raise SolverError(f"exp_kernel has no power j (got j = {j}); leave j at 1")
    for name, t in (("A", A), ("b", b)):
        if not torch.isfinite(t).all():
            raise SolverError(f"{name} has {int((~torch.isfinite(t)).sum())} non-finite entries; clean the input")
    if not b.any():
        raise SolverError("b is zero: x = 0 solves it exactly, and the relative scores divide by ||b||")
    if problem != "exp_kernel" and not A.any():
        raise SolverError(f"{problem}: A is all zeros, so (AᵀA)^j = 0 has no inverse and every x scores the same; "
                          "give a nonzero A")
    if problem == "exp_kernel":
        largest = float((A.double() ** 2).sum(1).max())
        if largest > EXP_OVERFLOW:
            # x = D^-1 K_G^-1 D^-1 b has entries ~exp(-||a_i||²): below float64's smallest number, so x = 0 is
            # the float64 answer and it solves nothing
            raise SolverError(f"exp_kernel: max ||a_i||² = {largest:.6g} > {EXP_OVERFLOW:.2f}, where exp(A Aᵀ)'s "
                              "entries overflow float64 and its solution x (~exp(-||a_i||²) b) underflows it; scale A "
                              "down (softmax's analogue is A = K·d^-1/4) so that every squared row norm is <= "
                              f"{EXP_OVERFLOW:.2f}")


def singular_value_floor(sigma_max: float, n: int) -> float:
    """The singular value of an n-row A at or below which it counts as zero in float64 (n u σ_max): the rounding of
    any factorisation of A is that large, so such a direction of A is numerically in its null space."""
    return sigma_max * n * UNIT_ROUNDOFF


def numerically_singular(s: torch.Tensor, n: int, from_gram: bool = False) -> bool:
    """Whether singular values s (descending, of A or of a factor R with AᵀA = RᵀR) reach the floor: A is
    numerically rank-deficient, and a solve through the factor divides by rounding noise. A factor of the rounded
    Gram matrix itself (`from_gram`: Cholesky of AᵀA) resolves them only down to √(n u) σ_max, the square root of
    AᵀA's rounding n u σ_max²: below that its pivots are noise too."""
    if not bool(torch.isfinite(s).all()):
        return True
    floor = float(s[0]) * math.sqrt(n * UNIT_ROUNDOFF) if from_gram else singular_value_floor(float(s[0]), n)
    return float(s[-1]) <= floor


def power_of(kappa: float, power: int) -> float:
    """kappa ** power, inf where that exceeds float64 (a float power raises OverflowError instead)."""
    try:
        return kappa**power
    except OverflowError:
        return math.inf


def residual_test(problem: str, A: torch.Tensor, x: torch.Tensor, b: torch.Tensor, j: int, relres: float,
                  eps: float) -> bool:
    """Whether a solve's x passes the test the problem's score allows without x*: relres <= eps for gram_power and
    exp_kernel (relres is their score); for a_gram_power and the least-squares stage (j = 0), whose score pred_err
    needs x*, the necessary relres² <= 1 + eps² (||Mx - b||² = OPT² + (pred_err ||b||)² with OPT <= ||b||, so a
    larger relres proves pred_err > eps). That one is decided on relres² - 1 = (||Mx||² - 2 bᵀMx) / ||b||², which
    has no cancellation: relres itself, near 1 where b is nearly orthogonal to the range, would carry a rounding of
    ~u, as large as eps² at any eps below ~1e-8."""
    if problem in ("gram_power", "exp_kernel"):
        return relres <= eps
    scale = weighted_norm(b)
    m, c = apply("a_gram_power", A, x, j) / scale, b / scale
    return float(m @ m - 2 * (c @ m)) <= eps**2


def _describe(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


# ---------------------------------------------------------------------------------------------------- the operators

def gram_apply(A: torch.Tensor, x: torch.Tensor, j: int) -> torch.Tensor:
    """(AᵀA)^j x by repeated Aᵀ(A ·): never forms AᵀA, so no κ² loss from the product itself."""
    for _ in range(j):
        x = A.T @ (A @ x)
    return x


def log_jacobi(A: torch.Tensor) -> torch.Tensor:
    """log D for exp(A Aᵀ) = D K_G D: ||a_i||² / 2 per row."""
    return 0.5 * (A * A).sum(1)


def gaussian_kernel(A: torch.Tensor) -> torch.Tensor:
    """K_G = exp(a_i·a_j - ||a_i||²/2 - ||a_j||²/2) = exp(-||a_i - a_j||² / 2): the Jacobi-scaled exp kernel, unit
    diagonal, every entry in [0, 1], finite for any row norms."""
    half = log_jacobi(A)
    return torch.exp((A @ A.T - half[:, None] - half[None, :]).clamp_max(0.0))


def apply(problem: str, A: torch.Tensor, x: torch.Tensor, j: int = 1) -> torch.Tensor:
    """M x for the problem's operator M: (AᵀA)^j, A (AᵀA)^j, or exp(A Aᵀ) (formed in scaled form, so entries that
    exceed float64 give inf rather than an overflow deep inside a product)."""
    if problem == "gram_power":
        return gram_apply(A, x, j)
    if problem == "a_gram_power":
        return A @ gram_apply(A, x, j)
    half = log_jacobi(A)
    return torch.exp(half) * (gaussian_kernel(A) @ (torch.exp(half) * x))


def _jacobi_scaled_residual(A: torch.Tensor, x: torch.Tensor, b: torch.Tensor):
    """(K_G (D x) - D^-1 b, D^-1 b, log D) for exp(A Aᵀ) x = b: the residual of the Jacobi-scaled system, with D x
    formed in log space (D may overflow where D x does not)."""
    A, x, b = A.double(), x.double(), b.double()
    half = log_jacobi(A)
    z = torch.sign(x) * torch.exp(torch.log(x.abs()) + half)
    c = b * torch.exp(-half)
    return gaussian_kernel(A) @ z - c, c, half


def residual_norm(problem: str, A: torch.Tensor, x: torch.Tensor, b: torch.Tensor, j: int = 1) -> float:
    """||M x - b||, for exp_kernel evaluated as ||D (K_G (D x) - D^-1 b)|| in log space, so it stays finite (when
    representable) for row norms whose D overflows."""
    if problem != "exp_kernel":
        return weighted_norm(apply(problem, A, x, j) - b)
    r, _, half = _jacobi_scaled_residual(A, x, b)
    return math.exp(0.5 * float(torch.logsumexp(2 * (torch.log(r.abs()) + half), 0)))


def relres(problem: str, A: torch.Tensor, x: torch.Tensor, b: torch.Tensor, j: int = 1) -> float:
    """||M x - b|| / ||b||."""
    return residual_norm(problem, A, x, b, j) / weighted_norm(b)


# ----------------------------------------------------------------------------------------- references and metrics

class Reference:
    """Float64 references for one (problem, A), factored once and reused for many right-hand sides: the SVD of A for
    problems a and b (x* = V Σ^{-2j} Vᵀ b, resp. V Σ^{-2j-1} Uᵀ b, the singular values below n·u·σ_1 taken as zero:
    the minimum-norm solution of a rank-deficient A instead of one ~1/u large); for exp_kernel the Cholesky factor
    of K_G where K_G has full numerical rank (x* = D^-1 K_G^-1 D^-1 b: backward stable, where the eigenvector form
    misses float64 accuracy in the D-weighted score), else its eigendecomposition (x* = D^-1 K_G^+ D^-1 b). The
    normal equations are never the reference: their error grows as u·κ(A)²."""

    def __init__(self, problem: str, A: torch.Tensor) -> None:
        self.problem, A64 = problem, A.double()
        self.norms_sq = (A64 * A64).sum(1)
        if problem == "exp_kernel":
            self.half = log_jacobi(A64)
            self.kernel = kernel = gaussian_kernel(A64)
            self.all_evals, evecs = torch.linalg.eigh(kernel)
            self.floor = singular_value_floor(self.all_evals[-1], A.shape[0])
            keep = self.all_evals > self.floor
            self.evals, self.evecs = self.all_evals[keep], evecs[:, keep]
            self.cholesky = None
            if bool(keep.all()):
                factor, failed = torch.linalg.cholesky_ex(kernel)
                self.cholesky = None if failed else factor
        else:
            self.U, self.s, self.Vh = torch.linalg.svd(A64, full_matrices=False)
            self.s_inv = torch.where(self.s > singular_value_floor(self.s[0], A.shape[0]), 1 / self.s, 0.0)

    def shares_factor(self, method: Any) -> bool:
        """Whether `method` (a class of evals/methods) solves this instance with the factorisation x* comes from
        (Method.shares_reference; for exp_kernel only where x* came from the Cholesky factor): its x then differs
        from x* by rounding of that one factorisation, and its forward error measures nothing."""
        return method.shares_reference and (self.problem != "exp_kernel" or self.cholesky is not None)

    def conditioning(self, j: int = 1) -> dict[str, float]:
        """Diagnostics of the instance: κ(A) and κ(M) = κ(A)^{2j} (a) or κ(A)^{2j+1} (b) (inf beyond float64); for
        exp_kernel the row-norm range, κ(K) = κ(exp(A Aᵀ)) itself, κ(K_G) after Jacobi scaling and K_G's numerical
        rank. The kernels' κ come from their eigenvalues (an extra O(n³) for K), inf where the smallest is within
        rounding (n u λ_max) of zero: a finite value is accurate while it is well below 1/(n u)."""
        out = {"row_norm_sq_min": float(self.norms_sq.min()), "row_norm_sq_max": float(self.norms_sq.max())}
        if self.problem == "exp_kernel":
            kappa_g = _kappa_from_eigenvalues(self.all_evals)
            # K = D K_G D scaled by 1 / max(D)²: the same κ, entries in [0, 1] whatever the row norms
            w = torch.exp(self.half - self.half.max())
            kappa_k = _kappa_from_eigenvalues(torch.linalg.eigvalsh(w[:, None] * self.kernel * w[None, :]))
            out.update(kappa_M=kappa_k, kappa_K=kappa_k, kappa_KG=kappa_g,
                       rank_KG=int((self.all_evals > self.floor).sum()))
            return out
        kappa = float(self.s[0] / self.s[-1]) if self.s[-1] > 0 else math.inf
        power = 2 * j if self.problem == "gram_power" else 2 * j + 1
        out.update(kappa_A=kappa, kappa_M=power_of(kappa, power), norm_A=float(self.s[0]))
        return out

    def solution(self, b: torch.Tensor, j: int = 1) -> torch.Tensor:
        b64 = b.double()
        if self.problem == "exp_kernel":
            c = b64 * torch.exp(-self.half)
            if self.cholesky is not None:
                return torch.cholesky_solve(c[:, None], self.cholesky)[:, 0] * torch.exp(-self.half)
            return self.evecs @ ((self.evecs.T @ c) / self.evals) * torch.exp(-self.half)
        if self.problem == "gram_power":
            return self.Vh.T @ ((self.Vh @ b64) * self.s_inv ** (2 * j))
        return self.Vh.T @ ((self.U.T @ b64) * self.s_inv ** (2 * j + 1))

    def optimum(self, b: torch.Tensor) -> float:
        """OPT = min ||M x - b||: ||(I - U Uᵀ) b|| for a_gram_power, else 0."""
        if self.problem != "a_gram_power":
            return 0.0
        b64 = b.double()
        return weighted_norm(b64 - self.U @ (self.U.T @ b64))


def _kappa_from_eigenvalues(evals: torch.Tensor) -> float:
    """λ_max / λ_min of a symmetric positive semi-definite matrix from its ascending eigenvalues; inf where λ_min is
    within the rounding n u λ_max of the eigensolver (numerically singular)."""
    top = float(evals[-1])
    return top / float(evals[0]) if float(evals[0]) > singular_value_floor(top, evals.shape[0]) else math.inf


def reference_solution(problem: str, A: torch.Tensor, b: torch.Tensor, j: int = 1) -> torch.Tensor:
    """x* in float64 (see Reference)."""
    return Reference(problem, A).solution(b, j)


def optimum(problem: str, A: torch.Tensor, b: torch.Tensor) -> float:
    """OPT = min ||M x - b|| (see Reference.optimum)."""
    return Reference(problem, A).optimum(b)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, as a tensor division gives it where the denominator is 0: inf, or nan for 0 / 0 (an
    x* of zero, a right-hand side whose scaled entries underflowed)."""
    if denominator == 0:
        return math.inf if numerator else math.nan
    return numerator / denominator


def scaled_relres(A: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> float:
    """exp_kernel's relres after Jacobi scaling: ||K_G (D x) - D^-1 b|| / ||D^-1 b||, the accuracy float64 can
    deliver when κ(exp(A Aᵀ)) itself is beyond it but κ(K_G) is not."""
    r, c, _ = _jacobi_scaled_residual(A, x, b)
    return ratio(weighted_norm(r), weighted_norm(c))


def metrics(problem: str, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor, x_ref: torch.Tensor, j: int = 1,
            opt: float = 0.0) -> dict[str, float]:
    """relres = ||Mx - b||/||b||; pred_err = ||M(x - x*)||/||b||; fwd_err = ||x - x*||/||x*||;
    subopt = (||Mx - b|| - OPT)/OPT where OPT > 0 (problem b), else nan."""
    bnorm = weighted_norm(b)
    res = residual_norm(problem, A, x, b, j)
    if problem == "exp_kernel":
        pred = residual_norm(problem, A, x - x_ref, torch.zeros_like(b), j)
    else:
        pred = weighted_norm(apply(problem, A, x - x_ref, j))
    return {
        "relres": res / bnorm,
        "pred_err": pred / bnorm,
        "fwd_err": ratio(weighted_norm(x - x_ref), weighted_norm(x_ref)),
        "subopt": (res - opt) / opt if opt > 0 else math.nan,
    }


# ------------------------------------------------------------------------------------ conditioning and scoring

def conditioning(problem: str, A: torch.Tensor, j: int = 1) -> dict[str, float]:
    """κ(A), κ(M) and the exp-kernel diagnostics of an instance (see Reference.conditioning)."""
    return Reference(problem, A).conditioning(j)


def float64_predicted_ok(kappa_m: float, eps: float) -> bool:
    """Whether the a-priori worst-case bound predicts that float64 reaches relative accuracy eps on an operator of
    condition number kappa_m (eps >= 100 u κ). Only a prediction: real instances often do better than the bound."""
    return eps >= GATE * UNIT_ROUNDOFF * kappa_m


def score(problem: str, m: dict[str, float]) -> float:
    """The accuracy a solve is judged by, from its metrics: relres for gram_power and exp_kernel (Song, Yin & Zhang,
    arXiv 2308.14304: ||M x - b|| <= eps ||b||); pred_err for a_gram_power, whose residual cannot go below OPT
    (||M x - b||² = OPT² + (pred_err ||b||)²)."""
    return m["pred_err"] if problem in SCORED_AGAINST_REFERENCE else m["relres"]


def scored_independently(problem: str, shares_reference: bool) -> bool:
    """Whether a method's score measures it against something it did not compute: false for a method built on the
    reference's own factorisation (Method.shares_reference) where the score needs x* (pred_err), since the rounding
    of the shared factor then cancels between x and x*."""
    return not (shares_reference and problem in SCORED_AGAINST_REFERENCE)
