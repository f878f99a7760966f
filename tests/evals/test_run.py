"""evals/run.py: the report end to end on a tiny checkpoint, its aggregation, and its errors."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evals import report
from evals import synthetic as syn
from evals.instances import Instance, check_rows, distinct_rows, synthetic_controls
from evals import run
from evals.run import evaluate, main, opening_of, scoring, time_vs_n
from evals.solve import METHODS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_cli_reports_every_layer_head_problem_j_and_method(softmax_run, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "evals.run", "--ckpt", str(softmax_run), "--windows", "4", "--out", str(out),
         "--seeds", "3", "--j", "1,2", "--maxiter", "300", "--no-synthetic"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in ("solvers.md", "solvers.csv", "solvers_runs.csv", "time_vs_n.csv", "iterations_vs_kappa.png",
                 "time_vs_n.png", "report.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "extracted" / "manifest.json").exists()

    records = _read_csv(out / "solvers.csv")
    # 2 layers x 2 heads of K (gram problems: 2 j each; exp: 1) + 2 layers of X (gram problems: 2 j each)
    expected = 2 * 2 * (2 * len(METHODS["gram_power"]) + 2 * len(METHODS["a_gram_power"]) + len(METHODS["exp_kernel"]))
    expected += 2 * (2 * len(METHODS["gram_power"]) + 2 * len(METHODS["a_gram_power"]))
    assert len(records) == expected
    runs = _read_csv(out / "solvers_runs.csv")
    assert len(runs) == 3 * expected and {r["seed"] for r in runs} == {"0", "1", "2"}
    assert {r["float64_predicted_ok"] for r in records} <= {"True", "False"}
    assert {r["applicable"] for r in records} == {"True", "False"}  # the Taylor sketch does not apply to every head
    for r in records:
        if r["method"] == "qr" and r["float64_predicted_ok"] == "True":
            assert float(r["success_rate"]) == 1.0 and float(r["speedup_vs_reference"]) == 1.0
            assert float(r["median_score"]) < 1e-10
    heading, _, opening, _ = (out / "solvers.md").read_text().split("\n", 3)
    assert heading.startswith("# ") and opening.startswith("Measured: ")
    for fact in ("Command: `python -m evals.run --ckpt", "step 7", "softmax", "Machine: ", "Date: "):
        assert fact in opening, fact
    page = (out / "solvers.md").read_text()
    assert "| gram_power | 1 | sketch_pcg |" in page
    # --no-synthetic: neither claimed in the opening nor an empty table
    assert "on synthetic controls" not in page and "## Synthetic controls" not in page

    # scoring the per-seed rows again with the scoring that wrote them changes no record
    again = tmp_path / "rescored"
    assert main(["--rescore", str(out), "--out", str(again)]) == 0
    assert (again / "solvers.csv").read_text() == (out / "solvers.csv").read_text()
    assert "re-scored without solving again by `python -m evals.run --rescore" in (again / "solvers.md").read_text()

    # a report damaged or written by another version is refused in one line, before anything is written
    for i, (name, change) in enumerate([
        ("solvers_runs.csv", lambda text: text.replace("sketch_pcg", "paper_pcg")),  # a method this version lacks
        ("solvers_runs.csv", lambda text: "\n".join(text.splitlines()[:2] + [text.splitlines()[2].split(",")[0]])),
        # cut short: the last row's first cell alone
        ("solvers_runs.csv", lambda text: text.splitlines()[0] + "\n"),  # no rows
        ("report.json", lambda text: json.dumps({"eps": 1e-8})),  # no manifest
    ]):
        damaged = tmp_path / f"damaged{i}"
        shutil.copytree(out, damaged, ignore=shutil.ignore_patterns("extracted"))
        (damaged / name).write_text(change((damaged / name).read_text()))
        assert main(["--rescore", str(damaged), "--out", str(tmp_path / f"new{i}")]) == 2
        assert not (tmp_path / f"new{i}" / "solvers.md").exists()


def test_evaluate_scores_every_instance_by_its_residual():
    instances = {(i.label, i.problem): i for i in synthetic_controls(js=(1,), n=512, d=16, kernel_n=128)}
    easy = evaluate(instances["kappa=1e+02", "gram_power"], seeds=3, eps=1e-8, maxiter=500)
    assert len(easy) == 3 * len(METHODS["gram_power"])
    assert all(r["float64_predicted_ok"] and r["success"] for r in easy), [r for r in easy if not r["success"]]
    kernel = evaluate(instances["heterogeneous norms 2-40", "exp_kernel"], seeds=1, eps=1e-8, maxiter=300)
    by_method = {r["method"]: r for r in kernel}
    assert not by_method["cholesky"]["float64_predicted_ok"]  # κ(exp(A Aᵀ)) >= e^38
    assert by_method["cholesky"]["success"] and by_method["cholesky"]["score"] == by_method["cholesky"]["relres"]
    assert not by_method["tensorsketch_pcg"]["applicable"]  # rows too large for a low-degree Taylor sketch
    assert "score" not in by_method["tensorsketch_pcg"]

    records = report.aggregate(easy)
    assert {r["method"]: r["speedup_vs_reference"] for r in records}["qr"] == 1.0
    # a solve with the reference's own factorisation has no forward error to report (it read 0.0)
    fwd = {(r["problem"], r["method"]): r.get("median_fwd_err") for r in records + report.aggregate(kernel)}
    assert math.isnan(fwd["gram_power", "svd"]) and math.isnan(fwd["exp_kernel", "cholesky"])
    assert 0 < fwd["gram_power", "qr"] < 1e-6 and 0 < fwd["exp_kernel", "cg"] < 1
    assert [r["shared_factor"] for r in kernel] == [m == "cholesky" for m in METHODS["exp_kernel"]]
    summary = report.summarise(records, "synthetic")
    assert {s["method"] for s in summary} == set(METHODS["gram_power"])
    assert all(s["applicable"] == s["predicted_ok"] == s["all_succeeded"] == 1 and s["success_rate"] == 1.0
               for s in summary)


def test_a_cholesky_solve_of_a_kernel_whose_reference_is_its_eigendecomposition_keeps_its_forward_error():
    """Two rows 1e-6 apart: K_G has no full numerical rank, x* comes from its eigendecomposition, and Cholesky's
    (large) forward error is its own."""
    A = syn.conditioned(32, 4, 10.0, 0)
    A[1] = A[0] + 1e-6
    rows = evaluate(Instance("synthetic", "near twins", "exp_kernel", A, (1,)), seeds=1, eps=1e-8, maxiter=50)
    cholesky = next(r for r in rows if r["method"] == "cholesky")
    assert cholesky["shared_factor"] is False
    (record,) = [r for r in report.aggregate(rows) if r["method"] == "cholesky"]
    assert record["median_fwd_err"] == cholesky["fwd_err"] > 0


def test_a_solve_the_bound_calls_beyond_float64_that_meets_eps_is_a_success():
    """A = [diag(1 .. 1e-3); 0]: κ(M) = κ(A)² = 1e6 for j = 1, so the bound (eps >= 100 u κ(M) = 1.1e-8) predicts
    failure at eps = 1e-8, but a diagonal Gram system is solved to rounding."""
    A = torch.cat([torch.diag(torch.logspace(0, -3, 8, dtype=torch.float64)), torch.zeros(56, 8, dtype=torch.float64)])
    rows = evaluate(Instance("synthetic", "diagonal", "gram_power", A, (1,)), seeds=1, eps=1e-8, maxiter=100)
    qr = next(r for r in rows if r["method"] == "qr")
    assert not qr["float64_predicted_ok"] and qr["score"] < 1e-12 and qr["success"] and qr["success_10eps"]
    (check,) = report.gate_check(report.aggregate(rows))
    assert check["predicted_ok"] == 0 and check["solved"] == 1 and check["predicted_beyond_but_solved"] == 1


def test_a_solve_that_misses_eps_is_a_failure():
    """κ(A) = 1e8: (AᵀA) x = b has κ(M) = 1e16, and no float64 solve comes near eps = 1e-8."""
    hard = next(i for i in synthetic_controls(js=(1,), n=512, d=16) if i.label == "kappa=1e+08")
    rows = evaluate(hard, seeds=1, eps=1e-8, maxiter=50)
    assert not any(r["float64_predicted_ok"] or r["success"] or r["success_10eps"] for r in rows)
    assert all(r["score"] > 1e-7 or math.isnan(r["score"]) for r in rows)
    (check,) = report.gate_check(report.aggregate(rows))
    assert check["solved"] == check["solved_10eps"] == check["predicted_ok_but_unsolved"] == 0


@pytest.mark.parametrize("problem, metrics, expected", [
    ("gram_power", {"relres": 1e-9, "pred_err": 1.0}, (True, True)),
    ("gram_power", {"relres": 5e-8, "pred_err": 0.0}, (False, True)),
    ("gram_power", {"relres": 2e-7, "pred_err": 0.0}, (False, False)),
    ("gram_power", {"relres": math.nan, "pred_err": 0.0}, (False, False)),
    ("a_gram_power", {"relres": 0.9, "pred_err": 1e-9}, (True, True)),  # relres >= OPT / ||b||: pred_err is scored
    ("exp_kernel", {"relres": 5e-8, "pred_err": 1e-12}, (False, True)),
])
def test_scoring_is_the_paper_criterion_whatever_the_bound_predicts(problem, metrics, expected):
    row = {"problem": problem, "method": METHODS[problem][0], "kappa_M": 1e12, "applicable": True, **metrics}
    columns = scoring(row, 1e-8)
    assert not columns["float64_predicted_ok"]  # 100 u 1e12 ~ 1e-2 > 1e-8
    assert (columns["success"], columns["success_10eps"]) == expected


def test_svd_is_never_best_where_it_is_scored_against_its_own_factor():
    """a_gram_power's x* is V Σ^-2j-1 Uᵀ b from the SVD of A, the svd method's own factor: at κ(A) = 1e3, j = 2
    (κ(M) = 1e15) its shared rounding makes it score several times lower than qr, but it is not an independent
    measurement, so the instance's best method is another one and svd alone never makes it solved."""
    A = syn.conditioned(512, 16, 1e3, 0)
    rows = evaluate(Instance("synthetic", "kappa=1e3", "a_gram_power", A, (2,)), seeds=1, eps=1e-8, maxiter=300)
    score = {r["method"]: r["score"] for r in rows}
    assert score["svd"] < min(s for m, s in score.items() if m != "svd")
    assert {r["method"] for r in rows if not r["scored_independently"]} == {"svd"}
    (best,) = report.best_methods(report.aggregate(rows)).values()
    assert best["method"] != "svd" and best["worst_score"] == min(s for m, s in score.items() if m != "svd")

    only_svd_meets_eps = [{**r, **scoring({**r, "pred_err": 1e-9 if r["method"] == "svd" else 1e-6}, 1e-8)}
                          for r in rows]
    (check,) = report.gate_check(report.aggregate(only_svd_meets_eps))
    assert check["solved"] == check["solved_10eps"] == 0


def test_svd_stays_eligible_where_its_score_is_its_own_residual():
    """gram_power is scored by relres = ||M x - b|| / ||b||, which needs no reference."""
    row = {"problem": "gram_power", "method": "svd", "kappa_M": 1e4, "applicable": True, "relres": 1e-12,
           "pred_err": 0.0}
    assert scoring(row, 1e-8)["scored_independently"]


def _zero_column(n=512, d=8):
    A = syn.conditioned(n, d, 10.0, 0)
    A[:, 3] = 0.0
    return A


@pytest.mark.parametrize("problem", ["gram_power", "a_gram_power"])
def test_a_rank_deficient_matrix_fails_its_rows_without_aborting(problem):
    """A zero column makes AᵀA singular: R from qr(SA) has a zero pivot, Householder QR divides by one. Every solve
    gets a row. (AᵀA) x = b has no solution, and no method succeeds; A (AᵀA) x ~ b has many, whose predictions
    agree with the minimum-norm one the reference takes, and LSQR (from zero) finds it."""
    rows = evaluate(Instance("synthetic", "zero column", problem, _zero_column(), (1,)), seeds=1, eps=1e-8,
                    maxiter=100)
    assert [r["method"] for r in rows] == list(METHODS[problem])
    solved = {r["method"] for r in rows if r["success"] and r["scored_independently"]}
    assert solved == (set() if problem == "gram_power" else {"lsqr"})
    by_method = {r["method"]: r for r in rows}
    assert not by_method["qr"]["converged"] and math.isnan(by_method["qr"]["score"])
    assert by_method["sketch_pcg"]["kappa_precond"] == math.inf and not by_method["sketch_pcg"]["converged"]
    assert rows[0]["kappa_M"] > 1e30  # the float64 bound calls it beyond float64
    (check,) = report.gate_check(report.aggregate(rows))
    assert check["solved"] == len(solved)


def test_a_solve_that_raises_is_a_failed_row_with_its_reason():
    """A wide A (8 x 16) is refused by every Gram method: the rows say why, and the report lists them."""
    A = syn.conditioned(16, 8, 10.0, 0).T.contiguous()
    rows = evaluate(Instance("synthetic", "wide", "gram_power", A, (1,)), seeds=2, eps=1e-8, maxiter=50)
    assert len(rows) == 2 * len(METHODS["gram_power"])
    assert all(r["applicable"] and not r["converged"] and not r["success"] for r in rows)
    assert all(r["error"] == "SolverError: gram_power needs a tall A (n >= d), got 8 x 16; stack more rows or "
                             "transpose" for r in rows)
    records = report.aggregate(rows)
    assert all(math.isnan(r["worst_score"]) and "tall A" in r["errors"] for r in records)
    page = report.markdown(records, [], opening="", eps=1e-8)
    assert "## Solves that raised an error (scored as failures)" in page
    assert "| synthetic | wide | gram_power | 1 | qr | SolverError: gram_power needs a tall A" in page


def test_a_report_without_errors_has_no_error_section():
    rows = evaluate(Instance("synthetic", "easy", "gram_power", syn.conditioned(64, 4, 10.0), (1,)), seeds=1,
                    eps=1e-8, maxiter=50)
    assert "raised" not in report.markdown(report.aggregate(rows), [], opening="", eps=1e-8)


@pytest.mark.parametrize("extra, message", [
    (["--max-rows", "16"], "16 stacked rows (--max-rows 16, 4 windows of 32 tokens) leave the hidden states X wide "
                           "(n_embd = 32 columns), and the Gram problems need n >= d: use --max-rows >= 32 or pass "
                           "--no-hidden-states"),
    (["--max-rows", "8", "--no-hidden-states"], "leave the keys K wide (head_dim = 16 columns)"),
])
def test_max_rows_that_leave_a_matrix_wide_is_a_clear_error(extra, message, softmax_run, tmp_path, capsys):
    code = main(["--ckpt", str(softmax_run), "--windows", "4", "--out", str(tmp_path / "r"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("evals.run: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before the extraction, and the folder made for it removed
    code = main(["--ckpt", str(softmax_run), "--windows", "4", "--out", str(tmp_path / "a" / "b"), *extra])
    assert code == 2 and not (tmp_path / "a").exists()  # its parents made for it too


def test_windows_of_too_few_rows_ask_for_more_windows_not_for_max_rows():
    manifest = {"windows": {"count": 2, "block_size": 16}, "model": {"head_dim": 16, "n_embd": 64}}
    with pytest.raises(ValueError, match=r"32 stacked rows \(--max-rows 100, .* use --windows >= 4 \(an extraction of "
                                         r"that many\) or pass --no-hidden-states$"):
        check_rows(manifest, 100, hidden_states=True)
    with pytest.raises(ValueError, match=r"^32 stacked rows \(2 windows of 16 tokens\)"):  # no --max-rows given
        check_rows(manifest, None, hidden_states=True)
    check_rows(manifest, 100, hidden_states=False)  # the keys are tall enough


def test_time_vs_n_records_every_method_and_size():
    A = next(i.A for i in synthetic_controls(js=(1,), n=512, d=8, kernel_n=64) if i.problem == "a_gram_power")
    rows = time_vs_n(A, "a_gram_power", [128, 512], eps=1e-8, repeats=1)
    assert {(r["n"], r["method"]) for r in rows} == {(n, m) for n in (128, 512) for m in METHODS["a_gram_power"]}
    assert all(r["time"] > 0 for r in rows)


def test_time_vs_n_skips_a_size_whose_rows_pose_no_instance_and_says_so(capsys):
    """Rows stacked from later windows may hold a squared norm past 709.78, which exp_kernel refuses: the sizes
    before them are timed, that one is named, and the report goes on."""
    A = torch.randn(256, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.3
    A[200] *= 100
    rows = time_vs_n(A, "exp_kernel", [128, 256], eps=1e-8, repeats=1, methods=["cholesky"])
    assert {r["n"] for r in rows} == {128}
    assert "evals.run: no exp_kernel timing at n = 256: exp_kernel: max ||a_i||²" in capsys.readouterr().out


def test_distinct_rows_keeps_the_first_copy_of_each_row_in_order():
    A = torch.tensor([[3.0, 0.0], [1.0, 1.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert distinct_rows(A).tolist() == [[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]]


@pytest.mark.parametrize("args, message", [
    (["--extracted", "nowhere", "--out", "x"], "not an extraction directory ([Errno 2] No such file or directory: "
                                               "'nowhere/manifest.json'); write one with python -m evals.extract"),
    (["--extracted", "nowhere", "--out", "x", "--j", "0"], "--j takes integers >= 1"),
    (["--extracted", "nowhere", "--out", "x", "--seeds", "0"], "--seeds"),
    (["--extracted", "nowhere", "--out", "x", "--max-rows", "0"], "--max-rows must be >= 1, got 0"),
    (["--ckpt", "nowhere", "--out", "x", "--windows", "0"], "--windows must be >= 1 (val windows to extract), got 0"),
    (["--extracted", "nowhere", "--out", "x", "--eps", "2"], "--eps must be a relative accuracy in (0, 1), got 2"),
    (["--extracted", "nowhere", "--out", "x", "--eps", "1"], "--eps must be a relative accuracy in (0, 1), got 1"),
    (["--extracted", "nowhere", "--out", "x", "--layers", "0", "--heads", "1", "--windows", "3"],
     "--layers, --heads, --windows only select what --ckpt extracts"),
    (["--rescore", "nowhere", "--out", "x", "--heads", "1"], "--heads only select what --ckpt extracts"),
    (["--rescore", "nowhere", "--out", "x", "--eps", "1e-4", "--seeds", "7"],
     "--seeds, --eps set how instances are solved; --rescore scores the rows of nowhere again"),
])
def test_errors_name_the_problem(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "(default: 3)" in out and "(default: 1e-08)" in out and "(default: 1,2)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


@pytest.mark.parametrize("out", ["taken", "taken/report"])
def test_an_out_that_is_or_lies_under_a_file_is_refused_before_any_solve(tmp_path, capsys, out):
    """Checked first: the extraction named here does not exist, and the error is still the one about --out."""
    (tmp_path / "taken").write_text("")
    assert main(["--extracted", str(tmp_path / "nowhere"), "--out", str(tmp_path / out)]) == 2
    where = "is an existing file" if out == "taken" else f"lies under {tmp_path / 'taken'}, an existing file"
    assert capsys.readouterr().err == f"evals.run: --out {tmp_path / out} {where}; give a folder for the report\n"


def test_rescoring_a_damaged_report_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text("{not json")
    assert main(["--rescore", str(tmp_path / "old"), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evals.run: {tmp_path / 'old'} is not a solver report") and "JSONDecodeError" in err


def test_an_all_zero_matrix_fails_its_rows_without_aborting():
    """A = 0 raised a bare ZeroDivisionError in the iterative methods, which aborted the whole report."""
    A = torch.zeros(64, 4, dtype=torch.float64)
    rows = evaluate(Instance("synthetic", "zero", "a_gram_power", A, (1,)), seeds=1, eps=1e-8, maxiter=20)
    assert [r["method"] for r in rows] == list(METHODS["a_gram_power"])
    assert all(r["error"].startswith("SolverError: a_gram_power: A is all zeros") for r in rows)


def test_a_numerical_failure_inside_a_solve_costs_only_its_row(monkeypatch):
    def divides_by_zero(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(run, "solve", divides_by_zero)
    rows = evaluate(Instance("synthetic", "easy", "gram_power", syn.conditioned(64, 4, 10.0), (1,)), seeds=1,
                    eps=1e-8, maxiter=20)
    assert all(r["error"] == "ZeroDivisionError: float division by zero" and not r["success"] for r in rows)


def test_a_power_whose_condition_number_exceeds_float64_is_scored_not_a_crash():
    """--j 20: κ(A)^{2j+1} = 1e8^41 raised OverflowError after every solve, and no report was written."""
    hard = next(i for i in synthetic_controls(js=(20,), n=256, d=8) if i.label == "kappa=1e+08"
                and i.problem == "a_gram_power")
    rows = evaluate(hard, seeds=1, eps=1e-8, maxiter=5)
    assert all(r["kappa_M"] == math.inf and not r["float64_predicted_ok"] for r in rows)


def test_a_report_without_synthetic_controls_says_so_and_has_no_such_table():
    rows = evaluate(Instance("checkpoint", "L0 H0 K", "gram_power", syn.conditioned(64, 4, 10.0), (1,), 0, 0),
                    seeds=1, eps=1e-8, maxiter=50)
    assert "## Synthetic controls" not in report.markdown(report.aggregate(rows), [], opening="", eps=1e-8)
    settings = {"manifest": {"checkpoint": {"path": "runs/x", "step": 7}, "windows": {"count": 4, "block_size": 32},
                             "attention": {"backend": "softmax"}, "layers": [0], "heads": [0]},
                "eps": 1e-8, "seeds": 1, "threads": 1, "command": "python -m evals.run", "machine": "m", "date": "d"}
    assert "synthetic" not in opening_of(settings, synthetic=False)
    assert "on synthetic controls" in opening_of(settings, synthetic=True)
    limited = opening_of({**settings, "max_rows": 40, "hidden_states": False})
    assert ("4 val windows of 32 tokens, each matrix's first 40 rows (--max-rows), the hidden states X not solved "
            "(--no-hidden-states)") in limited
    assert "--max-rows" not in opening_of({**settings, "max_rows": 100_000})  # more than the 128 rows: no cut
