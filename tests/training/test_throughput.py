"""The meter behind each log line: the window's mean train loss (over steps, and over ranks under torchrun), its
tokens/s and MFU, from the losses, token counts and step times the loop hands it; each read starts a new window."""

from __future__ import annotations

import math

import pytest
import torch

from training import runtime as rt
from training.throughput import Throughput

CPU = rt.Runtime(torch.device("cpu"), torch.float32)


@pytest.fixture
def no_collectives(monkeypatch):
    """One process never talks to other ranks: any all_reduce fails the test."""
    def all_reduce(*args, **kwargs):
        raise AssertionError("all_reduce on a single process")
    monkeypatch.setattr("training.throughput.dist.all_reduce", all_reduce)


def test_a_window_reports_its_mean_loss_tokens_per_second_and_mfu(no_collectives):
    meter = Throughput(flops_per_token=1000.0, peak_flops=1e6)
    for loss, seconds in [(2.0, 0.5), (3.0, 0.25), (4.0, 0.25)]:
        meter.add(torch.tensor(loss), tokens=100, seconds=seconds)
    window = meter.read(CPU)
    assert window == {"train_loss": 3.0, "tokens_per_s": 300.0, "mfu": 0.3}  # 1000 FLOP/token * 300 tokens/s / 1e6


def test_losses_stay_on_the_device_until_the_read():
    """No host sync per step: the running sum is a tensor, not a number the step had to wait for."""
    meter = Throughput(1.0, 1.0)
    meter.add(torch.tensor(1.5), tokens=8, seconds=1.0)
    meter.add(torch.tensor(2.5), tokens=8, seconds=1.0)
    assert isinstance(meter.loss_sum, torch.Tensor) and meter.loss_sum.item() == 4.0
    assert (meter.steps, meter.tokens, meter.seconds) == (2, 16, 2.0)


def test_each_read_starts_a_new_window_as_the_loop_does_at_log_interval(no_collectives):
    """train.py reads the meter every train.log_interval steps: each line covers only the steps since the last."""
    meter, log_interval, windows = Throughput(flops_per_token=6.0, peak_flops=1200.0), 4, []
    for step in range(1, 9):
        meter.add(torch.tensor(float(step)), tokens=50, seconds=0.1 * step)
        if step % log_interval == 0:
            windows.append(meter.read(CPU))
    assert [w["train_loss"] for w in windows] == [2.5, 6.5]  # mean of steps 1-4, then of 5-8
    assert windows[0]["tokens_per_s"] == pytest.approx(200 / 1.0)  # 4 steps of 50 tokens in 0.1+0.2+0.3+0.4 s
    assert windows[1]["tokens_per_s"] == pytest.approx(200 / 2.6)
    assert windows[0]["mfu"] == pytest.approx(6.0 * 200 / 1200.0)
    assert (meter.steps, meter.tokens, meter.seconds, meter.loss_sum) == (0, 0, 0.0, 0.0)


def test_a_rank_without_a_peak_reports_mfu_as_nan(no_collectives):
    """train.py passes nan as the peak on ranks other than the main one, and peak_flops is nan on unknown GPUs."""
    meter = Throughput(flops_per_token=1000.0, peak_flops=float("nan"))
    meter.add(torch.tensor(1.0), tokens=10, seconds=1.0)
    window = meter.read(CPU)
    assert math.isnan(window["mfu"]) and window["tokens_per_s"] == 10.0


def test_the_loss_is_averaged_over_ranks_under_torchrun(monkeypatch):
    """With several processes the window's loss is all-reduced (summed) and divided by the number of ranks; the
    speed is the one the loop handed in (it counts every rank's tokens)."""
    summed = []

    def all_reduce(tensor):  # the other rank's window mean is 1.0
        summed.append(tensor.item())
        tensor += 1.0

    monkeypatch.setattr("training.throughput.dist.all_reduce", all_reduce)
    meter = Throughput(flops_per_token=1.0, peak_flops=1.0)
    meter.add(torch.tensor(2.0), tokens=10, seconds=1.0)
    meter.add(torch.tensor(4.0), tokens=10, seconds=1.0)
    window = meter.read(rt.Runtime(torch.device("cpu"), torch.float32, rank=0, world_size=2))
    assert summed == [3.0]  # this rank's mean goes in
    assert window["train_loss"] == 2.0  # (3 + 1) / 2
    assert window["tokens_per_s"] == 10.0


@pytest.mark.parametrize("world_size", [1, 2, 8])
def test_mfu_is_per_device_while_tokens_per_second_is_the_whole_jobs(monkeypatch, world_size):
    """train.py hands every step's tokens over all ranks (train.grad_accum is the total) and one device's peak: 8
    devices each at 40% of their peak push 8 x 0.4 x peak FLOP/s through the job, and that is 40% MFU, not 320%."""
    monkeypatch.setattr("training.throughput.dist.all_reduce", lambda tensor: tensor.mul_(world_size))
    peak, flops_per_token = 1e6, 1000.0
    job_tokens_per_s = world_size * 0.4 * peak / flops_per_token
    meter = Throughput(flops_per_token=flops_per_token, peak_flops=peak)
    meter.add(torch.tensor(1.0), tokens=int(job_tokens_per_s), seconds=1.0)
    window = meter.read(rt.Runtime(torch.device("cpu"), torch.float32, rank=0, world_size=world_size))
    assert window["tokens_per_s"] == job_tokens_per_s
    assert window["mfu"] == pytest.approx(0.4)


def test_a_window_saved_by_as_many_ranks_goes_on_per_rank_and_by_another_number_from_their_mean():
    """One saved window per rank: resumed on the same number of processes each rank takes its own (bit for bit);
    on another number each takes the mean loss sum, so the all-reduced mean over the new ranks continues the old."""
    saved = [{"loss_sum": torch.tensor(6.0), "steps": 2, "tokens": 40, "seconds": 1.0},
             {"loss_sum": torch.tensor(8.0), "steps": 2, "tokens": 40, "seconds": 1.0}]
    assert Throughput.saved_window(saved, 1, 2) is saved[1]
    assert Throughput.saved_window([], 0, 1) is None
    for world_size in (1, 3):
        window = Throughput.saved_window(saved, 0, world_size)
        assert window["loss_sum"].item() == 7.0 and (window["steps"], window["tokens"]) == (2, 40)
    meter = Throughput(1.0, 1.0)
    meter.continue_window(Throughput.saved_window(saved, 0, 1), torch.device("cpu"))
    meter.add(torch.tensor(5.0), tokens=20, seconds=0.5)  # the third step, on one process
    assert meter.read(CPU)["train_loss"] == 4.0  # (the two steps' loss, summed and averaged over ranks: 7, + 5) / 3


def test_a_read_off_the_log_grid_leaves_the_window_going_on(no_collectives):
    meter = Throughput(1.0, 1.0)
    meter.add(torch.tensor(2.0), tokens=10, seconds=1.0)
    assert meter.read(CPU, new_window=False)["train_loss"] == 2.0
    meter.add(torch.tensor(4.0), tokens=10, seconds=1.0)
    assert meter.read(CPU)["train_loss"] == 3.0 and meter.steps == 0
