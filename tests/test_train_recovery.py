"""train.py when a run leaves its straight line: resumed from an earlier checkpoint, diverged, interrupted, or given
`--resume` followed by an override."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import train
from training import runtime as rt
from tests.fileio.test_folders import unwritable
from tests.test_train import metrics, run_cli, tiny_args
from tests.training.test_checkpoint import kill_between_the_swap_renames
from tests.training.test_run_lock import HOLD


def checkpoint_names(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_resuming_from_an_earlier_checkpoint_branches_the_run(tmp_path, prepared_dir):
    """A run at step 6 resumed from its step 2 and stopped at step 3 stands at step 3: the save removes steps 4 and
    6 (saying so), keeps the one it wrote even with keep_checkpoints=1, and a plain --resume continues from it."""
    common = ["train.ckpt_interval=2", "train.eval_interval=100", "train.log_interval=1"]
    assert train.main(tiny_args(tmp_path, prepared_dir, *common, "train.max_steps=6",
                                "train.keep_checkpoints=3")) == 0
    assert checkpoint_names(tmp_path) == ["latest", "step_000002", "step_000004", "step_000006"]
    branch = run_cli(tiny_args(tmp_path, prepared_dir, *common, "train.max_steps=3", "train.keep_checkpoints=1",
                               f"--resume={tmp_path / 'checkpoints' / 'step_000002'}"))
    assert branch.returncode == 0, branch.stderr
    assert "removed step_000006, step_000004 of the abandoned branch" in branch.stdout
    assert f"saved {tmp_path / 'checkpoints' / 'step_000003'}" in branch.stdout
    assert checkpoint_names(tmp_path) == ["latest", "step_000003"]
    again = run_cli(tiny_args(tmp_path, prepared_dir, *common, "train.max_steps=4", "--resume"))
    assert again.returncode == 0, again.stderr
    assert "step_000003 (step 3)" in again.stdout
    assert [step for step, _ in metrics(tmp_path, "train_loss")] == [1, 2, 3, 4, 5, 6, 3, 4]


def test_a_resave_killed_between_its_renames_is_put_back_and_the_run_continues_from_it(tmp_path, prepared_dir,
                                                                                     monkeypatch, capsys):
    """A run at step 4 branched from its step 2 re-saves step 4 and is killed between the two renames that swap it
    in (a second Ctrl-C mid-save): `latest` names step 4, which only the .old-/.tmp- copies hold. --resume puts the
    new copy back, says so and continues from step 4, exactly as a straight run."""
    common = ["optim.decay_steps=6", "train.log_interval=1", "train.eval_interval=100", "train.ckpt_interval=2",
              "train.keep_checkpoints=2", "model.dropout=0.1"]
    assert train.main(tiny_args(tmp_path / "straight", prepared_dir, *common, "train.max_steps=6")) == 0
    run = tmp_path / "run"
    assert train.main(tiny_args(run, prepared_dir, *common, "train.max_steps=4")) == 0
    with monkeypatch.context() as patch:
        kill_between_the_swap_renames(patch)
        assert train.main(tiny_args(run, prepared_dir, *common, "train.max_steps=4",
                                    f"train.resume={run}/checkpoints/step_000002")) == 130  # one line, no traceback
    assert [name[:17] for name in checkpoint_names(run)] == [".old-step_000004-", ".tmp-step_000004-", "latest",
                                                             "step_000002"]
    capsys.readouterr()
    assert train.main(tiny_args(run, prepared_dir, *common, "train.max_steps=6", "--resume")) == 0
    out = capsys.readouterr().out
    assert "warning: restored step_000004 from .tmp-step_000004-" in out
    assert f"resuming from {run}/checkpoints/step_000004 (step 4)" in out
    assert metrics(run, "train_loss")[-2:] == metrics(tmp_path / "straight", "train_loss")[-2:]  # steps 5 and 6
    assert checkpoint_names(run) == ["latest", "step_000004", "step_000006"]  # the copies removed by the save


def test_a_diverged_run_stops_with_one_line_naming_the_fix(tmp_path, prepared_dir):
    """A learning rate of 1e8 (no warm-up, no clipping) makes the loss nan within the first log window: exit status
    2, one line naming the steps and the fix, and nothing saved from the damaged weights."""
    result = run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=6", "train.log_interval=2", "optim.lr=1e8",
                               "optim.warmup_steps=0", "optim.grad_clip=0"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr == ("error: the training loss is nan over steps 1-2 (diverged); lower optim.lr (or, in "
                             "float16, set train.dtype=float32) and restart from scratch\n")
    assert not (tmp_path / "checkpoints").exists()


def test_a_checkpoint_due_between_log_lines_is_not_saved_from_a_diverged_run(tmp_path, prepared_dir):
    """Checkpoints every step, log lines every 100: the steps not yet logged are checked before each save, so the
    run stops at step 2, whose loss is nan, keeping only the checkpoint of step 1."""
    result = run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=6", "train.log_interval=100",
                               "train.ckpt_interval=1", "train.keep_checkpoints=1", "optim.lr=1e8",
                               "optim.warmup_steps=0", "optim.grad_clip=0"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: the training loss is nan over step 2 (diverged)")  # step 1 was saved
    assert checkpoint_names(tmp_path) == ["latest", "step_000001"]


def test_a_diverged_run_names_its_newest_checkpoint_before_the_first_bad_step(tmp_path, prepared_dir):
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=4", "train.ckpt_interval=2",
                                "train.keep_checkpoints=3")) == 0  # its last line, at 4, is off tiny's grid of 5
    result = run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=8", "train.log_interval=2", "optim.lr=1e8",
                               "optim.min_lr=1e8", "optim.warmup_steps=0", "optim.grad_clip=0", "--resume"))
    assert result.returncode == 2
    step_4 = tmp_path / "checkpoints" / "step_000004"
    assert result.stderr.startswith("error: the training loss is nan over steps 5-6 (diverged)")
    assert result.stderr.endswith(f"and restart from step_000004 (--resume {step_4}) or from scratch\n")


def test_a_checkpoint_saved_inside_the_diverged_window_is_offered(tmp_path, prepared_dir):
    """Saved at step 2, whose loss and weights its save checked, then nan by the line at step 4: the restart goes
    from step 2, not from scratch."""
    result = run_cli(tiny_args(tmp_path, prepared_dir, "train.max_steps=6", "train.log_interval=4", "optim.lr=1e4",
                               "optim.min_lr=0", "optim.warmup_steps=0", "optim.grad_clip=0", "train.ckpt_interval=2"))
    assert result.returncode == 2 and f"saved {tmp_path / 'checkpoints' / 'step_000002'}" in result.stdout
    step_2 = tmp_path / "checkpoints" / "step_000002"
    assert result.stderr.startswith("error: the training loss is nan over steps 3-4 (diverged)")
    assert result.stderr.endswith(f"and restart from step_000002 (--resume {step_2}) or from scratch\n")


def test_a_run_stopped_off_the_log_grid_and_extended_logs_the_straight_runs_lines(tmp_path, prepared_dir):
    """Its last line (step 10) is off the grid of 3: the window goes on in the checkpoint, so the extended run's
    line at step 12 averages steps 10-12, as the straight run's does."""
    common = ["optim.decay_steps=20", "train.log_interval=3", "train.eval_interval=100"]
    assert train.main(tiny_args(tmp_path / "straight", prepared_dir, *common, "train.max_steps=20")) == 0
    assert train.main(tiny_args(tmp_path / "split", prepared_dir, *common, "train.max_steps=10")) == 0
    assert train.main(tiny_args(tmp_path / "split", prepared_dir, *common, "train.max_steps=20", "--resume")) == 0
    straight = dict(metrics(tmp_path / "straight", "train_loss"))
    split = metrics(tmp_path / "split", "train_loss")
    assert [step for step, _ in split] == [3, 6, 9, 10, 12, 15, 18, 20]
    assert all(loss == straight[step] for step, loss in split if step != 10)


def test_a_sample_prompt_longer_than_the_context_is_a_note_after_a_saved_run(tmp_path, prepared_dir, capsys):
    prompt = "word " * 80  # 81 tokens, past the tiny model's 64 learned positions
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=1", "train.sample_tokens=5",
                                f"train.sample_prompt={prompt}")) == 0
    out = capsys.readouterr().out
    assert "--- no sample: train.sample_prompt has 81 tokens, more than the context limit of 64 (" in out
    assert "); shorten it ---" in out
    assert (tmp_path / "checkpoints" / "step_000001").is_dir()


def test_a_schedule_that_ends_within_its_warmup_is_named(tmp_path, prepared_dir, capsys):
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2", "optim.warmup_steps=5")) == 0
    assert ("warning: the learning-rate schedule ends at step 2, within its 5 warm-up steps from step 0: the rate "
            "never reaches optim.lr (0.003) nor follows the cosine decay") in capsys.readouterr().out


def test_ctrl_c_before_the_loop_or_after_it_is_one_line_and_130(tmp_path, prepared_dir, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C during data preparation

    with monkeypatch.context() as patch:
        patch.setattr(train, "open_run_data", interrupted)
        assert train.main(tiny_args(tmp_path / "a", prepared_dir, "train.max_steps=1")) == 130
    assert capsys.readouterr().err == ("\ninterrupted: nothing more was saved; --resume continues from the run's last "
                                       "checkpoint, if it has one\n")

    def signalled_during_the_sample(*args):
        os.kill(os.getpid(), signal.SIGINT)  # past the loop the signal has its usual handler again

    with monkeypatch.context() as patch:
        patch.setattr(train, "print_sample", signalled_during_the_sample)
        assert train.main(tiny_args(tmp_path / "b", prepared_dir, "train.max_steps=1", "train.sample_tokens=4")) == 130
    assert capsys.readouterr().err.endswith("interrupted: nothing more was saved; --resume continues from the run's "
                                            "last checkpoint, if it has one\n")
    assert (tmp_path / "b" / "checkpoints" / "step_000001").is_dir()


OUT_OF_MEMORY = {
    "cuda": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"),
    "cpu": RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you "
                        "tried to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)"),
}


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("compiled", [False, True])
def test_out_of_memory_is_one_line_naming_the_batch_size_and_never_turns_compile_off(tmp_path, prepared_dir, capsys,
                                                                                   monkeypatch, compiled, device):
    """A step that runs out of memory (as a GPU does at a batch too large, or the CPU's allocator) is named with
    the fix; compiled, it is not taken for a compiler failure (which would go on eager, and run out of memory
    again with a traceback)."""
    def out_of_memory(*args, **kwargs):
        raise OUT_OF_MEMORY[device]

    if compiled:  # the compiled model runs out of memory
        monkeypatch.setattr("training.compile.torch.compile", lambda model: out_of_memory)
    else:
        monkeypatch.setattr(train, "accumulate_gradients", out_of_memory)
    code = train.main(tiny_args(tmp_path, prepared_dir, f"train.compile={str(compiled).lower()}"))
    assert code == 2
    err = capsys.readouterr().err
    reason = str(OUT_OF_MEMORY[device]).splitlines()[0]
    assert err == (f"error: out of memory ({reason}); lower train.batch_size, and raise train.grad_accum to keep the "
                   "tokens per step (train.eval_batch_size for an evaluation's; data.eval_windows and the model's "
                   "size count too); --resume continues from the run's last checkpoint\n")


def test_a_file_system_error_names_the_folders_and_the_way_on(tmp_path, prepared_dir, capsys, monkeypatch):
    """A disk that fills up, or a run folder deleted under a running sweep: the errno alone named no fix."""
    def full(run_dir, *args, **kwargs):
        raise OSError(28, "No space left on device", str(run_dir / "checkpoints"))

    monkeypatch.setattr("training.checkpoint.save_checkpoint", full)
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=1")) == 2
    assert capsys.readouterr().err == (
        f"error: No space left on device: {tmp_path / 'checkpoints'}; train.out_dir must stay in place and writable, "
        "with room to spare; --resume continues from the run's last checkpoint\n")


def test_a_failed_rename_names_the_file_being_written_not_the_temporary_one(tmp_path, prepared_dir, capsys):
    (tmp_path / "config.yaml").mkdir()  # where the run writes its config
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=1")) == 2
    assert capsys.readouterr().err == (
        f"error: Is a directory: {tmp_path / 'config.yaml'}; train.out_dir must stay in place and writable, with room "
        "to spare; --resume continues from the run's last checkpoint\n")


@pytest.mark.parametrize("where", ["prepared", "prepared inside the run", "source", "none"])
def test_a_file_system_error_names_the_setting_of_its_path(tmp_path, prepared_dir, capsys, monkeypatch, where):
    """A file outside the run's folders is one the run reads (a local source): its folders are not the fix. Where
    one folder holds the other, the innermost is named."""
    inside = where == "prepared inside the run"
    prepared = str(tmp_path / "run" / "prepared") if inside else prepared_dir
    filename = {"prepared": os.path.join(prepared, "tiny", "train.bin"), "source": "/corpus/plays.txt",
                "none": None}[where.removesuffix(" inside the run")]

    def refused(*args, **kwargs):
        raise OSError(13, "Permission denied", filename)

    monkeypatch.setattr(train, "open_run_data", refused)
    assert train.main(tiny_args(tmp_path / "run", prepared, "train.max_steps=1")) == 2
    fix = {"prepared": "data.prepared_dir must stay in place and writable, with room to spare; --resume continues "
                       "from the run's last checkpoint",
           "source": "the file must be readable, and its disk have room (data.source and data.tokenizer name the "
                     "files a run reads outside train.out_dir and data.prepared_dir)",
           "none": "train.out_dir and data.prepared_dir must stay in place and writable, with room to spare; --resume "
                   "continues from the run's last checkpoint"}[where.removesuffix(" inside the run")]
    assert capsys.readouterr().err == f"error: Permission denied{f': {filename}' if filename else ''}; {fix}\n"


@pytest.mark.parametrize("compiled", [False, True])
def test_a_compiled_run_settles_its_crossovers_before_compiling(tmp_path, prepared_dir, monkeypatch, compiled):
    """Measured inside the trace, flex_attention would run unfused and the direct form be timed at its slowest."""
    from model.gpt import GPT

    events = []
    monkeypatch.setattr(GPT, "settle_crossovers", lambda self, length, autocast: events.append(("settle", length)))
    monkeypatch.setattr("training.compile.torch.compile", lambda model: events.append("compile") or model)
    flag = f"train.compile={str(compiled).lower()}"
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=1", flag)) == 0
    assert events == ([("settle", 32), "compile"] if compiled else [])


def test_a_run_whose_checkpoints_cannot_be_written_stops_before_training(tmp_path, prepared_dir, capsys):
    """Its saves would fail only after the steps: refused at the start, with one line naming the folder."""
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=1")) == 0
    capsys.readouterr()
    with unwritable(tmp_path / "checkpoints"):
        assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2", "--resume")) == 2
    assert capsys.readouterr().err == (
        f"config error: the checkpoint folder {tmp_path / 'checkpoints'} cannot be written by this user; make it "
        "writable, or give another folder for the run (train.out_dir)\n")
    assert [step for step, _ in metrics(tmp_path, "train_loss")] == [1]


def test_an_interrupt_before_any_evaluation_exits_without_evaluating(tmp_path, prepared_dir, monkeypatch, capsys):
    """SIGTERM during step 1 of 10 (evaluations due at 5 and 10): the checkpoint of step 1 is saved and the run
    exits with 128 + SIGTERM, spending no evaluation on the way out."""

    class SignalledDuringStep1(train.StopRequest):
        def __init__(self, runtime):  # as if the handler had already run; installs none in the test process
            self.signal, self._group, self._previous = signal.SIGTERM, None, {}

    evaluations = []
    evaluate = train.evaluate
    monkeypatch.setattr(train, "StopRequest", SignalledDuringStep1)
    monkeypatch.setattr(train, "evaluate", lambda data, model: evaluations.append(1) or evaluate(data, model))
    with pytest.raises(SystemExit) as stopped:
        train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=10", "train.eval_interval=5"))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert evaluations == []
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000001"
    assert "interrupted at step 1; checkpoint saved" in capsys.readouterr().out


def test_a_run_interrupted_between_log_lines_logs_the_losses_of_an_uninterrupted_one(tmp_path, prepared_dir,
                                                                                      monkeypatch):
    """SIGINT in step 4 of windows of 3 steps: the checkpoint keeps the window open at step 4, so the resumed run's
    line at step 6 averages steps 4-6, as the straight run's does, to the bit."""
    common = ["train.max_steps=8", "optim.decay_steps=8", "train.log_interval=3", "train.eval_interval=100",
              "model.dropout=0.1"]
    assert train.main(tiny_args(tmp_path / "straight", prepared_dir, *common)) == 0

    class SignalledInStep4(train.StopRequest):
        def __init__(self, runtime):  # installs no handler in the test process
            self.signal, self._group, self._previous, self.steps = None, None, {}, 0

        def requested(self, last: bool = False) -> bool:
            self.steps += 1
            self.signal = signal.SIGINT if self.steps == 4 else self.signal
            return super().requested(last)

    with monkeypatch.context() as patch:
        patch.setattr(train, "StopRequest", SignalledInStep4)
        with pytest.raises(SystemExit):
            train.main(tiny_args(tmp_path / "halves", prepared_dir, *common))
    assert (tmp_path / "halves" / "checkpoints" / "latest").read_text() == "step_000004"
    assert train.main(tiny_args(tmp_path / "halves", prepared_dir, *common, "--resume")) == 0
    straight = metrics(tmp_path / "straight", "train_loss")
    assert [step for step, _ in straight] == [3, 6, 8]
    assert metrics(tmp_path / "halves", "train_loss") == straight


@pytest.fixture
def stop_handlers():
    """The process's SIGINT / SIGTERM handlers, put back after a test that installs StopRequest's."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def gloo(tmp_path):
    """A one-process gloo group standing in for torchrun's (the flags' all-reduce runs as it would on two)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield rt.Runtime(torch.device("cpu"), torch.float32, rank=0, world_size=2)
    dist.destroy_process_group()


def test_one_process_stops_at_the_end_of_the_step_the_signal_came_in(stop_handlers):
    runtime = rt.Runtime(torch.device("cpu"), torch.float32)
    stop = train.StopRequest(runtime)
    assert not stop.requested()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested() and stop.signal == signal.SIGTERM


def test_a_second_signal_exits_at_once_with_one_line(stop_handlers, capsys):
    stop = train.StopRequest(rt.Runtime(torch.device("cpu"), torch.float32))
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested()
    with pytest.raises(SystemExit) as stopped:
        os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.code == 128 + signal.SIGINT
    assert capsys.readouterr().err == ("second interrupt: stopped without saving; --resume continues from the run's "
                                       "last checkpoint, if it has one\n")


def test_under_torchrun_every_step_reads_the_flags_the_step_before_launched(stop_handlers, gloo):
    """No log step needed: a signal in step 2 stops the ranks at the end of step 3, the same step on each, as each
    reads the same all-reduced flags; at the last step the ranks wait for that step's own flags."""
    stop = train.StopRequest(gloo)
    assert not stop.requested()  # step 1: launched, nothing to read yet
    os.kill(os.getpid(), signal.SIGTERM)
    assert not stop.requested()  # step 2: step 1's flags, from before the signal
    assert stop.requested()  # step 3
    assert stop._pending is None  # nothing left in flight on the way out
    assert stop.agreed == signal.SIGTERM  # the flags carry the signal: a rank that got none exits 143 too
    last = train.StopRequest(gloo)
    assert not last.requested()
    last.signal = signal.SIGTERM
    assert last.requested(last=True) and last._pending is None


@pytest.mark.parametrize("argv, overrides", [
    (["c.yaml", "--resume", "train.max_steps=20"], ["train.max_steps=20", "train.resume=auto"]),
    (["c.yaml", "--resume", "runs/x", "train.max_steps=20"], ["train.max_steps=20", "train.resume=runs/x"]),
    (["c.yaml", "a.b=1", "--resume", "c.d=2", "--e.f=3"], ["a.b=1", "c.d=2", "--e.f=3", "train.resume=auto"]),
    (["c.yaml", "--dry-run", "a.b=1"], ["a.b=1"]),
])
def test_an_override_is_never_taken_for_the_resume_checkpoint(argv, overrides):
    args = train.parse_args(argv)
    assert args.config == "c.yaml" and args.overrides == overrides


def test_an_existing_path_that_looks_like_an_override_is_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.lr=3").mkdir()
    assert train.parse_args(["c.yaml", "--resume", "run.lr=3"]).overrides == ["train.resume=run.lr=3"]


def test_resume_followed_by_an_override_continues_the_run(tmp_path, prepared_dir):
    assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=2")) == 0
    assert train.main([*tiny_args(tmp_path, prepared_dir), "--resume", "train.max_steps=4"]) == 0
    assert metrics(tmp_path, "val_loss")[-1][0] == 4


def test_a_run_continued_on_changed_source_text_warns_that_its_val_losses_differ(tmp_path, capsys):
    """The settings are the checkpoint's, but a local source's text may change between two runs: the data is
    prepared again, and the val windows' fingerprint in the records tells the two stretches apart."""
    words = " ".join(f"w{i % 97}" for i in range(6000))
    (tmp_path / "corpus.txt").write_text(words)
    args = ["configs/tiny.yaml", f"train.out_dir={tmp_path / 'run'}", f"data.source={tmp_path / 'corpus.txt'}",
            f"data.prepared_dir={tmp_path / 'prepared'}", "train.eval_interval=2"]
    assert train.main([*args, "train.max_steps=2"]) == 0
    assert train.main([*args, "train.max_steps=3", "--resume"]) == 0  # the same text: no warning
    assert "val windows differ" not in capsys.readouterr().out
    (tmp_path / "corpus.txt").write_text(words.replace("w1 ", "w2 "))
    assert train.main([*args, "train.max_steps=4", "--resume"]) == 0
    assert ("warning: the val windows differ from those of the evaluations logged up to step 3 (the source's text "
            "changed since): val losses before and after this point are not comparable") in capsys.readouterr().out


def test_a_second_run_in_a_run_directory_in_use_is_refused_before_any_work(tmp_path, prepared_dir, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert train.main(tiny_args(tmp_path, prepared_dir, "train.max_steps=1")) == 2
        assert capsys.readouterr().err.startswith(f"error: {tmp_path} is in use by process {holder.pid}")
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
