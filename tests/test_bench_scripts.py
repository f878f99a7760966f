"""scripts/bench_attention.py and scripts/bench_decode.py run end to end at toy sizes and write their outputs.

Smoke tests only: the numbers they print are measurements, never asserted."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bench_attention_times_every_case_and_the_decode_step(tmp_path):
    out = tmp_path / "attention"
    run_script("scripts/bench_attention.py", "--lengths", "32", "64", "--dtypes", "float32", "--backends", "softmax",
               "taylor:crossover=1", "--heads", "2", "--reps", "1", "--decode-contexts", "16", "--decode-steps", "2",
               "--out", str(out))
    rows = read_rows(out.with_suffix(".csv"))
    training = {(r["backend"], r["n"], r["mode"]) for r in rows if r["kind"] == "training" and r["time_s"]}
    assert training == {(name, n, mode) for name in ("softmax", "taylor[crossover=1]") for n in ("32", "64")
                        for mode in ("fwd", "fwd+bwd")}
    decode = [r for r in rows if r["kind"] == "decode"]
    assert decode and all(float(r["step_ms"]) > 0 and int(r["state_bytes"]) > 0 for r in decode)
    assert "| 64 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_bench_decode_reports_latency_and_state_bytes_per_position(tmp_path):
    out = tmp_path / "decode"
    run_script("scripts/bench_decode.py", "--backends", "softmax", "taylor", "--positions", "8", "24", "--steps", "2",
               "--prefill-chunk", "16", "--out", str(out))
    rows = read_rows(out.with_suffix(".csv"))
    by_backend = {b: [r for r in rows if r["backend"] == b] for b in ("softmax", "taylor")}
    assert all(len(found) == 2 for found in by_backend.values())
    kv_cache, state = ([int(r["state_bytes"]) for r in by_backend[b]] for b in ("softmax", "taylor"))
    assert kv_cache[0] < kv_cache[1]  # the KV cache grows with the context
    assert state[0] == state[1]  # taylor's state does not
    assert out.with_suffix(".png").stat().st_size > 0
