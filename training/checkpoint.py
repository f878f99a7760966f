"""Checkpoints: a directory per save, written under a temporary name and renamed, so a crash mid-save never
destroys the last good checkpoint.

    <run>/checkpoints/step_000100/model.safetensors   weights (the tied embedding stored once)
                                 /state.pt            optimiser, step, RNG states, data position, wandb id
                                 /config.json         the fully resolved run config
    <run>/checkpoints/latest                          name of the newest complete checkpoint
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from data.files import fsync_file, write_text_atomic
from model.gpt import GPT
from training.config import RunConfig, config_from_dict
from training.dataclass_parsing import ConfigError

CHECKPOINTS = "checkpoints"
LATEST = "latest"


class CheckpointError(FileNotFoundError):
    """A checkpoint path that does not hold a usable checkpoint."""


def save_checkpoint(
    run_dir: str | Path, step: int, model: nn.Module, state: dict[str, Any], config: dict[str, Any], keep: int
) -> Path:
    """Write the checkpoint of `step` atomically, point `latest` at it, and keep only the newest `keep`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for path in tmp.iterdir():
        fsync_file(path)
    replace_dir(tmp, final)  # re-saving the same step (e.g. after a resume) swaps, never leaves a gap
    write_text_atomic(root / LATEST, final.name)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
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


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory meant by `path`: a checkpoint itself, a run directory or its checkpoints/ folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist (pass a run directory or a checkpoint dir)")
    if (path / "model.safetensors").is_file():
        return path
    for root in (path / CHECKPOINTS, path):
        latest = root / LATEST
        if latest.is_file():
            found = root / latest.read_text().strip()
            if (found / "model.safetensors").is_file():
                return found
            raise CheckpointError(f"{latest} points at {found.name}, which is missing or incomplete")
    raise CheckpointError(f"no checkpoint in {path} (expected model.safetensors or {CHECKPOINTS}/{LATEST})")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run directory, or None if it has none yet."""
    try:
        return find_checkpoint(Path(run_dir) / CHECKPOINTS)
    except CheckpointError:
        return None


def checkpoint_step(ckpt: Path) -> int:
    """The optimiser step a checkpoint directory holds, from its name (step_000100 -> 100)."""
    return int(Path(ckpt).name.removeprefix("step_"))


def read_config(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "config.json").read_text())


def load_weights(ckpt: Path, model: nn.Module) -> None:
    """Load the checkpoint's weights into `model` (strict: names and shapes must match)."""
    missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
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
    except (OSError, json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{ckpt / 'config.json'} is not a usable run config ({exc})") from None
    model = GPT(cfg.model)
    load_weights(ckpt, model)
    return model.eval(), cfg, ckpt


def load_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)


