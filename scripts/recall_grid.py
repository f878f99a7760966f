"""Associative-recall (MQAR) accuracy of every backend over a grid of difficulty: one sweep per number of pairs.

    python scripts/recall_grid.py configs/mqar-cpu.yaml --pairs 2,4,8 --out runs/sweeps/mqar-grid \\
        --results results/mqar
    python scripts/recall_grid.py configs/mqar-cpu.yaml --pairs 4,16 --seeds 3 data.mqar.vocab_size=512 ...

For each P in --pairs it runs `scripts/sweep.py CONFIG` into <out>/pairs<P> with data.mqar.num_pairs = P, as many
queries as pairs, and data.block_size = max(the config's, 8 P) (pairs, queries and gaps fit); re-running skips
finished runs and resumes interrupted ones, as sweep.py does. Then it writes <results>.md / .csv / .png: final
answer accuracy per backend (mean ± std over seeds) per P, beside the accuracy that needs no recall at all
(data.mqar.elimination_accuracy: guessing among the context's values not yet asked for).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

from matplotlib.figure import Figure

from data.config import MQAR
from data.mqar import elimination_accuracy
from experiments.comparison import ComparisonError, check_comparable, load_run, run_dirs, summarise
from model.attention import BACKENDS
from training.config import load_config
from typedconfig.parsing import ConfigError

SWEEP = Path(__file__).resolve().parent / "sweep.py"


def grid_overrides(pairs: int, base_block: int) -> list[str]:
    return [f"data.mqar.num_pairs={pairs}", f"data.mqar.num_queries={pairs}",
            f"data.block_size={max(base_block, 8 * pairs)}"]


def accuracy_by_backend(sweep_dir: Path) -> dict[str, tuple[float, float, int]]:
    """backend -> (mean, std, runs) of the final val accuracy of the sweep's runs."""
    runs = [load_run(path) for path in run_dirs([sweep_dir])]
    check_comparable(runs)
    return {s.label: (*s.stats["final_val_accuracy"], s.runs) for s in summarise(runs)}


def write_results(grid: dict[int, dict[str, tuple[float, float, int]]], results: Path) -> str:
    """The markdown table (also written to <results>.md), the CSV and the PNG."""
    pairs = sorted(grid)
    backends = [b for b in BACKENDS if any(b in grid[p] for p in pairs)]
    header = "| backend | " + " | ".join(f"{p} pairs" for p in pairs) + " |"
    lines = [header, "|---|" + "---:|" * len(pairs)]
    rows = []
    for backend in backends:
        cells = []
        for p in pairs:
            mean, std, runs = grid[p].get(backend, (float("nan"),) * 3)
            cells.append(f"{mean:.3f}" + (f" ± {std:.3f}" if runs and runs > 1 else ""))
            rows.append({"backend": backend, "num_pairs": p, "accuracy_mean": mean, "accuracy_std": std,
                         "runs": runs, "elimination_accuracy": elimination_accuracy(p, p)})
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    lines.append("| *no recall (elimination)* | " + " | ".join(f"{elimination_accuracy(p, p):.3f}" for p in pairs)
                 + " |")
    table = "\n".join(lines) + "\n"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".md").write_text(table)
    with open(results.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axes = figure.subplots()
    for backend in backends:
        points = [(p, grid[p][backend]) for p in pairs if backend in grid[p]]
        axes.errorbar([p for p, _ in points], [m for _, (m, _, _) in points], yerr=[s for _, (_, s, _) in points],
                      marker="o", capsize=3, label=backend)
    axes.plot(pairs, [elimination_accuracy(p, p) for p in pairs], "k--", label="no recall (elimination)")
    axes.set(xscale="log", xticks=pairs, xticklabels=[str(p) for p in pairs], ylim=(0, 1.02),
             xlabel="key-value pairs (queries = pairs)", ylabel="answer accuracy (val)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(results.with_suffix(".png"), dpi=120)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="an MQAR run config (data.source: mqar), e.g. configs/mqar-cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides for every run")
    parser.add_argument("--pairs", default="2,4,8", help="comma-separated numbers of key-value pairs")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated attention backends")
    parser.add_argument("--seeds", type=int, default=1, help="runs per backend and difficulty")
    parser.add_argument("--out", type=Path, default=Path("runs/sweeps/mqar-grid"), help="where the sweeps go")
    parser.add_argument("--results", type=Path, default=Path("results/mqar"), help="table/CSV/PNG path stem")
    args = parser.parse_intermixed_args(argv)
    try:
        pairs = [int(p) for p in args.pairs.split(",")]
        base = load_config(args.config, args.overrides)
    except (ValueError, ConfigError) as exc:  # ConfigError is a ValueError
        print(f"recall_grid: {exc}", file=sys.stderr)
        return 2
    if base.data.source != MQAR:
        print(f"recall_grid: {args.config} trains on {base.data.source!r}; set data.source=mqar", file=sys.stderr)
        return 2
    grid = {}
    for p in pairs:
        sweep_dir = args.out / f"pairs{p}"
        command = [sys.executable, str(SWEEP), args.config, *args.overrides, *grid_overrides(p, base.data.block_size),
                   "--backends", args.backends, "--seeds", str(args.seeds), "--out", str(sweep_dir)]
        print(f"== {p} pairs: {sweep_dir}", flush=True)
        status = subprocess.run(command).returncode
        if status:
            print(f"recall_grid: the sweep for {p} pairs failed (exit status {status})", file=sys.stderr)
            return status
        try:
            grid[p] = accuracy_by_backend(sweep_dir)
        except ComparisonError as exc:
            print(f"recall_grid: cannot compare the {p}-pair runs: {exc}", file=sys.stderr)
            return 2
    print(write_results(grid, args.results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
