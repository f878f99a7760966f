"""Checkpoints are atomic, checksummed directories; a damaged one is found before use and a run directory falls back
to its newest checkpoint that verifies."""

import hashlib
import json

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


def test_weights_of_another_shape_are_refused(tmp_path):
    path = save(tmp_path, 1)
    bigger = GPT(ModelConfig(vocab_size=50, n_positions=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_weights(path, bigger)
    wider = GPT(ModelConfig(vocab_size=50, n_positions=16, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_weights(path, wider)
