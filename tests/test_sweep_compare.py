"""Sweeps train one run per (backend, seed), skip finished runs and resume interrupted ones; compare averages seeds
per backend into a table and a figure, and refuses runs that did not train and evaluate on the same footing."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model.attention import BACKENDS
from training.comparison import ComparisonError, check_comparable, csv_rows, load_run, markdown_table, summarise
from training.config import config_to_dict, load_config
from training.dataclass_parsing import ConfigError
from training.sweep import parse_backends, plan, train_command

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SECOND = next(name for name in BACKENDS if name != "softmax")
TINY_BUDGET = 20 * 4 * 2 * 32  # configs/tiny.yaml: max_steps x batch_size x grad_accum x block_size


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(path: Path, *overrides: str, losses=(6.0, 5.0), fingerprint="f" * 16, seconds=10.0,
             finished=True) -> Path:
    """A run directory of configs/tiny.yaml as train.py writes it, with evaluations at evenly spaced steps."""
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"train.out_dir={path}", *overrides])
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    steps = cfg.train.max_steps if finished else cfg.train.max_steps // 2
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.block_size
    lines = []
    for i, loss in enumerate(losses, 1):
        step = steps * i // len(losses)
        common = {"step": step, "tokens": step * tokens_per_step, "elapsed": seconds * step / steps}
        lines.append({**common, "train_loss": loss + 0.1, "tokens_per_s": 100.0, "peak_mem_mb": 500.0 + i})
        lines.append({**common, "val_loss": loss, "val_ppl": math.exp(loss), "val_windows": fingerprint})
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# --- compare -------------------------------------------------------------------------------------------------------


def test_the_table_averages_the_seeds_of_each_backend(tmp_path):
    runs = [
        load_run(fake_run(tmp_path / "softmax-0", losses=(5.0, 4.0, 4.3), seconds=8.0)),
        load_run(fake_run(tmp_path / "softmax-1", losses=(5.0, 4.2, 4.5), seconds=12.0)),
        load_run(fake_run(tmp_path / "other-0", f"model.attention={SECOND}", losses=(5.0, 3.0, 3.5))),
    ]
    check_comparable(runs)
    first, second = summarise(runs)  # best final val loss first
    assert (first.backend, first.runs, second.backend, second.runs) == (SECOND, 1, "softmax", 2)
    assert second.stats["final_val_loss"] == pytest.approx((4.4, math.sqrt(0.02)))
    assert second.stats["best_val_ppl"][0] == pytest.approx((math.exp(4.0) + math.exp(4.2)) / 2)
    assert first.stats["final_val_loss"] == (3.5, 0.0) and first.stats["best_val_loss"] == (3.0, 0.0)
    assert second.stats["tokens"] == (TINY_BUDGET, 0.0)
    assert second.stats["wall_time_s"] == (10.0, pytest.approx(math.sqrt(8.0)))
    assert second.stats["tokens_per_s"][0] == pytest.approx((TINY_BUDGET / 8 + TINY_BUDGET / 12) / 2)
    assert second.stats["peak_mem_mb"] == (503.0, 0.0)
    table = markdown_table([first, second])
    assert "| softmax | 2 | 4.4000 ± 0.1414 | 4.1000 ± 0.1414 |" in table
    assert f"| {SECOND} | 1 | 3.5000 | 3.0000 |" in table
    assert "acc" not in table  # no run logged val_accuracy
    assert csv_rows([first, second])[1]["final_val_loss_std"] == pytest.approx(math.sqrt(0.02))


def test_mqar_accuracy_gets_columns_when_every_run_logs_it(tmp_path):
    path = fake_run(tmp_path / "run", losses=(2.0, 1.0))
    lines = [json.loads(text) for text in (path / "metrics.jsonl").read_text().splitlines()]
    for line, accuracy in zip((line for line in lines if "val_loss" in line), (0.5, 0.25)):
        line["val_accuracy"] = accuracy
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (summary,) = summarise([load_run(path)])
    assert summary.stats["final_val_accuracy"] == (0.25, 0.0) and summary.stats["best_val_accuracy"] == (0.5, 0.0)
    assert "| final val acc | best val acc |" in markdown_table([summary])


def test_a_step_logged_twice_by_a_resumed_run_counts_once(tmp_path):
    path = fake_run(tmp_path / "run", losses=(6.0, 5.0))
    with (path / "metrics.jsonl").open("a") as handle:  # resumed from step 10: steps 10 .. 20 are written again
        handle.write(json.dumps({"step": 20, "val_loss": 4.5, "tokens": TINY_BUDGET, "elapsed": 11.0,
                                 "val_windows": "f" * 16}) + "\n")
    run = load_run(path)
    assert [line["val_loss"] for line in run.eval_lines] == [6.0, 4.5]
    assert summarise([run])[0].stats["final_val_loss"] == (4.5, 0.0)


@pytest.mark.parametrize(
    "overrides, kwargs, message",
    [
        (["data.block_size=16"], {}, "runs differ in data.block_size: 32 in .* but 16 in "),
        (["data.source=other.txt"], {}, "runs differ in data.source: 'shakespeare' in .* but 'other.txt'"),
        ([], {"fingerprint": "e" * 16}, f"different val windows: {'f' * 16} in .* but {'e' * 16} in "),
        (["train.max_steps=10"], {}, f"different token budgets: {TINY_BUDGET:,} tokens in .* but {TINY_BUDGET // 2:,}"),
        ([], {"finished": False}, f"is unfinished \\({TINY_BUDGET // 2:,} of {TINY_BUDGET:,} tokens\\)"),
    ],
)
def test_compare_refuses_runs_that_are_not_comparable(tmp_path, overrides, kwargs, message):
    runs = [load_run(fake_run(tmp_path / "a")), load_run(fake_run(tmp_path / "b", *overrides, **kwargs))]
    with pytest.raises(ComparisonError, match=message):
        check_comparable(runs)


def test_where_the_data_lives_and_unused_mqar_knobs_do_not_matter(tmp_path):
    runs = [load_run(fake_run(tmp_path / "a")),
            load_run(fake_run(tmp_path / "b", "data.prepared_dir=elsewhere", "data.mqar.num_pairs=9",
                              "data.mqar.num_queries=3", "train.seed=7", f"model.attention={SECOND}"))]
    check_comparable(runs)
    mqar = ["data.source=mqar", "model.vocab_size=8192", "data.mqar.num_queries=2"]
    runs = [load_run(fake_run(tmp_path / "c", *mqar)),
            load_run(fake_run(tmp_path / "d", *mqar, "data.mqar.num_pairs=9"))]
    with pytest.raises(ComparisonError, match="runs differ in data.mqar.num_pairs: 8 in .* but 9 in "):
        check_comparable(runs)


def test_the_compare_cli_writes_the_table_and_the_figure_or_exits_2(tmp_path, capsys):
    compare = load_script("compare")
    fake_run(tmp_path / "sweep" / "softmax-seed0")
    fake_run(tmp_path / "sweep" / f"{SECOND}-seed0", f"model.attention={SECOND}")
    assert compare.main([str(tmp_path / "sweep")]) == 0
    assert "| softmax | 1 |" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "sweep").glob("comparison.*")} == {"comparison.md", "comparison.csv",
                                                                            "comparison.png"}
    fake_run(tmp_path / "short", "data.block_size=16")
    assert compare.main([str(tmp_path / "sweep"), str(tmp_path / "short"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("cannot compare: runs differ in data.block_size")
    assert not (tmp_path / "out").exists()


# --- sweep ---------------------------------------------------------------------------------------------------------


def test_backends_are_checked_against_the_registry():
    assert parse_backends(f"softmax, {SECOND}") == ["softmax", SECOND]
    with pytest.raises(ConfigError, match="unknown attention backend 'flash' in --backends") as error:
        parse_backends("softmax,flash")
    assert str(error.value).endswith(f"(registered: {', '.join(BACKENDS)})")


def test_a_sweep_plans_one_run_per_backend_and_seed_and_sets_only_what_differs(tmp_path):
    runs = plan("configs/tiny.yaml", ["softmax", SECOND], 2, tmp_path / "demo", ["train.max_steps=4"])
    assert [run.name for run in runs] == ["softmax-seed0", "softmax-seed1", f"{SECOND}-seed0", f"{SECOND}-seed1"]
    last = runs[-1].config
    assert (last.model.attention, last.train.seed, last.train.max_steps, last.train.resume) == (SECOND, 1, 4, "auto")
    assert (last.logging.wandb_group, last.logging.wandb_tags) == ("demo", [SECOND])
    command = train_command("configs/tiny.yaml", runs[0], nproc_per_node=2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[5].endswith("train.py") and command[6] == "configs/tiny.yaml"
    with pytest.raises(ConfigError, match="the sweep sets train.seed itself"):
        plan("configs/tiny.yaml", ["softmax"], 1, tmp_path, ["train.seed=3"])
    with pytest.raises(ConfigError, match="model.n_head"):  # every run's config is checked before any starts
        plan("configs/tiny.yaml", ["softmax"], 1, tmp_path, ["model.n_head=3"])


def sweep(out: Path, prepared_dir: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/sweep.py", "configs/tiny.yaml", "--backends", f"softmax,{SECOND}", "--seeds", "2",
         "--out", str(out), "train.max_steps=4", "train.eval_interval=2", f"data.prepared_dir={prepared_dir}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_a_two_backend_two_seed_sweep_gives_a_table_and_a_figure_and_resumes(tmp_path, prepared_dir):
    out = tmp_path / "sweep"
    result = sweep(out, prepared_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    names = ["softmax-seed0", "softmax-seed1", f"{SECOND}-seed0", f"{SECOND}-seed1"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert yaml.safe_load((out / f"{SECOND}-seed1" / "config.yaml").read_text())["model"]["attention"] == SECOND

    compare = subprocess.run([sys.executable, "scripts/compare.py", str(out)], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert compare.returncode == 0, compare.stderr
    assert "| softmax | 2 |" in compare.stdout and f"| {SECOND} | 2 |" in compare.stdout
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert "softmax" in (out / "comparison.csv").read_text()

    # again: finished runs are skipped; one made to look interrupted at step 2 is resumed to step 4
    interrupted = out / "softmax-seed1" / "checkpoints"
    shutil.rmtree(interrupted / "step_000004")
    (interrupted / "latest").write_text("step_000002")
    metrics_before = (out / "softmax-seed0" / "metrics.jsonl").read_text()
    again = sweep(out, prepared_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == 3 and "resuming from" in again.stdout
    assert (interrupted / "latest").read_text() == "step_000004"
    assert (out / "softmax-seed0" / "metrics.jsonl").read_text() == metrics_before


def test_a_run_record_without_checkpoints_counts_as_finished(tmp_path):
    """config.yaml + metrics.jsonl of a finished run (its checkpoints deleted, the record kept) is skipped; a record
    that stops early, or a run whose last checkpoint is short of the budget, is not."""
    from training.sweep import is_finished, plan

    runs = plan(str(ROOT / "configs/tiny.yaml"), ["softmax"], 2, tmp_path, [])
    fake_run(runs[0].run_dir, f"train.out_dir={runs[0].run_dir}")
    fake_run(runs[1].run_dir, f"train.out_dir={runs[1].run_dir}", finished=False)
    assert is_finished(runs[0]) and not is_finished(runs[1])
    checkpoints = runs[0].run_dir / "checkpoints"
    (checkpoints / "step_000001").mkdir(parents=True)
    (checkpoints / "step_000001" / "model.safetensors").write_bytes(b"")
    (checkpoints / "latest").write_text("step_000001")
    assert not is_finished(runs[0])  # checkpoints decide when there are any: this one is interrupted


# --- the recall grid ------------------------------------------------------------------------------------------------


def test_the_recall_grid_table_puts_each_backend_beside_the_no_recall_accuracy(tmp_path):
    grid_cli = load_script("recall_grid")
    grid = {2: {"softmax": (0.9, 0.05, 3), "logexp": (0.7, 0.0, 1)}, 8: {"softmax": (0.4, 0.01, 3)}}
    table = grid_cli.write_results(grid, tmp_path / "mqar")
    assert "| softmax | 0.900 ± 0.050 | 0.400 ± 0.010 |" in table
    assert "| logexp | 0.700 | nan |" in table
    assert "| *no recall (elimination)* | 0.750 | 0.340 |" in table
    assert (tmp_path / "mqar.png").read_bytes().startswith(b"\x89PNG")
    assert "elimination_accuracy" in (tmp_path / "mqar.csv").read_text().splitlines()[0]


def test_the_recall_grid_refuses_a_text_config(capsys):
    assert load_script("recall_grid").main(["configs/tiny.yaml"]) == 2
    assert "set data.source=mqar" in capsys.readouterr().err


@pytest.mark.slow
def test_the_recall_grid_runs_a_sweep_per_difficulty(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/recall_grid.py", "configs/mqar-cpu.yaml", "--pairs", "1,2", "--backends",
         f"softmax,{SECOND}", "--out", str(tmp_path / "grid"), "--results", str(tmp_path / "results" / "mqar"),
         "train.max_steps=3", "train.eval_interval=3", "data.eval_windows=16"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["pairs1", "pairs2"]
    rows = list(csv.DictReader(open(tmp_path / "results" / "mqar.csv")))
    assert {(r["backend"], r["num_pairs"]) for r in rows} == {(b, p) for b in ("softmax", SECOND) for p in "12"}
    assert all(0.0 <= float(r["accuracy_mean"]) <= 1.0 for r in rows)
    assert (tmp_path / "results" / "mqar.png").is_file()
