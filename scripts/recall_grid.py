"""Associative-recall (MQAR) answer accuracy of every backend over a grid of difficulty, each backend at its best
learning rate, beside the accuracy that needs no recall.

    python scripts/recall_grid.py configs/mqar-cpu.yaml --settings 4x32,8x32,8x64,16x64 --lrs 1e-3,3e-3 --seeds 3
    python scripts/recall_grid.py configs/mqar-cpu.yaml --settings 4x32 --seeds 1 --backends softmax,expressive \\
        --out runs/sweeps/mqar-trial --results runs/mqar-trial/mqar

A setting PxT is P key-value pairs, each queried once (data.mqar.num_pairs = num_queries = P), in sequences of T
tokens (data.block_size); more pairs, and more filler between the queries, make recall harder. For each setting and
learning rate it runs `scripts/sweep.py CONFIG` into <out>/pairs<P>-len<T>/lr<lr> with optim.lr = optim.min_lr =
lr: constant after the warm-up, since a decaying lr can end a run on the no-recall shortcut just before the jump to
recall (results/mqar_init.md). Running the same command again skips finished runs and resumes interrupted ones, as
sweep.py does. Overrides (section.key=value) apply to every run; one of a key the grid or its sweeps set (optim.lr,
optim.min_lr, train.seed, model.attention, data.block_size, data.mqar.num_pairs / num_queries, ...) is refused,
naming the flag that sets it, as are malformed flags, all before the first run.

Each (setting, backend) gets the learning rate with the best mean final val accuracy over the seeds; the results
report the final accuracy on the holdout set (data/mqar.py), which that choice never saw, as mean ± std over the
seeds, beside elimination_accuracy(P, P): what guessing among the context's values not yet asked for scores, with no
recall at all. <results>.md is the page (the best-lr table, every learning rate's val accuracy, and expressive
against softmax per setting for Gros's claim, arXiv 2407.18601), <results>.csv has every (setting, backend, lr) and
<results>.png plots the best-lr table. They report only the --backends and --seeds asked for, whatever else the
sweep folders hold.

--results defaults to results/mqar, the committed page, which the first command above (the one its opening line
records) regenerates. Any other command whose --results names an existing page is refused before the first run
starts (exit status 2), unless --overwrite: a trial grid goes to a --results of its own, as in the second command.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from matplotlib.figure import Figure

from data.config import MQAR, MQARConfig, tokens_needed
from data.mqar import elimination_accuracy
from experiments.comparison import (ComparisonError, Run, check_comparable, load_run, mean_std, recorded, run_config,
                                    run_dirs, trained_dates)
from experiments.sweep import SWEEP_KEYS, parse_backends
from fileio.atomic import save_figure_atomic, write_text_atomic
from fileio.pages import PAGE_SUFFIXES, check_replace, command_line, opening, page_file, replacing
from fileio.tables import csv_text, markdown_table, mean_std_cell
from model.attention import BACKENDS
from training.config import RunConfig, load_config, parse_override
from typedconfig.cli import ArgumentParser, parse_with_overrides, path_argument
from typedconfig.parsing import ConfigError

SWEEP = Path(__file__).resolve().parent / "sweep.py"
CLEAR_GAP = 0.02  # a difference in accuracy counts when it exceeds this and twice its standard error
SANITY_ACCURACY = 0.95  # softmax must reach this at the easiest setting, or the grid measures nothing
GRID_KEYS = {  # what the grid sets in every run, and the flag that sets it
    "data.mqar.num_pairs": "--settings", "data.mqar.num_queries": "--settings", "data.block_size": "--settings",
    "optim.lr": "--lrs", "optim.min_lr": "--lrs", "model.attention": "--backends", "train.seed": "--seeds",
    "train.out_dir": "--out"}


class Setting(NamedTuple):
    """One difficulty: `pairs` key-value pairs, each queried once, in sequences of `length` tokens."""

    pairs: int
    length: int

    @classmethod
    def parse(cls, text: str) -> Setting:
        """'8x32' -> Setting(pairs=8, length=32)."""
        match = re.fullmatch(r"\s*([0-9]+)x([0-9]+)\s*", text)
        if not match or min(int(match[1]), int(match[2])) < 1:
            raise ValueError(f"--settings: {text!r} is not PAIRSxLENGTH (two whole numbers >= 1), e.g. 8x32")
        return cls(int(match[1]), int(match[2]))

    @property
    def label(self) -> str:
        return f"{self.pairs}×{self.length}"

    @property
    def no_recall(self) -> float:
        return elimination_accuracy(self.pairs, self.pairs)


@dataclass
class Cell:
    """The runs of one (setting, lr, backend): final val and holdout answer accuracy, one value per seed."""

    val: list[float]
    holdout: list[float]

    def mean_std(self, split: str) -> tuple[float, float]:
        return mean_std(getattr(self, split))


Grid = dict[Setting, dict[float, dict[str, Cell]]]  # setting -> lr -> backend -> cell


def grid_overrides(setting: Setting, lr: float) -> list[str]:
    return [f"data.mqar.num_pairs={setting.pairs}", f"data.mqar.num_queries={setting.pairs}",
            f"data.block_size={setting.length}", f"optim.lr={lr}", f"optim.min_lr={lr}"]


def sweep_dir(out: Path, setting: Setting, lr: float) -> Path:
    return out / f"pairs{setting.pairs}-len{setting.length}" / f"lr{lr:g}"


def parse_settings(text: str) -> list[Setting]:
    """--settings '4x32,8x64' -> [Setting(4, 32), Setting(8, 64)]; a setting given twice is refused."""
    settings = [Setting.parse(part) for part in text.split(",")]
    for s in settings:  # grid_overrides asks every pair's key again
        if s.length < (needed := tokens_needed(MQARConfig(num_pairs=s.pairs, num_queries=s.pairs))):
            raise ValueError(f"--settings {s.pairs}x{s.length}: {s.pairs} pairs and their {s.pairs} queries need "
                             f"{needed} tokens; give a LENGTH of at least {needed}")
    twice = [s for i, s in enumerate(settings) if s in settings[:i]]
    if twice:
        raise ValueError(f"--settings: {twice[0].pairs}x{twice[0].length} is given twice; give each setting once")
    return settings


def parse_lrs(text: str) -> list[float]:
    """--lrs '1e-3,3e-3' -> [0.001, 0.003], each > 0 and finite; two that share a sweep folder are refused."""
    lrs: dict[str, str] = {}  # f"{lr:g}", which names the sweep folder -> the text that gave it
    for part in (part.strip() for part in text.split(",")):
        try:
            lr = float(part)
        except ValueError:
            lr = math.nan
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"--lrs: {part!r} is not a learning rate > 0; give comma-separated numbers, "
                             "e.g. 1e-3,3e-3")
        if f"{lr:g}" in lrs:
            raise ValueError(f"--lrs: {lrs[f'{lr:g}']} and {part} are both lr {lr:g}; give each learning rate once")
        lrs[f"{lr:g}"] = part
    return [float(part) for part in lrs.values()]


def override_keys(text: str) -> list[str]:
    """The dotted keys an override sets: 'optim.lr=0.01' -> ['optim.lr']; 'data.mqar={num_pairs: 4}' ->
    ['data.mqar.num_pairs']."""
    def leaves(node: object, prefix: str) -> list[str]:
        if not isinstance(node, dict) or not node:
            return [prefix]
        return [key for name, value in node.items() for key in leaves(value, f"{prefix}.{name}" if prefix else name)]

    return leaves(parse_override(text), "")


def check_overrides(overrides: list[str]) -> None:
    """Raise ValueError for an override of what the grid or its sweeps set in every run: the grid's own value would
    win in every run, while the page's title claimed the override."""
    for text in overrides:
        for key in override_keys(text):
            if key in GRID_KEYS:
                raise ValueError(f"the grid sets {key} in every run; leave {text!r} out of the overrides and give "
                                 f"{GRID_KEYS[key]} instead")
            if key in SWEEP_KEYS:
                raise ValueError(f"the grid's sweeps set {key} in every run; leave {text!r} out of the overrides")


def read_cells(directory: Path, backends: list[str], seeds: int) -> tuple[dict[str, Cell], list[Run]]:
    """backend -> its cell, from the finished runs of one sweep that this grid asked for (`backends`, seeds 0 ..
    `seeds` - 1), and those runs. A sweep folder can also hold runs of an earlier, wider grid: they are left out,
    since the page says what it measured and averages exactly that."""
    runs = []
    for path in run_dirs([directory]):
        config = run_config(path)
        if config["model"]["attention"] in backends and config["train"]["seed"] in range(seeds):
            runs.append(load_run(path, config))
    found = {(run.config["model"]["attention"], run.config["train"]["seed"]) for run in runs}
    missing = [f"{backend} seed {seed}" for backend in backends for seed in range(seeds)
               if (backend, seed) not in found]
    if missing:
        raise ComparisonError(f"{directory} has no run of {', '.join(missing)}")
    check_comparable(runs)  # also refuses the same backend and seed twice (a copied record)
    cells: dict[str, Cell] = {}
    for run in runs:
        final = run.eval_lines[-1]
        if "holdout_accuracy" not in final:
            raise ComparisonError(f"{run.path} logged no holdout_accuracy; train it again with this version")
        cell = cells.setdefault(run.config["model"]["attention"], Cell([], []))
        cell.val.append(final["val_accuracy"])
        cell.holdout.append(final["holdout_accuracy"])
    return cells, runs


Chosen = dict[tuple[Setting, str], float]  # (setting, backend) -> learning rate


def best_lrs(grid: Grid) -> Chosen:
    """(setting, backend) -> the learning rate with the best mean final val accuracy (the smaller lr on a tie)."""
    chosen = {}
    for setting, by_lr in grid.items():
        for backend in {b for cells in by_lr.values() for b in cells}:
            tried = sorted(lr for lr, cells in by_lr.items() if backend in cells)
            chosen[setting, backend] = max(tried, key=lambda lr: by_lr[lr][backend].mean_std("val")[0])
    return chosen


UNTOLD = "untold (one seed)"  # the reading where a cell has no spread to measure a gap against


def compare(first: Cell, second: Cell) -> tuple[float, float, str]:
    """Holdout accuracy of `second` minus `first` (means over seeds), the standard error of that difference, and
    'level', 'ahead' or 'behind' (second against first: a gap counts above CLEAR_GAP and twice the error); UNTOLD,
    with a NaN error, where either has one seed."""
    (m1, s1), (m2, s2) = first.mean_std("holdout"), second.mean_std("holdout")
    if min(len(first.holdout), len(second.holdout)) < 2:
        return m2 - m1, math.nan, UNTOLD
    gap, error = m2 - m1, math.sqrt(s1**2 / len(first.holdout) + s2**2 / len(second.holdout))
    if abs(gap) <= max(CLEAR_GAP, 2 * error):
        return gap, error, "level"
    return gap, error, "ahead" if gap > 0 else "behind"


def sanity_line(grid: Grid, chosen: Chosen) -> str:
    """Whether the benchmark can see recall at all: softmax at the first (easiest) setting against SANITY_ACCURACY
    and the no-recall accuracy. Empty without softmax."""
    easiest = next(iter(grid))
    if (easiest, "softmax") not in chosen:
        return ""
    mean, std = grid[easiest][chosen[easiest, "softmax"]]["softmax"].mean_std("holdout")
    verdict = "passes" if mean >= SANITY_ACCURACY else "FAILS: this grid cannot tell recall from its absence"
    return (f"Sanity check (softmax at {easiest.label} reaches {SANITY_ACCURACY}): {verdict}, "
            f"{mean_std_cell(mean, std, 3)} against {easiest.no_recall:.3f} with no recall.\n\n")


def gros_section(grid: Grid, chosen: Chosen) -> str:
    """Expressive against softmax (each at its best lr) per setting, and whether that supports Gros (arXiv
    2407.18601): level on the easiest setting (the first), ahead on some harder one, behind on none. Empty for a
    grid of fewer than two settings with both backends."""
    settings = [s for s in grid if (s, "softmax") in chosen and (s, "expressive") in chosen]
    if len(settings) < 2:
        return ""
    rows, readings = [], {}
    for s in settings:
        soft, expr = (grid[s][chosen[s, b]][b] for b in ("softmax", "expressive"))
        gap, error, readings[s] = compare(soft, expr)
        rows.append([s.label, mean_std_cell(*soft.mean_std("holdout"), 3),
                     mean_std_cell(*expr.mean_std("holdout"), 3), f"{gap:+.3f}",
                     "–" if math.isnan(error) else f"{error:.3f}", readings[s]])
    easiest, harder = settings[0], settings[1:]
    ahead = [s.label for s in harder if readings[s] == "ahead"]
    behind = [s.label for s in settings if readings[s] == "behind"]
    supported = readings[easiest] == "level" and bool(ahead) and not behind
    claim = "Gros's claim, expressive attention level with softmax on easy tasks and ahead as difficulty rises,"
    if UNTOLD in readings.values():
        verdict = (f"{claim} cannot be judged by this grid: with one seed a gap has no standard error to be weighed "
                   "against; run --seeds 2 or more.")
    else:
        verdict = (f"{claim} is {'supported' if supported else 'not supported'} by this grid: level at "
                   f"{easiest.label}: {'yes' if readings[easiest] == 'level' else 'no'}; ahead at "
                   f"{', '.join(ahead) or 'none'} of {', '.join(s.label for s in harder) or 'no harder setting'}; "
                   f"behind at {', '.join(behind) or 'none'}.")
    numbers = ["softmax", "expressive", "expressive − softmax", "std error"]
    table = markdown_table(["pairs×length", *numbers, "expressive is"], rows, right=numbers)
    return (f"## Expressive against softmax (Gros, arXiv 2407.18601)\n\nHoldout accuracy, each backend at its best "
            f"lr. A gap counts when it exceeds {CLEAR_GAP} and twice its standard error (from the seeds' spread).\n\n"
            f"{table}\n\n{verdict}\n")


def write_results(grid: Grid, results: Path, page_opening: str) -> str:
    """The page (also written to <results>.md), the CSV and the PNG; returns the page. Settings appear in the
    grid's order, the easiest first."""
    chosen = best_lrs(grid)
    backends = [b for b in BACKENDS if any((s, b) in chosen for s in grid)]
    lrs = sorted({lr for by_lr in grid.values() for lr in by_lr})

    best_rows = []
    for s in grid:
        cells = []
        for backend in backends:
            lr = chosen.get((s, backend))
            cells.append("–" if lr is None else
                         f"{mean_std_cell(*grid[s][lr][backend].mean_std('holdout'), 3)} (lr {lr:g})")
        best_rows.append([s.pairs, s.length, f"{s.no_recall:.3f}", *cells])
    best = markdown_table(["pairs", "length", "no recall", *backends], best_rows,
                          right={"pairs", "length", "no recall", *backends})

    every_rows, records = [], []
    for s in grid:
        for backend in backends:
            cells = []
            for lr in lrs:
                cell = grid[s].get(lr, {}).get(backend)
                if cell is None:
                    cells.append("–")
                    continue
                shown = mean_std_cell(*cell.mean_std("val"), 3)
                cells.append(f"**{shown}**" if chosen[s, backend] == lr else shown)
                records.append({"num_pairs": s.pairs, "block_size": s.length, "backend": backend, "lr": lr,
                                "chosen": chosen[s, backend] == lr, "runs": len(cell.val),
                                "val_accuracy_mean": cell.mean_std("val")[0],
                                "val_accuracy_std": cell.mean_std("val")[1],
                                "holdout_accuracy_mean": cell.mean_std("holdout")[0],
                                "holdout_accuracy_std": cell.mean_std("holdout")[1],
                                "elimination_accuracy": s.no_recall})
            every_rows.append([s.label, backend, *cells])
    every = markdown_table(["pairs×length", "backend", *(f"lr {lr:g}" for lr in lrs)], every_rows,
                           right={f"lr {lr:g}" for lr in lrs})

    page = (f"{page_opening}Answer accuracy on the holdout set, mean ± std over seeds, each backend at the learning "
            f"rate with the best mean val accuracy (in brackets); *no recall* is what guessing among the context's "
            f"values not yet asked for scores (data.mqar.elimination_accuracy).\n\n{sanity_line(grid, chosen)}{best}"
            f"\n\n![holdout accuracy "
            f"per setting]({page_file(results, '.png').name})\n\n{gros_section(grid, chosen)}\n"
            f"## Every learning rate\n\nFinal val accuracy (the basis of the choice, chosen in bold).\n\n{every}\n")
    write_text_atomic(page_file(results, ".md"), page)
    write_text_atomic(page_file(results, ".csv"), csv_text(records))
    plot(grid, chosen, backends, page_file(results, ".png"))
    return page


def plot(grid: Grid, chosen: Chosen, backends: list[str], path: Path) -> None:
    """Holdout accuracy (best lr) per setting, one line per backend, the no-recall accuracy dashed."""
    settings = list(grid)
    figure = Figure(figsize=(7.5, 4.2), layout="constrained")
    axes = figure.subplots()
    for backend in backends:
        points = [(i, grid[s][chosen[s, backend]][backend].mean_std("holdout"))
                  for i, s in enumerate(settings) if (s, backend) in chosen]
        axes.errorbar([i for i, _ in points], [m for _, (m, _) in points], yerr=[e for _, (_, e) in points],
                      marker="o", capsize=3, label=backend)
    axes.plot(range(len(settings)), [s.no_recall for s in settings], "k--", label="no recall (elimination)")
    axes.set(xticks=range(len(settings)), xticklabels=[s.label for s in settings], ylim=(0, 1.02),
             xlabel="key-value pairs × sequence length (queries = pairs)", ylabel="answer accuracy (holdout, best lr)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: the lines fill the axes
    save_figure_atomic(figure, path, dpi=120)


def describe_config(path: str, cfg: RunConfig, seeds: int, lrs: list[float]) -> str:
    m, d, t = cfg.model, cfg.data, cfg.train
    tried = ", ".join(f"{lr:g}" for lr in lrs)
    return (f"{path} ({m.n_layer} layers × {m.n_embd}, {m.n_head} heads, {m.position} positions, init_std "
            f"{m.init_std}, {'tied' if m.tie_word_embeddings else 'untied'} head; vocabulary {d.mqar.vocab_size}; "
            f"{t.max_steps:,} steps of {t.batch_size} sequences; lr {tried}, constant after a {cfg.optim.warmup_steps}-"
            f"step warm-up; {seeds} seeds; {d.eval_windows} val and {d.eval_windows} holdout sequences)")


def machines_and_time(runs: list[Run]) -> tuple[str, str]:
    """The machines the runs' starts recorded, and the grid's wall time: its first to its last metrics line, with
    the seconds in training steps summed over the runs."""
    times = [line["time"] for run in runs for line in run.start_lines + run.train_lines + run.eval_lines
             if "time" in line]
    steps = sum(max(line["elapsed"] for line in run.train_lines + run.eval_lines) for run in runs)
    span = (max(times) - min(times)) / 3600 if times else math.nan
    return "; ".join(recorded(runs, "machine")) or "not recorded", \
        f"{span:.2f} h wall time ({steps / 3600:.2f} h in training steps)"


ELSEWHERE = "pass --results elsewhere (e.g. runs/mqar-trial)"


def results_files(results: Path) -> list[Path]:
    """The page, CSV and PNG at `results`, the page first (as check_replace reads them)."""
    return [page_file(results, suffix) for suffix in PAGE_SUFFIXES]


def check_results(results: Path, command: str, overwrite: bool) -> str:
    """Before any run starts: `fileio.pages.check_replace` for the page, CSV and PNG at `results`; returns the note
    to print where they will be replaced when the grid is done, else ''."""
    note = check_replace(results_files(results), command, overwrite, ELSEWHERE)
    return f"recall_grid: {note}" if note else ""


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="recall_grid", description=__doc__)
    parser.add_argument("config", help="an MQAR run config (data.source: mqar), e.g. configs/mqar-cpu.yaml")
    parser.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides for every run")
    parser.add_argument("--settings", default="4x32,8x32,16x64",
                        help="comma-separated PAIRSxLENGTH difficulties, easiest first")
    parser.add_argument("--lrs", default="1e-3,3e-3", help="comma-separated peak learning rates to try")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated attention backends")
    parser.add_argument("--seeds", type=int, default=3, help="runs per backend, setting and learning rate")
    parser.add_argument("--out", type=path_argument, default=Path("runs/sweeps/mqar-grid"), help="where the sweeps go")
    parser.add_argument("--results", type=path_argument, default=Path("results/mqar"),
                        help="page/CSV/PNG path stem; an existing page is replaced only by the command it records, "
                        "or with --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --results page that another command wrote")
    args = parse_with_overrides(parser, argv)  # --section.key=value too, as train.py takes it
    page_command = command_line(__file__, argv)  # what the results page records, and check_replace compares
    try:
        settings, lrs = parse_settings(args.settings), parse_lrs(args.lrs)
        backends = parse_backends(args.backends)
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1 (runs per backend, setting and learning rate), got {args.seeds}")
        check_overrides(args.overrides)
        base = load_config(args.config, args.overrides)
        for setting in settings:  # every setting must load before the first run starts
            try:
                for lr in lrs:
                    load_config(args.config, [*args.overrides, *grid_overrides(setting, lr)])
            except ConfigError as exc:
                raise ValueError(f"--settings {setting.pairs}x{setting.length}: {exc}") from None
        if base.data.source != MQAR:
            raise ValueError(f"{args.config} trains on {base.data.source!r}; set data.source=mqar")
        note = check_results(args.results, page_command, args.overwrite)
    except (ValueError, ConfigError, OSError) as exc:  # ConfigError is a ValueError
        print(f"recall_grid: {exc}", file=sys.stderr)
        return 2
    if note:
        print(note, file=sys.stderr, flush=True)
    grid: Grid = {}
    runs: list[Run] = []
    for setting in settings:
        for lr in lrs:
            directory = sweep_dir(args.out, setting, lr)
            command = [sys.executable, str(SWEEP), args.config, *args.overrides, *grid_overrides(setting, lr),
                       "--backends", args.backends, "--seeds", str(args.seeds), "--out", str(directory)]
            print(f"== {setting.label}, lr {lr:g}: {directory}", flush=True)
            status = subprocess.run(command).returncode
            if status:
                print(f"recall_grid: the sweep for {setting.label} at lr {lr:g} failed (exit status {status})",
                      file=sys.stderr)
                return status
            try:
                cells, sweep_runs = read_cells(directory, backends, args.seeds)
            except ComparisonError as exc:
                print(f"recall_grid: cannot compare the runs of {directory}: {exc}", file=sys.stderr)
                return 2
            grid.setdefault(setting, {})[lr] = cells
            runs += sweep_runs
    machine, wall = machines_and_time(runs)
    measured = (f"final answer accuracy of {len(runs)} runs, each backend at its best learning rate per difficulty "
                f"(key-value pairs × sequence length), beside the accuracy that needs no recall; {wall}")
    title = "Associative recall (MQAR) by backend and difficulty"
    if args.overrides:  # a variant of the config: the title tells its page from the main one
        title += f", with {' '.join(args.overrides)}"
    page_opening = opening(title, measured,
                           page_command, describe_config(args.config, base, args.seeds, lrs), machine,
                           trained_dates(runs))
    try:
        # the pages checked again under the folder's lock: the grid took hours, long enough for another command
        with replacing(results_files(args.results), page_command, args.overwrite, ELSEWHERE):
            page = write_results(grid, args.results, page_opening)
    except (ValueError, OSError) as exc:
        print(f"recall_grid: {exc}", file=sys.stderr)
        return 2
    print(page, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
