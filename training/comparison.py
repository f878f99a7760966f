"""Compare finished runs by attention backend at equal data, val windows and token budget.

A run is a run directory (config.yaml + metrics.jsonl, as train.py writes them). Runs are grouped by
model.attention; per backend every number is the mean and sample standard deviation over its runs (seeds):

    final / best val loss and perplexity   the last evaluation, and the best one, of each run
    final / best val accuracy              MQAR answer accuracy, when the runs log `val_accuracy`
    tokens                                 training tokens seen
    wall time                              `elapsed`: seconds in training steps (evaluation and start-up excluded)
    tokens/s                               tokens / wall time
    peak memory                            the largest `peak_mem_mb` logged (CUDA allocated, or the process's RSS)

Runs that differ in their data, their val windows or their token budget, or that have not finished, are refused
with a ComparisonError: their val losses would not measure the same thing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data.config import MQAR
from training.metrics import read_metrics

WHERE_NOT_WHAT = ("prepared_dir",)  # data keys that say where the data lives, not what it is


class ComparisonError(ValueError):
    """Runs that cannot be compared; the one-line message says which runs and why."""


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # the resolved config (config.yaml)
    train_lines: list[dict[str, Any]]  # metrics lines with train_loss, one per step, by step
    eval_lines: list[dict[str, Any]]  # metrics lines with val_loss, one per step, by step

    @property
    def backend(self) -> str:
        return self.config["model"]["attention"]

    @property
    def budget(self) -> int:
        """Training tokens the config plans: max_steps x batch_size x grad_accum x block_size."""
        train = self.config["train"]
        return train["max_steps"] * train["batch_size"] * train["grad_accum"] * self.config["data"]["block_size"]

    @property
    def tokens(self) -> int:
        return max(line["tokens"] for line in self.train_lines + self.eval_lines)


@dataclass
class Summary:
    backend: str
    runs: int
    stats: dict[str, tuple[float, float]]  # metric -> (mean, standard deviation) over the runs


@dataclass
class Curve:
    """Val loss of one backend at each evaluation step its runs share: mean, min and max over the runs."""

    tokens: list[int]
    elapsed: list[float]  # mean over the runs
    mean: list[float]
    low: list[float]
    high: list[float]


def run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """The run directories meant by `paths`: each a run directory (it has config.yaml) or a sweep directory
    (its sub-directories that are run directories, sorted)."""
    found = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            found.append(path)
            continue
        runs = sorted(p for p in path.glob("*") if (p / "config.yaml").is_file())
        if not runs:
            raise ComparisonError(f"{path} is neither a run directory (no config.yaml) nor a sweep directory of runs")
        found += runs
    return found


def load_run(path: Path) -> Run:
    """A run directory's config and metrics. Where a resumed run logged a step twice, the last line wins."""
    lines = read_metrics(path)
    if not lines:
        raise ComparisonError(f"{path} has no metrics.jsonl yet; train it first")
    run = Run(path, yaml.safe_load((path / "config.yaml").read_text()),
              _last_per_step(line for line in lines if "train_loss" in line),
              _last_per_step(line for line in lines if "val_loss" in line))
    if not run.eval_lines:
        raise ComparisonError(f"{path} has no evaluation in its metrics.jsonl yet")
    return run


def check_comparable(runs: list[Run]) -> None:
    """Raise ComparisonError unless all runs trained on the same data, evaluated on the same val windows and
    finished the same token budget."""
    if not runs:
        raise ComparisonError("no runs to compare")
    first = runs[0]
    reference = _flat(data_identity(first.config), "data.")
    for run in runs[1:]:
        data = _flat(data_identity(run.config), "data.")
        for key in [*reference, *(key for key in data if key not in reference)]:
            if reference.get(key) != data.get(key):
                raise ComparisonError(
                    f"runs differ in {key}: {reference.get(key)!r} in {first.path} but {data.get(key)!r} in "
                    f"{run.path}; compare runs trained on the same data"
                )
    expected = _val_windows(first)
    for run in runs:
        if _val_windows(run) != expected:
            raise ComparisonError(
                f"runs evaluate on different val windows: {expected} in {first.path} but {_val_windows(run)} in "
                f"{run.path} (val_windows in metrics.jsonl)"
            )
    for run in runs:
        if run.budget != first.budget:
            raise ComparisonError(
                f"runs have different token budgets: {first.budget:,} tokens in {first.path} but {run.budget:,} in "
                f"{run.path} (train.max_steps x batch_size x grad_accum x data.block_size)"
            )
        if run.tokens < run.budget:
            raise ComparisonError(
                f"{run.path} is unfinished ({run.tokens:,} of {run.budget:,} tokens); finish it "
                "(scripts/sweep.py resumes it) or leave it out"
            )


def data_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's data section that decides what it trains and evaluates on."""
    data = {key: value for key, value in config["data"].items() if key not in WHERE_NOT_WHAT}
    if data.get("source") != MQAR:
        data.pop("mqar", None)
    return data


def run_metrics(run: Run) -> dict[str, float]:
    """The numbers of one run that the table averages (see the module docstring)."""
    losses = [line["val_loss"] for line in run.eval_lines]
    elapsed = max(line["elapsed"] for line in run.train_lines + run.eval_lines)
    memory = [line["peak_mem_mb"] for line in run.train_lines if "peak_mem_mb" in line]
    metrics = {
        "final_val_loss": losses[-1], "best_val_loss": min(losses),
        "final_val_ppl": math.exp(min(losses[-1], 50)), "best_val_ppl": math.exp(min(min(losses), 50)),
    }
    if all("val_accuracy" in line for line in run.eval_lines):
        accuracy = [line["val_accuracy"] for line in run.eval_lines]
        metrics.update(final_val_accuracy=accuracy[-1], best_val_accuracy=max(accuracy))
    metrics.update(tokens=run.tokens, wall_time_s=elapsed, tokens_per_s=run.tokens / elapsed,
                   peak_mem_mb=max(memory, default=math.nan))
    return metrics


def group_by_backend(runs: list[Run]) -> dict[str, list[Run]]:
    """backend -> its runs, backends in order of first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.backend, []).append(run)
    return groups


def summarise(runs: list[Run]) -> list[Summary]:
    """Mean and standard deviation of every run metric per backend, best final val loss first. A metric that only
    some runs have (val accuracy) is left out."""
    summaries = []
    for backend, group in group_by_backend(runs).items():
        per_run = [run_metrics(run) for run in group]
        keys = [key for key in per_run[0] if all(key in metrics for metrics in per_run)]
        summaries.append(Summary(backend, len(group), {key: _mean_std([m[key] for m in per_run]) for key in keys}))
    return sorted(summaries, key=lambda s: s.stats["final_val_loss"][0])


def val_curve(runs: list[Run]) -> Curve:
    """The val-loss curve of one backend's runs over the evaluation steps they all have."""
    by_step = [{line["step"]: line for line in run.eval_lines} for run in runs]
    steps = sorted(set.intersection(*(set(lines) for lines in by_step)))
    losses = [[lines[step]["val_loss"] for lines in by_step] for step in steps]
    return Curve(
        tokens=[by_step[0][step]["tokens"] for step in steps],
        elapsed=[statistics.fmean(lines[step]["elapsed"] for lines in by_step) for step in steps],
        mean=[statistics.fmean(values) for values in losses],
        low=[min(values) for values in losses],
        high=[max(values) for values in losses],
    )


# column: (header, digits); a metric absent from every summary gets no column
COLUMNS = {
    "final_val_loss": ("final val loss", 4), "best_val_loss": ("best val loss", 4),
    "final_val_ppl": ("final val ppl", 2), "best_val_ppl": ("best val ppl", 2),
    "final_val_accuracy": ("final val acc", 3), "best_val_accuracy": ("best val acc", 3),
    "tokens": ("tokens", 0), "wall_time_s": ("wall time (s)", 1), "tokens_per_s": ("train tokens/s", 0),
    "peak_mem_mb": ("peak mem (MB)", 0),
}


def markdown_table(summaries: list[Summary]) -> str:
    """The summaries as a markdown table, `mean ± std` per cell (the ± part only where the runs differ)."""
    keys = _columns(summaries)
    lines = ["| backend | runs | " + " | ".join(COLUMNS[key][0] for key in keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for summary in summaries:
        cells = [_cell(*summary.stats[key], COLUMNS[key][1]) if key in summary.stats else "" for key in keys]
        lines.append(f"| {summary.backend} | {summary.runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_rows(summaries: list[Summary]) -> list[dict[str, Any]]:
    """One dict per backend: backend, runs and <metric>_mean / <metric>_std for every column."""
    keys = _columns(summaries)
    rows = []
    for summary in summaries:
        row: dict[str, Any] = {"backend": summary.backend, "runs": summary.runs}
        for key in keys:
            mean, std = summary.stats.get(key, (math.nan, math.nan))
            row.update({f"{key}_mean": mean, f"{key}_std": std})
        rows.append(row)
    return rows


def _columns(summaries: list[Summary]) -> list[str]:
    return [key for key in COLUMNS if any(key in summary.stats for summary in summaries)]


def _cell(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:,.{digits}f}" + (f" ± {std:,.{digits}f}" if std else "")


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _val_windows(run: Run) -> str:
    """The val windows fingerprint(s) of a run's evaluations."""
    return ", ".join(sorted({str(line.get("val_windows")) for line in run.eval_lines}))


def _last_per_step(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    by_step = {line["step"]: line for line in lines}
    return [by_step[step] for step in sorted(by_step)]


def _flat(mapping: dict[str, Any], prefix: str) -> dict[str, Any]:
    """{'mqar': {'num_pairs': 8}} -> {'<prefix>mqar.num_pairs': 8}."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
