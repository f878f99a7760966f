"""Checkpoints whose state.pt pickled numpy's RNG state (refused by the weights_only load) are converted, when the
user trusts them, into the safe form; a resume from the converted one restores every stream exactly."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.gpt import GPT
from training import checkpoint as ckpt
from training import upgrade_checkpoint
from training.checkpoint import TrainState
from training.resume import restore_rng


def old_format_checkpoint(run_dir, step):
    """A checkpoint as attnlab wrote it when state.pt held np.random.get_state()'s tuple (an ndarray inside)."""
    model = GPT(ModelConfig(vocab_size=50, n_positions=16, n_layer=1, n_head=2, n_embd=16))
    np.random.seed(step)
    np.random.randn()  # a cached gaussian in the state
    rng = [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}]
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return ckpt.save_checkpoint(run_dir, model, TrainState(step=step, rng=rng), {}, keep=3)


def draws():
    return np.random.randn(), np.random.rand(), random.random(), torch.rand(2).tolist()


def test_an_old_checkpoint_is_refused_with_the_command_then_converted_and_restores_every_stream(tmp_path, capsys):
    path = old_format_checkpoint(tmp_path, 3)
    expected = draws()
    with pytest.raises(ckpt.CheckpointError, match="numpy._core.multiarray._reconstruct") as info:
        ckpt.load_train_state(path)
    assert f"python -m training.upgrade_checkpoint {path}`" in str(info.value)
    assert upgrade_checkpoint.main([str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: upgraded\n"
    ckpt.verify(path)  # checksums rewritten with the file
    draws()
    restore_rng(ckpt.load_train_state(path).rng[0], torch.device("cpu"))
    assert draws() == expected
    assert upgrade_checkpoint.main([str(tmp_path)]) == 0  # a run directory: each checkpoint, once
    assert capsys.readouterr().out == f"{path}: already loads safely\n"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000003"]


def test_every_checkpoint_of_a_run_is_converted_and_a_damaged_one_stops_the_command(tmp_path, capsys):
    first, second = old_format_checkpoint(tmp_path, 1), old_format_checkpoint(tmp_path, 2)
    assert upgrade_checkpoint.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{second}: upgraded\n{first}: upgraded\n"
    (first / ckpt.STATE).write_bytes(b"damaged")
    assert upgrade_checkpoint.main([str(first)]) == 2
    assert "state.pt fails its checksum" in capsys.readouterr().err
    assert upgrade_checkpoint.main([str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'none'} does not exist; pass a checkpoint directory or a "
                                       "run directory\n")
    (tmp_path / "empty").mkdir()
    assert upgrade_checkpoint.main([str(tmp_path / "empty")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_replaced_is_left_as_it_was_in_one_line(tmp_path, capsys, monkeypatch):
    """A folder the swap cannot rename (read-only, immutable): one line, and no copy of the checkpoint left."""
    path = old_format_checkpoint(tmp_path, 3)
    before = (path / ckpt.STATE).read_bytes()
    real_rename = type(path).rename

    def refused(self, target):
        if self == path:
            raise PermissionError(1, "Operation not permitted", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(type(path), "rename", refused)
    assert upgrade_checkpoint.main([str(path)]) == 2
    assert capsys.readouterr().err == (f"error: cannot upgrade the checkpoint ({path}): Operation not permitted; the "
                                       "checkpoint is unchanged; its folder must be readable and writable, with room "
                                       "for a copy of it\n")
    assert (path / ckpt.STATE).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000003"]
