"""scripts/recall_grid.py: one sweep per difficulty (pairs × length) and learning rate, then each backend's holdout
accuracy at the learning rate best on val, beside the accuracy that needs no recall."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fileio.pages import recorded_command
from model.attention import BACKENDS
from tests.experiments.conftest import write_run

ROOT = Path(__file__).resolve().parents[2]
SECOND = next(name for name in BACKENDS if name != "softmax")

spec = importlib.util.spec_from_file_location("recall_grid_cli", ROOT / "scripts" / "recall_grid.py")
recall_grid = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = recall_grid  # its dataclass looks its module up there
spec.loader.exec_module(recall_grid)


EASY, HARD = recall_grid.Setting(4, 32), recall_grid.Setting(8, 64)
GRID = {
    EASY: {1e-3: {"softmax": recall_grid.Cell(val=[0.9, 1.0], holdout=[0.95, 0.97]),
               "expressive": recall_grid.Cell(val=[0.5, 0.5], holdout=[0.5, 0.5])},
        3e-3: {"softmax": recall_grid.Cell(val=[0.6, 0.6], holdout=[0.99, 0.99]),
               "expressive": recall_grid.Cell(val=[0.97, 0.99], holdout=[0.96, 0.98])}},
    HARD: {1e-3: {"softmax": recall_grid.Cell(val=[0.3, 0.3], holdout=[0.30, 0.34]),
               "expressive": recall_grid.Cell(val=[0.6, 0.6], holdout=[0.60, 0.64])}},
}


def test_each_backend_gets_the_lr_best_on_val_and_reports_holdout_beside_the_no_recall_accuracy(tmp_path):
    page = recall_grid.write_results(GRID, tmp_path / "mqar", "# Title\n\n")
    # softmax at 4 pairs: lr 1e-3 has the better val mean (0.95 against 0.6), so its holdout (0.96) is reported,
    # not the better holdout of lr 3e-3 (0.99): the choice never sees the holdout set
    assert "Sanity check (softmax at 4×32 reaches 0.95): passes, 0.960 ± 0.014 against 0.521 with no recall." in page
    assert "| 4 | 32 | 0.521 | 0.960 ± 0.014 (lr 0.001) | 0.970 ± 0.014 (lr 0.003) |" in page
    assert "| 8 | 64 | 0.340 | 0.320 ± 0.028 (lr 0.001) | 0.620 ± 0.028 (lr 0.001) |" in page
    assert "| 4×32 | softmax | **0.950 ± 0.071** | 0.600 |" in page
    rows = list(csv.DictReader(open(tmp_path / "mqar.csv")))
    assert len(rows) == 6 and [r["chosen"] for r in rows[:4]] == ["True", "False", "False", "True"]
    assert [(r["num_pairs"], r["block_size"]) for r in rows[::2]] == [("4", "32"), ("4", "32"), ("8", "64")]
    assert (tmp_path / "mqar.png").read_bytes().startswith(b"\x89PNG")


def test_gros_claim_needs_expressive_level_on_the_easiest_setting_and_ahead_on_a_harder_one(tmp_path):
    page = recall_grid.write_results(GRID, tmp_path / "mqar", "")
    assert "| 4×32 | 0.960 ± 0.014 | 0.970 ± 0.014 | +0.010 | 0.014 | level |" in page  # 0.01 < 2 x 0.014
    assert "| 8×64 | 0.320 ± 0.028 | 0.620 ± 0.028 | +0.300 | 0.028 | ahead |" in page
    assert "is supported by this grid: level at 4×32: yes; ahead at 8×64 of 8×64; behind at none." in page
    level_everywhere = {p: {lr: {b: recall_grid.Cell(c.val, [0.3, 0.3]) for b, c in by_b.items()}
                            for lr, by_b in by_lr.items()} for p, by_lr in GRID.items()}
    assert "is not supported" in recall_grid.write_results(level_everywhere, tmp_path / "level", "")
    assert "Gros" not in recall_grid.write_results({EASY: GRID[EASY]}, tmp_path / "easy", "")  # nothing to compare


def test_one_seed_gives_no_standard_error_and_no_verdict(tmp_path):
    one_seed = {p: {lr: {b: recall_grid.Cell(c.val[:1], c.holdout[:1]) for b, c in by_b.items()}
                    for lr, by_b in by_lr.items()} for p, by_lr in GRID.items()}
    page = recall_grid.write_results(one_seed, tmp_path / "one", "")
    assert "| +0.300 | – | untold (one seed) |" in page and "ahead |" not in page
    assert "cannot be judged by this grid: with one seed a gap has no standard error to be weighed against" in page
    rows = list(csv.DictReader(open(tmp_path / "one.csv")))
    assert rows and all(r["val_accuracy_std"] == r["holdout_accuracy_std"] == "nan" for r in rows)  # unknown, not 0


def test_a_grid_whose_softmax_misses_the_easiest_setting_says_it_measures_nothing(tmp_path):
    page = recall_grid.write_results({HARD: GRID[HARD]}, tmp_path / "mqar", "")
    assert "Sanity check (softmax at 8×64 reaches 0.95): FAILS" in page and "0.320 ± 0.028 against 0.340" in page


def test_a_setting_is_pairs_x_length():
    assert recall_grid.Setting.parse("8x32") == (8, 32)
    with pytest.raises(ValueError, match="not PAIRSxLENGTH"):
        recall_grid.Setting.parse("8")


def refused_before_any_sweep(tmp_path, monkeypatch, capsys, argv: list[str]) -> str:
    """main's exit status must be 2 with no sweep started and no folder made; returns its one line on stderr."""
    def sweep(command, **kwargs):
        raise AssertionError("a sweep started")

    monkeypatch.setattr(recall_grid.subprocess, "run", sweep)
    out = ["--out", str(tmp_path / "grid"), "--results", str(tmp_path / "res" / "mqar")]
    assert recall_grid.main(["configs/mqar-cpu.yaml", *argv, *out]) == 2
    assert not (tmp_path / "grid").exists() and not (tmp_path / "res").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("recall_grid: ")
    return err.removeprefix("recall_grid: ").rstrip("\n")


@pytest.mark.parametrize("argv, message", [
    (["--settings", "4x"], "--settings: '4x' is not PAIRSxLENGTH (two whole numbers >= 1), e.g. 8x32"),
    (["--settings", "4x32,0x8"], "--settings: '0x8' is not PAIRSxLENGTH (two whole numbers >= 1), e.g. 8x32"),
    (["--settings", "4x32,4x32"], "--settings: 4x32 is given twice; give each setting once"),
    (["--settings", "8x8"], "--settings 8x8: 8 pairs and their 8 queries need 32 tokens; give a LENGTH of at "
                            "least 32"),
    (["--lrs", "abc"], "--lrs: 'abc' is not a learning rate > 0; give comma-separated numbers, e.g. 1e-3,3e-3"),
    (["--lrs", "1e-3,-1"], "--lrs: '-1' is not a learning rate > 0"),
    (["--lrs", "1e-3,0.001"], "--lrs: 1e-3 and 0.001 are both lr 0.001; give each learning rate once"),
    (["--seeds", "0"], "--seeds must be >= 1 (runs per backend, setting and learning rate), got 0"),
])
def test_malformed_flags_are_refused_naming_the_flag_before_any_sweep(tmp_path, monkeypatch, capsys, argv, message):
    assert refused_before_any_sweep(tmp_path, monkeypatch, capsys, argv).startswith(message)


@pytest.mark.parametrize("override, flag", [
    ("optim.lr=0.01", "--lrs"), ("optim.min_lr=0", "--lrs"), ("train.seed=3", "--seeds"),
    ("model.attention=taylor", "--backends"), ("data.block_size=64", "--settings"),
    ("data.mqar={num_pairs: 3}", "--settings"), ("train.out_dir=x", "--out"),
    ("--optim.lr=0.01", "--lrs"),  # as train.py takes overrides too (argparse refused it as an unknown option)
])
def test_an_override_of_what_the_grid_sets_is_refused_naming_the_grid_flag(tmp_path, monkeypatch, capsys, override,
                                                                         flag):
    """Such an override lost to the grid's own value in every run, yet the page's title claimed it."""
    key = recall_grid.override_keys(override)[0]
    assert refused_before_any_sweep(tmp_path, monkeypatch, capsys, ["train.max_steps=5", override]) == (
        f"the grid sets {key} in every run; leave {override!r} out of the overrides and give {flag} instead")


def test_an_override_of_what_the_sweeps_set_is_refused(tmp_path, monkeypatch, capsys):
    assert refused_before_any_sweep(tmp_path, monkeypatch, capsys, ["train.resume=never"]) == (
        "the grid's sweeps set train.resume in every run; leave 'train.resume=never' out of the overrides")


def test_the_recall_grid_refuses_a_text_config(capsys):
    assert recall_grid.main(["configs/tiny.yaml"]) == 2
    assert "set data.source=mqar" in capsys.readouterr().err


def mqar_run(path: Path, backend: str, seed: int, holdout: float) -> Path:
    """A finished MQAR run record (configs/tiny.yaml on data.source mqar) whose evaluations log accuracies."""
    write_run(path, "data.source=mqar", "model.vocab_size=8192", "data.mqar.num_queries=2",
              f"model.attention={backend}", f"train.seed={seed}", start={"machine": "test machine"})
    lines = [json.loads(text) for text in (path / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if "val_loss" in line:
            line.update(val_accuracy=holdout, holdout_accuracy=holdout)
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def no_sweep(command, **kwargs):
    """subprocess.run for main: the sweep's runs are already in place, finished."""
    return subprocess.CompletedProcess(command, 0)


def test_the_page_reports_only_the_backends_and_seeds_asked_for(tmp_path, monkeypatch):
    """The sweep folder also holds runs of an earlier, wider grid (another backend, another seed): left out."""
    folder = recall_grid.sweep_dir(tmp_path / "grid", EASY, 1e-3)
    mqar_run(folder / "softmax-seed0", "softmax", 0, 0.9)
    mqar_run(folder / "softmax-seed1", "softmax", 1, 0.5)
    mqar_run(folder / f"{SECOND}-seed0", SECOND, 0, 0.1)
    monkeypatch.setattr(recall_grid.subprocess, "run", no_sweep)
    argv = ["configs/mqar-cpu.yaml", "--settings", "4x32", "--lrs", "1e-3", "--backends", "softmax", "--seeds", "1",
            "--out", str(tmp_path / "grid"), "--results", str(tmp_path / "res" / "mqar")]
    assert recall_grid.main(argv) == 0
    page = (tmp_path / "res" / "mqar.md").read_text()
    assert "Measured: final answer accuracy of 1 runs," in page and SECOND not in page
    rows = list(csv.DictReader(open(tmp_path / "res" / "mqar.csv")))
    assert [(r["backend"], r["runs"], r["holdout_accuracy_mean"]) for r in rows] == [("softmax", "1", "0.9")]
    with pytest.raises(recall_grid.ComparisonError, match=f"has no run of softmax seed 2, {SECOND} seed 1, {SECOND} "
                                                          "seed 2$"):
        recall_grid.read_cells(folder, ["softmax", SECOND], 3)


def test_the_command_a_results_page_records_regenerates_it_and_no_other_command_replaces_it(tmp_path):
    """results/mqar.md's own command is kept working; a trial grid must name --results of its own or --overwrite."""
    page = ROOT / "results" / "mqar.md"
    recorded = recorded_command(page.read_text())
    assert recorded.startswith("python scripts/recall_grid.py configs/mqar-cpu.yaml ")
    again = recall_grid.command_line(recall_grid.__file__, shlex.split(recorded)[2:])
    assert again == recorded  # what main compares: the same words give the same command line
    note = recall_grid.check_results(ROOT / "results" / "mqar", again, overwrite=False)
    assert note.startswith("recall_grid: note: replacing ") and note.endswith("(the command that page records)")
    trial = recall_grid.command_line(recall_grid.__file__, ["configs/mqar-cpu.yaml", "--seeds", "1"])
    with pytest.raises(ValueError, match=f"^{ROOT / 'results' / 'mqar.md'} exists, written by `python scripts/"):
        recall_grid.check_results(ROOT / "results" / "mqar", trial, overwrite=False)
    assert "(--overwrite)" in recall_grid.check_results(ROOT / "results" / "mqar", trial, overwrite=True)
    assert recall_grid.check_results(tmp_path / "mqar", trial, overwrite=False) == ""  # nothing there yet
    (tmp_path / "mqar.csv").write_text("x\n")  # a CSV alone has no command to match
    with pytest.raises(ValueError, match="mqar.csv exists, with no recorded command; this would replace it"):
        recall_grid.check_results(tmp_path / "mqar", trial, overwrite=False)


def test_a_trial_grid_with_the_default_results_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "results").mkdir()
    committed = (ROOT / "results" / "mqar.md").read_text()
    (tmp_path / "results" / "mqar.md").write_text(committed)
    monkeypatch.chdir(tmp_path)

    def sweep(command, **kwargs):
        raise AssertionError("a sweep started")

    monkeypatch.setattr(recall_grid.subprocess, "run", sweep)
    argv = [str(ROOT / "configs" / "mqar-cpu.yaml"), "--settings", "4x32", "--seeds", "1", "--out", "trial"]
    assert recall_grid.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recall_grid: results/mqar.md exists, written by `python scripts/recall_grid.py ")
    assert err.endswith("pass --results elsewhere (e.g. runs/mqar-trial), or --overwrite to replace it\n")
    assert (tmp_path / "results" / "mqar.md").read_text() == committed and not (tmp_path / "trial").exists()


@pytest.mark.slow
def test_the_recall_grid_runs_a_sweep_per_difficulty(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/recall_grid.py", "configs/mqar-cpu.yaml", "--settings", "1x8,2x16", "--lrs",
         "1e-3,2e-3", "--seeds", "1", "--backends", f"softmax,{SECOND}", "--out", str(tmp_path / "grid"),
         "--results", str(tmp_path / "results" / "mqar"), "train.max_steps=3", "train.eval_interval=3",
         "data.eval_windows=16"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["pairs1-len8", "pairs2-len16"]
    assert sorted(p.name for p in (tmp_path / "grid" / "pairs1-len8").iterdir()) == ["lr0.001", "lr0.002"]
    rows = list(csv.DictReader(open(tmp_path / "results" / "mqar.csv")))
    assert {(r["backend"], r["num_pairs"], r["lr"]) for r in rows} == {
        (b, p, lr) for b in ("softmax", SECOND) for p in "12" for lr in ("0.001", "0.002")}
    assert all(0.0 <= float(r["holdout_accuracy_mean"]) <= 1.0 for r in rows)
    page = (tmp_path / "results" / "mqar.md").read_text()
    title = "# Associative recall (MQAR) by backend and difficulty, with train.max_steps=3 train.eval_interval=3 "
    assert page.startswith(title + "data.eval_windows=16\n\nMeasured: ")
    assert "Machine: " in page and "Machine: not recorded" not in page
    assert (tmp_path / "results" / "mqar.png").is_file()
