"""Convert trusted checkpoints whose state.pt a safe load refuses (one that holds numpy's RNG state as a pickled
array) into the form train.py reads with torch.load(weights_only=True).

    python -m training.upgrade_checkpoint runs/shakespeare-cpu               # every checkpoint of a run
    python -m training.upgrade_checkpoint runs/shakespeare-cpu/checkpoints/step_000250

Reading the old file runs its pickle, so convert only checkpoints you trust. Each is rewritten as a save is (a
verified copy, checksummed, swapped in): a crash while a copy is written leaves the checkpoint as it was; one
between the swap's two renames leaves the step as its `.old-`/`.tmp-` folders, which a resume puts back for the step
`checkpoints/latest` names.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
from pathlib import Path

import torch

from training import checkpoint as ckpt
from training.resume import plain_numpy_state


def checkpoints_in(path: Path) -> list[Path]:
    """The checkpoint directories `path` means: itself, or those of a run directory or its checkpoints/ folder."""
    if not path.is_dir():
        raise ckpt.CheckpointError(f"{path} {'is a file' if path.exists() else 'does not exist'}; pass a checkpoint "
                                   "directory or a run directory")
    if ckpt.is_checkpoint_dir(path):
        return [path]
    found = ckpt.step_dirs(path / ckpt.CHECKPOINTS if (path / ckpt.CHECKPOINTS).is_dir() else path)
    if not found:
        raise ckpt.CheckpointError(f"no checkpoint in {path} (expected {ckpt.WEIGHTS} or {ckpt.CHECKPOINTS}/step_N)")
    return found


def needs_upgrade(folder: Path) -> bool:
    """Whether a safe load refuses the state file of the checkpoint `folder` for a pickled object."""
    try:
        torch.load(folder / ckpt.STATE, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        return ckpt.refused_pickled_object(exc)
    return False


def upgraded_state(folder: Path) -> dict:
    """The state dict of the trusted checkpoint `folder`, its numpy RNG states as plain values."""
    saved = torch.load(folder / ckpt.STATE, map_location="cpu", weights_only=False)  # trusted: the user said so
    if not isinstance(saved, dict):
        raise ckpt.CheckpointError(f"{folder / ckpt.STATE} is not an attnlab train state")
    for stream in saved.get("rng") or []:
        stream["numpy"] = plain_numpy_state(stream["numpy"])
    return saved


def upgrade(folder: Path) -> bool:
    """Rewrite the state file of the checkpoint `folder` (which must verify) in the safe form; False when it already
    is. The result must load with weights_only before it replaces the original."""
    ckpt.verify(folder)
    if not needs_upgrade(folder):
        return False
    saved = upgraded_state(folder)
    ckpt.write_sealed(folder, lambda copy: write_upgraded(copy, folder, saved))
    return True


def write_upgraded(copy: Path, folder: Path, saved: dict) -> None:
    """Copy the checkpoint `folder` into the empty folder `copy` with `saved` as its state file, which must load
    with weights_only."""
    shutil.copytree(folder, copy, dirs_exist_ok=True)
    torch.save(saved, copy / ckpt.STATE)
    ckpt.load_train_state(copy)  # raises if anything else in it still needs its pickle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.upgrade_checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="checkpoint directories or run directories")
    args = parser.parse_args(argv)
    try:
        for folder in (found for path in args.paths for found in checkpoints_in(path)):
            print(f"{folder}: {'upgraded' if upgrade(folder) else 'already loads safely'}")
    except ckpt.CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only or full folder: the checkpoint stands as it was (write_sealed swaps whole)
        named = f" ({exc.filename})" if exc.filename else ""
        print(f"error: cannot upgrade the checkpoint{named}: {exc.strerror or exc}; the checkpoint is unchanged; "
              "its folder must be readable and writable, with room for a copy of it", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
