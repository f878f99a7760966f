"""Compare runs by attention backend: a markdown + CSV table and a PNG of the val-loss curves.

    python scripts/compare.py runs/sweeps/shakespeare-cpu              # a sweep directory (scripts/sweep.py)
    python scripts/compare.py runs/a runs/b runs/c --out results/abc   # or run directories

Per backend: final and best val loss and perplexity (and MQAR answer accuracy when logged) as mean ± std over the
runs, tokens, wall time, train tokens/s and peak memory; see training/comparison.py for each definition. Prints
the table and writes comparison.md, comparison.csv and comparison.png to --out (default: the directory that holds
the runs). Runs trained on different data, evaluated on different val windows, with different token budgets or
unfinished are refused (exit status 2).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from training.comparison import (
    ComparisonError, check_comparable, csv_rows, group_by_backend, load_run, markdown_table, run_dirs, summarise,
    val_curve,
)
from training.comparison_plot import plot_val_curves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, or a sweep directory that holds them")
    parser.add_argument("--out", type=Path, help="where the table and figure go (default: the runs' parent)")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(path) for path in run_dirs(args.runs)]
        check_comparable(runs)
    except ComparisonError as exc:
        print(f"cannot compare: {exc}", file=sys.stderr)
        return 2

    summaries = summarise(runs)
    table = markdown_table(summaries)
    data = runs[0].config["data"]
    header = (f"{len(runs)} runs on data.source={data['source']}, block_size {data['block_size']}, "
              f"{runs[0].budget:,} training tokens each, val windows {runs[0].eval_lines[-1].get('val_windows')}; "
              "mean ± std over seeds.\n")
    print(header + "\n" + table, end="")

    out = args.out or Path(os.path.commonpath([run.path.resolve().parent for run in runs]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(f"{header}\n{table}\n![val loss](comparison.png)\n")
    rows = csv_rows(summaries)
    with (out / "comparison.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    groups = group_by_backend(runs)
    plot_val_curves({s.backend: val_curve(groups[s.backend]) for s in summaries}, out / "comparison.png")
    print(f"wrote {out / 'comparison.md'}, comparison.csv, comparison.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
