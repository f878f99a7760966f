"""scripts/bench_attention.py, bench_decode.py, bench_decode_long.py, bench_flex.py, bench_optim.py, bench_loss.py,
bench_nanogpt.py, bench_malloc.py, bench_demo.py and bench_blocked_softmax.py run end to end at toy sizes and write
their outputs.

Smoke tests only: the numbers they print are measurements, never asserted."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.revision import commit_of
from training.malloc import is_glibc

ROOT = Path(__file__).resolve().parents[2]


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    return result


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bench_attention_times_every_case_and_the_decode_step(tmp_path, env_without_malloc_setup):
    out = tmp_path / "attention"
    run_script("scripts/bench_attention.py", "--lengths", "32", "64", "--dtypes", "float32", "--backends", "softmax",
               "taylor:crossover=1", "expressive_sq", "--heads", "2", "--reps", "1", "--decode-contexts", "16",
               "--decode-steps", "2", "--out", str(out), env=env_without_malloc_setup)
    rows = read_rows(out.with_suffix(".csv"))
    training = {(r["backend"], r["n"], r["mode"]) for r in rows if r["kind"] == "training" and r["time_s"]}
    assert training == {(name, n, mode) for name in ("softmax", "taylor[crossover=1]", "expressive_sq")
                        for n in ("32", "64") for mode in ("fwd", "fwd+bwd")}
    decode = [r for r in rows if r["kind"] == "decode"]
    assert decode and all(float(r["step_ms"]) > 0 and int(r["state_bytes"]) > 0 for r in decode)
    page = out.with_suffix(".md").read_text()
    assert "| 64 |" in page
    # no anchor is at these lengths, and no target's backends or lengths ran: neither section is printed empty
    assert "## Against the anchors" not in page and "## Targets" not in page
    assert out.with_suffix(".png").stat().st_size > 0
    assert {r["malloc"] for r in rows} == {"kept" if is_glibc() else "unchanged"}


def test_bench_attention_paired_mode_times_each_tree_against_the_reference_and_profiles(tmp_path):
    out = tmp_path / "paired"
    run_script("scripts/bench_attention.py", "--against", "softmax", "--backends", "expressive", "--lengths", "32",
               "--dtypes", "bfloat16", "--heads", "2", "--rounds", "2", "--turns", "1", "--baseline-rev", "HEAD",
               "--profile", "--block", "16", "--malloc", "unchanged", "--out", str(out))
    rows = read_rows(out.with_suffix(".csv"))
    paired = [r for r in rows if r["kind"] == "paired"]
    assert {r["tree"] for r in paired} == {"this tree", f"baseline {commit_of('HEAD')}"}
    assert all(float(r["ratio"]) > 0 and int(r["rounds"]) == 2 and float(r["GEMM"]) > 0 for r in paired)
    gemms = {r["dtype"] for r in rows if r["kind"] == "tile gemm"}
    assert gemms == {"float32", "bfloat16", "float16"}
    page = out.with_suffix(".md").read_text()
    assert "Load average" in page and "| expressive | bfloat16 | 32 |" in page
    assert "malloc unchanged" in page and {r["malloc"] for r in rows} == {"unchanged"}


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


def test_bench_decode_batches_report_throughput_and_state_bytes_per_batch(tmp_path):
    out = tmp_path / "batch"
    run_script("scripts/bench_decode.py", "--config", "configs/tiny.yaml", "--backends", "softmax", "logexp",
               "--positions", "24", "--batches", "1", "4", "--steps", "2", "--prefill-chunk", "16", "--out", str(out))
    rows = read_rows(out.with_suffix(".csv"))
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("softmax", "logexp") for n in ("1", "4")}
    assert all(float(r["tokens_per_s"]) > 0 and not r["skipped"] for r in rows)
    for backend in ("softmax", "logexp"):
        one, four = (int(r["state_bytes"]) for n in ("1", "4") for r in rows if (r["backend"], r["batch"]) ==
                     (backend, n))
        assert four == 4 * one  # the batch-1 state repeated four times
    page = out.with_suffix(".md").read_text()
    assert page.startswith("# Decode benchmark\n\nMeasured: ") and "Machine: " in page
    assert "| backend | state | batch 1 | batch 4 |" in page


def test_bench_decode_long_reports_latency_and_memory_per_bucket(tmp_path):
    out = tmp_path / "long"
    run_script("scripts/bench_decode_long.py", "--config", "configs/tiny.yaml", "--backends", "taylor",
               "--tokens", "25", "--bucket", "10", "--dtype", "bfloat16", "--out", str(out))
    rows = read_rows(out.with_suffix(".csv"))
    assert [int(r["position"]) for r in rows] == [10, 20, 25]  # the last bucket holds the rest
    assert [int(r["tokens"]) for r in rows] == [10, 10, 5]
    assert all(float(r["p99_ms"]) >= float(r["median_ms"]) > 0 and float(r["rss_mib"]) > 0 for r in rows)
    assert all(float(r["cpu_median_ms"]) > 0 for r in rows)
    assert len({r["state_bytes"] for r in rows}) == 1  # a constant-size state
    page = out.with_suffix(".md").read_text()
    assert page.startswith("# Decoding a long stream\n\nMeasured: ") and "Machine: " in page
    assert "Run finished" in page and "- **taylor**: 25 of 25 tokens" in page and "bfloat16 weights" in page
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow  # compiling flex_attention (caches off, as the script sets them) is most of the run on a CPU
def test_bench_flex_times_both_forms_and_reports_the_backward_on_the_cpu(tmp_path):
    out = tmp_path / "flex"
    # one backend, length and dtype: each further one compiles flex again
    run_script("scripts/bench_flex.py", "--tokens", "64", "--heads", "1", "--head-dim", "16", "--dtypes", "float32",
               "--backends", "taylor", "--reps", "1", "--out", str(out))
    rows = read_rows(out.with_suffix(".csv"))
    assert [(r["backend"], r["dtype"], r["tokens"]) for r in rows] == [("taylor", "float32", "64")]
    assert all(float(r["tiled_s"]) > 0 and float(r["flex_s"]) > 0 and float(r["first_call_s"]) > 0 for r in rows)
    page = out.with_suffix(".md").read_text()
    assert page.startswith("# Direct attention form: tiled kernel and compiled flex_attention\n\nMeasured: forward "
                           "seconds of the direct form of taylor, tiled ")
    assert "Command: `python scripts/bench_flex.py --tokens 64" in page and "Machine: " in page
    table = [line for line in page.splitlines() if line.startswith("| ")]
    assert table[0] == ("| backend | dtype | tokens | tiled s | flex s | flex / tiled | first flex call s | "
                        "max \\|flex - tiled\\| |")
    assert [line.split(" | ")[:3] for line in table[1:]] == [["| taylor", "float32", "64"]]
    assert "Forward+backward of the compiled flex" in page


def test_bench_optim_times_both_adamw_forms(tmp_path):
    out = tmp_path / "optim"
    run_script("scripts/bench_optim.py", "--shapes", "demo", "--threads", "1", "--rounds", "1", "--out", str(out))
    (row,) = read_rows(out.with_suffix(".csv"))
    assert row["shape"] == "demo" and float(row["foreach_s"]) > 0 and float(row["fused_s"]) > 0
    page = out.with_suffix(".md").read_text()
    assert page.startswith("# AdamW step: foreach and fused\n\nMeasured: ") and "| demo | 1 |" in page


def test_bench_blocked_softmax_times_both_forms_in_both_modes_and_reports_the_bf16_error(tmp_path):
    out = tmp_path / "blocked"
    run_script("scripts/bench_blocked_softmax.py", "--shapes", "1x2x100", "--no-grad-shapes", "1x2x100",
               "--dtypes", "float32", "--threads", "1", "--blocks", "32,64", "--rounds", "1", "--error-shape",
               "1x2x70", "--out", str(out))
    rows = read_rows(out.with_suffix(".csv"))
    assert {(r["mode"], r["form"]) for r in rows} == {(mode, form) for mode in ("fwd+bwd", "fwd, no grad")
                                                      for form in ("sdpa", "blocked 32", "blocked 64")}
    kept = {(r["mode"], r["form"]): float(r["saved_mib"]) for r in rows}
    assert kept[("fwd+bwd", "sdpa")] == 0 < kept[("fwd+bwd", "blocked 32")]
    assert kept[("fwd, no grad", "blocked 32")] == 0
    page = out.with_suffix(".md").read_text()
    assert "## Forward alone, without gradients" in page
    errors = [line.split(" | ") for line in page.split("## Error in bf16")[1].splitlines() if line.startswith("| ")]
    assert [e[0] for e in errors[1:]] == ["| sdpa", "| blocked 32", "| blocked 64"]  # after the header
    assert all(0 < float(x.strip(" |")) < 0.01 for e in errors[1:] for x in e[1:])


def test_bench_loss_times_the_full_form_and_the_chunked_one_with_and_without_the_padded_head(tmp_path):
    out = tmp_path / "loss"
    run_script("scripts/bench_loss.py", "--tokens", "64", "--hidden", "16", "--vocab", "101", "--dtypes", "float32",
               "--chunks", "32", "--reps", "1", "--out", str(out))
    rows = read_rows(out.with_suffix(".csv"))
    assert [row["form"] for row in rows] == ["full", "chunked, 32 rows", "chunked, 32 rows, head unpadded"]
    assert float(rows[0]["ratio_to_full"]) == 1.0 and all(float(row["seconds"]) >= 0 for row in rows)
    assert all(float(row["ratio_min"]) <= float(row["ratio_to_full"]) <= float(row["ratio_max"]) for row in rows)
    assert "padded to a multiple of 64 rows" in out.with_suffix(".md").read_text()


# what scripts/bench_nanogpt.py needs of nanoGPT's model.py (GPTConfig, GPT, configure_optimizers), on our model
NANOGPT_STAND_IN = """
from dataclasses import dataclass
import torch
from model.config import ModelConfig
from model.gpt import GPT as Ours

@dataclass
class GPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool

class GPT(Ours):
    def __init__(self, c):
        super().__init__(ModelConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.block_size,
                                     vocab_size=c.vocab_size))

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
"""


@pytest.mark.slow  # four training steps of a 50,257-word model, two of them under the profiler
def test_bench_nanogpt_alternates_the_two_models_and_profiles_them(tmp_path):
    (tmp_path / "model.py").write_text(NANOGPT_STAND_IN)
    out = tmp_path / "nanogpt"
    run_script("scripts/bench_nanogpt.py", "--nanogpt", str(tmp_path / "model.py"), "--shape", "demo", "--dtype",
               "float32", "--warmup", "0", "--steps", "1", "--profile", "--out", str(out))
    (row,) = read_rows(out.with_suffix(".csv"))
    assert float(row["ours_tokens_per_s"]) > 0 and float(row["nanogpt_tokens_per_s"]) > 0 and float(row["speedup"]) > 0
    page = out.with_suffix(".md").read_text()
    assert page.startswith("# Training step beside nanoGPT\n\nMeasured: ") and "## Where the time goes" in page
    assert "| mm |" in page and "| all aten ops |" in page
    assert "malloc unchanged for both" in page


def test_bench_nanogpt_names_a_missing_model_file(tmp_path):
    result = subprocess.run([sys.executable, "scripts/bench_nanogpt.py", "--nanogpt", str(tmp_path / "nope.py")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "no such file; give the path of nanoGPT's model.py" in result.stderr


@pytest.mark.skipif(not is_glibc(), reason="training/malloc.py sets up glibc's malloc only")
def test_bench_malloc_runs_both_settings_in_fresh_processes(tmp_path, env_without_malloc_setup):
    out = tmp_path / "malloc"
    run_script("scripts/bench_malloc.py", "--shapes", "demo", "--rounds", "1", "--warmup", "0", "--steps", "1",
               "--out", str(out), env=env_without_malloc_setup)
    rows = read_rows(out.with_suffix(".csv"))
    assert [r["malloc"] for r in rows] == ["unchanged", "kept"]
    # the peak of each bench_train.py process itself (VmHWM), which a training step of the demo model takes past 300 MiB
    assert all(float(r["step_s"]) > 0 and int(r["peak_rss_mib"]) > 300 for r in rows)
    assert rows[0]["time_vs_unchanged"] == "1.0"
    assert "freed memory kept (train.py)" in out.with_suffix(".md").read_text()


@pytest.mark.slow  # four tiny training runs in fresh processes
def test_bench_demo_runs_both_trees_in_turn_and_reports_their_runs(tmp_path, prepared_dir):
    out = tmp_path / "demo"
    run_script("scripts/bench_demo.py", "--baseline-rev", "HEAD", "train.max_steps=15", "--config", "configs/tiny.yaml",
               f"data.prepared_dir={prepared_dir}", "--out", str(out), "train.out_dir=/nonexistent/ignored")
    rows = read_rows(out.with_suffix(".csv"))
    assert [r["tree"] for r in rows] == ["this tree", f"baseline {commit_of('HEAD')}"]
    assert all(float(r["wall_s"]) > float(r["steps_s"]) > 0 and float(r["tokens_per_s"]) > 0 for r in rows)
    assert all(float(r["tokens_per_s_min"]) <= float(r["tokens_per_s"]) <= float(r["tokens_per_s_max"]) for r in rows)
    page = out.with_suffix(".md").read_text()
    assert page.startswith("# The CPU demo end to end, beside a baseline revision\n\nMeasured: ")
    assert "This tree's speed / the baseline's" in page and "whole run" in page


@pytest.mark.parametrize("script", ["scripts/bench_demo.py", "scripts/bench_tokenize.py"])
def test_a_baseline_revision_git_cannot_resolve_is_refused_before_any_work(tmp_path, script):
    result = subprocess.run([sys.executable, script, "--baseline-rev", "no-such-rev", "--out", str(tmp_path / "page")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "'no-such-rev' is not a commit of" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_bench_demo_says_which_run_failed(tmp_path):
    result = subprocess.run([sys.executable, "scripts/bench_demo.py", "--baseline-rev", "HEAD", "--config",
                             "configs/tiny.yaml", "--out", str(tmp_path / "demo"), "model.n_layer=0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "train.py from" in result.stderr and "failed" in result.stderr
