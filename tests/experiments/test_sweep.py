"""Sweeps train one run per (backend, seed), skip finished runs and resume interrupted ones, and reuse a run directory
only when it holds a run with the settings asked for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.sweep import RunMismatch, check_reusable, is_finished, parse_backends, plan, train_command
from model.attention import BACKENDS
from typedconfig.parsing import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SECOND = next(name for name in BACKENDS if name != "softmax")


@pytest.fixture
def sweep_cli(script_main):
    return script_main("sweep")


def test_backends_are_checked_against_the_registry():
    assert parse_backends(f"softmax, {SECOND}") == ["softmax", SECOND]
    with pytest.raises(ConfigError, match="unknown attention backend 'flash' in --backends") as error:
        parse_backends("softmax,flash")
    assert str(error.value).endswith(f"(registered: {', '.join(BACKENDS)})")
    with pytest.raises(ConfigError, match="--backends names softmax twice; give each backend once"):
        parse_backends("softmax, taylor,softmax")  # each run would have been trained twice, into one folder


def test_a_sweep_plans_one_run_per_backend_and_seed_and_sets_only_what_differs(tmp_path):
    runs = plan("configs/tiny.yaml", ["softmax", SECOND], 2, tmp_path / "demo", ["train.max_steps=4"])
    assert [run.name for run in runs] == ["softmax-seed0", "softmax-seed1", f"{SECOND}-seed0", f"{SECOND}-seed1"]
    last = runs[-1].config
    assert (last.model.attention, last.train.seed, last.train.max_steps, last.train.resume) == (SECOND, 1, 4, "auto")
    assert (last.logging.wandb_group, last.logging.wandb_tags) == ("demo", [SECOND])
    command = train_command("configs/tiny.yaml", runs[0], nproc_per_node=2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[5].endswith("train.py") and command[6] == "configs/tiny.yaml"
    for taken in ("train.seed=3", "--train.seed=3", " train.out_dir = x"):
        with pytest.raises(ConfigError, match=f"the sweep sets {taken.partition('=')[0].strip(' -')} itself"):
            plan("configs/tiny.yaml", ["softmax"], 1, tmp_path, [taken])
    with pytest.raises(ConfigError, match="model.n_head"):  # every run's config is checked before any starts
        plan("configs/tiny.yaml", ["softmax"], 1, tmp_path, ["model.n_head=3"])


def test_a_run_record_without_checkpoints_counts_as_finished(tmp_path, fake_run):
    """config.yaml + metrics.jsonl of a finished run (its checkpoints deleted, the record kept) is skipped; a record
    that stops early, or a run whose last checkpoint is short of the budget, is not."""
    runs = plan(str(ROOT / "configs/tiny.yaml"), ["softmax"], 2, tmp_path, [])
    fake_run(runs[0].run_dir)
    fake_run(runs[1].run_dir, finished=False)
    assert is_finished(runs[0]) and not is_finished(runs[1])
    checkpoints = runs[0].run_dir / "checkpoints"
    (checkpoints / "step_000001").mkdir(parents=True)
    (checkpoints / "step_000001" / "model.safetensors").write_bytes(b"")
    (checkpoints / "latest").write_text("step_000001")
    assert not is_finished(runs[0])  # checkpoints decide when there are any: this one is interrupted


def test_a_run_directory_is_reused_only_with_the_requested_settings(tmp_path, fake_run):
    (run,) = plan(str(ROOT / "configs/tiny.yaml"), ["softmax"], 1, tmp_path / "sweep", ["optim.lr=0.001"])
    check_reusable(run)  # nothing there yet
    fake_run(run.run_dir, "train.seed=0", "optim.lr=0.001", "train.resume=never", "logging.wandb_group=other",
             "train.log_interval=1", "data.prepared_dir=elsewhere")
    check_reusable(run)  # only bookkeeping differs
    shutil.rmtree(run.run_dir)
    fake_run(run.run_dir, "train.seed=0", "optim.lr=0.002", "train.threads=2")
    with pytest.raises(RunMismatch, match=r"sweep/softmax-seed0 holds a run with other settings \(optim.lr: 0.002 "
                                          r"there, 0.001 requested; train.threads: 2 there, 1 requested\)"):
        check_reusable(run)


def test_the_cli_refuses_a_finished_run_trained_with_another_override(tmp_path, fake_run, sweep_cli, capsys):
    """The case that once answered "softmax-seed0: finished (250 steps), skipped" for a run trained at lr 0.002."""
    fake_run(tmp_path / "sweep" / "softmax-seed0", "train.seed=0", "optim.lr=0.002")
    arguments = ["configs/tiny.yaml", "--backends", "softmax", "--seeds", "1", "--out", str(tmp_path / "sweep")]
    assert sweep_cli([*arguments, "optim.lr=0.001"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any run is started or skipped
    assert captured.err.count("\n") == 1 and captured.err.startswith("cannot reuse: ")
    assert "(optim.lr: 0.002 there, 0.001 requested)" in captured.err
    assert sweep_cli([*arguments, "optim.lr=0.002"]) == 0  # the same settings: the finished run is reused
    assert "softmax-seed0: finished (20 steps), skipped" in capsys.readouterr().out
    assert sweep_cli([*arguments, "--optim.lr=0.002"]) == 0  # an override written as train.py takes it too
    assert "softmax-seed0: finished (20 steps), skipped" in capsys.readouterr().out


def test_the_cli_refuses_a_run_of_another_seed_under_a_seed_name(tmp_path, fake_run, sweep_cli, capsys):
    fake_run(tmp_path / "sweep" / "softmax-seed0")  # the tiny config's seed, 1337
    assert sweep_cli(["configs/tiny.yaml", "--backends", "softmax", "--seeds", "1", "--out",
                      str(tmp_path / "sweep")]) == 2
    assert "(train.seed: 1337 there, 0 requested)" in capsys.readouterr().err


def test_the_cli_checks_out_the_process_count_and_damaged_records_before_any_run(tmp_path, fake_run, sweep_cli,
                                                                                   capsys):
    arguments = ["configs/tiny.yaml", "--backends", "softmax", "--seeds", "2"]
    (tmp_path / "file").write_text("")
    assert sweep_cli([*arguments, "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == (f"sweep: --out {tmp_path / 'file'} is an existing file; give a folder for the "
                                       "sweep's run directories\n")
    with pytest.raises(SystemExit):
        sweep_cli([*arguments, "--nproc-per-node", "0"])
    assert "--nproc-per-node must be >= 1 (processes per run), got 0" in capsys.readouterr().err
    record = fake_run(tmp_path / "sweep" / "softmax-seed1", "train.seed=1") / "metrics.jsonl"
    record.write_text("garbage\n" + record.read_text())
    assert sweep_cli([*arguments, "--out", str(tmp_path / "sweep")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"cannot reuse: {record}, line 1: not a JSON record")


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

    compared = tmp_path / "comparison"
    compare = subprocess.run([sys.executable, "scripts/compare.py", str(out), "--out", str(compared)], cwd=ROOT,
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert compare.returncode == 0, compare.stderr
    assert "| softmax | 2 |" in compare.stdout and f"| {SECOND} | 2 |" in compare.stdout
    assert (compared / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert "softmax" in (compared / "comparison.csv").read_text()

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_sweep_killed_outright_takes_its_running_child_along(tmp_path):
    """Orphaned, the run trained on, and the sweep started again found its folder locked."""
    child = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
             "print('up', flush=True); time.sleep(60)")
    parent = (f"import sys; from experiments.sweep import Launcher; "
              f"Launcher().run([sys.executable, '-c', {child!r}])")
    sweep = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert sweep.stdout.readline() == "up\n"
    children = subprocess.run(["pgrep", "-P", str(sweep.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1
    sweep.kill()
    sweep.wait()
    deadline = time.monotonic() + 10
    while running(children[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(children[0])


def running(pid: str) -> bool:
    """Whether process `pid` exists and has not exited (a zombie waits only to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
