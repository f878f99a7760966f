"""The training loss and speed of the steps since the last log line, kept on the device between log lines."""

from __future__ import annotations

import torch
import torch.distributed as dist

from training import runtime as rt


class Throughput:
    """Sums step losses as a device tensor (no host sync per step), tokens and seconds; `read` syncs once.

    `add` takes a step's tokens over all processes (train.grad_accum is the total), so tokens/s is the whole job's,
    and `peak_flops` is one device's: MFU divides the job's FLOP/s by the peak of all its devices.
    """

    def __init__(self, flops_per_token: float, peak_flops: float):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self._reset()

    def _reset(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0
        self.steps, self.tokens, self.seconds = 0, 0, 0.0

    def add(self, step_loss: torch.Tensor, tokens: int, seconds: float) -> None:
        self.loss_sum = self.loss_sum + step_loss
        self.steps, self.tokens, self.seconds = self.steps + 1, self.tokens + tokens, self.seconds + seconds

    def open_window(self) -> dict:
        """The window so far, for a checkpoint (plain values and a CPU tensor: what weights_only loads)."""
        return {"loss_sum": torch.as_tensor(self.loss_sum, dtype=torch.float32).cpu(), "steps": self.steps,
                "tokens": self.tokens, "seconds": self.seconds}

    def continue_window(self, window: dict, device: torch.device) -> None:
        """Go on with a window `open_window` saved: the sums continue exactly as if the run had not stopped."""
        self.loss_sum = window["loss_sum"].to(device) if window["steps"] else 0.0
        self.steps, self.tokens, self.seconds = window["steps"], window["tokens"], window["seconds"]

    @staticmethod
    def saved_window(windows: list[dict], rank: int, world_size: int) -> dict | None:
        """This rank's part of the window a checkpoint saved (one per rank, `open_window`), or None for none. On as
        many processes as saved it, each rank takes its own, so the sums go on bit for bit; on another number, each
        takes the ranks' mean loss sum (steps, tokens and seconds are the same on every rank), so the mean over the
        new ranks still starts from the mean over the old ones."""
        if not windows:
            return None
        if len(windows) == world_size:
            return windows[rank]
        return {**windows[0], "loss_sum": torch.stack([w["loss_sum"] for w in windows]).mean()}

    def mean_loss(self, runtime: rt.Runtime) -> float:
        """Mean train loss of the window so far, over ranks too (every rank must call it); the window goes on."""
        loss = torch.as_tensor(self.loss_sum, dtype=torch.float32, device=runtime.device) / self.steps
        if runtime.distributed:
            dist.all_reduce(loss)
            loss /= runtime.world_size
        return loss.item()

    def read(self, runtime: rt.Runtime, *, new_window: bool = True) -> dict[str, float]:
        """Mean train loss (over ranks too), tokens/s (all ranks) and MFU (per device) of the window; starts a new
        window unless `new_window` is False (the window goes on)."""
        tokens_per_s = self.tokens / self.seconds
        window = {"train_loss": self.mean_loss(runtime), "tokens_per_s": tokens_per_s,
                  "mfu": self.flops_per_token * tokens_per_s / (self.peak_flops * runtime.world_size)}
        if new_window:
            self._reset()
        return window
