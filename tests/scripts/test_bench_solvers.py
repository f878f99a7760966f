"""scripts/bench_solvers.py runs its three parts end to end at toy sizes and writes its tables; its verdict on the
exp-kernel solvers names each size as measured."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_solvers_cli", ROOT / "scripts" / "bench_solvers.py")
bench_solvers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_solvers)


def test_bench_solvers_writes_every_part(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "scripts/bench_solvers.py", "--kappa-n", "512", "--kappa-d", "8", "--seeds", "1",
         "--tall-n", "2048", "--tall-d", "32", "--repeats", "1", "--kernel-n", "64", "128", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = out.with_suffix(".md").read_text()
    assert text.startswith("# Solver benchmarks\n\nMeasured: iterations and accuracy of sketch + LSQR over κ, and ")
    assert "Command: `python scripts/bench_solvers.py --kappa-n 512" in text and "Machine: " in text
    for heading in ("## κ sweep", "## Tall least squares, 2048 × 32", "## exp(A Aᵀ) x = b"):
        assert heading in text
    with open(out.with_suffix(".csv"), newline="") as handle:
        parts = {row["part"] for row in csv.DictReader(handle)}
    assert parts == {"kappa", "tall", "kernel"}


@pytest.mark.parametrize("args, message", [
    (["--parts", "kapa"], "--parts takes a comma-separated choice of kappa, tall, kernel, got 'kapa'"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--parts", "tall", "--tall-n", "100", "--tall-d", "200"], "--tall-n must be at least --tall-d (200)"),
    (["--parts", "kappa", "--kappa-n", "10", "--kappa-d", "20"], "--kappa-n must be at least --kappa-d (20)"),
    (["--parts", "kernel", "--extracted", "nowhere"], "bench_solvers: nowhere is not an extraction directory"),
])
def test_bad_arguments_are_one_line_and_write_no_page(tmp_path, args, message):
    result = subprocess.run([sys.executable, "scripts/bench_solvers.py", *args, "--out", str(tmp_path / "b")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "b.md").exists()


def kernel_rows(times: dict[int, dict[str, tuple[float, bool]]]) -> list[dict]:
    return [{"n": n, "method": method, "time": time, "converged": converged}
            for n, by_method in times.items() for method, (time, converged) in by_method.items()]


def test_the_kernel_verdict_names_each_size_where_an_iterative_solver_paid_and_where_it_did_not():
    rows = kernel_rows({256: {"cholesky": (0.007, True), "cg": (0.006, True)},
                        512: {"cholesky": (0.007, True), "cg": (0.02, True), "nystrom_pcg": (0.05, True)},
                        1024: {"cholesky": (0.05, True), "cg": (0.01, False), "nystrom_pcg": (0.04, True)}})
    assert bench_solvers.kernel_verdict(rows, 3) == (
        "A converged iterative solver took less time than dense Cholesky at n = 256, 1024; Cholesky was faster at "
        "n = 512 (median of 3 timings each).")


def test_the_kernel_verdict_ignores_an_iterative_solver_that_did_not_converge():
    rows = kernel_rows({64: {"cholesky": (0.01, True), "cg": (0.001, False)}})
    assert bench_solvers.kernel_verdict(rows, 1) == "Dense Cholesky was fastest at every n measured (one timing each)."
