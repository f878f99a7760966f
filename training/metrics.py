"""Metrics sinks: metrics.jsonl in the run directory (always) and Weights & Biases (optional, offline or online)."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import LoggingConfig
from typedconfig.parsing import ConfigError

WANDB_ID_FILE = "wandb_id.txt"
METRICS_FILE = "metrics.jsonl"


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be read; the message names the file, the line and the fix."""


REPAIR = "delete that line, or every line from it on if the file was damaged there"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of <run>/metrics.jsonl in order (a resumed run may repeat steps); [] before the first. A null
    is read back as NaN: `json_value` writes a non-finite number so, and records hold no other nulls. A last line
    without its newline is a write cut short (a killed process) and is left out; any other line that is not a JSON
    record raises MetricsError."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    raw = path.read_bytes()
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:  # the records are ASCII JSON: bytes that are not UTF-8 are damage
        number = raw.count(b"\n", 0, exc.start) + 1
        raise MetricsError(f"{path}, line {number}: not UTF-8 text (byte {raw[exc.start]:#04x}); {REPAIR}") from None
    lines = text.splitlines()
    if lines and not text.endswith("\n") and _record(lines[-1]) is None:
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            shown = repr(line) if len(line) <= 40 else f"{line[:40]!r}..."
            raise MetricsError(f"{path}, line {number}: not a JSON record ({shown}); {REPAIR}")
        records.append({key: math.nan if value is None else value for key, value in record.items()})
    return records


def _record(line: str) -> dict | None:
    """The JSON object a line holds; None where it holds none."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def cut_partial_line(path: Path) -> bool:
    """End the file on a newline before the next record: a last line that lacks it is a write cut short by a killed
    process, and is removed, unless it is a whole record (written by hand, say), which gets its newline; returns
    whether a line was removed."""
    with path.open("rb+") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return False
        start = data.rfind(b"\n") + 1
        if _record(data[start:].decode(errors="replace")) is not None:
            handle.write(b"\n")
            return False
        handle.truncate(start)
    return True


class MetricsLog:
    """Appends one JSON object per call to <run>/metrics.jsonl and mirrors it to wandb when enabled.

    A `fresh` run (one that continues no checkpoint) starts both anew: records and a wandb run id left in the
    directory by a run that saved no checkpoint (killed before its first save) are not this run's history."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, config: dict[str, Any], fresh: bool,
                 say: Callable[[str], None]):
        self.path = run_dir / METRICS_FILE
        if fresh and self.path.is_file():
            say(f"warning: {self.path} holds records of an earlier run that saved no checkpoint; this fresh run "
                "replaces them")
            self.path.unlink()
        elif self.path.is_file() and cut_partial_line(self.path):
            say(f"warning: {self.path} ended in a record cut short (a killed write); removed it")
        self.wandb_run = _start_wandb(run_dir, cfg, config, fresh) if cfg.wandb != "off" else None

    def log(self, step: int, **metrics: Any) -> None:
        record = {"step": step, "time": time.time(), **{key: json_value(value) for key, value in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            # the step is a metric, not wandb's step=: wandb drops records whose step= is not above the last one,
            # and a run resumed from an earlier checkpoint logs its steps again under the same wandb run
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            self.wandb_run.log({"step": step, **numbers})

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def json_value(value: Any) -> Any:
    """`value` as strict JSON holds it: a float that is inf or nan (a diverged loss) becomes null, which every JSON
    parser reads, where Python's NaN token is not JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _start_wandb(run_dir: Path, cfg: LoggingConfig, config: dict[str, Any], fresh: bool):
    """Start (or, for a run that continues a checkpoint, with a stored run id, continue) the wandb run of this run
    directory."""
    import wandb  # imported only when enabled: it is slow to import

    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() and not fresh else secrets.token_hex(6)
    id_file.write_text(run_id)
    try:
        run = wandb.init(
            project=cfg.wandb_project,
            name=cfg.run_name or run_dir.name,
            group=cfg.wandb_group,
            tags=list(cfg.wandb_tags),
            config=config,
            dir=str(run_dir),
            mode=cfg.wandb,
            id=run_id,
            resume="allow",
        )
    except wandb.errors.Error as exc:  # e.g. online without a login
        raise ConfigError(f"logging.wandb={cfg.wandb}: wandb could not start ({exc}); run `wandb login` or set "
                          "WANDB_API_KEY, or set logging.wandb=offline (sync later) or off") from exc
    run.define_metric("step")
    run.define_metric("*", step_metric="step")  # every chart's x-axis: the optimiser step each record gives
    return run
