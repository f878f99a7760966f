"""Run directories as train.py leaves them (config.yaml + metrics.jsonl), written without training, and the command
lines of scripts/ called in-process."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from training.config import config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
STARTED = 1796083200.0  # 2026-12-01 00:00 UTC: when every fake run starts training


def write_run(path: Path, *overrides: str, losses=(6.0, 5.0), fingerprint="f" * 16, seconds=10.0,
              finished=True, start: dict | None = None) -> Path:
    """A run directory of configs/tiny.yaml with `overrides`, evaluated at evenly spaced steps with `losses`, the
    last at train.max_steps (or at half of it when not `finished`), taking `seconds` of training in all; `start`:
    the fields of the start record train.py writes first (none when not given, as in runs that predate it)."""
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"train.out_dir={path}", *overrides])
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    steps = cfg.train.max_steps if finished else cfg.train.max_steps // 2
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.block_size
    lines = [] if start is None else [{"step": 0, "time": STARTED, "event": "start", **start}]
    for i, loss in enumerate(losses, 1):
        step = steps * i // len(losses)
        elapsed = seconds * step / steps
        common = {"step": step, "time": STARTED + elapsed, "tokens": step * tokens_per_step, "elapsed": elapsed}
        lines.append({**common, "train_loss": loss + 0.1, "tokens_per_s": 100.0, "peak_mem_mb": 500.0 + i})
        lines.append({**common, "val_loss": loss, "val_ppl": math.exp(loss), "val_windows": fingerprint})
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def fake_run():
    """write_run: a finished (or half-finished) run directory of configs/tiny.yaml."""
    return write_run



@pytest.fixture
def script_main():
    """The main(argv) of scripts/<name>.py, loaded from its file (scripts/ is not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    return load
