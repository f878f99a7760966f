"""scripts/bench_solvers.py runs its three parts end to end at toy sizes and writes its tables."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
