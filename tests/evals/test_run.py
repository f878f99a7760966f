"""evals/run.py: the report end to end on a tiny checkpoint, its aggregation, and its errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evals import report
from evals.instances import distinct_rows, synthetic_controls
from evals.run import evaluate, main, time_vs_n
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
                 "time_vs_n.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "extracted" / "manifest.json").exists()

    records = _read_csv(out / "solvers.csv")
    # 2 layers x 2 heads of K (gram problems: 2 j each; exp: 1) + 2 layers of X (gram problems: 2 j each)
    expected = 2 * 2 * (2 * len(METHODS["gram_power"]) + 2 * len(METHODS["a_gram_power"]) + len(METHODS["exp_kernel"]))
    expected += 2 * (2 * len(METHODS["gram_power"]) + 2 * len(METHODS["a_gram_power"]))
    assert len(records) == expected
    runs = _read_csv(out / "solvers_runs.csv")
    assert len(runs) == 3 * expected and {r["seed"] for r in runs} == {"0", "1", "2"}
    statuses = {r["status"] for r in records}
    assert statuses <= {"ok", "scaled", "beyond float64", "n/a"} and "ok" in statuses
    for r in records:
        if r["method"] == "qr" and r["status"] == "ok":
            assert float(r["success_rate"]) == 1.0 and float(r["speedup_vs_reference"]) == 1.0
            assert float(r["median_score"]) < 1e-10
    text = (out / "solvers.md").read_text()
    assert "step 7" in text and "softmax" in text and "| gram_power | 1 | sketch_pcg |" in text


def test_evaluate_scores_synthetic_controls_and_gates_the_ill_conditioned():
    instances = {(i.label, i.problem): i for i in synthetic_controls(js=(1,), n=512, d=16, kernel_n=128)}
    easy = evaluate(instances["kappa=1e+02", "gram_power"], seeds=3, eps=1e-8, maxiter=500)
    assert len(easy) == 3 * len(METHODS["gram_power"])
    assert all(r["status"] == "ok" and r["success"] for r in easy), [r for r in easy if not r["success"]]
    hard = evaluate(instances["kappa=1e+08", "gram_power"], seeds=1, eps=1e-8, maxiter=50)
    assert {r["status"] for r in hard} == {"beyond float64"} and not any(r["success"] for r in hard)
    kernel = evaluate(instances["heterogeneous norms 2-40", "exp_kernel"], seeds=1, eps=1e-8, maxiter=300)
    by_method = {r["method"]: r for r in kernel}
    assert by_method["jacobi_pcg"]["status"] == "scaled" and by_method["jacobi_pcg"]["success"]
    assert by_method["tensorsketch_pcg"]["status"] == "n/a"  # rows too large for a low-degree Taylor sketch

    records = report.aggregate(easy)
    assert {r["method"]: r["speedup_vs_reference"] for r in records}["qr"] == 1.0
    summary = report.summarise(records, "synthetic")
    assert {s["method"] for s in summary} == set(METHODS["gram_power"])
    assert all(s["scored"] == 1 and s["success_rate"] == 1.0 for s in summary)


def test_time_vs_n_records_every_method_and_size():
    A = next(i.A for i in synthetic_controls(js=(1,), n=512, d=8, kernel_n=64) if i.problem == "a_gram_power")
    rows = time_vs_n(A, "a_gram_power", [128, 512], eps=1e-8, repeats=1)
    assert {(r["n"], r["method"]) for r in rows} == {(n, m) for n in (128, 512) for m in METHODS["a_gram_power"]}
    assert all(r["time"] > 0 for r in rows)


def test_distinct_rows_keeps_the_first_copy_of_each_row_in_order():
    A = torch.tensor([[3.0, 0.0], [1.0, 1.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert distinct_rows(A).tolist() == [[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]]


@pytest.mark.parametrize("args, message", [
    (["--extracted", "nowhere", "--out", "x"], "not an extraction directory"),
    (["--extracted", "nowhere", "--out", "x", "--j", "0"], "--j takes integers >= 1"),
    (["--extracted", "nowhere", "--out", "x", "--seeds", "0"], "--seeds"),
])
def test_errors_name_the_problem(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
