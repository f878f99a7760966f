"""scripts/recall_grid.py: one sweep per number of key-value pairs, then each backend's answer accuracy beside the
accuracy that needs no recall."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.attention import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
SECOND = next(name for name in BACKENDS if name != "softmax")

spec = importlib.util.spec_from_file_location("recall_grid_cli", ROOT / "scripts" / "recall_grid.py")
recall_grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recall_grid)


def test_the_recall_grid_table_puts_each_backend_beside_the_no_recall_accuracy(tmp_path):
    grid = {2: {"softmax": (0.9, 0.05, 3), "logexp": (0.7, 0.0, 1)}, 8: {"softmax": (0.4, 0.01, 3)}}
    table = recall_grid.write_results(grid, tmp_path / "mqar")
    assert "| softmax | 0.900 ± 0.050 | 0.400 ± 0.010 |" in table
    assert "| logexp | 0.700 | nan |" in table
    assert "| *no recall (elimination)* | 0.750 | 0.340 |" in table
    assert (tmp_path / "mqar.png").read_bytes().startswith(b"\x89PNG")
    assert "elimination_accuracy" in (tmp_path / "mqar.csv").read_text().splitlines()[0]


def test_the_recall_grid_refuses_a_text_config(capsys):
    assert recall_grid.main(["configs/tiny.yaml"]) == 2
    assert "set data.source=mqar" in capsys.readouterr().err


@pytest.mark.slow
def test_the_recall_grid_runs_a_sweep_per_difficulty(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/recall_grid.py", "configs/mqar-cpu.yaml", "--pairs", "1,2", "--backends",
         f"softmax,{SECOND}", "--out", str(tmp_path / "grid"), "--results", str(tmp_path / "results" / "mqar"),
         "train.max_steps=3", "train.eval_interval=3", "data.eval_windows=16"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["pairs1", "pairs2"]
    rows = list(csv.DictReader(open(tmp_path / "results" / "mqar.csv")))
    assert {(r["backend"], r["num_pairs"]) for r in rows} == {(b, p) for b in ("softmax", SECOND) for p in "12"}
    assert all(0.0 <= float(r["accuracy_mean"]) <= 1.0 for r in rows)
    assert (tmp_path / "results" / "mqar.png").is_file()
