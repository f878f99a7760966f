"""Checkpoints: a directory per save, written under a temporary name, checksummed, and renamed, so a crash mid-save
never destroys the last good checkpoint and a damaged file is found before it is used.

    <run>/checkpoints/step_000100/model.safetensors   weights (the tied embedding stored once)
                                 /state.pt            the TrainState: optimiser, schedule, RNG states, data position
                                 /config.json         the fully resolved run config
                                 /checksums.json      sha256 and size of the three files above
    <run>/checkpoints/latest                          name of the newest checkpoint written

Every load verifies the checksums first. A run directory resolves to its newest checkpoint that verifies (damaged
newer ones are reported and skipped); a checkpoint directory named explicitly must verify or the load stops.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
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

from fileio.atomic import fsync_file, write_text_atomic
from model.gpt import GPT
from training.config import RunConfig, config_from_dict
from typedconfig.parsing import ConfigError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS, STATE, CONFIG, CHECKSUMS = "model.safetensors", "state.pt", "config.json", "checksums.json"


class CheckpointError(FileNotFoundError):
    """A checkpoint path that does not hold a usable checkpoint."""


@dataclass
class TrainState:
    """Everything besides the weights and the config that a run needs to continue exactly where it stopped.

    A `weights_only` state (scripts/import_gpt2.py) starts a new run from the weights: fresh optimiser, schedule and
    data order. The data position is implied: the loader's micro-batch `i` is a pure function of (seed, i), and a
    run at `step` has consumed micro-batches 0 .. step * grad_accum - 1.
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
    source: str | None = None  # where the weights of a weights-only state came from

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
                    keep: int) -> Path:
    """Write the checkpoint of `state.step` atomically, point `latest` at it, and keep only the newest `keep`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{state.step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / WEIGHTS))
    torch.save(state.to_dict(), tmp / STATE)
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    # hashed from disk, so the checksum vouches for what a later load will read
    checksums = {name: _file_digest(tmp / name) for name in (WEIGHTS, STATE, CONFIG)}
    (tmp / CHECKSUMS).write_text(json.dumps(checksums, indent=2))
    for path in tmp.iterdir():
        fsync_file(path)
    replace_dir(tmp, final)  # re-saving the same step (e.g. after a resume) swaps, never leaves a gap
    write_text_atomic(root / LATEST, final.name)
    for old in step_dirs(root)[keep:]:
        shutil.rmtree(old)
    return final


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete directory `tmp` to `final`; an existing `final` is swapped out first and then deleted, so
    `final` is at every moment either the old or the new directory, never missing or half-written."""
    if final.exists():
        stale = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(stale)
        tmp.rename(final)
        shutil.rmtree(stale)
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
    """The step_N directories under `root`, newest first."""
    return sorted((p for p in root.glob("step_*") if p.is_dir()), key=checkpoint_step, reverse=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def find_checkpoint(path: str | Path, on_skip: Callable[[str], None] = _warn) -> Path:
    """The verified checkpoint directory meant by `path`: a checkpoint itself (which must verify), or a run directory
    or its checkpoints/ folder (its newest checkpoint that verifies; `on_skip` hears of each damaged newer one)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist (pass a run directory or a checkpoint dir)")
    if (path / WEIGHTS).is_file() or (path / CHECKSUMS).is_file():
        verify(path)
        return path
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    candidates = step_dirs(root)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {path} (expected {WEIGHTS} or {CHECKPOINTS}/step_N)")
    for ckpt in candidates:
        try:
            verify(ckpt)
            return ckpt
        except CheckpointError as exc:
            on_skip(f"skipping {ckpt.name}: {exc}")
    raise CheckpointError(f"no checkpoint in {root} verifies ({len(candidates)} damaged); the run cannot continue")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint directory of a run (verified or not), or None if it has none yet."""
    found = step_dirs(Path(run_dir) / CHECKPOINTS)
    return found[0] if found else None


def checkpoint_step(ckpt: Path) -> int:
    """The optimiser step a checkpoint directory holds, from its name (step_000100 -> 100)."""
    return int(Path(ckpt).name.removeprefix("step_"))


def read_config(ckpt: Path) -> dict[str, Any]:
    """The resolved run config a (verified) checkpoint was saved with, as a dict."""
    try:
        config = json.loads((ckpt / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt / CONFIG} cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{ckpt / CONFIG} does not hold a run config")
    return config


def load_train_state(ckpt: Path) -> TrainState:
    """The train state of a (verified) checkpoint."""
    try:
        saved = torch.load(ckpt / STATE, map_location="cpu", weights_only=False)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{ckpt / STATE} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{ckpt / STATE} is not an attnlab train state")
    return TrainState.from_dict(saved, ckpt / STATE)


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


def load_checkpoint_model(path: str | Path) -> tuple[GPT, RunConfig, Path]:
    """The model of the checkpoint meant by `path` (as find_checkpoint), built from the checkpoint's own config,
    with its weights, in eval mode on the CPU; with that config and the checkpoint directory."""
    ckpt = find_checkpoint(path)
    try:
        cfg = config_from_dict(read_config(ckpt))
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt / CONFIG} is not a usable run config ({exc})") from None
    model = GPT(cfg.model)
    load_weights(ckpt, model)
    return model.eval(), cfg, ckpt
