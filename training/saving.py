"""Saving a run's checkpoints during training, after the checks that keep a diverged step out of them.

Steps are checked when their loss reaches the host (at each log line) and again before each save: the mean training
loss of the steps not yet logged, and the weights themselves (the loss is computed before a step's update, so the last
step's update shows only there). A run that diverged stops with one line naming the first step that may have gone
wrong and the checkpoint to restart from; the run's `latest` checkpoint stays the last good one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training import checkpoint as ckpt
from training import runtime as rt
from training.resume import gather_ranks, gather_rng
from training.throughput import Throughput


def steps_text(first: int, last: int) -> str:
    """'steps 3-4', or 'step 4' for one."""
    return f"steps {first}-{last}" if first < last else f"step {last}"


def divergence(what: str, first: int, run_dir: Path) -> FloatingPointError:
    """The one-line error for a run that diverged (`what` went non-finite) from step `first` on: the fix restarts,
    from the run's newest checkpoint before that step where it has one."""
    before = [path for path in ckpt.step_dirs(run_dir / ckpt.CHECKPOINTS) if ckpt.checkpoint_step(path) < first]
    where = f"from {before[0].name} (--resume {before[0]}) or from scratch" if before else "from scratch"
    return FloatingPointError(
        f"{what} (diverged); lower optim.lr (or, in float16, set train.dtype=float32) and restart {where}")


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter is finite (one host sync)."""
    return bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())


class Saver:
    """The checkpoints of one training run. `verified` is the last step known good: the run's start, then the last
    save, whose checks passed; a window of steps carried over from an earlier process may reach back past it."""

    def __init__(self, run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, runtime: rt.Runtime, config: dict[str, Any], keep: int,
                 resumed_here: bool, say: Callable[[str], None], verified: int):
        self.run_dir, self.model, self.optimizer, self.scaler, self.runtime = run_dir, model, optimizer, scaler, runtime
        self.config, self.keep, self.resumed_here, self.say = config, keep, resumed_here, say
        self.verified = verified

    def check_loss(self, loss: float, last: int, steps: int) -> None:
        """Stop the run where `loss`, the mean over the `steps` steps up to step `last`, is not finite; the error names
        the first of them not yet known good."""
        if not math.isfinite(loss):
            first = max(last - steps + 1, self.verified + 1)
            raise divergence(f"the training loss is {loss} over {steps_text(first, last)}", first, self.run_dir)

    def save(self, state: ckpt.TrainState, meter: Throughput) -> None:
        """Check the steps not yet logged and the weights, then checkpoint on the main process; every rank takes part
        (its RNG state and open log window are gathered)."""
        if meter.steps:
            self.check_loss(meter.mean_loss(self.runtime), state.step, meter.steps)
        if not weights_finite(self.model):
            raise divergence(f"the weights hold inf or nan after step {state.step}", state.step, self.run_dir)
        self.verified = state.step
        state.optimizer, state.grad_scaler = self.optimizer.state_dict(), self.scaler.state_dict()
        state.rng = gather_rng(self.runtime)
        state.log_windows = gather_ranks(self.runtime, meter.open_window())
        if self.runtime.is_main:
            path = ckpt.save_checkpoint(self.run_dir, self.model, state, self.config, self.keep, self.say,
                                        resumed_here=self.resumed_here)
            self.say(f"saved {path}")
        rt.barrier(self.runtime)
