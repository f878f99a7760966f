"""Checkpoints are atomic, checksummed directories; a damaged one is found before use. A run directory resolves
through `latest` (falling back to the checkpoints below it that verify), and a save from an earlier step removes the
abandoned branch's later checkpoints."""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.gpt import GPT
from training import checkpoint as ckpt
from training.checkpoint import TrainState


def small_model(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=50, n_positions=16, n_layer=1, n_head=2, n_embd=16))


def save(run_dir, step, model=None, keep=3, **state):
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return ckpt.save_checkpoint(run_dir, model or small_model(), TrainState(step=step, **state), {"step": step}, keep)


def test_save_then_load_restores_weights_state_and_config(tmp_path):
    model = small_model(0)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    state = TrainState(step=5, tokens_seen=640, elapsed=1.5, best_val_loss=3.25, schedule_start=2, schedule_end=9,
                       optimizer=optimizer.state_dict())
    path = ckpt.save_checkpoint(tmp_path, model, state, {"model": {"n_layer": 1}}, keep=2)
    assert path.name == "step_000005"
    assert ckpt.find_checkpoint(tmp_path) == path  # a run directory resolves to its newest checkpoint
    other = small_model(1)
    ckpt.load_weights(path, other)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other.lm_head.weight.data_ptr() == other.transformer.wte.weight.data_ptr()  # still tied
    loaded = ckpt.load_train_state(path)
    assert (loaded.kind, loaded.step, loaded.tokens_seen, loaded.elapsed, loaded.best_val_loss) == (
        "full", 5, 640, 1.5, 3.25)
    assert (loaded.schedule_start, loaded.schedule_end) == (2, 9)
    exp_avg = loaded.optimizer["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, optimizer.state_dict()["state"][0]["exp_avg"])
    assert ckpt.read_config(path) == {"model": {"n_layer": 1}}


@pytest.mark.parametrize("writer", ["weights", "state"])
def test_a_writer_failing_on_the_file_system_is_an_os_error_naming_its_file(tmp_path, monkeypatch, writer):
    """safetensors and torch.save raise their own types for a full disk; train.py words OSErrors in one line."""
    from safetensors import SafetensorError

    if writer == "weights":
        def fail(*args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(ckpt, "save_model", fail)
    else:
        def fail(*args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 13669376 vs 13669328")
        monkeypatch.setattr(ckpt.torch, "save", fail)
    with pytest.raises(OSError) as error:
        save(tmp_path, 1)
    name = {"weights": ckpt.WEIGHTS, "state": ckpt.STATE}[writer]
    assert error.value.filename.endswith(name) and ".tmp-step_000001" in error.value.filename
    assert error.value.strerror == ("No space left on device" if writer == "weights" else
                                    "cannot write ([enforce fail at inline_container.cc:672] . unexpected pos "
                                    "13669376 vs 13669328)")
    assert not any((tmp_path / ckpt.CHECKPOINTS).iterdir())  # the temporary folder went


def test_a_run_folder_removed_while_the_run_goes_on_is_not_made_anew(tmp_path):
    save(tmp_path / "run", 1)
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        ckpt.save_checkpoint(tmp_path / "run", small_model(), TrainState(step=2), {}, keep=3)
    assert not (tmp_path / "run").exists()


def test_checksums_record_every_file_with_its_sha256(tmp_path):
    path = save(tmp_path, 1)
    recorded = json.loads((path / ckpt.CHECKSUMS).read_text())
    assert set(recorded) == {ckpt.WEIGHTS, ckpt.STATE, ckpt.CONFIG}
    for name, entry in recorded.items():
        data = (path / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@pytest.mark.parametrize("name", [ckpt.WEIGHTS, ckpt.STATE, ckpt.CONFIG])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_file_is_named_by_verify(tmp_path, name, damage):
    path = save(tmp_path, 1)
    target = path / name
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF  # same size, one bit pattern different
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(ckpt.CheckpointError, match=name.replace(".", r"\.")):
        ckpt.verify(path)
    with pytest.raises(ckpt.CheckpointError, match=name.replace(".", r"\.")):
        ckpt.find_checkpoint(path)  # named explicitly: no fallback
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint_model(path)


def test_a_run_directory_skips_damaged_checkpoints_and_says_so(tmp_path):
    good = save(tmp_path, 1)
    newest = save(tmp_path, 2)
    (newest / ckpt.WEIGHTS).write_bytes(b"\0" * 10)
    skipped = []
    assert ckpt.find_checkpoint(tmp_path, on_skip=skipped.append) == good
    assert len(skipped) == 1 and "step_000002" in skipped[0] and "model.safetensors" in skipped[0]
    (good / ckpt.CHECKSUMS).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint in .* verifies"):
        ckpt.find_checkpoint(tmp_path, on_skip=skipped.append)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model = small_model()
    for step in (1, 2, 3, 4, 10):
        save(tmp_path, step, model, keep=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_000004", "step_000010"]  # by step, not by name order
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000010"
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000010"


def test_a_crash_mid_save_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    good = save(tmp_path, 1)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2)
    assert ckpt.find_checkpoint(tmp_path) == good
    assert ckpt.load_train_state(good).step == 1
    assert not (tmp_path / "checkpoints" / "step_000002").exists()


def test_resaving_a_step_replaces_it(tmp_path):
    save(tmp_path, 1, tokens_seen=1)
    path = save(tmp_path, 1, tokens_seen=2)
    assert ckpt.load_train_state(path).tokens_seen == 2


def test_write_sealed_swaps_in_the_folder_written_with_its_checksums(tmp_path):
    """What every save and upgrade goes through: `write` fills a fresh folder, which is sealed and swapped in."""
    path = save(tmp_path, 1)

    def rewrite_config(folder: Path) -> None:
        shutil.copytree(path, folder, dirs_exist_ok=True)
        (folder / ckpt.CONFIG).write_text('{"step": 2}')

    ckpt.write_sealed(path, rewrite_config)
    ckpt.verify(path)
    assert ckpt.read_config(path) == {"step": 2} and names(tmp_path) == ["latest", "step_000001"]


def fail_writing(folder: Path) -> None:
    (folder / ckpt.WEIGHTS).write_bytes(b"partial")
    raise OSError("disk full")


@pytest.mark.parametrize("write, error", [
    (fail_writing, OSError),
    (lambda folder: None, FileNotFoundError),  # nothing to seal
])
def test_a_write_sealed_that_fails_before_the_swap_leaves_the_checkpoint_as_it_was(tmp_path, write, error):
    """The temporary folder goes too: nothing is left for a later save to clean up."""
    path = save(tmp_path, 1)
    with pytest.raises(error):
        ckpt.write_sealed(path, write)
    assert names(tmp_path) == ["latest", "step_000001"]
    ckpt.verify(path)
    assert ckpt.read_config(path) == {"step": 1}


def test_a_folder_holding_checkpoint_weights_or_checksums_is_a_checkpoint_even_incomplete(tmp_path):
    """Such a folder is a checkpoint that must verify; a run directory or a checkpoints/ folder is searched for
    them instead."""
    path = save(tmp_path, 1)
    assert ckpt.is_checkpoint_dir(path)
    assert not ckpt.is_checkpoint_dir(tmp_path) and not ckpt.is_checkpoint_dir(tmp_path / "checkpoints")
    for name in (ckpt.WEIGHTS, ckpt.CHECKSUMS):
        incomplete = tmp_path / f"only-{name}"
        incomplete.mkdir()
        (incomplete / name).write_bytes(b"x")
        assert ckpt.is_checkpoint_dir(incomplete)


def test_a_state_file_that_is_not_a_train_state_is_refused(tmp_path):
    path = save(tmp_path, 1)
    torch.save({"step": 1, "optimizer": {}}, path / ckpt.STATE)  # another program's layout
    with pytest.raises(ckpt.CheckpointError, match="not an attnlab train state"):
        ckpt.load_train_state(path)


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.find_checkpoint(tmp_path / "missing")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint in"):
        ckpt.find_checkpoint(tmp_path)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_a_file_of_a_run_or_checkpoint_is_refused_naming_the_folder_to_pass(tmp_path):
    path = save(tmp_path / "run", 1)
    (tmp_path / "run" / "config.yaml").write_text("model: {}\n")
    (tmp_path / "notes.txt").write_text("x")
    expected = {
        path / ckpt.WEIGHTS: f"pass the checkpoint directory {path} or its run directory {tmp_path / 'run'}",
        path / ckpt.CONFIG: f"pass the checkpoint directory {path} or its run directory {tmp_path / 'run'}",
        tmp_path / "run" / "config.yaml": f"pass the run directory {tmp_path / 'run'}",
        tmp_path / "run" / "checkpoints" / "latest": f"pass the run directory {tmp_path / 'run'}",
        tmp_path / "notes.txt": "pass a run directory or a checkpoint directory",
    }
    for file, fix in expected.items():
        with pytest.raises(ckpt.CheckpointError) as caught:
            ckpt.find_checkpoint(file, on_skip=pytest.fail)  # no warning about a `latest` inside a file either
        assert str(caught.value) == f"checkpoint path {file} is a file; {fix}"


def test_weights_of_another_shape_are_refused(tmp_path):
    path = save(tmp_path, 1)
    bigger = GPT(ModelConfig(vocab_size=50, n_positions=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_weights(path, bigger)
    wider = GPT(ModelConfig(vocab_size=50, n_positions=16, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_weights(path, wider)


def names(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_a_run_directory_resolves_through_latest_not_the_highest_step(tmp_path):
    """A run resumed from step 1 of a run that reached step 3 stands at step 1, whatever the folder numbers say."""
    model = small_model()
    first = save(tmp_path, 1, model)
    save(tmp_path, 3, model)
    (tmp_path / "checkpoints" / "latest").write_text("step_000001")  # as a crash right after the save of step 1 left it
    assert ckpt.find_checkpoint(tmp_path) == first
    assert ckpt.latest_checkpoint(tmp_path) == first


def test_a_damaged_latest_falls_back_below_it_never_to_an_abandoned_branch(tmp_path):
    model = small_model()
    for step in (1, 2, 3):
        save(tmp_path, step, model)
    (tmp_path / "checkpoints" / "latest").write_text("step_000002")
    (tmp_path / "checkpoints" / "step_000002" / ckpt.STATE).write_bytes(b"garbage")
    skipped = []
    assert ckpt.find_checkpoint(tmp_path, on_skip=skipped.append).name == "step_000001"
    assert len(skipped) == 1 and "skipping step_000002" in skipped[0] and "state.pt" in skipped[0]


@pytest.mark.parametrize("latest", ["step_000009", "../elsewhere", "", None])
def test_without_a_usable_latest_the_highest_step_that_verifies_is_taken(tmp_path, latest):
    model = small_model()
    save(tmp_path, 1, model)
    highest = save(tmp_path, 2, model)
    if latest is None:
        (tmp_path / "checkpoints" / "latest").unlink()
    else:
        (tmp_path / "checkpoints" / "latest").write_text(latest)
    skipped = []
    assert ckpt.find_checkpoint(tmp_path, on_skip=skipped.append) == highest
    assert ckpt.latest_checkpoint(tmp_path) == highest
    if latest is None:
        assert skipped == []
    else:
        assert len(skipped) == 1 and "checkpoints/latest names" in skipped[0] and "not a checkpoint" in skipped[0]


def test_saving_an_earlier_step_removes_the_abandoned_branch_and_says_so(tmp_path):
    """--resume <run>/checkpoints/step_000002 of a run at step 6, then a save at step 3: steps 4 and 6 belonged to
    the run it branched from; step 2, below the save, stays (keep=3)."""
    model = small_model()
    for step in (2, 4, 6):
        save(tmp_path, step, model)
    said = []
    path = ckpt.save_checkpoint(tmp_path, model, TrainState(step=3), {}, keep=3, say=said.append, resumed_here=True)
    assert names(tmp_path) == ["latest", "step_000002", "step_000003"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000003"
    assert ckpt.find_checkpoint(tmp_path) == path
    assert len(said) == 1 and "removed step_000006, step_000004" in said[0] and "step_000003" in said[0]


def test_keep_1_never_removes_the_checkpoint_it_just_wrote(tmp_path):
    model = small_model()
    for step in (2, 3):
        save(tmp_path, step, model)
    path = ckpt.save_checkpoint(tmp_path, model, TrainState(step=2), {}, keep=1, say=lambda message: None,
                                resumed_here=True)
    assert names(tmp_path) == ["latest", "step_000002"]
    ckpt.verify(path)
    assert ckpt.find_checkpoint(tmp_path) == path


def test_checkpoints_above_a_run_that_did_not_continue_this_directory_are_another_runs_and_stay(tmp_path):
    """A fresh run, or one resumed from elsewhere, that finds higher-numbered checkpoints beside its saves did not
    branch from them: they are another run's, and only the expired ones below the save go. (train.py's resume_path
    lets such a run start only in a directory without checkpoints, so they come from a run saving there at the same
    time, which passed that check while the directory was still empty.)"""
    model = small_model()
    for step in (1, 2, 6):
        save(tmp_path, step, model)
    said = []
    path = ckpt.save_checkpoint(tmp_path, model, TrainState(step=3), {}, keep=2, say=said.append)
    assert names(tmp_path) == ["latest", "step_000002", "step_000003", "step_000006"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000003"
    assert ckpt.find_checkpoint(tmp_path) == path
    assert said == []


def test_a_checkpoint_is_in_the_run_when_it_lies_in_its_checkpoints_folder(tmp_path):
    run = tmp_path / "run"
    assert ckpt.in_run(run, run) and ckpt.in_run(tmp_path / "x" / ".." / "run", run)
    assert ckpt.in_run(run / "checkpoints", run) and ckpt.in_run(run / "checkpoints" / "step_000002", run)
    assert not ckpt.in_run(tmp_path / "other" / "checkpoints" / "step_000002", run)
    assert not ckpt.in_run(run / "imported" / "checkpoints" / "step_000000", run)  # another run, nested
    assert not ckpt.in_run(tmp_path / "run2" / "checkpoints" / "step_000002", run)


def test_a_checkpoint_is_in_the_run_when_its_checkpoints_folder_links_to_another_disk(tmp_path):
    run, scratch = tmp_path / "run", tmp_path / "scratch" / "checkpoints"
    (scratch / "step_000002").mkdir(parents=True)
    run.mkdir()
    (run / "checkpoints").symlink_to(scratch)
    assert ckpt.in_run(run / "checkpoints" / "step_000002", run) and ckpt.in_run(scratch / "step_000002", run)
    assert not ckpt.in_run(tmp_path / "scratch", run)


@pytest.mark.parametrize("kind", ["full", "weights_only"])
def test_the_kind_of_a_checkpoint_is_read_without_its_optimiser_tensors(tmp_path, kind, monkeypatch):
    model = small_model()
    optimizer = torch.optim.AdamW(model.parameters())
    path = save(tmp_path, 1, model, kind=kind, optimizer=optimizer.state_dict())
    loads = []
    load = torch.load
    monkeypatch.setattr(ckpt.torch, "load", lambda *args, **kwargs: loads.append(kwargs) or load(*args, **kwargs))
    assert ckpt.read_kind(path) == kind
    assert [call["mmap"] for call in loads] == [True]


def test_a_save_in_order_reports_nothing(tmp_path):
    model, said = small_model(), []
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, model, TrainState(step=step), {}, keep=2, say=said.append)
    assert said == [] and names(tmp_path) == ["latest", "step_000002", "step_000003"]


def test_a_save_removes_the_partial_saves_of_killed_processes_and_says_so(tmp_path):
    """A save killed mid-write leaves .tmp-step_N-PID (or, swapping a re-saved step, .old-step_N-PID) behind; the
    next save removes those whose process is gone and leaves a live process's alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getppid()  # the finished child, and pytest's parent
    root = tmp_path / "checkpoints"
    partial = [root / f".tmp-step_000004-{dead_pid}", root / f".old-step_000002-{dead_pid}",
               root / f".tmp-step_000005-{live_pid}"]
    for path in partial:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"partial")
    said = []
    ckpt.save_checkpoint(tmp_path, small_model(), TrainState(step=3), {}, keep=2, say=said.append)
    assert [p.exists() for p in partial] == [False, False, True]
    assert said == [f"removed .old-step_000002-{dead_pid}, left by a save that was killed before it finished",
                    f"removed .tmp-step_000004-{dead_pid}, left by a save that was killed before it finished"]


def test_partial_saves_named_after_this_process_are_stale_unless_being_written(tmp_path):
    """A container restarted after a kill often runs the new process under the PID of the old one (1 under docker):
    leftovers with this process's PID cannot belong to a save under way, as a process saves one at a time."""
    root = tmp_path / "checkpoints"
    partial = [root / f".tmp-step_000004-{os.getpid()}", root / f".old-step_000002-{os.getpid()}"]
    for path in partial:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"partial")
    writing = root / f".tmp-step_000003-{os.getpid()}"
    writing.mkdir()
    assert ckpt.stale_partial_saves(root, writing=writing) == sorted(partial)
    said = []
    ckpt.save_checkpoint(tmp_path, small_model(), TrainState(step=3), {}, keep=2, say=said.append)
    assert names(tmp_path) == ["latest", "step_000003"]
    assert said == [f"removed .old-step_000002-{os.getpid()}, left by a save that was killed before it finished",
                    f"removed .tmp-step_000004-{os.getpid()}, left by a save that was killed before it finished"]


def test_folders_that_are_not_step_and_digits_are_left_alone(tmp_path):
    """A user's backup step_000001.bak neither breaks saves and loads nor counts as a checkpoint to prune."""
    model = small_model()
    first = save(tmp_path, 1, model)
    backup = tmp_path / "checkpoints" / "step_000001.bak"
    shutil.copytree(first, backup)
    (tmp_path / "checkpoints" / "step_final").mkdir()
    for step in (2, 3, 4):
        save(tmp_path, step, model, keep=1)
    assert names(tmp_path) == ["latest", "step_000001.bak", "step_000004", "step_final"]
    assert ckpt.find_checkpoint(tmp_path).name == "step_000004"
    (tmp_path / "checkpoints" / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000004"
    ckpt.verify(backup)  # still usable when named explicitly
    assert ckpt.find_checkpoint(backup) == backup
    with pytest.raises(ckpt.CheckpointError, match="not named step_N"):
        ckpt.checkpoint_step(backup)


def kill_between_the_swap_renames(monkeypatch):
    """Path.rename raising KeyboardInterrupt (a second Ctrl-C) at replace_dir's second rename: the step is left as
    .old-step_N-PID and .tmp-step_N-PID only, as a process killed there leaves it."""
    rename = Path.rename

    def killed(self, target):
        if self.name.startswith(".tmp-"):
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed)


def resave_killed_mid_swap(tmp_path, model, monkeypatch) -> None:
    """Step 5 saved (tokens_seen 1, keep=1), then saved again (tokens_seen 2) by a save killed between its renames."""
    save(tmp_path, 5, model, keep=1, tokens_seen=1)
    with monkeypatch.context() as patch:
        kill_between_the_swap_renames(patch)
        with pytest.raises(KeyboardInterrupt):
            save(tmp_path, 5, model, keep=1, tokens_seen=2)


def test_a_save_killed_between_the_swap_renames_is_put_back_when_the_run_is_resolved(tmp_path, monkeypatch):
    """Re-saving step 5 (keep=1: no other checkpoint) killed between its two renames: resolving the run renames the
    new copy into place and says so, instead of finding no checkpoint; the next save removes the old copy."""
    model = small_model()
    resave_killed_mid_swap(tmp_path, model, monkeypatch)
    pid = os.getpid()
    assert names(tmp_path) == [f".old-step_000005-{pid}", f".tmp-step_000005-{pid}", "latest"]
    said = []
    restored = ckpt.latest_checkpoint(tmp_path, said.append)
    assert restored == tmp_path / "checkpoints" / "step_000005"
    assert said == [f"restored step_000005 from .tmp-step_000005-{pid}, left by a save that was killed while it "
                    "replaced step_000005"]
    assert ckpt.find_checkpoint(tmp_path) == restored and ckpt.load_train_state(restored).tokens_seen == 2
    save(tmp_path, 6, model, keep=1)
    assert names(tmp_path) == ["latest", "step_000006"]


def test_the_old_copy_is_put_back_when_the_new_one_does_not_verify(tmp_path, monkeypatch):
    model = small_model()
    resave_killed_mid_swap(tmp_path, model, monkeypatch)
    (tmp_path / "checkpoints" / f".tmp-step_000005-{os.getpid()}" / ckpt.STATE).write_bytes(b"damaged")
    said = []
    found = ckpt.find_checkpoint(tmp_path, on_skip=said.append)
    assert found.name == "step_000005" and ckpt.load_train_state(found).tokens_seen == 1
    assert said == [f"restored step_000005 from .old-step_000005-{os.getpid()}, left by a save that was killed "
                    "while it replaced step_000005"]


def test_a_live_save_mid_swap_is_left_alone_and_a_missing_checkpoint_is_reported_as_lost(tmp_path):
    """The copies of a process still running are its save under way: resolution neither moves them nor finds a
    checkpoint, and lost_latest names what `latest` points at."""
    path = save(tmp_path, 5, keep=1)
    live = tmp_path / "checkpoints" / f".tmp-step_000005-{os.getppid()}"
    path.rename(live)
    assert ckpt.latest_checkpoint(tmp_path, say=pytest.fail) is None
    assert live.is_dir() and ckpt.lost_latest(tmp_path / "checkpoints") == "step_000005"
    assert ckpt.lost_latest(tmp_path / "nothing") is None
    save(tmp_path, 6, keep=1)
    assert ckpt.lost_latest(tmp_path / "checkpoints") is None


def test_the_state_file_holds_only_what_a_weights_only_load_accepts(tmp_path):
    """Optimiser, scaler and every RNG stream (numpy with a cached gaussian) go through torch.load(weights_only=True)
    and restore the streams exactly."""
    from training import runtime as rt
    from training.resume import gather_rng, restore_rng

    model = small_model()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    np.random.seed(3)
    np.random.randn()  # numpy keeps the second gaussian of the pair
    cpu = rt.Runtime(torch.device("cpu"), torch.float32)
    state = TrainState(step=1, optimizer=optimizer.state_dict(), rng=gather_rng(cpu),
                       grad_scaler=torch.amp.GradScaler("cpu", enabled=True).state_dict())
    expected = (np.random.randn(), np.random.rand(), random.random(), torch.rand(2).tolist())
    path = ckpt.save_checkpoint(tmp_path, model, state, {}, keep=1)
    saved = torch.load(path / ckpt.STATE, weights_only=True)
    assert saved["rng"][0]["numpy"]["has_gauss"] == 1
    restore_rng(ckpt.load_train_state(path).rng[0], cpu.device)
    assert (np.random.randn(), np.random.rand(), random.random(), torch.rand(2).tolist()) == expected


class Planted:
    """An object whose unpickling touches a file: the code a state.pt from elsewhere could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_state_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    """Its checksums match (whoever wrote the file wrote them too), so only the load can refuse it."""
    path = save(tmp_path, 1)
    marker = tmp_path / "ran"
    torch.save({**TrainState(step=1).to_dict(), "source": Planted(marker)}, path / ckpt.STATE)
    ckpt.seal(path)  # checksums that vouch for the files as they are now, as their writer would
    ckpt.verify(path)
    with pytest.raises(ckpt.CheckpointError, match="holds a pickled object a safe load refuses") as info:
        ckpt.load_train_state(path)
    assert "python -m training.upgrade_checkpoint" in str(info.value)
    assert not marker.exists()
    (path / ckpt.STATE).write_bytes(b"\x80\x02garbage")
    ckpt.seal(path)  # checksums that vouch for the files as they are now, as their writer would
    with pytest.raises(ckpt.CheckpointError, match=r"state.pt cannot be read \(UnpicklingError"):
        ckpt.load_train_state(path)


def test_a_transformers_folder_is_named_as_such_unless_a_run_trained_into_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "attnlab"}))
    with pytest.raises(ckpt.CheckpointError, match="is a transformers export, not a checkpoint"):
        ckpt.find_checkpoint(tmp_path)
    path = save(tmp_path, 2)
    assert ckpt.find_checkpoint(tmp_path) == path  # the run's own checkpoints/ resume it
    (tmp_path / ckpt.WEIGHTS).write_bytes(b"the export's weights")  # an export holds a model.safetensors too
    assert not ckpt.is_checkpoint_dir(tmp_path)
    assert ckpt.find_checkpoint(tmp_path) == path  # it was taken for an incomplete checkpoint
