"""Where a run starts: resume_path picks the checkpoint (or refuses), start_state restores what the checkpoint holds,
schedule decides what a longer resumed run does with its learning rate, gather_rng snapshots the RNG streams."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from data.loader import TrainWindows
from model.gpt import GPT
from training import checkpoint as ckpt
from training import runtime as rt
from training.checkpoint import TrainState
from training.config import config_to_dict, load_config
from training.optim import make_optimizer
from training.resume import (check_resumable, cuda_rng_entry, gather_rng, restore_rng, resume_path, resume_point,
                             resume_scaler, schedule, start_state, unsaved_ranks_message, warmup_note)
from typedconfig.parsing import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"
CPU = rt.Runtime(torch.device("cpu"), torch.float32)
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def config(run_dir: Path, *overrides: str):
    """The tiny config with a small vocabulary (fast to build and save), writing to `run_dir`."""
    return load_config(TINY, [f"train.out_dir={run_dir}", "model.vocab_size=64", *overrides])


def parts(cfg, seed: int = 0, scale: float = 2.0**16):
    """A model, its optimiser and an enabled scaler, as train.py builds them (the scaler enabled so it has state)."""
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.amp.GradScaler("cpu", init_scale=scale)


def save_trained(cfg, step: int, **state) -> tuple[Path, GPT, torch.optim.Optimizer]:
    """One optimiser step of a model, checkpointed in cfg.train.out_dir as step `step` (scale 1024, RNG now)."""
    model, optimizer, scaler = parts(cfg, seed=step, scale=1024.0)
    for index, parameter in enumerate(model.parameters()):
        parameter.grad = torch.full_like(parameter, 0.01 * (index + 1))
    optimizer.step()
    full = TrainState(step=step, tokens_seen=step * 100, elapsed=step * 0.5, best_val_loss=4.25, schedule_end=5,
                      optimizer=optimizer.state_dict(), grad_scaler=scaler.state_dict(), rng=gather_rng(CPU))
    for name, value in state.items():
        setattr(full, name, value)
    Path(cfg.train.out_dir).mkdir(parents=True, exist_ok=True)
    path = ckpt.save_checkpoint(cfg.train.out_dir, model, full, config_to_dict(cfg), keep=5)
    return path, model, optimizer


def damage(path: Path) -> None:
    weights = path / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(), random.random()


# resume_path: which checkpoint, if any


def test_a_fresh_run_directory_starts_fresh_and_says_nothing(tmp_path):
    said = []
    assert resume_path(config(tmp_path / "run"), tmp_path / "run", said.append) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")  # a run that stopped before its first checkpoint
    assert resume_path(config(tmp_path / "run"), tmp_path / "run", said.append) is None
    assert said == []


def test_a_run_with_checkpoints_is_not_overwritten_without_resume(tmp_path):
    cfg = config(tmp_path)
    save_trained(cfg, 3)
    save_trained(cfg, 6)
    with pytest.raises(ConfigError) as info:
        resume_path(cfg, tmp_path, print)
    assert str(info.value) == (
        f"{tmp_path} already holds checkpoints (step_000006); pass --resume to continue it or choose another "
        "train.out_dir")


@pytest.mark.parametrize("resume", ["never", "auto"])
def test_an_out_dir_that_is_a_file_is_refused(tmp_path, resume):
    out = tmp_path / "run"
    out.write_text("not a run")
    with pytest.raises(ConfigError, match=r"train.out_dir=.*run is an existing file, not a directory; choose another "
                                          r"out_dir"):
        resume_path(config(out, f"train.resume={resume}"), out, print)


def test_auto_picks_the_newest_checkpoint_and_starts_fresh_without_one(tmp_path):
    cfg = config(tmp_path, "train.resume=auto")
    assert resume_path(cfg, tmp_path, print) is None
    save_trained(cfg, 3)
    newest, _, _ = save_trained(cfg, 6)
    assert resume_path(cfg, tmp_path, print) == newest


def test_auto_skips_a_damaged_newest_checkpoint_with_a_warning_in_the_run_log(tmp_path):
    cfg = config(tmp_path, "train.resume=auto")
    older, _, _ = save_trained(cfg, 3)
    damage(save_trained(cfg, 6)[0])
    said = []
    assert resume_path(cfg, tmp_path, said.append) == older
    assert len(said) == 1
    assert said[0].startswith("warning: skipping step_000006: ")
    assert "model.safetensors fails its checksum" in said[0] and said[0].endswith("use another checkpoint of the run")


def test_auto_stops_when_no_checkpoint_verifies(tmp_path):
    cfg = config(tmp_path, "train.resume=auto")
    damage(save_trained(cfg, 3)[0])
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint in .*checkpoints verifies \(1 damaged\): nothing "
                                                   r"can be loaded from it; restore a checkpoint, or train the run"):
        resume_path(cfg, tmp_path, lambda message: None)


def test_an_explicit_checkpoint_is_used_even_when_newer_ones_exist(tmp_path):
    source = config(tmp_path / "source")
    older, _, _ = save_trained(source, 3)
    save_trained(source, 6)
    cfg = config(tmp_path / "new", f"train.resume={older}")
    assert resume_path(cfg, tmp_path / "new", print) == older
    cfg = config(tmp_path / "new", f"train.resume={tmp_path / 'source'}")  # a run directory: its newest
    assert resume_path(cfg, tmp_path / "new", print).name == "step_000006"


def test_resuming_another_runs_checkpoint_into_a_run_directory_with_checkpoints_is_refused(tmp_path):
    """Its saves would land among the other run's checkpoints (and a save below them would delete them as an
    abandoned branch): refused before the checkpoint is even verified."""
    source = config(tmp_path / "source")
    elsewhere, _, _ = save_trained(source, 3)
    damage(elsewhere)
    occupied = config(tmp_path / "occupied")
    save_trained(occupied, 6)
    for given in (elsewhere, tmp_path / "source"):
        with pytest.raises(ConfigError) as info:
            resume_path(config(tmp_path / "occupied", f"train.resume={given}"), tmp_path / "occupied", print)
        assert str(info.value) == (
            f"{tmp_path / 'occupied'} already holds checkpoints (step_000006) and train.resume={given} lies outside "
            "it; choose another train.out_dir, or pass --resume alone to continue the run there")


def test_a_missing_checkpoint_is_named_missing_and_auto_says_when_it_starts_afresh(tmp_path):
    occupied = config(tmp_path / "occupied")
    save_trained(occupied, 3)
    missing = tmp_path / "nope" / "step_000010"
    with pytest.raises(ckpt.CheckpointError, match=f"{missing} does not exist"):
        resume_path(config(tmp_path / "occupied", f"train.resume={missing}"), tmp_path / "occupied", print)
    said = []
    assert resume_path(config(tmp_path / "empty", "train.resume=auto"), tmp_path / "empty", said.append) is None
    assert said == [f"no checkpoint in {tmp_path / 'empty'}: a fresh run"]


def test_an_explicit_checkpoint_of_the_run_directory_itself_is_a_branch_of_it(tmp_path):
    cfg = config(tmp_path)
    older, _, _ = save_trained(cfg, 3)
    save_trained(cfg, 6)
    for given, expected in ((older, older), (tmp_path, tmp_path / "checkpoints" / "step_000006"),
                            (tmp_path / "checkpoints", tmp_path / "checkpoints" / "step_000006")):
        assert resume_path(config(tmp_path, f"train.resume={given}"), tmp_path, print) == expected


@pytest.mark.parametrize("flag, expected", [("--resume", "step_000006"), ("--resume={older}", "step_000003")])
def test_the_resume_flag_with_and_without_a_checkpoint(tmp_path, flag, expected):
    """`--resume` alone continues the run directory's newest checkpoint; `--resume=CHECKPOINT` that checkpoint."""
    cfg = config(tmp_path)
    older, _, _ = save_trained(cfg, 3)
    save_trained(cfg, 6)
    args = train.parse_args([str(TINY), f"train.out_dir={tmp_path}", "model.vocab_size=64",
                             flag.format(older=older)])
    cfg = load_config(args.config, args.overrides)
    assert resume_path(cfg, tmp_path, print).name == expected


def test_an_explicit_checkpoint_that_does_not_exist_names_the_path_and_what_to_pass(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ckpt.CheckpointError) as info:
        resume_path(config(tmp_path / "run", f"train.resume={missing}"), tmp_path / "run", print)
    assert str(info.value) == f"checkpoint path {missing} does not exist (pass a run directory or a checkpoint dir)"


def test_an_explicit_directory_without_checkpoints_says_what_it_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint in .*empty \(expected model.safetensors or "
                                                   r"checkpoints/step_N\)"):
        resume_path(config(tmp_path / "run", f"train.resume={tmp_path / 'empty'}"), tmp_path / "run", print)


def test_an_explicit_damaged_checkpoint_stops_without_falling_back(tmp_path):
    source = config(tmp_path / "source")
    save_trained(source, 3)
    damaged, _, _ = save_trained(source, 6)
    damage(damaged)
    said = []
    with pytest.raises(ckpt.CheckpointError, match=r"step_000006/model.safetensors fails its checksum .*"
                                                   r"use another checkpoint of the run"):
        resume_path(config(tmp_path / "run", f"train.resume={damaged}"), tmp_path / "run", said.append)
    assert said == []


# start_state: what the loop starts from


@pytest.mark.parametrize("rank", [0, 1])
def test_a_fresh_start_seeds_each_rank_and_follows_the_configured_schedule(tmp_path, rank):
    cfg = config(tmp_path, "train.seed=40", "train.max_steps=12")
    model, optimizer, scaler = parts(cfg)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    said = []
    state = start_state(cfg, rt.Runtime(torch.device("cpu"), torch.float32, rank=rank, world_size=2), None, model,
                        optimizer, scaler, said.append)
    after = torch.rand(4)
    torch.manual_seed(40 + rank)
    assert torch.equal(after, torch.rand(4))  # dropout streams differ per rank
    assert (state.kind, state.step, state.tokens_seen, state.schedule_start, state.schedule_end) == (
        "full", 0, 0, 0, 12)
    assert state.optimizer is None and optimizer.state_dict()["state"] == {}
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert said == []
    cfg = config(tmp_path, "optim.decay_steps=7")
    assert start_state(cfg, CPU, None, model, optimizer, scaler, said.append).schedule_end == 7


def test_resuming_restores_counters_weights_optimiser_scaler_and_rng(tmp_path):
    cfg = config(tmp_path, "train.max_steps=5")
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    path, saved_model, saved_optimizer = save_trained(cfg, 3)
    expected = draws()  # what the streams give right after the checkpoint's RNG snapshot
    model, optimizer, scaler = parts(cfg, seed=99)
    draws()  # move every stream on
    said = []
    state = start_state(cfg, CPU, resume_point(cfg, path), model, optimizer, scaler, said.append)
    assert draws() == expected
    assert (state.step, state.tokens_seen, state.elapsed, state.best_val_loss) == (3, 300, 1.5, 4.25)
    assert (state.schedule_start, state.schedule_end) == (0, 5)
    for name, value in saved_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    restored, original = optimizer.state_dict(), saved_optimizer.state_dict()
    assert restored["state"].keys() == original["state"].keys()
    for index, entry in original["state"].items():
        assert torch.equal(restored["state"][index]["exp_avg_sq"], entry["exp_avg_sq"])
        assert float(restored["state"][index]["step"]) == 1.0
    assert scaler.get_scale() == 1024.0
    assert said == [f"resuming from {path} (step 3)"]
    # restored, the loaded copies are dropped: the first save gathers the live state again
    assert (state.optimizer, state.grad_scaler, state.rng) == (None, None, [])


def test_a_resume_keeps_the_optimiser_settings_of_the_config_and_names_each_change(tmp_path):
    """load_state_dict brings the checkpoint's param-group settings along; the run's config decides them instead
    (the decayed group takes optim.weight_decay, the other keeps 0)."""
    saved_cfg = config(tmp_path, "train.max_steps=5")
    model = GPT(saved_cfg.model)
    optimizer = make_optimizer(model, saved_cfg.optim, "cpu")
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    state = TrainState(step=3, schedule_end=5, optimizer=optimizer.state_dict(), rng=gather_rng(CPU))
    path = ckpt.save_checkpoint(tmp_path, model, state, config_to_dict(saved_cfg), keep=2)
    cfg = config(tmp_path, "train.max_steps=5", "optim.weight_decay=0.02", "optim.beta1=0.5", "optim.beta2=0.6",
                 "optim.eps=1e-3")
    model = GPT(cfg.model)
    optimizer = make_optimizer(model, cfg.optim, "cpu")
    said = []
    start_state(cfg, CPU, resume_point(cfg, path), model, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                said.append)
    assert [(g["weight_decay"], g["betas"], g["eps"]) for g in optimizer.param_groups] == [
        (0.02, (0.5, 0.6), 1e-3), (0.0, (0.5, 0.6), 1e-3)]
    assert optimizer.state_dict()["state"][0]["exp_avg"].abs().sum() > 0  # the moments are the checkpoint's
    assert said == [f"resuming from {path} (step 3)",
                    "optim.weight_decay=0.02 replaces the checkpoint's 0.1",
                    "optim.beta1=0.5 replaces the checkpoint's 0.9",
                    "optim.beta2=0.6 replaces the checkpoint's 0.95",
                    "optim.eps=0.001 replaces the checkpoint's 1e-08"]
    said.clear()
    start_state(saved_cfg, CPU, resume_point(saved_cfg, path), model, make_optimizer(model, saved_cfg.optim, "cpu"),
                torch.amp.GradScaler("cpu", enabled=False), said.append)
    assert said == [f"resuming from {path} (step 3)"]  # unchanged settings: nothing to say


@pytest.mark.parametrize("saved_position, expected", [(None, 3 * 4), (40, 40)])
def test_resuming_continues_at_the_saved_data_position_or_the_one_an_older_checkpoint_implies(
        tmp_path, saved_position, expected):
    """An older checkpoint (no data_position) consumed step x its own grad_accum micro-batches, whatever the resumed
    run's grad_accum is."""
    path, _, _ = save_trained(config(tmp_path, "train.grad_accum=4"), 3, data_position=saved_position)
    cfg = config(tmp_path, "train.grad_accum=2", "train.max_steps=5")
    state = start_state(cfg, CPU, resume_point(cfg, path), *parts(cfg), lambda message: None)
    assert state.data_position == expected


def test_a_resume_with_another_grad_accum_draws_fresh_micro_batches(tmp_path, prepared_dir, monkeypatch):
    drawn = []
    batch = TrainWindows.batch
    monkeypatch.setattr(TrainWindows, "batch", lambda self, index: drawn.append(index) or batch(self, index))
    common = [f"train.out_dir={tmp_path}", f"data.prepared_dir={prepared_dir}", "train.eval_interval=100",
              "train.sample_tokens=0"]
    assert train.main(["configs/tiny.yaml", *common, "train.grad_accum=4", "train.max_steps=2"]) == 0
    assert train.main(["configs/tiny.yaml", *common, "train.grad_accum=2", "train.max_steps=3", "--resume"]) == 0
    assert drawn == list(range(10))  # 2 steps x 4, then 1 x 2: none drawn twice


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_each_rank_restores_its_own_rng_stream_and_new_ranks_seed_as_a_fresh_start(tmp_path, rank):
    """A run resumed on more processes than it saved seeds the new ranks with train.seed + rank, as a fresh start
    would, so no two ranks share a dropout stream."""
    cfg = config(tmp_path, "train.seed=40", "train.max_steps=5")
    streams = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        streams.append(gather_rng(CPU)[0])
    path, _, _ = save_trained(cfg, 3, rng=streams)
    model, optimizer, scaler = parts(cfg)
    said = []
    start_state(cfg, rt.Runtime(torch.device("cpu"), torch.float32, rank=rank, world_size=4), resume_point(cfg, path),
                model, optimizer, scaler, said.append)
    after = torch.rand(4)
    torch.manual_seed(10 + rank if rank < 2 else 40 + rank)
    assert torch.equal(after, torch.rand(4))
    assert said == [f"resuming from {path} (step 3)",
                    "the checkpoint holds RNG streams of 2 process(es): rank(s) 2..3 seed theirs as a fresh start "
                    "does (train.seed + rank)"]


@pytest.mark.parametrize("saved_ranks, world_size, message", [
    (2, 2, None),
    (4, 2, None),  # fewer processes: the extra streams go unused
    (2, 3, "the checkpoint holds RNG streams of 2 process(es): rank(s) 2 seed theirs as a fresh start does "
           "(train.seed + rank)"),
])
def test_the_log_names_the_ranks_without_a_saved_stream(saved_ranks, world_size, message):
    assert unsaved_ranks_message(saved_ranks, world_size) == message


def test_an_fp16_resume_of_a_bf16_checkpoint_starts_a_fresh_loss_scale_and_says_so(tmp_path):
    """A bf16 or fp32 run saves its disabled scaler's empty state; an enabled scaler cannot load it."""
    cfg = config(tmp_path, "train.max_steps=5")
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    path, _, _ = save_trained(cfg, 3, grad_scaler=disabled.state_dict())
    model, optimizer, _ = parts(cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    said = []
    start_state(cfg, CPU, resume_point(cfg, path), model, optimizer, scaler, said.append)
    assert scaler.get_scale() == 512.0
    assert said == [f"resuming from {path} (step 3)",
                    "the checkpoint has no fp16 loss-scaler state (saved in bf16 or fp32): the loss scale starts "
                    "fresh"]


def test_a_disabled_scaler_resumes_any_checkpoint_silently():
    assert resume_scaler(torch.amp.GradScaler("cpu", enabled=False), {}) is None
    assert resume_scaler(torch.amp.GradScaler("cpu", enabled=False), {"scale": 1024.0}) is None


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    cfg = config(tmp_path, "train.max_steps=3", "optim.on_extend=restart")
    path, _, _ = save_trained(cfg, 3, schedule_end=8)
    said = []
    state = start_state(cfg, CPU, resume_point(cfg, path), *parts(cfg), said.append)
    assert said == [f"resuming from {path} (step 3)",
                    "nothing to train: the checkpoint is at step 3 and train.max_steps=3; "
                    "raise train.max_steps to train further"]  # and no word about the schedule
    assert (state.schedule_start, state.schedule_end) == (0, 8)


@pytest.mark.parametrize("on_extend, schedule_span, message", [
    ("continue", (0, 5), "train.max_steps=10 but the run's schedule ends at step 5: it continues "
                         "(optim.on_extend=continue; min_lr 0.0003 after step 5); set optim.on_extend=restart to "
                         "warm-restart it, or optim.decay_steps to choose the end"),
    ("restart", (3, 10), "optim.on_extend=restart: warm restart of the learning rate at step 3: 2 warm-up steps to "
                         "0.003, cosine to 0.0003 at step 10"),
])
def test_extending_a_resumed_run_says_what_happens_to_its_schedule(tmp_path, on_extend, schedule_span, message):
    cfg = config(tmp_path, "train.max_steps=10", f"optim.on_extend={on_extend}")
    path, _, _ = save_trained(cfg, 3)
    said = []
    state = start_state(cfg, CPU, resume_point(cfg, path), *parts(cfg), said.append)
    assert said == [f"resuming from {path} (step 3)", message]
    assert (state.schedule_start, state.schedule_end) == schedule_span


@pytest.mark.parametrize("overrides, kept_end", [
    (["train.max_steps=5"], 5),  # the schedule it started with
    (["train.max_steps=10", "optim.decay_steps=8"], 8),  # decay_steps chooses the end, whatever max_steps is
])
def test_schedule_continues_silently_when_nothing_changed_or_the_end_is_chosen(tmp_path, overrides, kept_end):
    saved = TrainState(step=3, schedule_start=2, schedule_end=5)
    assert schedule(config(tmp_path, *overrides), saved) == (2, kept_end, None)


def test_restart_cannot_move_the_schedule_behind_the_checkpoint(tmp_path):
    """A restart needs steps left to warm up in: max_steps at or below the checkpoint keeps the old schedule."""
    cfg = config(tmp_path, "train.max_steps=3", "optim.on_extend=restart")
    start, end, _ = schedule(cfg, TrainState(step=4, schedule_start=1, schedule_end=6))
    assert (start, end) == (1, 6)


def test_where_the_prepared_data_lies_may_change_between_resumes(tmp_path):
    path, _, _ = save_trained(config(tmp_path, "data.prepared_dir=/old/disk/prepared"), 3)
    cfg = config(tmp_path, "data.prepared_dir=/new/disk/prepared", "train.max_steps=5")
    assert start_state(cfg, CPU, resume_point(cfg, path), *parts(cfg), lambda message: None).step == 3


REFUSED = ("in the checkpoint; use the checkpoint's config, or start a new run (another train.out_dir, "
           "train.resume=never)")


@pytest.mark.parametrize("kind, change, message", [
    ("full", "model.n_layer=3", f"cannot resume: model.n_layer is 3 here but 2 {REFUSED}"),
    ("full", "data.block_size=16", f"cannot resume: data.block_size is 16 here but 32 {REFUSED}"),
    ("full", "data.eval_windows=4", f"cannot resume: data.eval_windows is 4 here but 8 {REFUSED}"),
    ("full", "train.seed=5", f"cannot resume: train.seed is 5 here but 1337 {REFUSED}"),
    ("weights_only", "model.n_head=4", f"cannot resume: model.n_head is 4 here but 2 {REFUSED}"),
    ("weights_only", "data.eval_windows=4", None),  # a new run from the weights takes any data
])
def test_resuming_refuses_another_model_and_unless_from_weights_only_other_data(tmp_path, kind, change, message):
    source = config(tmp_path / "source")
    path, _, _ = save_trained(source, 3, kind=kind)
    cfg = config(tmp_path / "run", change)
    if message is None:
        point = resume_point(cfg, path)
        assert (point.path, point.config, point.kind) == (path, config_to_dict(source), kind)
    else:
        with pytest.raises(ConfigError) as info:
            resume_point(cfg, path)
        assert str(info.value) == message
    assert resume_point(cfg, None) is None  # a fresh start has nothing to check


def test_a_resume_that_cannot_continue_stops_before_the_data_is_opened(tmp_path, monkeypatch, capsys):
    """Preparing the data can take hours: a model or data mismatch is refused before it starts."""
    save_trained(config(tmp_path), 3)
    opened = []
    monkeypatch.setattr(train, "open_run_data", lambda *args: opened.append(args))
    assert train.main([str(TINY), f"train.out_dir={tmp_path}", "model.vocab_size=64", "model.n_layer=3",
                       "--resume"]) == 2
    assert "cannot resume: model.n_layer is 3 here but 2 in the checkpoint" in capsys.readouterr().err
    assert opened == []


def test_a_resume_reads_and_checks_the_checkpoint_config_once(tmp_path, prepared_dir, monkeypatch):
    """train.py checks the checkpoint before the data is opened and hands start_state what it read."""
    common = [f"train.out_dir={tmp_path}", f"data.prepared_dir={prepared_dir}", "train.max_steps=1",
              "train.sample_tokens=0"]
    assert train.main([str(TINY), *common]) == 0
    checks, reads = [], []
    read = ckpt.read_config
    monkeypatch.setattr("training.resume.check_resumable",
                        lambda *args: checks.append(args[2]) or check_resumable(*args))
    monkeypatch.setattr(ckpt, "read_config", lambda path: reads.append(path) or read(path))
    assert train.main([str(TINY), *common, "--resume"]) == 0
    assert checks == [("model", "data", "train.seed")] and reads == [tmp_path / "checkpoints" / "step_000001"]


def test_keys_a_checkpoint_predates_count_as_their_defaults(tmp_path):
    cfg = config(tmp_path)
    saved = config_to_dict(cfg)
    del saved["model"]["position"]  # at its default here: the same model
    check_resumable(cfg, saved, ("model", "data"))
    with pytest.raises(ConfigError, match=r"cannot resume: model.position is 'rope' here but 'learned' in the "):
        check_resumable(config(tmp_path, "model.position=rope"), saved, ("model",))


def test_a_weights_only_checkpoint_starts_a_new_run_from_its_weights(tmp_path):
    source = config(tmp_path / "imported")
    path, imported, _ = save_trained(source, 7, kind="weights_only", optimizer=None, rng=[])
    cfg = config(tmp_path / "run", "data.block_size=16", "train.seed=5", "train.max_steps=9")  # other data is fine
    model, optimizer, scaler = parts(cfg, seed=99)
    said = []
    state = start_state(cfg, CPU, resume_point(cfg, path), model, optimizer, scaler, said.append)
    assert said == [f"starting from the weights of {path} (fresh optimiser, schedule and data order)"]
    for name, value in imported.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert (state.kind, state.step, state.tokens_seen, state.schedule_start, state.schedule_end) == (
        "full", 0, 0, 0, 9)
    assert optimizer.state_dict()["state"] == {} and scaler.get_scale() == 2.0**16
    after = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(4))
    with pytest.raises(ConfigError, match="cannot resume: model.n_embd is 32 here but 64 in the checkpoint"):
        resume_point(config(tmp_path / "run", "model.n_embd=32"), path)


# gather_rng


def test_gather_rng_on_one_process_is_a_snapshot_of_every_stream():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    states = gather_rng(CPU)
    assert len(states) == 1
    assert set(states[0]) == {"torch", "numpy", "python"}  # no CUDA stream when training on the CPU
    first = draws()
    assert draws() != first  # the streams moved on; the snapshot did not
    restore_rng(states[0], CPU.device)
    assert draws() == first


class FakeCudaRng:
    """torch.cuda's per-device RNG calls on a machine with `gpus` GPUs, each state a one-element tensor."""

    def __init__(self, gpus: int):
        self.states = [torch.tensor([index]) for index in range(gpus)]

    def get_rng_state(self, device):
        return self.states[torch.device(device).index].clone()

    def set_rng_state(self, state, device):
        self.states[torch.device(device).index] = state.clone()


def test_a_gpu_run_saves_only_its_own_cuda_stream_and_restores_it_on_a_machine_with_fewer_gpus(monkeypatch):
    saved_on = FakeCudaRng(gpus=8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", saved_on.get_rng_state)
    state = gather_rng(rt.Runtime(torch.device("cuda", 5), torch.bfloat16))[0]
    assert torch.equal(state["cuda"], torch.tensor([5]))
    restored_on = FakeCudaRng(gpus=1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored_on.set_rng_state)
    restore_rng(state, torch.device("cuda", 0))
    assert restored_on.states == [torch.tensor([5])]


def test_an_older_checkpoints_cuda_streams_restore_the_current_gpus_entry_for_a_device_without_index(monkeypatch):
    restored = {}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update(state=state, device=device))
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "cuda": [torch.tensor([0]), torch.tensor([1])]}
    restore_rng(state, torch.device("cuda"))
    assert torch.equal(restored["state"], torch.tensor([1]))


def test_older_checkpoints_with_every_gpus_cuda_stream_restore_the_training_gpus_entry():
    saved = [torch.tensor([0]), torch.tensor([1])]
    assert torch.equal(cuda_rng_entry(saved, 1), torch.tensor([1]))
    assert torch.equal(cuda_rng_entry(torch.tensor([7]), 3), torch.tensor([7]))
    with pytest.raises(ckpt.CheckpointError) as info:
        cuda_rng_entry(saved, 2)
    assert str(info.value) == ("the checkpoint holds CUDA RNG states for 2 GPU(s), none for cuda:2; resume with at "
                               "most 2 GPU(s) per machine")


@pytest.mark.parametrize("resume", ["never", "auto"])
def test_a_run_whose_latest_checkpoint_is_gone_is_not_started_afresh(tmp_path, resume):
    """`latest` names a checkpoint that is missing and nothing else is left (a save killed mid-swap with no copy that
    verifies, or a folder removed by hand): a fresh start would train from scratch under the run's name."""
    cfg = config(tmp_path, f"train.resume={resume}")
    path, _, _ = save_trained(cfg, 3)
    shutil.rmtree(path)
    with pytest.raises(ckpt.CheckpointError) as info:
        resume_path(cfg, tmp_path, print)
    assert str(info.value) == (
        f"{tmp_path}/checkpoints/latest names step_000003, which is missing, and no other checkpoint of the run is "
        f"left; put it back, or remove {tmp_path}/checkpoints to start this out_dir afresh")


def test_a_checkpoint_a_killed_save_left_swapped_out_is_put_back_with_a_warning_in_the_run_log(tmp_path):
    cfg = config(tmp_path, "train.resume=auto")
    path, _, _ = save_trained(cfg, 3)
    path.rename(path.with_name(f".tmp-{path.name}-{os.getpid()}"))
    said = []
    assert resume_path(cfg, tmp_path, said.append) == path
    assert said == [f"warning: restored step_000003 from .tmp-step_000003-{os.getpid()}, left by a save that was "
                    "killed while it replaced step_000003"]


@pytest.mark.parametrize(("start", "end", "warned"), [(0, 5, False), (0, 4, True), (3, 8, False), (3, 7, True)])
def test_the_warm_up_note_comes_only_where_the_schedule_ends_before_the_rate_reaches_optim_lr(tmp_path, start, end,
                                                                                             warned):
    """Warm-up step i runs at optim.lr · (i + 1) / optim.warmup_steps: a schedule of exactly warmup_steps steps
    reaches optim.lr at its last one."""
    note = warmup_note(config(tmp_path, "optim.warmup_steps=5"), start, end)
    assert (note is not None) == warned
    if warned:
        assert note.startswith(f"warning: the learning-rate schedule ends at step {end}, within its 5 warm-up steps "
                               f"from step {start}")
