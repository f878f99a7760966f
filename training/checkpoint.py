"""Checkpoints: a directory per save, written under a temporary name, checksummed, and renamed, so a crash mid-save
never destroys the last good checkpoint and a damaged file is found before it is used.

    <run>/checkpoints/step_000100/model.safetensors   weights (the tied embedding stored once)
                                 /state.pt            the TrainState: optimiser, schedule, RNG states, data position
                                 /config.json         the fully resolved run config
                                 /checksums.json      sha256 and size of the three files above
    <run>/checkpoints/latest                          name of the checkpoint the run stands at

A run directory holds one line of training, and `latest` says where it stands: a run directory resolves to the
checkpoint `latest` names, or, if that one fails to verify, to the highest-numbered one below it that does (each
damaged one is reported and skipped); without `latest`, to the highest-numbered one that verifies. A checkpoint
directory named explicitly must verify or the load stops.

Resuming from an earlier checkpoint of the run (`--resume <run>/checkpoints/step_000200` while step_000300 exists)
branches the run, as in nanoGPT, whose single ckpt.pt the new branch overwrites: the first save of the new branch
removes the checkpoints numbered above it (saying so), so the directory never mixes the two branches. Only a run
that continued from a checkpoint of its own run directory does that: above a fresh run or one resumed from
elsewhere, checkpoints are another run's and stay. Only folders named step_ and digits are checkpoints; anything
else (a user's step_000100.bak) is left alone.

Re-saving a step swaps the new directory in for the old one with two renames; a process killed between them
leaves the step under `.old-step_N-PID` and `.tmp-step_N-PID` only. Resolving the run directory first puts the
first of those that verifies (the new copy, else the old) back under its name, so a resume continues from the step
`latest` names instead of finding it missing.

state.pt holds only what `torch.load(weights_only=True)` accepts (tensors, containers, numbers, strings), so
loading a checkpoint runs no pickled code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from fileio.atomic import fsync_file, process_alive, write_text_atomic
from model.config import HF_MODEL_TYPE
from model.gpt import GPT
from training.config import RunConfig, config_from_dict
from typedconfig.parsing import ConfigError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS, STATE, CONFIG, CHECKSUMS = "model.safetensors", "state.pt", "config.json", "checksums.json"
STEP_NAME = re.compile(r"step_([0-9]+)")
PARTIAL_NAME = re.compile(r"\.(?:tmp|old)-step_[0-9]+-(?P<pid>[0-9]+)")  # a save under way, or killed


class CheckpointError(FileNotFoundError):
    """A checkpoint path that does not hold a usable checkpoint."""


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class TrainState:
    """Everything besides the weights and the config that a run needs to continue exactly where it stopped.

    A `weights_only` state (scripts/import_gpt2.py) starts a new run from the weights: fresh optimiser, schedule and
    data order. The loader's micro-batch `i` is a pure function of (seed, i), and the run has consumed micro-batches
    0 .. data_position - 1, so a resume with another train.grad_accum continues with fresh ones.
    """

    kind: Literal["full", "weights_only"] = "full"
    step: int = 0  # optimiser steps taken
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds spent in training steps (evaluation excluded)
    best_val_loss: float = math.inf
    schedule_start: int = 0  # step the learning-rate warm-up began (a warm restart moves it)
    schedule_end: int = 0  # step the cosine decay reaches min_lr
    optimizer: dict[str, Any] | None = None  # optimizer.state_dict()
    grad_scaler: dict[str, Any] | None = None  # GradScaler.state_dict() (fp16 only does anything)
    rng: list[dict[str, Any]] = field(default_factory=list)  # torch / numpy / python (/ cuda) RNG states, per rank
    # per rank, the train-loss window open at the save (Throughput.open_window): a resumed run's next log line
    # averages the same steps as an uninterrupted run's; empty in checkpoints that predate it
    log_windows: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None  # where the weights of a weights-only state came from
    # global micro-batches consumed; None in checkpoints that predate it, where it was step * their grad_accum
    data_position: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: no copy of the optimiser tensors

    @classmethod
    def from_dict(cls, saved: dict[str, Any], path: Path) -> TrainState:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - names)
        if unknown or saved.get("kind") not in ("full", "weights_only"):
            raise CheckpointError(f"{path} is not an attnlab train state (keys {sorted(saved)[:6]})")
        return cls(**saved)


def save_checkpoint(run_dir: str | Path, model: nn.Module, state: TrainState, config: dict[str, Any],
                    keep: int, say: Callable[[str], None] = _warn, *, resumed_here: bool = False) -> Path:
    """Write the checkpoint of `state.step` atomically into the run folder `run_dir`, which must exist, and point
    `latest` at it; then remove all but the newest `keep` (>= 1) of those below it, never the one just written.
    `resumed_here`: the run continued from a checkpoint of `run_dir`, so those numbered above it are its abandoned
    branch, removed too (reported through `say`)."""
    root = Path(run_dir) / CHECKPOINTS
    # not the run folder itself: one removed while the run goes on is an error, not a folder made anew without its
    # config.yaml and lock (FileNotFoundError names it)
    root.mkdir(exist_ok=True)
    final = root / f"step_{state.step:06d}"
    for stale in stale_partial_saves(root, writing=temporary_dir(final)):
        shutil.rmtree(stale, ignore_errors=True)
        say(f"removed {stale.name}, left by a save that was killed before it finished")
    write_sealed(final, lambda folder: write_checkpoint_files(folder, model, state, config))
    write_text_atomic(root / LATEST, final.name)  # before any removal: `latest` never names a missing checkpoint
    abandoned, expired = checkpoints_to_remove(step_dirs(root), state.step, keep)
    abandoned = abandoned if resumed_here else []
    if abandoned:
        say(f"removed {', '.join(p.name for p in abandoned)} of the abandoned branch: this run continued from an "
            f"earlier step and saved {final.name}")
    for old in abandoned + expired:
        shutil.rmtree(old)
    return final


def write_checkpoint_files(folder: Path, model: nn.Module, state: TrainState, config: dict[str, Any]) -> None:
    """The three files of a checkpoint, written into `folder` (not yet sealed). A writer that fails on the file
    system (a full disk, a folder removed) raises an OSError naming its file, as open() would: safetensors and
    torch.save raise their own types."""
    try:
        save_model(model, str(folder / WEIGHTS))
    except SafetensorError as exc:  # "... File too large (os error 27)"
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(folder / WEIGHTS)) from exc
    try:
        torch.save(state.to_dict(), folder / STATE)
    except RuntimeError as exc:  # torch's stream writer: "unexpected pos ...", "... failed writing file ..."
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
        raise OSError(errno.EIO, f"cannot write ({reason})", str(folder / STATE)) from exc
    (folder / CONFIG).write_text(json.dumps(config, indent=2))


def write_sealed(final: Path, write: Callable[[Path], None]) -> None:
    """Make `final` the checkpoint that `write` puts into an empty folder: written under temporary_dir(final),
    sealed, then swapped in for any existing `final` by replace_dir (restore_swapped covers a kill between its
    renames). A failure before the swap, or of its first rename, removes the temporary folder and leaves `final` as
    it was."""
    tmp = temporary_dir(final)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed write of `final` by a process with this PID
    tmp.mkdir()
    try:
        write(tmp)
        seal(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        replace_dir(tmp, final)
    except OSError:
        if final.exists() and tmp.exists():  # the swap never started (`final` could not be moved): the copy goes
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def temporary_dir(final: Path) -> Path:
    """Where this process writes the checkpoint `final` before the rename that makes it visible."""
    return final.parent / f".tmp-{final.name}-{os.getpid()}"


def seal(folder: Path) -> None:
    """Write the checksums of a checkpoint being written in `folder` and flush its files to disk, ready for the
    rename that makes it visible. Hashed from disk, so the checksums vouch for what a later load will read."""
    checksums = {name: _file_digest(folder / name) for name in (WEIGHTS, STATE, CONFIG)}
    (folder / CHECKSUMS).write_text(json.dumps(checksums, indent=2))
    for path in folder.iterdir():
        fsync_file(path)


def stale_partial_saves(root: Path, writing: Path | None = None) -> list[Path]:
    """The temporary directories of saves (`.tmp-step_N-PID`, `.old-step_N-PID`) that no save is writing: killed
    mid-save, each can hold a whole checkpoint. Those of this process's PID count too, except `writing`: a process
    saves one checkpoint at a time, and a restarted container often reuses the PID of the one killed (1 under
    docker), which would keep its leftovers forever."""
    found = (PARTIAL_NAME.fullmatch(p.name) for p in root.glob(".*-step_*-*"))
    return sorted(root / m[0] for m in found if m and root / m[0] != writing and writer_gone(int(m["pid"])))


def writer_gone(pid: int) -> bool:
    """Whether the process `pid` named in a partial save's folder can no longer be writing it."""
    return pid == os.getpid() or not process_alive(pid)


def checkpoints_to_remove(existing: list[Path], step: int, keep: int) -> tuple[list[Path], list[Path]]:
    """(abandoned, expired) among the `existing` checkpoints (highest step first) once the one of `step` is saved:
    those numbered above `step`, then those below it beyond the `keep` - 1 newest."""
    abandoned = [p for p in existing if checkpoint_step(p) > step]
    older = [p for p in existing if checkpoint_step(p) < step]
    return abandoned, older[keep - 1:]


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete directory `tmp` to `final`; an existing `final` is swapped out first and then deleted, so
    `final` is never half-written. Between the two renames it is missing: a process killed there leaves it as
    `.old-` and `.tmp-` folders, which restore_swapped puts back."""
    if final.exists():
        stale = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(stale)
        tmp.rename(final)
        # the swap is done: an old copy that cannot be removed now (read-only files) is removed by a later start's
        # cleanup of partial saves, once this process is gone
        shutil.rmtree(stale, ignore_errors=True)
    else:
        tmp.rename(final)


def _file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def verify(ckpt: Path) -> None:
    """Raise CheckpointError naming the first file of `ckpt` that is missing or differs from its recorded checksum."""
    try:
        recorded = json.loads((ckpt / CHECKSUMS).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt} has no {CHECKSUMS}: it is incomplete or was not written by attnlab") from None
    except (OSError, ValueError):
        raise CheckpointError(f"{ckpt / CHECKSUMS} is damaged (not JSON); use another checkpoint of the run") from None
    for name in (WEIGHTS, STATE, CONFIG):
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; use another checkpoint of the run")
        expected = recorded.get(name) if isinstance(recorded, dict) else None
        if not isinstance(expected, dict) or _file_digest(path) != expected:
            raise CheckpointError(
                f"{path} fails its checksum (damaged or truncated: {path.stat().st_size:,} bytes); "
                "use another checkpoint of the run"
            )


def step_dirs(root: Path) -> list[Path]:
    """The checkpoint directories (step_ and digits) under `root`, highest step first."""
    found = (p for p in root.glob("step_*") if STEP_NAME.fullmatch(p.name) and p.is_dir())
    return sorted(found, key=checkpoint_step, reverse=True)


def resolution_order(root: Path, on_skip: Callable[[str], None] = _warn) -> list[Path]:
    """The checkpoints of a checkpoints/ folder in the order a run directory resolves them: the one `latest` names,
    then those below it, highest first (those above it belong to an abandoned branch). Without a usable `latest`
    (`on_skip` hears why, when it names no checkpoint), all of them, highest first."""
    existing = step_dirs(root)
    try:
        name = (root / LATEST).read_text().strip()
    except FileNotFoundError:
        return existing
    except (OSError, ValueError):
        on_skip(f"{root / LATEST} cannot be read; taking the highest-numbered checkpoint that verifies")
        return existing
    named = root / name
    if named not in existing:
        on_skip(f"{root / LATEST} names {name!r}, which is not a checkpoint there; "
                "taking the highest-numbered checkpoint that verifies")
        return existing
    return [named, *(p for p in existing if checkpoint_step(p) < checkpoint_step(named))]


def read_latest(root: Path) -> str | None:
    """The name `latest` in the checkpoints/ folder `root` holds; None when it is absent or unreadable."""
    try:
        return (root / LATEST).read_text().strip()
    except (OSError, ValueError):
        return None


def swapped_copies(root: Path, name: str) -> list[Path]:
    """The folders a save of checkpoint `name` killed mid-swap left in `root`, by processes that are gone: the new
    copy (`.tmp-`) before the one it was replacing (`.old-`)."""
    copies = []
    for prefix in (".tmp", ".old"):
        for path in sorted(root.glob(f"{prefix}-{name}-*")):
            match = PARTIAL_NAME.fullmatch(path.name)
            if match and path.is_dir() and writer_gone(int(match["pid"])):
                copies.append(path)
    return copies


def restore_swapped(root: Path, say: Callable[[str], None] = _warn) -> Path | None:
    """Put back the checkpoint `latest` names when it is missing because a save re-writing it was killed between
    replace_dir's two renames: the first of its swapped_copies that verifies is renamed into place (`say` hears of
    it). The restored path, or None when there was nothing to restore."""
    name = lost_latest(root)
    if name is None:
        return None
    for copy in swapped_copies(root, name):
        try:
            verify(copy)
            copy.rename(root / name)
        except CheckpointError:
            continue
        except OSError:  # vanished or refused: another process restored one first, or a read-only folder
            if (root / name).is_dir():
                return None
            continue
        say(f"restored {name} from {copy.name}, left by a save that was killed while it replaced {name}")
        return root / name
    return None


def lost_latest(root: Path) -> str | None:
    """The checkpoint name `latest` in the checkpoints/ folder `root` holds when no directory of that name exists
    there (removed by hand, or swapped out by a killed save); None otherwise."""
    name = read_latest(root)
    return name if name and STEP_NAME.fullmatch(name) and not (root / name).exists() else None


def transformers_folder_note(path: Path) -> str | None:
    """Why `path`, given where an attnlab checkpoint is expected, is not one when it is a transformers model folder
    (its config.json names a model_type, which a checkpoint's run config never does): what to do instead. None for
    any other folder, which the checkpoint loader then judges."""
    try:
        model_type = json.loads((path / CONFIG).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):  # absent, unreadable, not JSON, or JSON but not an object
        return None
    if model_type == HF_MODEL_TYPE:
        return (f"{path} is a transformers export, not a checkpoint; load it with AutoModelForCausalLM.from_pretrained"
                f"({str(path)!r}, trust_remote_code=True), or pass the run directory or checkpoint it came from")
    if isinstance(model_type, str):
        return (f"{path} is a transformers model folder (model_type {model_type!r}), not an attnlab checkpoint; pass "
                "a run directory or a checkpoint directory (scripts/import_gpt2.py makes a run of a GPT-2 folder)")
    return None


def find_checkpoint(path: str | Path, on_skip: Callable[[str], None] = _warn) -> Path:
    """The verified checkpoint directory meant by `path`: a checkpoint itself (which must verify), or a run directory
    or its checkpoints/ folder (the first of `resolution_order` that verifies, after restore_swapped; `on_skip` hears
    of each damaged one and of a restored one)."""
    if not str(path).strip():  # Path("") is the working directory: an unset shell variable would search there
        raise CheckpointError("the checkpoint path is empty (pass a run directory or a checkpoint dir)")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist (pass a run directory or a checkpoint dir)")
    if not path.is_dir():  # a file of a checkpoint or a run (model.safetensors, config.yaml): name the folder instead
        raise CheckpointError(f"checkpoint path {path} is a file; pass {folder_to_pass(path.parent)}")
    # verify would call it incomplete; a run trained into such a folder has its checkpoints/ there, and resumes
    if not (path / CHECKPOINTS).is_dir() and (note := transformers_folder_note(path)):
        raise CheckpointError(note)
    if is_checkpoint_dir(path):
        verify(path)
        return path
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    restore_swapped(root, on_skip)
    candidates = resolution_order(root, on_skip)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {path} (expected {WEIGHTS} or {CHECKPOINTS}/step_N)")
    for ckpt in candidates:
        try:
            verify(ckpt)
            return ckpt
        except CheckpointError as exc:
            on_skip(f"skipping {ckpt.name}: {exc}")
    raise CheckpointError(f"no checkpoint in {root} verifies ({len(candidates)} damaged): nothing can be loaded from "
                          "it; restore a checkpoint, or train the run again")


def folder_to_pass(folder: Path) -> str:
    """What to pass instead of a file in `folder`: that checkpoint directory (or its run), that run directory, or
    a run or checkpoint directory in general."""
    if is_checkpoint_dir(folder):
        run = folder.parent.parent if folder.parent.name == CHECKPOINTS else None
        return f"the checkpoint directory {folder}" + (f" or its run directory {run}" if run else "")
    if (folder / CHECKPOINTS).is_dir() or folder.name == CHECKPOINTS:
        return f"the run directory {folder.parent if folder.name == CHECKPOINTS else folder}"
    return "a run directory or a checkpoint directory"


def is_checkpoint_dir(folder: Path) -> bool:
    """Whether `folder` is meant as one checkpoint (it holds a checkpoint's weights or checksums, complete or not),
    rather than as a run directory or a checkpoints/ folder. A folder holding checkpoints/ is a run directory
    whatever else it holds (a run trained or imported into a transformers folder has its model.safetensors too)."""
    if (folder / CHECKPOINTS).is_dir():
        return False
    return (folder / WEIGHTS).is_file() or (folder / CHECKSUMS).is_file()


def latest_checkpoint(run_dir: str | Path, say: Callable[[str], None] = _warn) -> Path | None:
    """The checkpoint directory a run stands at (verified or not; see resolution_order), or None if it has none.
    A checkpoint a killed save left swapped out is put back first (restore_swapped; `say` hears of it)."""
    restore_swapped(Path(run_dir) / CHECKPOINTS, say)
    found = resolution_order(Path(run_dir) / CHECKPOINTS, on_skip=lambda message: None)
    return found[0] if found else None


def in_run(path: str | Path, run_dir: str | Path) -> bool:
    """Whether `path` is the run directory `run_dir` itself or lies in its checkpoints/ folder."""
    path, run = Path(path).resolve(), Path(run_dir).resolve()
    # resolved too: checkpoints/ may be a link to another disk, where its folders resolve to
    return path == run or path.is_relative_to((run / CHECKPOINTS).resolve())


def checkpoint_step(ckpt: Path) -> int:
    """The optimiser step a checkpoint directory holds, from its name (step_000100 -> 100)."""
    match = STEP_NAME.fullmatch(Path(ckpt).name)
    if match is None:
        raise CheckpointError(f"{ckpt} is not named step_N, so its step is unknown; keep the name it was saved with")
    return int(match.group(1))


def read_config(ckpt: Path) -> dict[str, Any]:
    """The resolved run config a (verified) checkpoint was saved with, as a dict."""
    try:
        config = json.loads((ckpt / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt / CONFIG} cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{ckpt / CONFIG} does not hold a run config")
    return config


def load_train_state(ckpt: Path, mmap: bool = False) -> TrainState:
    """The train state of a (verified) checkpoint; with `mmap`, its tensors stay in the file until used. Loaded with
    weights_only: a checksum shows the file is intact, not that its pickle is harmless."""
    try:
        saved = torch.load(ckpt / STATE, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(unsafe_state_message(ckpt / STATE, exc)) from None
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{ckpt / STATE} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{ckpt / STATE} is not an attnlab train state")
    return TrainState.from_dict(saved, ckpt / STATE)


def refused_pickled_object(exc: pickle.UnpicklingError) -> bool:
    """Whether a weights_only load refused a file for a pickled object (rather than for damaged bytes)."""
    return "Unsupported global" in str(exc)


def unsafe_state_message(path: Path, exc: pickle.UnpicklingError) -> str:
    """Why a weights_only load refused the state file `path`, and, for a pickled object (numpy's RNG state as an
    array), the command that converts a trusted one."""
    reason = next((line.split("WeightsUnpickler error: ")[1] for line in str(exc).splitlines()
                   if "WeightsUnpickler error: " in line), str(exc).splitlines()[0] if str(exc) else "")
    if not refused_pickled_object(exc):
        return f"{path} cannot be read (UnpicklingError: {reason.split('. ')[0]})"
    return (f"{path} holds a pickled object a safe load refuses ({reason.split(' was not')[0]}): written by an "
            "older attnlab, or by another program; if you trust it, convert it with "
            f"`python -m training.upgrade_checkpoint {path.parent}`")


def read_kind(ckpt: Path) -> str:
    """Whether a (verified) checkpoint is "full" or "weights_only", without reading its optimiser tensors."""
    return load_train_state(ckpt, mmap=True).kind


def load_weights(ckpt: Path, model: nn.Module) -> None:
    """Load the (verified) checkpoint's weights into `model` (strict: names and shapes must match)."""
    try:
        missing, unexpected = load_model(model, str(ckpt / WEIGHTS), strict=False)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{ckpt / WEIGHTS} is not a readable safetensors file ({exc})") from None
    except RuntimeError as exc:  # a tensor of another shape
        raise CheckpointError(f"{ckpt} does not fit this model: {str(exc).splitlines()[0]}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt} does not fit this model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def load_checkpoint_config(path: str | Path) -> tuple[RunConfig, Path]:
    """The run config the checkpoint meant by `path` (as find_checkpoint) was saved with, and the checkpoint
    directory: what a tool checks before it loads any weights."""
    ckpt = find_checkpoint(path)
    try:
        return config_from_dict(read_config(ckpt)), ckpt
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt / CONFIG} is not a usable run config ({exc})") from None


def checkpoint_model(ckpt: Path, cfg: RunConfig) -> GPT:
    """The model of a (verified) checkpoint and its config, with its weights, in eval mode on the CPU."""
    model = GPT(cfg.model)
    load_weights(ckpt, model)
    return model.eval()


def load_checkpoint_model(path: str | Path) -> tuple[GPT, RunConfig, Path]:
    """The model of the checkpoint meant by `path` (as find_checkpoint), built from the checkpoint's own config,
    with its weights, in eval mode on the CPU; with that config and the checkpoint directory."""
    cfg, ckpt = load_checkpoint_config(path)
    return checkpoint_model(ckpt, cfg), cfg, ckpt
