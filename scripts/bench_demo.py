"""The CPU demo end to end (`make train`'s run) from this working tree and from a baseline revision, taking turns.

    python scripts/bench_demo.py --baseline-rev db67ac5                      # configs/shakespeare-cpu.yaml, 1 round
    python scripts/bench_demo.py --baseline-rev HEAD --rounds 2 train.max_steps=50

Each run is `python train.py CONFIG [OVERRIDES] logging.progress=false train.out_dir=FRESH`, a fresh process, from
this working tree and from the baseline's tree (git archive); the trees take turns, in swapped order every other
round, so that load from other processes slows both alike. Before the timed rounds each tree prepares its data in
an untimed one-step run, so that neither pays for it. Per run: the process's wall time (start-up, evaluations, checkpoints and the sample
included), the time in training steps (`elapsed` in the run's metrics.jsonl), the median tokens/s of its log windows
after the first (warm-up) one, and the final val loss. The overrides go to both trees: use only keys the baseline's
config knows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments.revision import baseline_commit, extract_revision
from fileio.pages import REPO, code_revision, command_line, load_since, write_page
from fileio.tables import cell, markdown_table


def train_once(tree: Path, config: str, out_dir: Path, overrides: list[str]) -> float:
    """Wall seconds of one `python train.py` from `tree`, writing its run to out_dir."""
    # the run's own settings last, so that no override moves its output or turns its progress bar on
    command = [sys.executable, "train.py", config, *overrides, "logging.progress=false", f"train.out_dir={out_dir}"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=tree, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tree)})
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"train.py from {tree} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return wall


def run_record(out_dir: Path) -> dict:
    """Time in steps, median tokens/s of the log windows after the first, and the final val loss of a finished run."""
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    windows = [line["tokens_per_s"] for line in lines if "tokens_per_s" in line][1:]
    if not windows:
        raise SystemExit(f"{out_dir / 'metrics.jsonl'} has fewer than two log windows: train for more steps")
    return dict(steps_s=max(line.get("elapsed", 0.0) for line in lines),
                tokens_per_s=statistics.median(windows), tokens_per_s_min=min(windows),
                tokens_per_s_max=max(windows), val_loss=[line["val_loss"] for line in lines if "val_loss" in line][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both trees' runs")
    parser.add_argument("--baseline-rev", required=True, help="git revision whose demo is run beside this tree's")
    parser.add_argument("--config", default="configs/shakespeare-cpu.yaml")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="results/bench_demo")
    args = parser.parse_intermixed_args()  # overrides may stand on either side of the options
    args.baseline_rev = baseline_commit(parser, args.baseline_rev)  # the page names the commit, not a moving name

    load_start = os.getloadavg()[0]
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"this tree": REPO, f"baseline {args.baseline_rev}": extract_revision(args.baseline_rev, Path(scratch))}
        for index, tree in enumerate(trees.values()):  # untimed: prepares each tree's data
            train_once(tree, args.config, Path(scratch) / f"warm-{index}", [*args.overrides, "train.max_steps=1"])
        turns = list(enumerate(trees.items()))
        for round_ in range(args.rounds):
            for index, (name, tree) in turns[::-1] if round_ % 2 else turns:
                out_dir = Path(scratch) / f"run-{round_}-{index}"
                wall = train_once(tree, args.config, out_dir, args.overrides)
                records.append(dict(tree=name, round=round_, wall_s=wall, **run_record(out_dir)))
                print(records[-1], flush=True)

    ours, base = (([r for r in records if r["tree"] == name]) for name in trees)
    speedups = {"tokens/s": statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, base)),
                "steps": statistics.median(b["steps_s"] / a["steps_s"] for a, b in zip(ours, base)),
                "whole run": statistics.median(b["wall_s"] / a["wall_s"] for a, b in zip(ours, base))}
    rows = []
    for name, found in zip(trees, (ours, base)):
        low, high = min(r["tokens_per_s_min"] for r in found), max(r["tokens_per_s_max"] for r in found)
        rows.append([name, cell(statistics.median(r["wall_s"] for r in found)),
                     cell(statistics.median(r["steps_s"] for r in found)),
                     f"{statistics.median(r['tokens_per_s'] for r in found):,.0f} ({low:,.0f}–{high:,.0f})",
                     ", ".join(f"{r['val_loss']:.4f}" for r in found)])
    header = ["tree", "whole run, s", "in steps, s", "tokens/s, median (range) of windows", "final val loss"]
    table = markdown_table(header, rows, right=header[1:4])
    summary = ("This tree's speed / the baseline's (tokens/s, or the baseline's time / this tree's), median over "
               "rounds of the within-round ratio: "
               + "; ".join(f"{what} {cell(value, 'x')}" for what, value in speedups.items()) + ".")
    config = (f"{args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''}, this tree at "
              f"{code_revision()}, torch's default threads ({torch.get_num_threads()} on {os.cpu_count()} CPUs) "
              f"unless the config sets train.threads, {args.rounds} round(s), the trees taking turns after an untimed "
              f"one-step run each; {load_since(load_start)}")
    write_page(args.out, records, title="The CPU demo end to end, beside a baseline revision",
               measured="wall time of `python train.py` (whole run), its time in training steps, the median tokens/s "
               "of its log windows after the first, and its final val loss, from this tree and from the baseline's",
               command=command_line(__file__), config=config, body=table + "\n\n" + summary)
    print(table + "\n\n" + summary)


if __name__ == "__main__":
    main()
