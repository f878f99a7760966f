"""solve(): every method against the float64 SVD / eigendecomposition references on synthetic problems of known κ."""

import math

import pytest
import torch

from evals import problems as P
from evals import synthetic as syn
from evals.krylov import cg, lsqr, preconditioned_gd, weighted_norm
from evals.methods.base import SolveInfo
from evals.methods.operators import TallMatrix
from evals.sketch import SKETCHES
from evals.methods import DEFAULT_METHOD, get_method
from evals.solve import LEAST_SQUARES_METHODS, METHODS, NotApplicable, least_squares, solve

EPS = 1e-8


def _instance(problem, kappa, n=600, d=20, seed=0):
    A = syn.conditioned(n, d, kappa, seed)
    b = syn.rhs(d if problem == "gram_power" else n, seed)
    return A, b


@pytest.mark.parametrize("j", [1, 2])
@pytest.mark.parametrize("method", METHODS["gram_power"])
def test_gram_power_matches_the_svd_reference(method, j):
    A, b = _instance("gram_power", kappa=10.0)
    assert P.float64_predicted_ok(P.conditioning("gram_power", A, j)["kappa_M"], EPS)
    x, info = solve("gram_power", A, b, j=j, method=method, eps=EPS)
    m = P.metrics("gram_power", A, b, x, P.reference_solution("gram_power", A, b, j), j)
    assert info.converged and m["relres"] <= 2 * EPS, (m, info)
    assert m["fwd_err"] <= 1e-6
    assert math.isclose(info.relres, m["relres"], rel_tol=1e-6)


@pytest.mark.parametrize("j", [1, 2])
@pytest.mark.parametrize("method", METHODS["a_gram_power"])
def test_a_gram_power_matches_the_reference_on_an_inconsistent_system(method, j):
    A, b = _instance("a_gram_power", kappa=10.0)
    opt = P.optimum("a_gram_power", A, b)
    assert opt > 0.5 * float(torch.linalg.vector_norm(b))  # b is far from A's range: OPT > 0
    x, info = solve("a_gram_power", A, b, j=j, method=method, eps=EPS)
    m = P.metrics("a_gram_power", A, b, x, P.reference_solution("a_gram_power", A, b, j), j, opt)
    assert m["pred_err"] <= 5 * EPS, (m, info)
    # plain LSQR stops on Paige & Saunders' test, which bounds nothing: it meets eps here but cannot vouch for it
    assert info.converged == (method != "lsqr")
    assert m["subopt"] <= 1e-10  # the residual is OPT, up to rounding


@pytest.mark.parametrize("method", ["sketch_pcg", "sketch_lsqr", "sketch_gd"])
def test_a_converged_sketched_solve_meets_eps_on_every_seed(method):
    """κ(A) = 100, j = 1: κ(M) = 1e6 is well inside float64 at eps = 1e-8, so a solve that reports convergence has
    met its stopping tests and must score <= eps; the least-squares stage's share eps / 2 needs ||A (y - y*)||, not
    ||Bᵀr|| scaled by the growing ||B||_F estimate, below it."""
    A = syn.conditioned(4096, 64, 1e2, 0)
    reference = P.Reference("a_gram_power", A)
    for seed in range(3):
        b = syn.rhs(4096, seed)
        x, info = solve("a_gram_power", A, b, j=1, method=method, eps=EPS, seed=seed)
        pred_err = P.metrics("a_gram_power", A, b, x, reference.solution(b, 1), 1)["pred_err"]
        assert info.converged and pred_err <= EPS, (seed, pred_err, info.iterations)


@pytest.mark.parametrize("method", ["sketch_pcg", "sketch_lsqr", "sketch_gd"])
def test_the_sketched_least_squares_stage_meets_its_tolerance(method):
    A, b = _instance("a_gram_power", kappa=1e4, n=4096, d=64, seed=1)
    y, info = least_squares(A, b, method=method, eps=1e-9)
    y_ref = torch.linalg.pinv(A) @ b
    assert info.converged
    assert float(torch.linalg.vector_norm(A @ (y - y_ref)) / torch.linalg.vector_norm(b)) <= 1e-9


def test_lsqr_with_a_smallest_singular_value_bounds_the_prediction_error():
    """σ_min(A) = 0.1 given: LSQR stops at ||Aᵀr|| <= tol σ_min ||b||, which bounds ||A (x - x*)|| by tol ||b||."""
    A, b = _instance("a_gram_power", kappa=10.0, n=400, d=20, seed=2)
    x_ref = torch.linalg.pinv(A) @ b
    tol = 1e-7
    res = lsqr(lambda v: A @ v, lambda u: A.T @ u, b, tol=tol, maxiter=500, sigma_min=0.1)
    bnorm = float(torch.linalg.vector_norm(b))
    assert res.converged
    assert float(torch.linalg.vector_norm(A.T @ (b - A @ res.x))) <= tol * 0.1 * bnorm
    assert float(torch.linalg.vector_norm(A @ (res.x - x_ref))) <= tol * bnorm
    stopped_early = lsqr(lambda v: A @ v, lambda u: A.T @ u, b, tol=tol, maxiter=res.iterations - 1, sigma_min=0.1)
    assert not stopped_early.converged  # the test is met first at res.iterations, not before


def test_sketch_preconditioner_is_well_conditioned_and_flat_in_kappa():
    """κ(A R^-1) stays small at k = 4d whatever κ(A); the preconditioned iterations barely move with κ(A) while
    unpreconditioned LSQR needs many more."""
    counts = {}
    for kappa in (1e2, 1e6):
        A = syn.conditioned(3000, 30, kappa, 1)
        b = A @ syn.rhs(30, 2)  # consistent: the forward error is meaningful
        y, info = least_squares(A, b, method="sketch_lsqr", eps=1e-12)
        assert info.kappa_precond < 4
        counts[kappa] = info.iterations["ls"]
        assert float(torch.linalg.vector_norm(y - torch.linalg.lstsq(A, b[:, None]).solution[:, 0])) < 1e-6
    assert max(counts.values()) <= 40 and abs(counts[1e2] - counts[1e6]) <= 10
    _, plain = least_squares(syn.conditioned(3000, 30, 1e6, 1), syn.rhs(3000, 2), method="lsqr", eps=1e-12,
                             maxiter=200)
    assert not plain.converged


@pytest.mark.parametrize("method, sketch", [(m, "sparse_sign") for m in LEAST_SQUARES_METHODS] +
                         [(m, s) for m in ("sketch_gd", "sketch_lsqr", "sketch_cholqr") for s in SKETCHES[:-1]])
def test_least_squares_methods_and_sketches(method, sketch):
    A, b = _instance("a_gram_power", kappa=100.0, seed=3)
    y, info = least_squares(A, b, method=method, sketch=sketch, eps=1e-12)
    y_ref = torch.linalg.pinv(A) @ b
    assert float(torch.linalg.vector_norm(A @ (y - y_ref)) / torch.linalg.vector_norm(b)) < 1e-9, info
    assert info.passes >= 1 and info.time_total > 0


def test_gram_cholesky_breaks_where_qr_does_not():
    """The normal equations square κ: at κ(A) = 1e8 the Gram + Cholesky baseline loses every digit of the
    least-squares solution that Householder QR keeps (~u κ)."""
    A = syn.conditioned(2000, 20, 1e8, 4)
    y_true = syn.rhs(20, 5)
    b = A @ y_true
    errors = {m: float(torch.linalg.vector_norm(least_squares(A, b, method=m)[0] - y_true) /
                       torch.linalg.vector_norm(y_true)) for m in ("qr", "gram_cholesky", "sketch_cholqr")}
    assert errors["qr"] < 1e-6 and errors["sketch_cholqr"] < 1e-6
    assert errors["gram_cholesky"] > 1e-2 or math.isnan(errors["gram_cholesky"])


def test_the_float64_bound_predicts_from_kappa_m():
    """eps >= 100 u κ(M): κ(A) = 1e8 gives κ(M) = 1e16 for j = 1, far above 1e-8 / (100 u) ~ 9e5; κ(A) = 10 not."""
    A = syn.conditioned(400, 10, 1e8, 0)
    assert not P.float64_predicted_ok(P.conditioning("gram_power", A, 1)["kappa_M"], EPS)
    assert P.float64_predicted_ok(P.conditioning("gram_power", syn.conditioned(400, 10, 10.0), 1)["kappa_M"], EPS)
    assert P.float64_predicted_ok(9e5, EPS) and not P.float64_predicted_ok(1e6, EPS)


# ---------------------------------------------------------------------------------------------------- exp kernel

@pytest.mark.parametrize("method", ["cholesky", "cg", "jacobi_pcg", "nystrom_pcg"])
def test_exp_kernel_methods_match_the_reference(method):
    A = syn.exp_rows(300, 16, 0.5, 3.0, seed=0)
    b = syn.rhs(300, 1)
    x, info = solve("exp_kernel", A, b, method=method, eps=1e-10, maxiter=3000)
    m = P.metrics("exp_kernel", A, b, x, P.reference_solution("exp_kernel", A, b))
    assert info.converged and m["relres"] < 1e-8 and m["fwd_err"] < 1e-6, (m, info)
    K = torch.exp(A @ A.T)  # representable here: the direct check of the scaled form
    assert float(torch.linalg.vector_norm(K @ x - b) / torch.linalg.vector_norm(b)) < 1e-8


@pytest.mark.parametrize("method", ["tensorsketch_pcg", "tensorsketch_gd"])
def test_taylor_sketch_preconditioner_on_small_rows(method):
    A = syn.exp_rows(200, 32, 0.3, 1.0, seed=2)
    b = syn.rhs(200, 3)
    x, info = solve("exp_kernel", A, b, method=method, eps=1e-6, maxiter=5000)
    m = P.metrics("exp_kernel", A, b, x, P.reference_solution("exp_kernel", A, b))
    assert info.converged and m["relres"] < 1e-5 and m["fwd_err"] < 1e-4, (m, info)  # eps holds in the scaled system


def test_taylor_sketch_is_not_applicable_to_large_rows():
    A = syn.exp_rows(50, 8, 10.0, 20.0)
    with pytest.raises(NotApplicable, match="degree"):
        solve("exp_kernel", A, syn.rhs(50), method="tensorsketch_pcg")


def test_jacobi_pcg_solves_where_plain_cg_cannot():
    """Heterogeneous row norms: κ(exp(A Aᵀ)) >= e^38, but Jacobi scaling leaves a well-conditioned K_G."""
    A = syn.exp_rows(400, 64, 2.0, 40.0, seed=0)
    b = syn.rhs(400, 1)
    cond = P.conditioning("exp_kernel", A)
    assert cond["kappa_K"] > 1e16 and cond["kappa_KG"] < 100
    _, plain = solve("exp_kernel", A, b, method="cg", maxiter=500)
    x, jacobi = solve("exp_kernel", A, b, method="jacobi_pcg", maxiter=500)
    assert not plain.converged and jacobi.converged and jacobi.iterations["pcg"] < 50
    assert float(torch.linalg.vector_norm(x - P.reference_solution("exp_kernel", A, b))
                 / torch.linalg.vector_norm(x)) < 1e-6


def test_exp_kernel_stays_finite_near_the_overflow_limit():
    """Squared row norms up to 709 (exp overflows float64 at 709.78): the scaled form never overflows."""
    A = syn.exp_rows(100, 32, 690.0, 709.0, seed=5)
    b = syn.rhs(100, 6)
    assert torch.isfinite(P.gaussian_kernel(A)).all()
    assert torch.isfinite(P.apply("exp_kernel", A, torch.ones(100, dtype=torch.float64))).all()
    x, info = solve("exp_kernel", A, b, method="jacobi_pcg", eps=1e-10)
    assert torch.isfinite(x).all() and info.converged
    assert info.relres < 1e-6 and math.isfinite(P.relres("exp_kernel", A, x, b))
    assert P.conditioning("exp_kernel", A)["kappa_K"] > 1e6  # exp(spread) alone


def test_exp_kernel_beyond_the_overflow_limit_is_predicted_beyond_float64():
    A = syn.exp_rows(50, 8, 700.0, 800.0)
    assert not P.float64_predicted_ok(P.conditioning("exp_kernel", A)["kappa_M"], EPS)


# ------------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, message", [
    (dict(problem="gram_power", A=torch.zeros(10, 3), b=torch.zeros(10)), "length d"),
    (dict(problem="a_gram_power", A=torch.zeros(10, 3), b=torch.zeros(3)), "length n"),
    (dict(problem="gram_power", A=torch.zeros(3, 10), b=torch.zeros(10)), "tall A"),
    (dict(problem="gram_power", A=torch.zeros(10), b=torch.zeros(10)), "2-D"),
    (dict(problem="gram_power", A=torch.zeros(10, 3), b=torch.zeros(3), j=0), "j must be an integer >= 1"),
    (dict(problem="gram_power", A=torch.zeros(10, 3), b=torch.zeros(3), j=1.5), "j must be an integer >= 1"),
    (dict(problem="exp_kernel", A=torch.zeros(10, 3), b=torch.zeros(10), j=2), "no power"),
    (dict(problem="gram_power", A=torch.full((10, 3), math.nan), b=torch.zeros(3)), "non-finite"),
    (dict(problem="gram_power", A=torch.zeros(10, 3), b=torch.tensor([1.0, math.inf, 0.0])), "non-finite"),
    (dict(problem="ridge", A=torch.zeros(10, 3), b=torch.zeros(3)), "unknown problem"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), method="lsqr"), "no method 'lsqr'"),
    (dict(problem="a_gram_power", A=torch.ones(10, 3), b=torch.zeros(10)), "b is zero"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), method="sketch_pcg", sketch_rows=2),
     "sketch_rows"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), method="sketch_pcg", sketch="dct"),
     "unknown sketch"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), eps=0.0), "eps"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), eps=math.inf), r"eps must be .* \(0, 1\)"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), eps=math.nan), "eps"),
    (dict(problem="exp_kernel", A=torch.ones(10, 3), b=torch.ones(10), eps=1.0), "eps"),
    (dict(problem="gram_power", A=torch.zeros(10, 3), b=torch.ones(3)), "A is all zeros"),
    (dict(problem="a_gram_power", A=torch.zeros(10, 3), b=torch.ones(10), method="lsqr"), "A is all zeros"),
    (dict(problem="exp_kernel", A=torch.full((10, 3), 16.0), b=torch.ones(10)), r"max \|\|a_i\|\|² = 768 > 709.78"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), method="sketch_pcg", sketch_rows=0),
     r"sketch_rows must be an integer >= 1 \(or None for the default 4d\), got 0"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), method="sketch_pcg", sketch_rows=40.5),
     "sketch_rows must be an integer"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), seed=None), r"seed must be an integer in \[0, "),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), seed=-1), "seed must be an integer"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), maxiter=-1), "maxiter must be an integer >= 1"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), maxiter=0), "maxiter must be an integer >= 1"),
    (dict(problem="gram_power", A=torch.ones(10, 3), b=torch.ones(3), maxiter=True), "maxiter must be an integer"),
    (dict(problem="exp_kernel", A=torch.ones(10, 3), b=torch.ones(10), method="nystrom_pcg", rank=0),
     "rank must be an integer >= 1"),
])
def test_bad_input_gets_a_clear_error(kwargs, message):
    problem, A, b = kwargs.pop("problem"), kwargs.pop("A"), kwargs.pop("b")
    with pytest.raises(P.SolverError, match=message):
        solve(problem, A, b, **kwargs)


def test_refinement_brings_the_forward_error_towards_householder_qr():
    A = syn.conditioned(2048, 32, 1e4, 0)
    Q = torch.linalg.qr(A)[0]
    x_true, noise = syn.rhs(32, 0), syn.rhs(2048, 1)
    noise -= Q @ (Q.T @ noise)  # b = A x + a residual orthogonal to range(A): x is the exact solution
    b = A @ x_true + 0.1 * torch.linalg.vector_norm(A @ x_true) * noise / torch.linalg.vector_norm(noise)
    errors = {}
    for refine in (0, 1):
        y, info = least_squares(A, b, method="sketch_lsqr", eps=1e-10, refine=refine)
        errors[refine] = float(torch.linalg.vector_norm(y - x_true) / torch.linalg.vector_norm(x_true))
        assert ("refine1" in info.iterations) == bool(refine)
    y_qr, _ = least_squares(A, b, method="qr")
    qr_error = float(torch.linalg.vector_norm(y_qr - x_true) / torch.linalg.vector_norm(x_true))
    assert errors[1] < errors[0] / 10 and errors[1] < 1e3 * qr_error
    with pytest.raises(P.SolverError, match="refine"):
        least_squares(A, b, method="sketch_lsqr", refine=-1)


def test_large_matrices_take_the_one_pass_gram_product():
    """From 2^22 entries Aᵀ(A v) runs in row blocks, reading A once per product: same answer, fewer passes."""
    A = syn.conditioned(1 << 16, 64, 100.0, 0)
    b = syn.rhs(1 << 16, 1)
    y, info = least_squares(A, b, method="sketch_pcg", eps=1e-10)
    y_qr, _ = least_squares(A, b, method="qr")
    assert float(torch.linalg.vector_norm(A @ (y - y_qr)) / torch.linalg.vector_norm(b)) < 1e-9
    assert info.passes < 2 * info.iterations["ls"]


def test_the_one_pass_gram_product_stays_on_the_matrix_device():
    """The meta device stands in for a GPU: a product allocated on the CPU would fail against it."""
    rows = 1 << 16  # 2^22 entries with 64 columns: the row-block path
    A = torch.empty(rows, 64, dtype=torch.float64, device="meta")
    info = SolveInfo("least_squares", "sketch_pcg", rows, 64, 1, 1e-10)
    product = TallMatrix(A, info).gram(torch.empty(64, dtype=torch.float64, device="meta"))
    assert product.device.type == "meta"


# ----------------------------------------------------------------------------------------------------- registry

def _small_instance(problem):
    if problem == "exp_kernel":
        return syn.exp_rows(120, 16, 0.3, 1.0, seed=0), syn.rhs(120, 1)
    return _instance(problem, kappa=10.0, n=300, d=12)


@pytest.mark.parametrize("problem, method", [(p, m) for p in P.PROBLEMS for m in METHODS[p]])
def test_every_registered_method_is_reachable_through_solve(problem, method):
    A, b = _small_instance(problem)
    x, info = solve(problem, A, b, method=method, eps=1e-6, maxiter=3000)
    unbounded_stop = (problem, method) == ("a_gram_power", "lsqr")  # b is inconsistent: see test_plain_lsqr_...
    assert info.method == method and info.converged != unbounded_stop and torch.isfinite(x).all()


@pytest.mark.parametrize("problem", P.PROBLEMS)
def test_float32_inputs_are_solved_in_float64(problem):
    """The extracted Gram factors may come in fp32: solved as the float64 instance, to the same eps."""
    A, b = _small_instance(problem)
    x32, info32 = solve(problem, A.float(), b.float(), eps=EPS)
    x64, _ = solve(problem, A.float().double(), b.float().double(), eps=EPS)
    assert x32.dtype == torch.float64 and info32.converged
    torch.testing.assert_close(x32, x64, rtol=0, atol=0)


@pytest.mark.parametrize("problem", P.PROBLEMS)
def test_a_method_that_reports_convergence_wrongly_is_caught_by_the_final_residual_test(problem, monkeypatch):
    """solve() does not take a method's word: x three times too large, reported converged, fails the independent
    check (for a_gram_power the necessary one: ||A 3x* - b||² = ||b||² + 8 ||A x*||² exceeds ||b||²)."""
    method = get_method(problem, DEFAULT_METHOD[problem])
    honest = method.solve

    def off_by_a_little(self, *args, **kwargs):
        return honest(self, *args, **kwargs) * 3.0

    A, b = _small_instance(problem)
    assert solve(problem, A, b, eps=EPS)[1].converged
    monkeypatch.setattr(method, "solve", off_by_a_little)
    _, info = solve(problem, A, b, eps=EPS)
    assert not info.converged


@pytest.mark.parametrize("method", LEAST_SQUARES_METHODS)
def test_every_least_squares_method_is_reachable(method):
    A, b = _small_instance("a_gram_power")
    y, info = least_squares(A, b, method=method)
    assert info.method == method and info.converged == (method != "lsqr") and torch.isfinite(y).all()


@pytest.mark.parametrize("problem", P.PROBLEMS)
def test_an_unknown_method_is_a_one_line_error_naming_the_allowed_ones(problem):
    A, b = _small_instance(problem)
    with pytest.raises(P.SolverError) as error:
        solve(problem, A, b, method="newton")
    message = str(error.value)
    assert "\n" not in message and "'newton'" in message
    assert message.endswith(f"(allowed: {', '.join(METHODS[problem])})")


def test_an_unknown_least_squares_method_is_a_one_line_error_naming_the_allowed_ones():
    with pytest.raises(P.SolverError, match=rf"^least_squares has no method 'newton' \(allowed: "
                                            rf"{', '.join(LEAST_SQUARES_METHODS)}\)$"):
        least_squares(*_small_instance("a_gram_power"), method="newton")


# ------------------------------------------------------------------------------------- stopping tests that hold

def _spd(n: int, kappa: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))[0]
    M = Q @ torch.diag(torch.logspace(0, math.log10(kappa), n, dtype=torch.float64)) @ Q.T
    return (M + M.T) / 2


@pytest.mark.parametrize("tol", [1e-4, 1e-9])
def test_cg_reports_convergence_only_where_the_true_residual_meets_the_target(tol):
    """An operator applied in float32 caps the true residual near 1e-6 while the recurrence's residual keeps falling:
    CG must not call that converged."""
    M32 = _spd(100, 100.0).float()
    b = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def op(v):
        return (M32 @ v.float()).double()

    res = cg(op, b, tol=tol, maxiter=300)
    true = float(torch.linalg.vector_norm(b - op(res.x)) / torch.linalg.vector_norm(b))
    assert res.converged == (true <= tol)
    assert res.converged == (tol > 1e-5)  # 1e-4 is reachable, 1e-9 is below the float32 floor


@pytest.mark.parametrize("pred_err, passes", [(0.0, True), (0.5 * EPS, True), (3 * EPS, False), (8 * EPS, False)])
def test_the_necessary_residual_test_tells_pred_err_apart_at_eps_where_b_is_orthogonal_to_the_range(pred_err, passes):
    """relres = sqrt(1 + pred_err²) there: relres itself carries ~u of rounding, as much as eps² at eps = 1e-8, so
    the test is decided on relres² - 1 computed without cancellation (a slack of 16 u passed pred_err up to 5 eps)."""
    A = syn.conditioned(256, 8, 10.0, 0)
    b = syn.rhs(256, 1)
    b -= A @ torch.linalg.lstsq(A, b).solution  # x* = 0, OPT = ||b||
    direction = syn.rhs(8, 2)
    m = P.apply("a_gram_power", A, direction, 1)
    x = direction * (pred_err * float(torch.linalg.vector_norm(b)) / float(torch.linalg.vector_norm(m)))
    relres = P.relres("a_gram_power", A, x, b, 1)
    assert P.residual_test("a_gram_power", A, x, b, 1, relres, EPS) is passes


def test_an_srht_of_more_rows_than_the_padded_matrix_is_a_solver_error():
    A, b = syn.conditioned(100, 40, 1e2, 0), syn.rhs(100, 0)  # 4d = 160 rows of 128 padded ones
    with pytest.raises(P.SolverError, match=r"k = 160 is too many; pass fewer sketch rows or another sketch"):
        solve("a_gram_power", A, b, j=1, method="sketch_pcg", sketch="srht")


def test_cg_of_a_zero_right_hand_side_returns_zero_whatever_the_warm_start():
    M = _spd(20, 10.0)
    res = cg(lambda v: M @ v, torch.zeros(20, dtype=torch.float64), tol=1e300, maxiter=50,
             x0=torch.ones(20, dtype=torch.float64))
    assert res.converged and res.iterations == 0 and not res.x.any()


@pytest.mark.parametrize("method", LEAST_SQUARES_METHODS)
def test_a_right_hand_side_orthogonal_to_the_range_is_solved_by_y_0(method):
    """Aᵀb = 0: y* = 0, which every method must find, and call converged where it can vouch for eps (CG's warm start
    chased a target of tol · ||Aᵀb|| = 0 until it gave up; a relres of 1 + 2u failed the residual test). Plain LSQR
    stops on Paige & Saunders' test, which bounds nothing."""
    A = syn.conditioned(64, 4, 10.0, 0)
    b = syn.rhs(64, 1)
    b -= A @ torch.linalg.lstsq(A, b).solution  # the part of b outside A's range
    assert float(torch.linalg.vector_norm(A.T @ b)) <= 1e-12 * float(torch.linalg.vector_norm(b))
    y, info = least_squares(A, b, method=method, eps=EPS)
    assert info.converged == (method != "lsqr")
    assert float(torch.linalg.vector_norm(A @ y)) <= EPS * float(torch.linalg.vector_norm(b))


def test_cg_stops_on_the_weighted_residual_when_given_weights():
    M = _spd(50, 1000.0)
    b = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = torch.ones(50, dtype=torch.float64)
    weights[:3] = 1e4  # three entries dominate the weighted norm

    def weighted_relres(x):
        return float(torch.linalg.vector_norm(weights * (b - M @ x)) / torch.linalg.vector_norm(weights * b))

    weighted = cg(lambda v: M @ v, b, tol=1e-8, maxiter=500, weights=weights)
    assert weighted.converged and weighted_relres(weighted.x) <= 1e-8
    # it stops at the first iterate that meets the weighted test (how many iterations that takes moves with the
    # rounding of the BLAS threads: 93 to 98 here)
    before = cg(lambda v: M @ v, b, tol=1e-8, maxiter=weighted.iterations - 1, weights=weights)
    assert not before.converged and weighted_relres(before.x) > 1e-8
    uniform = cg(lambda v: M @ v, b, tol=1e-8, maxiter=500, weights=torch.full((50,), 7.0, dtype=torch.float64))
    assert uniform.iterations == cg(lambda v: M @ v, b, tol=1e-8, maxiter=500).iterations  # scale-free


def test_gradient_descent_backtracks_a_step_too_long_for_the_spectrum():
    M = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))  # 2 / λ_max = 0.5
    b = torch.ones(3, dtype=torch.float64)
    kwargs = dict(step=0.6, target=1e-10, maxiter=200)
    assert not preconditioned_gd(lambda x: b - M @ x, torch.zeros(3, dtype=torch.float64), **kwargs).converged
    res = preconditioned_gd(lambda x: b - M @ x, torch.zeros(3, dtype=torch.float64), backtrack=True, **kwargs)
    assert res.converged
    torch.testing.assert_close(res.x, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))


def test_backtracking_gradient_descent_gives_up_a_target_below_rounding_after_the_stall_limit():
    M = _spd(20, 100.0)
    b = torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    res = preconditioned_gd(lambda x: b - M @ x, torch.zeros(20, dtype=torch.float64), step=1 / 50, target=1e-30,
                            maxiter=100_000, backtrack=True)
    assert not res.converged and res.iterations < 10_000  # the floor (~1e-14 here) is reached in ~2,000 steps
    assert float(torch.linalg.vector_norm(b - M @ res.x)) < 1e-12


def test_a_refinement_that_cannot_converge_leaves_y_as_the_first_solve_left_it():
    """sketch_gd's correction stage asks for eps of a residual already at rounding level: it stalls, and its noise
    is not added (it ran 2,000 iterations and made y worse, and the solve was reported as not converged)."""
    A, b = syn.conditioned(4096, 32, 1e6, 0), syn.rhs(4096, 1)
    y0, info0 = least_squares(A, b, method="sketch_gd", eps=1e-10)
    y1, info1 = least_squares(A, b, method="sketch_gd", eps=1e-10, refine=2)
    assert info0.converged and info1.converged and torch.equal(y0, y1)
    assert set(info1.iterations) == {"ls", "refine1"} and info1.iterations["refine1"] < 500


@pytest.mark.parametrize("sketch", ["sparse_sign", "gaussian", "countsketch"])
def test_sketch_gd_converges_where_the_sketch_distorts_beyond_the_step_bound(sketch):
    """The paper's step rests on the distortion sqrt(d / k); these seeds' sketches exceed it (without backtracking,
    gradient descent diverged to ~1e150 on them)."""
    A, b = syn.conditioned(600, 20, 100.0, 3), syn.rhs(600, 3)
    reference = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
    for seed in range(20):
        y, info = least_squares(A, b, method="sketch_gd", sketch=sketch, eps=1e-12, seed=seed, diagnostics=False)
        error = float(torch.linalg.vector_norm(A @ (y - reference)) / torch.linalg.vector_norm(b))
        assert info.converged and error < 1e-11, (seed, error)


def test_iterative_sketch_methods_need_two_rows_per_column_and_sketched_cholqr_one():
    A, b = syn.conditioned(300, 10, 10.0), syn.rhs(300)
    for method in ("sketch_pcg", "sketch_lsqr", "sketch_gd"):
        with pytest.raises(P.SolverError, match=r"sketch_rows must be >= 2d = 20 for the stopping tests"):
            least_squares(A, b, method=method, sketch_rows=15)
    _, info = least_squares(A, b, method="sketch_cholqr", sketch_rows=10)
    assert info.relres < 1


def test_kernel_iterations_stop_on_the_residual_the_score_weights():
    """exp(A Aᵀ) = D K_G D: the score weights K_G's residual by D, which spans e^2 .. e^40 here; stopping on the
    unweighted residual reported convergence with relres ~5e-6 for eps = 1e-8."""
    A, b = syn.exp_rows(200, 16, 2.0, 40.0, seed=0), syn.rhs(200, 0)
    for method in ("jacobi_pcg", "nystrom_pcg"):
        _, info = solve("exp_kernel", A, b, eps=1e-8, method=method)
        assert info.converged and info.relres <= 1e-8, (method, info.relres)


def test_the_exp_kernel_reference_solves_to_float64_accuracy_in_the_scored_norm():
    A, b = syn.exp_rows(400, 64, 2.0, 40.0, seed=0), syn.rhs(400, 1)  # D spans e^1 .. e^20
    assert P.relres("exp_kernel", A, P.reference_solution("exp_kernel", A, b), b) < 1e-13


@pytest.mark.parametrize("problem", ["gram_power", "a_gram_power"])
def test_the_gram_reference_of_a_rank_deficient_matrix_is_the_minimum_norm_solution(problem):
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(300, 8, dtype=torch.float64, generator=gen)
    A[:, 7] = A[:, 6]  # rank 7
    b = torch.randn(8 if problem == "gram_power" else 300, dtype=torch.float64, generator=gen)
    x = P.reference_solution(problem, A, b)
    pinv = torch.linalg.pinv(A.T @ A) if problem == "gram_power" else torch.linalg.pinv(A @ A.T @ A)
    torch.testing.assert_close(x, pinv @ b, rtol=1e-8, atol=0)


# ------------------------------------------------------------------------------- converged means the score met eps

@pytest.mark.parametrize("problem", ["gram_power", "a_gram_power"])
def test_a_rank_deficient_matrix_is_never_reported_converged(problem):
    """Two equal columns: AᵀA is singular. The direct factors divide by a pivot of rounding noise (relres 1e15 on
    (a), 1e32 on (b)); every method must return its honest relres with converged = False, none raise."""
    A = syn.conditioned(1024, 16, 1e3)
    A[:, 5] = A[:, 4]
    b = syn.rhs(16 if problem == "gram_power" else 1024, 1)
    for method in METHODS[problem]:
        x, info = solve(problem, A, b, method=method)
        assert not info.converged, (method, info.relres)
        assert math.isclose(info.relres, P.relres(problem, A, x, b), rel_tol=1e-9) or math.isnan(info.relres)
    for method in ("qr", "svd", "sketch_cholqr"):  # what converged = False marks: a solution far off
        assert solve(problem, A, b, method=method)[1].relres > 1e10
    for seed in range(10):  # Cholesky of the rounded AᵀA: its noise pivots sit near √u σ_max, far above n u σ_max
        A = torch.randn(500, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        A[:, 5] = A[:, 1]
        b = syn.rhs(16 if problem == "gram_power" else 500, seed)
        assert not solve(problem, A, b, method="gram_cholesky")[1].converged, seed


@pytest.mark.parametrize("kappa", [1e2, 1e4])
def test_plain_lsqr_is_not_converged_where_its_stop_bounds_nothing(kappa):
    """Paige & Saunders' test ||Aᵀr|| <= tol ||A||_F ||b|| says nothing about pred_err once κ(A) is large: at
    κ = 1e4 it stopped at pred_err ~8e-3 for eps = 1e-6, reported converged."""
    A, b = syn.conditioned(1024, 16, kappa), syn.rhs(1024)
    x, info = solve("a_gram_power", A, b, j=1, eps=1e-6, method="lsqr")
    pred_err = P.metrics("a_gram_power", A, b, x, P.reference_solution("a_gram_power", A, b, 1), 1)["pred_err"]
    assert not info.converged and (pred_err > 1e-6) == (kappa == 1e4), pred_err
    orthonormal = syn.conditioned(1024, 16, 1.0)  # b in its range: ||r|| <= tol ||b||, the bounded test, is met
    assert least_squares(orthonormal, orthonormal @ syn.rhs(16, 2), method="lsqr", eps=1e-6)[1].converged


def test_the_weighted_norm_neither_underflows_nor_lets_cg_stop_on_it():
    """Jacobi-scaled exp-kernel residuals reach ~1e-170 for rows near ||a||² = 709: squared unscaled they are 0."""
    tiny = torch.full((4,), 1e-170, dtype=torch.float64)
    assert math.isclose(weighted_norm(tiny), 2e-170, rel_tol=1e-12)
    assert math.isclose(weighted_norm(tiny, torch.full((4,), 1e10, dtype=torch.float64)), 2e-160, rel_tol=1e-12)
    res = cg(lambda v: 2 * v, tiny, tol=1e-10, maxiter=10)
    assert res.converged and res.iterations == 1 and torch.allclose(res.x, tiny / 2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", METHODS["exp_kernel"])
def test_exp_kernel_rows_whose_solution_underflows_are_refused(method):
    """||a_i||² ~ 800: x ~ exp(-800) b is 0 in float64; cholesky and the PCGs returned x = 0 as converged."""
    A = syn.exp_rows(64, 8, 800.0, 802.0)
    with pytest.raises(P.SolverError, match=r"max \|\|a_i\|\|² = 80[12].* > 709.78.*scale A down"):
        solve("exp_kernel", A, syn.rhs(64), method=method)


def test_the_exp_kernel_condition_number_is_the_kernels_own():
    """Low-dimensional small rows: K_G is near low rank, and the old lower bounds max(exp(spread), κ(K_G) / n)
    gave 3.6e3 ("ok" at eps = 1e-8) where cond(exp(A Aᵀ)) is 1.2e7 (beyond)."""
    A = syn.exp_rows(32, 8, 0.2, 8.0, seed=0, rank=2)
    cond = P.conditioning("exp_kernel", A)
    direct = float(torch.linalg.cond(torch.exp(A @ A.T)))
    assert math.isclose(cond["kappa_M"], direct, rel_tol=1e-3) and cond["kappa_K"] == cond["kappa_M"]
    spread = cond["row_norm_sq_max"] - cond["row_norm_sq_min"]
    assert max(math.exp(spread), cond["kappa_KG"] / 32) < direct / 1000
    assert not P.float64_predicted_ok(cond["kappa_M"], EPS)


def test_large_powers_give_an_infinite_condition_number_not_an_overflow():
    """κ(A)^{2j+1} exceeds float64 from j = 19 at κ(A) = 1e8 (a Python float power raises OverflowError), and so
    does σ_max^{2j} in the levels' tolerances of a large A."""
    A = syn.conditioned(256, 8, 1e8)
    assert P.conditioning("a_gram_power", A, 20)["kappa_M"] == math.inf
    big = 1e10 * syn.conditioned(256, 8, 10.0)
    for method in ("cg", "sketch_pcg"):
        _, info = solve("gram_power", big, syn.rhs(8), j=20, method=method, maxiter=5)
        assert not info.converged


@pytest.mark.parametrize("scale_a, scale_b", [(1e-100, 1.0), (1e78, 1.0), (1.0, 1e-170), (1.0, 1e-160), (1.0, 1e156)])
@pytest.mark.parametrize("problem, method", [("gram_power", "qr"), ("gram_power", "sketch_pcg"),
                                             ("a_gram_power", "qr"), ("a_gram_power", "sketch_pcg")])
def test_extreme_but_representable_scales_solve_as_the_unscaled_instance(problem, method, scale_a, scale_b):
    """Norms are taken on scaled vectors: squaring entries of 1e-170 underflows to 0 (a relres of 0, or a division
    by zero) and of 1e156 overflows; the relative residual does not depend on either scale."""
    A = syn.conditioned(300, 8, 1e2, seed=1)
    b = syn.rhs(8 if problem == "gram_power" else 300, 0)
    _, plain = solve(problem, A, b, method=method)
    _, scaled = solve(problem, A * scale_a, b * scale_b, method=method)
    assert scaled.converged == plain.converged
    if method == "qr":  # a direct solve: the same arithmetic on scaled numbers
        assert scaled.relres == pytest.approx(plain.relres, rel=1e-3)
    elif problem == "gram_power":  # an iterative one stops wherever its test first holds: relres <= eps
        assert max(plain.relres, scaled.relres) <= 1e-8


@pytest.mark.parametrize("method", ["sketch_lsqr", "sketch_pcg"])
def test_refinement_of_an_exact_solution_stops_there(method):
    """b in the range of A: the first solve is exact, and a zero residual has no scale to refine against."""
    A = torch.cat([torch.eye(4), torch.zeros(60, 4)]).double()
    _, info = least_squares(A, A @ torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), method=method, refine=2)
    assert info.converged and info.relres == 0.0


def test_zero_denominators_give_inf_or_nan_as_a_tensor_division_would():
    assert (P.ratio(1.0, 0.0), P.ratio(3.0, 2.0)) == (math.inf, 1.5) and math.isnan(P.ratio(0.0, 0.0))
    A = syn.conditioned(64, 4, 10.0, seed=0)
    found = P.metrics("gram_power", A, syn.rhs(4, 0), torch.ones(4, dtype=torch.float64), torch.zeros(4,
                      dtype=torch.float64))
    assert found["fwd_err"] == math.inf
