"""train.py end to end on the tiny config: loss falls, exact resume, torchrun DDP, wandb offline, signals, errors."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from fileio.pages import code_revision
from training import runtime as rt
from training.malloc import is_glibc, user_chose_malloc

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_SILENT": "true",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def tiny_args(run_dir: Path, prepared_dir: str, *extra: str) -> list[str]:
    return ["configs/tiny.yaml", f"train.out_dir={run_dir}", f"data.prepared_dir={prepared_dir}", *extra]


def metrics(run_dir: Path, key: str) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m[key]) for m in lines if key in m]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_a_short_run_learns_and_writes_its_run_directory(tmp_path, prepared_dir):
    result = run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=30", "train.sample_tokens=8"))
    assert result.returncode == 0, result.stderr
    val = metrics(tmp_path, "val_loss")
    assert val[0][1] < 10.0 and val[-1][1] < val[0][1] - 0.3  # from ~ln(50257) = 10.8 down
    train_loss = metrics(tmp_path, "train_loss")
    assert train_loss[-1][1] < train_loss[0][1] - 1.0
    assert "final val loss" in result.stdout and "--- sample" in result.stdout
    assert (tmp_path / "config.yaml").is_file()
    latest = tmp_path / "checkpoints" / (tmp_path / "checkpoints" / "latest").read_text()
    saved = json.loads((latest / "config.json").read_text())
    assert saved["train"]["max_steps"] == 30 and saved["model"]["n_layer"] == 2  # fully resolved config
    assert {"tokens_per_s", "mfu", "lr", "grad_norm", "peak_mem_mb"} <= set(json.loads(
        (tmp_path / "metrics.jsonl").read_text().splitlines()[1]))  # line 0: the start record


def test_resume_continues_exactly(tmp_path, prepared_dir):
    # decay_steps fixes the schedule, so stopping at step 4 is a true interruption of the 8-step run
    common = ["train.max_steps=8", "optim.decay_steps=8", "train.log_interval=1", "train.eval_interval=4",
              "model.dropout=0.1"]
    assert train.main(tiny_args(tmp_path / "straight", prepared_dir, *common)) == 0
    assert train.main(tiny_args(tmp_path / "halves", prepared_dir, *common, "train.max_steps=4")) == 0
    assert train.main(tiny_args(tmp_path / "halves", prepared_dir, *common, "--resume")) == 0
    straight, halves = metrics(tmp_path / "straight", "train_loss"), metrics(tmp_path / "halves", "train_loss")
    assert [s for s, _ in halves] == list(range(1, 9))
    assert halves == straight  # bit-identical losses
    assert metrics(tmp_path / "halves", "val_loss")[-1] == metrics(tmp_path / "straight", "val_loss")[-1]


def test_a_fresh_run_replaces_the_records_a_run_without_checkpoints_left(tmp_path, prepared_dir, capsys):
    """A run killed before its first save leaves metrics.jsonl alone in its folder: not the history of the next."""
    tmp_path.joinpath("metrics.jsonl").write_text(json.dumps({"step": 5, "train_loss": 9.0}) + "\n")
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2", "train.log_interval=1")) == 0
    assert [step for step, _ in metrics(tmp_path, "train_loss")] == [1, 2]
    assert "holds records of an earlier run that saved no checkpoint" in capsys.readouterr().out


def test_an_existing_run_is_not_overwritten(tmp_path, prepared_dir, capsys):
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2")) == 0
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2")) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_resume_refuses_a_different_model(tmp_path, prepared_dir, capsys):
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2")) == 0
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=4", "model.n_layer=3", "--resume")) == 2
    assert "cannot resume: model.n_layer" in capsys.readouterr().err


def test_config_errors_exit_before_any_work(tmp_path, prepared_dir):
    result = run_cli(tiny_args(tmp_path, prepared_dir, "model.attention=flash"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: model.attention: unknown backend 'flash' (allowed: " + result.stderr.split("allowed: ")[1].strip()
    ]
    assert not tmp_path.joinpath("metrics.jsonl").exists()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path, prepared_dir):
    args = tiny_args(tmp_path, prepared_dir, "train.max_steps=100000", "train.log_interval=1",
                     "train.eval_interval=100000")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved" in out
    step = json.loads((tmp_path / "checkpoints" / "latest").parent.joinpath(
        (tmp_path / "checkpoints" / "latest").read_text(), "config.json").read_text())["train"]["max_steps"]
    assert step == 100000
    saved_step = int((tmp_path / "checkpoints" / "latest").read_text().removeprefix("step_"))
    assert saved_step >= 1
    result = run_cli([*args[:-3], f"train.max_steps={saved_step + 2}", "--resume"])
    assert result.returncode == 0, result.stderr
    assert metrics(tmp_path, "train_loss")[-1][0] == saved_step + 2


def test_the_run_log_is_one_stream(tmp_path, prepared_dir):
    """Everything the run reports goes to stdout, so `train.py ... > log` keeps the evaluation history."""
    result = run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=4", "train.eval_interval=2"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model: ") and lines[1].startswith("data: ")
    assert [line.split(":")[0] for line in lines if line.startswith("step ")] == ["step 2", "step 4"]
    assert sum(line.startswith("saved ") for line in lines) == 2 and "final val loss" in lines[-1]
    assert result.stderr == ""


@pytest.mark.slow
def test_kill_9_loses_only_the_steps_since_the_last_checkpoint(tmp_path, prepared_dir):
    """SIGKILL (no handler runs) at a random moment after the second checkpoint: the resumed run finishes exactly as
    an uninterrupted one."""
    common = ["train.max_steps=40", "optim.decay_steps=40", "train.ckpt_interval=2", "train.keep_checkpoints=3",
              "train.log_interval=1", "train.eval_interval=40"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *tiny_args(killed, prepared_dir, *common)], cwd=ROOT,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step_000004").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # land anywhere: mid-step, mid-save or between
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert run_cli(tiny_args(killed, prepared_dir, *common, "--resume")).returncode == 0
    straight = run_cli(tiny_args(tmp_path / "straight", prepared_dir, *common))
    assert straight.returncode == 0, straight.stderr
    assert metrics(killed, "val_loss")[-1] == metrics(tmp_path / "straight", "val_loss")[-1]


@pytest.mark.slow
def test_auto_resume_skips_a_damaged_checkpoint_and_finishes_as_an_uninterrupted_run(tmp_path, prepared_dir):
    common = ["train.max_steps=8", "optim.decay_steps=8", "train.ckpt_interval=2", "train.keep_checkpoints=3",
              "train.eval_interval=8", "model.dropout=0.1"]
    run = tmp_path / "damaged"
    assert train.main(tiny_args(run, prepared_dir, *common, "train.max_steps=6")) == 0
    newest = run / "checkpoints" / "step_000006" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk or a bad copy
    resumed = run_cli(tiny_args(run, prepared_dir, *common, "train.resume=auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert "warning: skipping step_000006" in resumed.stdout and "model.safetensors" in resumed.stdout
    assert "resuming from " in resumed.stdout and "step_000004 (step 4)" in resumed.stdout
    assert train.main(tiny_args(tmp_path / "straight", prepared_dir, *common)) == 0
    assert metrics(run, "val_loss")[-1] == metrics(tmp_path / "straight", "val_loss")[-1]
    assert metrics(run, "train_loss")[-1] == metrics(tmp_path / "straight", "train_loss")[-1]


def test_an_explicit_damaged_checkpoint_stops_with_one_line(tmp_path, prepared_dir):
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2")) == 0
    ckpt_dir = tmp_path / "checkpoints" / "step_000002"
    (ckpt_dir / "state.pt").write_bytes(b"garbage")
    result = run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=4", f"--resume={ckpt_dir}"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "state.pt fails its checksum" in result.stderr and "Traceback" not in result.stderr


def test_resuming_a_finished_run_says_nothing_was_trained(tmp_path, prepared_dir):
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=4")) == 0
    result = run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=2", "--resume"))
    assert result.returncode == 0, result.stderr
    assert "nothing to train: the checkpoint is at step 4 and train.max_steps=2" in result.stdout
    assert "max_steps: 4" in (tmp_path / "config.yaml").read_text()  # the run is still the one it trained


@pytest.mark.parametrize("on_extend", ["continue", "restart"])
def test_extending_a_finished_run_follows_optim_on_extend(tmp_path, prepared_dir, on_extend):
    """The tiny config warms up over 2 steps to 3e-3 and decays to 3e-4; extending from 6 to 10 steps either stays
    at min_lr (the schedule ended at 6) or warm-restarts at step 6."""
    args = tiny_args(tmp_path, prepared_dir, "train.log_interval=1")
    assert train.main([*args, "train.max_steps=6"]) == 0
    result = run_cli([*args, "train.max_steps=10", f"optim.on_extend={on_extend}", "--resume"])
    assert result.returncode == 0, result.stderr
    lrs = dict(metrics(tmp_path, "lr"))
    if on_extend == "continue":
        assert "continues (optim.on_extend=continue" in result.stdout
        assert [lrs[s] for s in (7, 8, 9, 10)] == [3e-4] * 4
    else:
        assert "warm restart of the learning rate at step 6" in result.stdout
        assert lrs[7] == pytest.approx(1.5e-3) and lrs[8] == pytest.approx(3e-3)  # warm-up steps 0, 1 of 2
        assert lrs[10] == pytest.approx(3e-4 + 0.5 * 2.7e-3 * (1 + math.cos(math.pi * 0.5)))


def test_accumulated_gradients_are_those_of_the_mean_loss_over_the_micro_batches():
    """grad_accum micro-batches give the gradient of their mean loss, the step's size whatever grad_accum is (a sum
    would scale what grad_clip sees and the logged grad_norm by grad_accum; AdamW alone would hardly show it)."""
    from model.config import ModelConfig
    from model.gpt import GPT

    class Batches:
        def batch(self, index):
            g = torch.Generator().manual_seed(index)
            return torch.randint(0, 97, (2, 16), generator=g), torch.randint(0, 97, (2, 16), generator=g)

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, n_positions=16, n_layer=1, n_head=2, n_embd=16))
    runtime = rt.Runtime(torch.device("cpu"), torch.float32)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train.accumulate_gradients(model, Batches(), 6, 3, scaler, runtime)
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    losses = [model(*Batches().batch(index))[1] for index in (6, 7, 8)]
    mean = sum(losses) / 3
    mean.backward()
    torch.testing.assert_close(loss, mean.detach())
    for got, expected in zip(accumulated, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, prepared_dir):
    """torchrun with 2 gloo processes (grad_accum 4 split 2 + 2: each rank's first micro-batch under no_sync, its
    second all-reduced) == 1 process accumulating 4 micro-batches."""
    common = ["train.max_steps=4", "train.eval_interval=4", "train.grad_accum=4"]
    single = run_cli(tiny_args(tmp_path / "single", prepared_dir, *common))
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
         *tiny_args(tmp_path / "ddp", prepared_dir, *common)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert [p.name for p in (tmp_path / "ddp" / "checkpoints").glob("step_*")] == ["step_000004"]
    assert ddp.stdout.count("final val loss") == 1  # rank 0 reports, once
    a = load_file(tmp_path / "single" / "checkpoints" / "step_000004" / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "checkpoints" / "step_000004" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert metrics(tmp_path / "ddp", "val_loss")[-1][1] == pytest.approx(
        metrics(tmp_path / "single", "val_loss")[-1][1], abs=1e-4)


@pytest.mark.slow
def test_a_window_saved_under_torchrun_goes_on_in_one_process_as_the_straight_run_logs_it(tmp_path, prepared_dir):
    """Saved off the log grid by 2 processes (each holding its own micro-batches' losses), resumed by 1: the first
    log line is the straight run's (it once held rank 0's half of the window alone)."""
    common = ["train.eval_interval=100", "train.grad_accum=4", "optim.decay_steps=10"]
    straight = run_cli(tiny_args(tmp_path / "single", prepared_dir, "train.max_steps=5", *common))
    assert straight.returncode == 0, straight.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
         *tiny_args(tmp_path / "ddp", prepared_dir, "train.max_steps=4", *common)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    resumed = run_cli(tiny_args(tmp_path / "ddp", prepared_dir, "train.max_steps=5", *common) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    (step, loss), = metrics(tmp_path / "single", "train_loss")  # the line of steps 1-5
    assert metrics(tmp_path / "ddp", "train_loss")[-1] == (5, pytest.approx(loss, abs=1e-5))


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step_soon_after_between_log_steps(tmp_path, prepared_dir):
    """torchrun passes SIGTERM on to its workers and kills them 30 s later: with no log step in sight, both ranks
    still stop at one step within a step of the signal and save it (the checkpoint holds both ranks' RNG streams,
    gathered at the save of that step)."""
    args = tiny_args(tmp_path, prepared_dir, "train.max_steps=100000", "train.log_interval=100000",
                     "train.eval_interval=100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:  # every rank listens by then
        time.sleep(0.2)
    time.sleep(1)  # into the steps
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert time.time() - signalled < 20, err[-3000:]  # well before torchrun's SIGKILL at 30 s
    saved = (tmp_path / "checkpoints" / "latest").read_text()
    assert f"interrupted at step {int(saved.removeprefix('step_'))}; checkpoint saved" in out, err[-3000:]
    state = torch.load(tmp_path / "checkpoints" / saved / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("train.grad_accum=3", "error: train.grad_accum (3) must be divisible by the number of processes (2)\n"),
    ("train.device=cuda", "config error: train.device=cuda but no CUDA device is visible"),
    ("train.resume=/nonexistent", "error: checkpoint path /nonexistent does not exist"),  # rank 0 looked for it
])
def test_under_torchrun_an_error_every_rank_meets_alike_is_one_line_from_rank_0(tmp_path, prepared_dir, override,
                                                                               message):
    """Every rank printed it, and the copies could run together on one line."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
         *tiny_args(tmp_path, prepared_dir, override)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and result.stderr.count(message.split(":")[0] + ":") == 1, result.stderr[-3000:]
    assert message in result.stderr


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_puts_back_a_save_cut_short_and_says_so(tmp_path, prepared_dir):
    """Every rank repaired the run's checkpoints at once (whichever renamed first won), and the warning was printed
    only where rank 0 happened to win."""
    assert run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=2", "train.eval_interval=2")).returncode == 0
    root = tmp_path / "checkpoints"
    shutil.copytree(root / "step_000002", root / ".old-step_000002-999999")  # a swap killed between its renames
    (root / "step_000002").rename(root / ".tmp-step_000002-999998")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
         *tiny_args(tmp_path, prepared_dir, "train.max_steps=4", "train.eval_interval=2"), "--resume"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("warning: restored step_000002 from .tmp-step_000002-999998") == 1, result.stdout
    assert f"resuming from {root}/step_000002 (step 2)" in result.stdout


def torchrun_worker(launcher: subprocess.Popen, rank: int) -> int:
    """The PID of the worker of one rank of a torchrun launcher."""
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGKILL])
def test_under_torchrun_a_signal_to_one_rank_alone_ends_every_rank_in_one_line(tmp_path, prepared_dir, sent):
    """SIGTERM to rank 1 alone: both ranks save one step and exit 143, rank 0 too, which got no signal itself.
    SIGKILL to rank 1: rank 0's collective fails, and it says so in one line, without a traceback from gloo."""
    args = tiny_args(tmp_path, prepared_dir, "train.max_steps=100000", "train.log_interval=100000",
                     "train.eval_interval=100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--tee=3",
         "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:  # every rank listens by then
        time.sleep(0.2)
    time.sleep(1)  # into the steps
    os.kill(torchrun_worker(proc, 1), sent)
    out, err = proc.communicate(timeout=120)
    if sent == signal.SIGTERM:
        assert out.count("checkpoint saved, continue with --resume") == 1, err[-3000:]  # rank 0 logs
        # (rank 0 exited 1); torchrun sends SIGTERM to a rank still running when the first one exits: -15 then
        assert "exitcode  : 143" in err and "exitcode  : 1 " not in err, err[-3000:]
    else:
        # closed or reset, as the kill finds the connection
        assert re.search(r"\[default0\]:error: another process of this torchrun job stopped \(gloo: Connection "
                         r"(closed|reset) by peer\); its own output says why; --resume continues from the run's last "
                         r"checkpoint\n", err), err[-3000:]
        assert "[default0]:Traceback" not in err and "exitcode  : -9" in err, err[-3000:]


@pytest.mark.slow
def test_wandb_offline_writes_a_run_and_resume_continues_it(tmp_path, prepared_dir):
    args = tiny_args(tmp_path, prepared_dir, "train.max_steps=2", "logging.wandb=offline")
    assert run_cli(args).returncode == 0
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    result = run_cli([*args[:-2], "train.max_steps=4", "logging.wandb=offline", "--resume"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # same id, continued


def test_the_step_time_of_a_log_step_waits_for_the_device(tmp_path, prepared_dir, monkeypatch):
    """On a GPU the host runs ahead of the queued kernels: the steps' time is read after waiting for them, on log
    steps only (no wait per step), so tokens/s and MFU are not overstated."""
    waits = []

    def slow_device(device):  # a device still busy with queued steps for half a second
        waits.append(device)
        time.sleep(0.5)

    monkeypatch.setattr(rt, "synchronize", slow_device)
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=4", "train.log_interval=2")) == 0
    assert waits == [torch.device("cpu")] * 2
    assert dict(metrics(tmp_path, "elapsed"))[4] >= 1.0  # both waits count in the step time


def test_a_config_file_whose_path_holds_an_equals_sign_is_a_config_not_an_override(tmp_path):
    config = tmp_path / "lr=3e-4" / "config.yaml"
    config.parent.mkdir()
    config.write_text(f"extends: {ROOT / 'configs' / 'tiny.yaml'}\n")
    args = train.parse_args([str(config), "train.max_steps=2"])
    assert (args.config, args.overrides) == (str(config), ["train.max_steps=2"])
    args = train.parse_args([str(tmp_path / "lr=1e-3" / "config.yaml")])  # no such file: an override to explain
    assert (args.config, args.overrides) == (None, [str(tmp_path / "lr=1e-3" / "config.yaml")])


def test_an_override_longer_than_a_file_name_is_an_override():
    prompt = "x" * 300  # Path.exists() raises for a name past the system's limit
    assert train.parse_args(["configs/tiny.yaml", f"train.sample_prompt={prompt}"]).overrides == [
        f"train.sample_prompt={prompt}"]


def test_a_config_after_a_bare_resume_is_named_not_taken_as_the_checkpoint(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--resume", "configs/tiny.yaml", "train.max_steps=2"])
    assert exit_.value.code == 2
    assert ("--resume took configs/tiny.yaml as the checkpoint to resume from; give the config first (python "
            "train.py configs/tiny.yaml --resume), or the checkpoint as --resume=CHECKPOINT") in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["--resume"]])
def test_a_bare_command_asks_for_a_config_instead_of_training_gpt2_small(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    assert exit_.value.code == 2
    assert ": give a config file, e.g. python train.py configs/shakespeare-cpu.yaml" in capsys.readouterr().err
    assert train.parse_args(["train.max_steps=2"]).config is None  # overrides alone apply to the defaults


def test_dry_run_prints_the_gpt2_small_plan(capsys):
    assert train.main(["configs/gpt2-125m.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 124,439,808" in out
    assert "tokens per step: 524,288 (16 x 1024 x 32 micro-batches)" in out


def test_mqar_runs_train_and_report_answer_accuracy(tmp_path, capsys):
    args = ["configs/tiny.yaml", f"train.out_dir={tmp_path}", "data.source=mqar", "model.vocab_size=64",
            "data.mqar.vocab_size=64", "data.mqar.num_pairs=4", "data.mqar.num_queries=4", "train.max_steps=4"]
    assert train.main(args) == 0
    accuracy = metrics(tmp_path, "val_accuracy")
    assert [step for step, _ in accuracy] == [4] and 0.0 <= accuracy[0][1] <= 1.0
    holdout = metrics(tmp_path, "holdout_accuracy")[0][1]
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("step 4: val loss"))
    assert line.endswith(f", val accuracy {accuracy[0][1]:.3f}, holdout accuracy {holdout:.3f}")


def test_backend_options_from_the_command_line_keep_their_types(capsys):
    args = ["configs/tiny.yaml", "model.attention=taylor", "model.attention_options={crossover: 1, chunk_size: 16.0}",
            "--dry-run"]
    assert train.main(args) == 0
    assert "attention_options:\n    crossover: 1\n    chunk_size: 16\n" in capsys.readouterr().out


def test_each_start_records_the_machine_and_the_code(tmp_path, prepared_dir):
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2")) == 0
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=3", "--resume")) == 0
    starts = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"start"' in line]
    assert [s["step"] for s in starts] == [0, 2]
    assert all(s["machine"] and s["device"] == "cpu" and s["threads"] == 1 for s in starts)
    assert all(s["revision"] == code_revision() for s in starts)
    # a CPU run keeps freed memory unless the environment sets up malloc itself or the C library is not glibc
    expected = "kept" if is_glibc() and not user_chose_malloc(dict(os.environ)) else "unchanged"
    assert all(s["malloc"] == expected for s in starts)
