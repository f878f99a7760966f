"""Compare finished runs at equal data, val windows and token budget, grouped by what they were run with.

A run is a run directory (config.yaml + metrics.jsonl, as train.py writes them). Runs whose settings are equal apart
from the seed form a group (settings: the resolved config less its bookkeeping keys, experiments/run_identity.py).
A group is labelled by its backend and by every other setting in which the runs differ, e.g. `taylor position=rope`
beside `softmax position=learned`, so no two settings ever share a row. Per group every number is the mean and
sample standard deviation over its runs (seeds):

    final / best val loss and perplexity   the last evaluation, and the best one, of each run
    final / best val accuracy              MQAR answer accuracy, when the runs log `val_accuracy`
    tokens                                 training tokens seen
    wall time                              `elapsed`: seconds in training steps (evaluation and start-up excluded)
    tokens/s                               tokens / wall time
    peak memory                            the largest `peak_mem_mb` logged (CUDA allocated, or the process's RSS)

Refused with a ComparisonError, since their val losses would not measure the same thing: runs that differ in their
data (data.*), their val windows or their token budget, and unfinished runs; also two runs with the same settings
and seed (a copied record), which would count twice as seeds. Runs that differ in other settings outside the model
(optim.*, train.*) are compared, each setting in its own group; `settings_beyond_model` names those keys so that the
caller can warn that the table compares them too.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scipy.stats import t as student_t

from experiments.run_identity import SEED, describe, differences, read_run_config, settings
from fileio.tables import MISSING, markdown_table, mean_std_cell
from training.metrics import MetricsError, read_metrics
from typedconfig.parsing import ConfigError

BACKEND = "model.attention"
CONFIDENCE = 0.95  # of the interval of a paired mean difference that tells two groups apart


class ComparisonError(ValueError):
    """Runs that cannot be compared; the one-line message says which runs and why."""


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # the resolved config (config.yaml)
    train_lines: list[dict[str, Any]]  # metrics lines with train_loss, one per step, by step
    eval_lines: list[dict[str, Any]]  # metrics lines with val_loss, one per step, by step
    start_lines: list[dict[str, Any]]  # one per start or resume: machine, threads, torch, code revision

    @cached_property
    def settings(self) -> dict[str, Any]:
        """What the run was run with, seed included (run_identity.settings)."""
        return settings(self.config)

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
    label: str  # the group's backend and the settings that set it apart, e.g. "taylor position=rope"
    runs: int
    stats: dict[str, tuple[float, float]]  # metric -> (mean, standard deviation) over the runs


@dataclass
class Paired:
    """One group's final val loss minus the reference group's, seed by seed, over the seeds both have. Runs of the
    same seed share the data order and the initial weights' random stream, so the seed-to-seed spread common to both
    groups cancels in each difference: the verdict tests the differences themselves (a paired t-test), not the
    difference of the means against either group's spread."""

    label: str
    seeds: list[int]
    differences: list[float]  # group - reference, per seed in `seeds`

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    @property
    def std(self) -> float:
        """The sample standard deviation of the differences; NaN for one seed, whose spread is unknown."""
        return statistics.stdev(self.differences) if len(self.differences) > 1 else math.nan

    @property
    def lower(self) -> int:
        """Seeds where the group ends below the reference."""
        return sum(difference < 0 for difference in self.differences)

    @property
    def t(self) -> float:
        """The paired t statistic, mean / (std / sqrt(n)): ±inf where every seed gives the same non-zero difference,
        NaN with fewer than 2 seeds (no spread to scale by) or where every difference is 0."""
        n = len(self.differences)
        if n < 2:
            return math.nan
        if self.std == 0:
            return math.copysign(math.inf, self.mean) if self.mean else math.nan
        return self.mean / (self.std / math.sqrt(n))

    @property
    def interval(self) -> tuple[float, float]:
        """The two-sided CONFIDENCE (95%) interval of the mean difference (Student t with n - 1 degrees of
        freedom); (NaN, NaN) with fewer than 2 seeds."""
        n = len(self.differences)
        if n < 2:
            return math.nan, math.nan
        half = float(student_t.ppf((1 + CONFIDENCE) / 2, n - 1)) * self.std / math.sqrt(n)
        return self.mean - half, self.mean + half

    @property
    def told_apart(self) -> bool | None:
        """Whether these seeds tell the two groups apart: the interval excludes 0. None with fewer than 2 seeds,
        where nothing can be told either way."""
        low, high = self.interval
        if math.isnan(low):
            return None
        return low > 0 or high < 0


@dataclass
class Curve:
    """Val loss of one group at each evaluation step its runs share: mean, min and max over the runs."""

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


def check_out_dir(out: Path, inputs: Iterable[Path]) -> None:
    """Raise ComparisonError if `out` is one of `inputs` (the run and sweep directories compared) or lies inside
    one: a comparison gets a folder of its own and never writes among the runs, which may be committed records."""
    for path in inputs:
        if out.resolve().is_relative_to(path.resolve()):
            raise ComparisonError(f"--out {out} is inside {path}, one of the compared directories; write the "
                                  "comparison to a folder of its own")


def run_config(path: Path) -> dict[str, Any]:
    """The resolved config of the run directory `path` (ComparisonError if it no longer loads)."""
    try:
        return read_run_config(path / "config.yaml")
    except ConfigError as exc:
        raise ComparisonError(f"{path / 'config.yaml'} is not a usable run config ({exc})") from None


def load_run(path: Path, config: dict[str, Any] | None = None) -> Run:
    """A run directory's config and metrics; `config`: its run_config, where the caller has read it already. Where a
    resumed run logged a step twice, the last line wins."""
    try:
        lines = read_metrics(path)
    except MetricsError as exc:
        raise ComparisonError(str(exc)) from None
    if not lines:
        raise ComparisonError(f"{path} has no metrics.jsonl records yet; train it first")
    run = Run(path, run_config(path) if config is None else config,
              _last_per_step(line for line in lines if "train_loss" in line),
              _last_per_step(line for line in lines if "val_loss" in line),
              [line for line in lines if line.get("event") == "start"])
    if not run.eval_lines:
        raise ComparisonError(f"{path} has no evaluation in its metrics.jsonl yet")
    for line in run.eval_lines:
        for key in ("val_loss", "val_accuracy"):
            if key in line and not math.isfinite(line[key]):
                raise ComparisonError(f"{path} diverged: its {key} at step {line['step']} is not a finite number; "
                                      "leave it out of the comparison (and report it as diverged)")
    return run


def check_comparable(runs: list[Run]) -> None:
    """Raise ComparisonError unless all runs trained on the same data, evaluated on the same val windows and
    finished the same token budget, and no two of them are the same settings and seed (group_runs)."""
    if not runs:
        raise ComparisonError("no runs to compare")
    first = runs[0]
    for run in runs[1:]:
        data = [key for key in differences(first.settings, run.settings) if key.startswith("data.")]
        if data:
            where = (f"in {first.path}", f"in {run.path}")
            raise ComparisonError(f"runs differ in {describe(data, first.settings, run.settings, where)}; compare "
                                  "runs trained on the same data")
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
        if run.tokens > run.budget:  # its config.yaml asks for fewer steps than it trained (resumed with fewer)
            raise ComparisonError(
                f"{run.path} trained {run.tokens:,} tokens, past its config's budget of {run.budget:,} "
                "(train.max_steps lowered on a later resume); compare runs of one budget, or leave it out"
            )
    group_runs(runs)  # raises where two runs are the same settings and seed


def varying_settings(runs: list[Run]) -> list[str]:
    """The settings, seed aside, whose values are not the same in every run, in order of first appearance."""
    keys = list(dict.fromkeys(key for run in runs[1:] for key in differences(runs[0].settings, run.settings)))
    return [key for key in keys if key != SEED]


def settings_beyond_model(runs: list[Run]) -> list[str]:
    """The varying settings outside the model section: a table of these runs compares them too."""
    return [key for key in varying_settings(runs) if not key.startswith("model.")]


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """label -> the runs whose settings are equal apart from the seed, groups in order of first appearance. The label
    is the backend, then `key=value` for each other varying setting the group has (key without its section). Raises
    ComparisonError, naming both directories, where two runs of a group have the same seed: the same run twice (a
    copied record, say) would count as two seeds in the mean ± std, and the pairing would keep only one of them."""
    varying = [key for key in varying_settings(runs) if key != BACKEND]
    groups: dict[str, list[Run]] = {}
    for run in runs:
        shown = [f"{key.partition('.')[2]}={_shown(run.settings[key])}" for key in varying if key in run.settings]
        label = " ".join([run.config["model"]["attention"], *shown])
        twin = next((other for other in groups.get(label, []) if other.settings[SEED] == run.settings[SEED]), None)
        if twin is not None:
            raise ComparisonError(f"{twin.path} and {run.path} are both {label!r} with seed {run.settings[SEED]}: "
                                  "the same run twice would count as two seeds; leave one of them out")
        groups.setdefault(label, []).append(run)
    return groups


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


def summarise(runs: list[Run]) -> list[Summary]:
    """Mean and standard deviation of every run metric per group, best final val loss first. A metric that only
    some runs of a group have (val accuracy) is left out."""
    summaries = []
    for label, group in group_runs(runs).items():
        per_run = [run_metrics(run) for run in group]
        keys = [key for key in per_run[0] if all(key in metrics for metrics in per_run)]
        summaries.append(Summary(label, len(group), {key: mean_std([m[key] for m in per_run]) for key in keys}))
    return sorted(summaries, key=lambda s: s.stats["final_val_loss"][0])


def reference_label(labels: list[str], reference: str) -> str:
    """The group label that `reference` names: itself, or else the one label whose backend (its first word) it is,
    since labels carry `key=value` for every other varying setting ('softmax threads=1'). Raises ComparisonError
    listing the labels where it names none or several."""
    if reference in labels:
        return reference
    matches = [label for label in labels if label.split(" ")[0] == reference]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ComparisonError(f"reference {reference!r} is the backend of {len(matches)} rows "
                              f"({', '.join(map(repr, matches))}); pass one of them in full")
    raise ComparisonError(f"no row is labelled {reference!r}; the rows are {', '.join(map(repr, labels))}: pass "
                          "one of them as the reference")


def paired_with(runs: list[Run], reference: str) -> list[Paired]:
    """Each other group's final val loss against the group labelled `reference` (see reference_label), seed by seed
    (runs of the same seed share the data order and the initial weights' random stream), best mean difference
    first."""
    groups = group_runs(runs)
    if reference not in groups:
        raise ComparisonError(f"no row is labelled {reference!r}; the rows are {', '.join(map(repr, groups))}")
    final = {label: {run.settings[SEED]: run_metrics(run)["final_val_loss"] for run in group}
             for label, group in groups.items()}
    paired = []
    for label in groups:
        seeds = sorted(set(final[label]) & set(final[reference]))
        if label == reference or not seeds:
            continue
        paired.append(Paired(label, seeds, [final[label][seed] - final[reference][seed] for seed in seeds]))
    return sorted(paired, key=lambda p: p.mean)


def paired_table(paired: list[Paired], reference: str) -> str:
    """The paired differences as a markdown table: mean ± std, seeds lower, the paired t and the interval of the
    mean difference, and the verdict ('cannot tell' with one seed)."""
    header = ["backend", "seeds", f"final val loss − {reference}", "seeds lower", "t",
              f"{CONFIDENCE:.0%} interval", "told apart"]
    rows = [[p.label, len(p.seeds), mean_std_cell(p.mean, p.std, 4), f"{p.lower} of {len(p.seeds)}",
             _t_cell(p.t), _interval_cell(p.interval), _verdict(p.told_apart)] for p in paired]
    return markdown_table(header, rows, right=header[1:6]) + "\n"


def paired_rows(paired: list[Paired]) -> list[dict[str, Any]]:
    """One CSV record per paired group; told_apart is empty where one seed cannot tell."""
    return [{"backend": p.label, "seeds": " ".join(map(str, p.seeds)), "mean_difference": p.mean, "std": p.std,
             "seeds_lower": p.lower, "t": p.t, "interval_low": p.interval[0], "interval_high": p.interval[1],
             "told_apart": p.told_apart} for p in paired]


def val_curve(runs: list[Run]) -> Curve:
    """The val-loss curve of one group's runs over the evaluation steps they all have."""
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


def recorded(runs: list[Run], key: str) -> list[str]:
    """The distinct values of `key` (e.g. "machine", "revision") in the runs' start records, sorted; runs trained
    before the record had the key add nothing."""
    return sorted({str(line[key]) for run in runs for line in run.start_lines if key in line})


def trained_dates(runs: list[Run]) -> str:
    """The UTC dates of the runs' first and last metrics lines ('2026-12-01 to 2026-12-02'), or 'not recorded'."""
    times = [line["time"] for run in runs for line in run.train_lines + run.eval_lines if "time" in line]
    if not times:
        return "not recorded"
    first, last = (datetime.fromtimestamp(t, timezone.utc).date().isoformat() for t in (min(times), max(times)))
    return first if first == last else f"{first} to {last}"


# column: (header, digits); a metric absent from every summary gets no column
COLUMNS = {
    "final_val_loss": ("final val loss", 4), "best_val_loss": ("best val loss", 4),
    "final_val_ppl": ("final val ppl", 2), "best_val_ppl": ("best val ppl", 2),
    "final_val_accuracy": ("final val acc", 3), "best_val_accuracy": ("best val acc", 3),
    "tokens": ("tokens", 0), "wall_time_s": ("wall time (s)", 1), "tokens_per_s": ("train tokens/s", 0),
    "peak_mem_mb": ("peak mem (MB)", 0),
}


def summary_table(summaries: list[Summary]) -> str:
    """The summaries as a markdown table, `mean ± std` per cell (the ± part only where the runs differ)."""
    keys = _columns(summaries)
    header = ["backend", "runs", *(COLUMNS[key][0] for key in keys)]
    rows = [[summary.label, summary.runs,
             *(mean_std_cell(*summary.stats[key], COLUMNS[key][1]) if key in summary.stats else "" for key in keys)]
            for summary in summaries]
    return markdown_table(header, rows, right=header[1:]) + "\n"


def csv_rows(summaries: list[Summary]) -> list[dict[str, Any]]:
    """One dict per group: its label (column `backend`), runs and <metric>_mean / <metric>_std for every column."""
    keys = _columns(summaries)
    rows = []
    for summary in summaries:
        row: dict[str, Any] = {"backend": summary.label, "runs": summary.runs}
        for key in keys:
            mean, std = summary.stats.get(key, (math.nan, math.nan))
            row.update({f"{key}_mean": mean, f"{key}_std": std})
        rows.append(row)
    return rows


def _columns(summaries: list[Summary]) -> list[str]:
    return [key for key in COLUMNS if any(key in summary.stats for summary in summaries)]


def _t_cell(t: float) -> str:
    return MISSING if math.isnan(t) else f"{t:.2f}"


def _interval_cell(interval: tuple[float, float]) -> str:
    low, high = interval
    return MISSING if math.isnan(low) else f"{low:.4f} to {high:.4f}"


def _verdict(told_apart: bool | None) -> str:
    return "cannot tell (1 seed)" if told_apart is None else "yes" if told_apart else "no"


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value: one run's spread is unknown, not 0)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _val_windows(run: Run) -> str:
    """The val windows fingerprint(s) of a run's evaluations."""
    return ", ".join(sorted({str(line.get("val_windows")) for line in run.eval_lines}))


def _last_per_step(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    by_step = {line["step"]: line for line in lines}
    return [by_step[step] for step in sorted(by_step)]
