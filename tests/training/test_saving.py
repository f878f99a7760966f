"""training/saving.py: the checks before a save, and the error a diverged run stops with."""

import pytest
import torch

from training import checkpoint as ckpt
from training import runtime as rt
from training.saving import Saver, divergence, steps_text, weights_finite
from training.throughput import Throughput


def test_weights_with_inf_or_nan_are_not_finite():
    model = torch.nn.Linear(3, 2)
    assert weights_finite(model)
    with torch.no_grad():
        model.bias[1] = float("nan")
    assert not weights_finite(model)


def test_steps_text_names_one_step_or_a_range():
    assert steps_text(4, 4) == "step 4"
    assert steps_text(3, 4) == "steps 3-4"


def test_divergence_offers_the_newest_checkpoint_before_the_first_bad_step(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / ckpt.CHECKPOINTS / f"step_{step:06d}").mkdir(parents=True)
    message = str(divergence("the loss is nan", 5, tmp_path))
    assert message.endswith(f"restart from step_000004 (--resume {tmp_path / ckpt.CHECKPOINTS / 'step_000004'}) "
                            "or from scratch")
    assert str(divergence("the loss is nan", 2, tmp_path)).endswith("restart from scratch")


def saver(tmp_path, model, verified: int) -> Saver:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    runtime = rt.start("cpu", "float32")
    return Saver(tmp_path, model, optimizer, scaler, runtime, {}, 1, False, lambda message: None, verified=verified)


def test_a_non_finite_loss_names_the_first_step_after_the_last_known_good_one(tmp_path):
    keeper = saver(tmp_path, torch.nn.Linear(2, 2), verified=5)
    keeper.check_loss(1.5, last=8, steps=4)  # finite: nothing happens
    with pytest.raises(FloatingPointError, match="over steps 6-8 "):  # steps 5-8 logged together; 5 was saved good
        keeper.check_loss(float("nan"), last=8, steps=4)
    with pytest.raises(FloatingPointError, match="over step 8 "):
        keeper.check_loss(float("inf"), last=8, steps=1)


def test_a_save_refuses_a_diverged_window_or_weights_and_writes_nothing(tmp_path):
    model = torch.nn.Linear(2, 2)
    keeper = saver(tmp_path, model, verified=0)
    state = ckpt.TrainState(step=3)
    meter = Throughput(1.0, 1.0)
    meter.add(torch.tensor(float("nan")), tokens=8, seconds=0.1)
    with pytest.raises(FloatingPointError, match="the training loss is nan over step 3 "):
        keeper.save(state, meter)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="the weights hold inf or nan after step 3 "):
        keeper.save(state, Throughput(1.0, 1.0))
    assert keeper.verified == 0 and not (tmp_path / ckpt.CHECKPOINTS).exists()


def test_a_good_save_moves_the_last_known_good_step_and_keeps_the_open_window(tmp_path):
    keeper = saver(tmp_path, torch.nn.Linear(2, 2), verified=0)
    state = ckpt.TrainState(step=3)
    meter = Throughput(1.0, 1.0)
    meter.add(torch.tensor(2.0), tokens=8, seconds=0.1)
    keeper.save(state, meter)
    assert keeper.verified == 3
    assert ckpt.checkpoint_step(ckpt.latest_checkpoint(tmp_path)) == 3
    assert [window["steps"] for window in state.log_windows] == [1]  # the one rank's open window
    with pytest.raises(FloatingPointError, match="over steps 4-5 "):  # a window from step 2 on: 2-3 were saved good
        keeper.check_loss(float("nan"), last=5, steps=4)
