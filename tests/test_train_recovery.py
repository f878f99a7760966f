"""train.py when a run leaves its straight line: resumed from an earlier checkpoint, diverged, interrupted, or given
`--resume` followed by an override."""

from __future__ import annotations

import signal

import pytest

import train
from tests.test_train import metrics, run_cli, tiny_args


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
