"""Where a run starts: fresh, from a checkpoint it continues, or from weights it starts over with; and which
learning-rate schedule it follows from there.

A continued run restores everything in its TrainState (optimiser, RNG streams, counters, schedule), so an interrupted
run resumed finishes exactly as an uninterrupted one. A resumed run whose train.max_steps differs from the end of
the schedule it started with either continues that schedule (min_lr after its end: nanoGPT's behaviour, the default)
or, with optim.on_extend=restart, warm-restarts it from the resume step to the new max_steps.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from training import checkpoint as ckpt
from training import runtime as rt
from training.config import RunConfig, TrainConfig, config_to_dict
from typedconfig.parsing import ConfigError


def capture_rng(device: torch.device) -> dict:
    """This process's RNG streams: torch, numpy, python, and the training device's CUDA stream when it is a GPU
    (only that one, so a machine with fewer GPUs can restore it). Tensors and plain values only, so that a checkpoint
    loads with weights_only."""
    state = {"torch": torch.get_rng_state(), "numpy": plain_numpy_state(np.random.get_state()),
             "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def plain_numpy_state(state: tuple | dict) -> dict:
    """A numpy RNG state (get_state's legacy tuple or its dict) as a dict of str, int, float and a list of ints for
    the key array: what weights_only loads; np.random.set_state takes it as it is."""
    if isinstance(state, tuple):
        name, key, pos, has_gauss, gauss = state
        state = {"bit_generator": name, "state": {"key": key, "pos": pos}, "has_gauss": has_gauss, "gauss": gauss}
    inner = state["state"]
    return {"bit_generator": str(state["bit_generator"]),
            "state": {"key": np.asarray(inner["key"], dtype=np.uint32).tolist(), "pos": int(inner["pos"])},
            "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index  # plain "cuda": the current GPU
        torch.cuda.set_rng_state(cuda_rng_entry(state["cuda"], index), device)


def cuda_rng_entry(saved: torch.Tensor | list[torch.Tensor], device_index: int) -> torch.Tensor:
    """The CUDA RNG state for GPU `device_index`: checkpoints hold the training device's state, older ones a list
    with one entry per GPU visible then."""
    if not isinstance(saved, list):
        return saved
    if device_index >= len(saved):
        raise ckpt.CheckpointError(
            f"the checkpoint holds CUDA RNG states for {len(saved)} GPU(s), none for cuda:{device_index}; "
            f"resume with at most {len(saved)} GPU(s) per machine"
        )
    return saved[device_index]


def seed_fresh(cfg: RunConfig, runtime: rt.Runtime) -> None:
    torch.manual_seed(cfg.train.seed + runtime.rank)  # dropout streams differ per rank


def unsaved_ranks_message(saved_ranks: int, world_size: int) -> str | None:
    """What a resume on more processes than the checkpoint saved does with the RNG streams of the new ranks."""
    if world_size <= saved_ranks:
        return None
    ranks = str(saved_ranks) if world_size == saved_ranks + 1 else f"{saved_ranks}..{world_size - 1}"
    return (f"the checkpoint holds RNG streams of {saved_ranks} process(es): rank(s) {ranks} seed theirs as a fresh "
            "start does (train.seed + rank)")


def resume_scaler(scaler: torch.amp.GradScaler, saved: dict | None) -> str | None:
    """Load the checkpoint's loss-scaler state; one that is empty (saved by a disabled scaler: a bf16 or fp32 run)
    leaves `scaler` fresh, and the returned line says so when `scaler` is enabled."""
    if saved:
        scaler.load_state_dict(saved)
        return None
    if scaler.is_enabled():
        return "the checkpoint has no fp16 loss-scaler state (saved in bf16 or fp32): the loss scale starts fresh"
    return None


def gather_rng(runtime: rt.Runtime) -> list[dict]:
    """Every rank's RNG state, in rank order (collective: all ranks call it)."""
    return gather_ranks(runtime, capture_rng(runtime.device))


def gather_ranks(runtime: rt.Runtime, value: dict) -> list[dict]:
    """Every rank's `value` (plain values and CPU tensors), in rank order (collective: all ranks call it)."""
    if not runtime.distributed:
        return [value]
    values: list = [None] * runtime.world_size
    dist.all_gather_object(values, value)
    return values


def shared_resume_path(cfg: RunConfig, run_dir: Path, runtime: rt.Runtime, say: Callable[[str], None]) -> Path | None:
    """`resume_path` as the main process finds it, sent to the others (collective): it may repair the run's
    checkpoints (put back a save a kill cut short), which two processes must not do at once, and its warnings are
    the main process's to print. Its refusal is raised on every rank."""
    found: list = [None]
    if runtime.is_main:
        try:
            found = [resume_path(cfg, run_dir, say)]
        except (ConfigError, OSError) as exc:  # OSError: CheckpointError and the file system's own
            found = [exc]
    if runtime.distributed:
        dist.broadcast_object_list(found, src=0)
    if isinstance(found[0], Exception):
        if not runtime.is_main:
            found[0].told_by_rank_0 = True  # the same failure as rank 0's: its line is rank 0's to print
        raise found[0]
    return found[0]


def resume_path(cfg: RunConfig, run_dir: Path, say: Callable[[str], None]) -> Path | None:
    """The verified checkpoint to start from, or None for a fresh run; refuses to overwrite an existing run or to
    mix another run's checkpoints into it, or to start afresh in a run directory whose `latest` names a checkpoint
    that is gone. Damaged checkpoints of the run directory are skipped, and one a killed save left swapped out is put
    back, each with a warning through `say`."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.out_dir={run_dir} is an existing file, not a directory; choose another out_dir")
    warn = lambda message: say(f"warning: {message}")  # noqa: E731 - the run log, like every other line of the run
    existing = ckpt.latest_checkpoint(run_dir, warn)
    if existing is None and (lost := ckpt.lost_latest(run_dir / ckpt.CHECKPOINTS)) is not None:
        # the run's checkpoints are gone: starting afresh would train from scratch under the run's name
        raise ckpt.CheckpointError(
            f"{run_dir / ckpt.CHECKPOINTS / ckpt.LATEST} names {lost}, which is missing, and no other checkpoint of "
            f"the run is left; put it back, or remove {run_dir / ckpt.CHECKPOINTS} to start this out_dir afresh"
        )
    if cfg.train.resume == "never":
        if existing is not None:
            raise ConfigError(
                f"{run_dir} already holds checkpoints ({existing.name}); pass --resume to continue it "
                "or choose another train.out_dir"
            )
        return None
    if cfg.train.resume == "auto":
        if existing is None:
            say(f"no checkpoint in {run_dir}: a fresh run")
            return None
        return ckpt.find_checkpoint(run_dir, warn)
    # a checkpoint that does not exist is named as such (find_checkpoint) before any talk of where it lies
    if existing is not None and Path(cfg.train.resume).exists() and not ckpt.in_run(cfg.train.resume, run_dir):
        # the run's saves would interleave with the checkpoints there, and `latest` would flip between the two runs
        raise ConfigError(
            f"{run_dir} already holds checkpoints ({existing.name}) and train.resume={cfg.train.resume} lies "
            "outside it; choose another train.out_dir, or pass --resume alone to continue the run there"
        )
    return ckpt.find_checkpoint(cfg.train.resume, warn)  # a run directory skips damaged ones, a checkpoint must verify


# keys that say where files are, not what they hold: a run may move them between resumes
LOCATION_KEYS = {"data": ("prepared_dir",)}


def check_resumable(cfg: RunConfig, saved: dict, parts: tuple[str, ...]) -> None:
    """Refuse to continue a checkpoint saved with other values of `parts` of the config: whole sections ("model")
    or single keys ("train.seed"); location keys aside."""
    current, defaults = config_to_dict(cfg), config_to_dict(RunConfig())
    for part in parts:
        section, _, key = part.partition(".")
        recorded = {**defaults[section], **saved.get(section, {})}  # keys a checkpoint predates count as defaults
        keys = [key] if key else [k for k in current[section] if k not in LOCATION_KEYS.get(section, ())]
        diff = [k for k in keys if current[section][k] != recorded[k]]
        if diff:
            raise ConfigError(
                f"cannot resume: {section}.{diff[0]} is {current[section][diff[0]]!r} here but "
                f"{recorded[diff[0]]!r} in the checkpoint; use the checkpoint's config, or start a new run (another "
                "train.out_dir, train.resume=never)"
            )


def resumable_sections(kind: str) -> tuple[str, ...]:
    """A checkpoint continues only the same model and, unless it holds weights only, on the same data in the same
    order (train.seed orders the micro-batches)."""
    return ("model",) if kind == "weights_only" else ("model", "data", "train.seed")


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint this run's config can continue, with what was read to decide that. Made by resume_point, so
    start_state, handed one, starts only from a checked checkpoint and reads its config no second time."""

    path: Path  # the verified checkpoint directory
    config: dict  # the resolved run config it was saved with
    kind: str  # TrainState.kind: "full" or "weights_only"


def resume_point(cfg: RunConfig, path: Path | None) -> ResumePoint | None:
    """The checkpoint at `path` with its config and kind, once they show this run can continue it (refused
    otherwise); None for a fresh start (no `path`). Its tensors are not read: train.py calls this before the data is
    prepared, which can take hours."""
    if path is None:
        return None
    point = ResumePoint(path, ckpt.read_config(path), ckpt.read_kind(path))
    check_resumable(cfg, point.config, resumable_sections(point.kind))
    return point


def configured_values(group: dict) -> dict[str, float]:
    """The AdamW settings of a param group that the run config sets, by config key."""
    beta1, beta2 = group["betas"]
    return {"optim.weight_decay": group["weight_decay"], "optim.beta1": beta1, "optim.beta2": beta2,
            "optim.eps": group["eps"]}


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> list[str]:
    """Load the checkpoint's optimiser state (moments, step counts) into `optimizer`, built from this run's config,
    and keep the weight decay, betas and eps it was built with: load_state_dict would replace them with the
    checkpoint's (the learning rate is set every step). One line per value that differs from the checkpoint's."""
    built = [{key: group[key] for key in ("weight_decay", "betas", "eps")} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    changed: dict[str, tuple[float, float]] = {}
    for group, settings in zip(optimizer.param_groups, built):
        new = configured_values(settings)
        for key, old in configured_values(group).items():
            if old != new[key]:
                changed.setdefault(key, (old, new[key]))
        group.update(settings)
    return [f"{key}={new:g} replaces the checkpoint's {old:g}" for key, (old, new) in changed.items()]


def schedule(cfg: RunConfig, saved: ckpt.TrainState | None) -> tuple[int, int, str | None]:
    """(start, end, message): the schedule warms up from step `start` and decays to min_lr at step `end`; `message`
    says what a resume did to it when that is not simply "the same schedule continues"."""
    oc, max_steps = cfg.optim, cfg.train.max_steps
    end = oc.decay_steps if oc.decay_steps is not None else max_steps
    if saved is None:
        return 0, end, None
    if oc.decay_steps is not None or saved.schedule_end == max_steps:
        return saved.schedule_start, end, None
    if oc.on_extend == "restart" and max_steps > saved.step:
        return saved.step, max_steps, (
            f"optim.on_extend=restart: warm restart of the learning rate at step {saved.step}: "
            f"{oc.warmup_steps} warm-up steps to {oc.lr:g}, cosine to {oc.min_lr:g} at step {max_steps}"
        )
    return saved.schedule_start, saved.schedule_end, (
        f"train.max_steps={max_steps} but the run's schedule ends at step {saved.schedule_end}: it continues "
        f"(optim.on_extend=continue; min_lr {oc.min_lr:g} after step {saved.schedule_end}); "
        "set optim.on_extend=restart to warm-restart it, or optim.decay_steps to choose the end"
    )


def start_state(cfg: RunConfig, runtime: rt.Runtime, resume: ResumePoint | None, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                say: Callable[[str], None]) -> ckpt.TrainState:
    """The state the loop starts from, with `model`, `optimizer`, `scaler` and the RNG streams restored from the
    checkpoint `resume` (None: fresh). Announces what it did through `say`."""
    if resume is None or resume.kind == "weights_only":
        if resume is not None:
            ckpt.load_weights(resume.path, model)
            say(f"starting from the weights of {resume.path} (fresh optimiser, schedule and data order)")
        seed_fresh(cfg, runtime)
        start, end, _ = schedule(cfg, None)
        if message := warmup_note(cfg, start, end):
            say(message)
        return ckpt.TrainState(schedule_start=start, schedule_end=end, data_position=0)
    path = resume.path
    saved = ckpt.load_train_state(path)
    if saved.data_position is None:
        saved.data_position = saved.step * resume.config.get("train", {}).get("grad_accum", TrainConfig().grad_accum)
    ckpt.load_weights(path, model)
    settings_messages = load_optimizer(optimizer, saved.optimizer)
    scaler_message = resume_scaler(scaler, saved.grad_scaler)
    saved_ranks = len(saved.rng)
    if runtime.rank < saved_ranks:
        restore_rng(saved.rng[runtime.rank], runtime.device)
    else:
        seed_fresh(cfg, runtime)
    # restored into the optimiser, scaler and RNG streams, the loaded host copies would otherwise live until the
    # first save replaces them (a second optimiser state in host memory on a GPU run)
    saved.optimizer, saved.grad_scaler, saved.rng = None, None, []
    say(f"resuming from {path} (step {saved.step})")
    for message in (*settings_messages, scaler_message, unsaved_ranks_message(saved_ranks, runtime.world_size)):
        if message:
            say(message)
    if saved.step >= cfg.train.max_steps:
        say(f"nothing to train: the checkpoint is at step {saved.step} and train.max_steps={cfg.train.max_steps}; "
            "raise train.max_steps to train further")
    start, end, message = schedule(cfg, saved)
    if saved.step < cfg.train.max_steps:
        for note in (message, warmup_note(cfg, start, end)):
            if note:
                say(note)
    saved.schedule_start, saved.schedule_end = start, end
    return saved


def warmup_note(cfg: RunConfig, start: int, end: int) -> str | None:
    """A warning where the schedule from step `start` ends (`end`, train.max_steps unless optim.decay_steps sets it)
    within its warm-up: the rate never reaches optim.lr nor follows the cosine decay. optim.decay_steps itself is
    refused there when the config loads; train.max_steps is a run's length, which a short trial may rightly cut."""
    warmup = cfg.optim.warmup_steps
    if end - start >= warmup:  # at end - start == warmup the last step does reach optim.lr
        return None
    return (f"warning: the learning-rate schedule ends at step {end}, within its {warmup} warm-up steps from step "
            f"{start}: the rate never reaches optim.lr ({cfg.optim.lr:g}) nor follows the cosine decay; lower "
            "optim.warmup_steps to train a full schedule")
