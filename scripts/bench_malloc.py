"""Training steps with glibc's malloc unchanged against training/malloc.py's settings (train.py's on the CPU).

    python scripts/bench_malloc.py                                  # the demo and GPT-2 small shapes, bf16, 1 thread
    python scripts/bench_malloc.py --shapes demo --threads 2 --rounds 5

malloc's settings hold for a whole process, so each measurement is a fresh run of scripts/bench_train.py with
`--malloc kept` or `--malloc unchanged`; the two take turns in every round, so that load from other processes slows
both alike. Reports per shape and setting the median step time over the rounds, tokens/s, the kept/unchanged
ratio of step times (median over rounds of the ratio within a round), and the peak resident memory of the
bench_train.py process (VmHWM, largest over the rounds).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.bench_shapes import SHAPES
from fileio.pages import command_line, load_since, page_file, write_page
from fileio.tables import cell, markdown_table, range_cell

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("unchanged", "kept")


def run_bench_train(shape: str, setting: str, args: argparse.Namespace, out: Path) -> dict:
    """One bench_train.py process; its CSV row (with the process's peak resident memory)."""
    command = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--shapes", shape, "--threads",
               str(args.threads), "--dtypes", args.dtype, "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--malloc", setting, "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"bench_train.py failed for {shape} with --malloc {setting}:\n{result.stderr[-2000:]}")
    with open(page_file(out, ".csv"), newline="") as handle:
        return next(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=["demo", "gpt2-small"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="results/bench_malloc")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for shape in args.shapes:
            found = {setting: [] for setting in SETTINGS}
            for round_ in range(args.rounds):
                for setting in SETTINGS:
                    row = run_bench_train(shape, setting, args, Path(scratch) / f"{shape}-{setting}")
                    if row["malloc"] != setting:
                        sys.exit(f"malloc could not be set up here (bench_train.py reports {row['malloc']!r}; "
                                 "training/malloc.py says where it is left alone)")
                    found[setting].append((float(row["step_s"]), int(row["peak_rss_mib"])))
                    print(shape, setting, f"round {round_}: step {row['step_s']} s, peak RSS {row['peak_rss_mib']} "
                          "MiB", flush=True)
            ratios = [kept[0] / unchanged[0] for kept, unchanged in zip(found["kept"], found["unchanged"])]
            for setting in SETTINGS:
                step_s = statistics.median(step for step, _ in found[setting])
                is_kept = setting == "kept"
                low, ratio, high = (min(ratios), statistics.median(ratios), max(ratios)) if is_kept else (1.0,) * 3
                rows.append(dict(shape=shape, malloc=setting, threads=args.threads, dtype=args.dtype,
                                 step_s=round(step_s, 4), tokens_per_s=round(SHAPES[shape].tokens / step_s, 1),
                                 time_vs_unchanged=round(ratio, 3), time_vs_unchanged_min=round(low, 3),
                                 time_vs_unchanged_max=round(high, 3),
                                 peak_rss_mib=max(rss for _, rss in found[setting])))

    # the range over rounds says whether they told the settings apart (a range that holds 1 did not)
    table = markdown_table(
        ["shape", "malloc", "step s", "tokens/s", "step time / unchanged's", "range over rounds", "peak RSS MiB"],
        [[r["shape"], "glibc's, unchanged" if r["malloc"] == "unchanged" else "freed memory kept (train.py)",
          r["step_s"], cell(r["tokens_per_s"], "int"), cell(r["time_vs_unchanged"], "x"),
          range_cell(r["time_vs_unchanged_min"], r["time_vs_unchanged_max"], "x") if r["malloc"] == "kept"
          else "(the reference)",
          f"{r['peak_rss_mib']:,}"] for r in rows])
    config = (f"{args.dtype}, {args.threads} thread(s), {args.rounds} rounds of one process per setting, each the "
              f"median of {args.steps} steps after {args.warmup} warm-up steps; torch "
              f"{importlib.metadata.version('torch')}; {load_since(load_start)}")
    write_page(args.out, rows, title="Training steps with freed memory kept",
               measured="seconds of a training step (forward, backward, AdamW) and peak resident memory, glibc's "
               "malloc unchanged against training/malloc.py's settings",
               command=command_line(__file__, argv), config=config, body=table)
    print(table)


if __name__ == "__main__":
    main()
