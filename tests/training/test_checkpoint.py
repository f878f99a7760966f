"""Checkpoints are atomic directories; `latest` only ever points at a complete one."""

import pytest
import torch

from model.config import ModelConfig
from model.gpt import GPT
from training import checkpoint as ckpt


def small_model(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=50, n_positions=16, n_layer=1, n_head=2, n_embd=16))


def test_save_then_load_restores_weights_state_and_config(tmp_path):
    model = small_model(0)
    path = ckpt.save_checkpoint(tmp_path, 5, model, {"step": 5}, {"model": {"n_layer": 1}}, keep=2)
    assert path.name == "step_000005"
    assert ckpt.find_checkpoint(tmp_path) == path  # a run directory resolves to its latest checkpoint
    other = small_model(1)
    ckpt.load_weights(path, other)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other.lm_head.weight.data_ptr() == other.transformer.wte.weight.data_ptr()  # still tied
    assert ckpt.load_state(path) == {"step": 5}
    assert ckpt.read_config(path) == {"model": {"n_layer": 1}}


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model = small_model()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model, {}, {}, keep=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_000003", "step_000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000004"


def test_a_crash_mid_save_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    good = ckpt.save_checkpoint(tmp_path, 1, model, {"step": 1}, {}, keep=3)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, model, {"step": 2}, {}, keep=3)
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert ckpt.load_state(good) == {"step": 1}
    assert not (tmp_path / "checkpoints" / "step_000002").exists()


def test_resaving_a_step_replaces_it(tmp_path):
    model = small_model()
    ckpt.save_checkpoint(tmp_path, 1, model, {"v": 1}, {}, keep=2)
    path = ckpt.save_checkpoint(tmp_path, 1, model, {"v": 2}, {}, keep=2)
    assert ckpt.load_state(path) == {"v": 2}


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.find_checkpoint(tmp_path / "missing")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint in"):
        ckpt.find_checkpoint(tmp_path)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_weights_of_another_shape_are_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, small_model(), {}, {}, keep=1)
    bigger = GPT(ModelConfig(vocab_size=50, n_positions=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_weights(path, bigger)
