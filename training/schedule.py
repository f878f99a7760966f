"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (Loshchilov & Hutter, arXiv 1608.03983)."""

from __future__ import annotations

import math


def learning_rate(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """lr(step) = lr * (step + 1) / warmup for step < warmup; then
    min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2 with progress = (step - warmup) / (decay - warmup);
    min_lr from decay_steps on, also where the schedule ended within its warm-up (a short run extended with
    optim.on_extend=continue: its rate does not resume warming up past the end)."""
    if step >= decay_steps:
        return min_lr
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
