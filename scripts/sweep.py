"""Train one run per (attention backend, seed) with everything else equal, one after another.

    python scripts/sweep.py CONFIG [--backends softmax,taylor] [--seeds 3] [--out DIR] [--nproc-per-node K]
                            [section.key=value ...]
    python scripts/sweep.py configs/shakespeare-cpu.yaml --seeds 3 --out runs/sweeps/shakespeare-cpu
    python scripts/compare.py runs/sweeps/shakespeare-cpu          # then: the table and the curves

Run directories are <out>/<backend>-seed<k> (train.seed = k); the overrides apply to every run. Running the same
command again skips finished runs and resumes interrupted ones; a run directory that holds a run with other
settings (another override, say) is refused with exit status 2 before anything trains. With --nproc-per-node K
each run is launched under torchrun with K processes. wandb (logging.wandb=offline|online) groups the runs under
<out>'s name and tags each with its backend. See experiments/sweep.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.sweep import Launcher, RunMismatch, check_reusable, is_finished, parse_backends, plan, train_command
from fileio.folders import OutFolderError, check_out_folder
from model.attention import BACKENDS
from training.metrics import MetricsError
from typedconfig.cli import ArgumentParser, parse_with_overrides, path_argument
from typedconfig.parsing import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="sweep", description=__doc__)
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides for every run")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated attention backends")
    parser.add_argument("--seeds", type=int, default=3, help="runs per backend, with train.seed 0 .. SEEDS-1")
    parser.add_argument("--out", type=path_argument, help="sweep directory (default: runs/sweeps/<config name>)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes per run (torchrun) when > 1")
    args = parse_with_overrides(parser, argv)  # --section.key=value too, as train.py takes it
    if args.nproc_per_node < 1:
        parser.error(f"--nproc-per-node must be >= 1 (processes per run), got {args.nproc_per_node}")
    out = args.out or Path("runs/sweeps") / Path(args.config).stem
    try:
        check_out_folder(out, "the sweep's run directories")
        runs = plan(args.config, parse_backends(args.backends), args.seeds, out, args.overrides)
        for run in runs:
            check_reusable(run)
        finished = [is_finished(run) for run in runs]  # reads the records of runs without checkpoints
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (RunMismatch, MetricsError) as exc:
        print(f"cannot reuse: {exc}", file=sys.stderr)
        return 2
    except OutFolderError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2

    launcher, failed = Launcher(), []
    for i, run in enumerate(runs, 1):
        if finished[i - 1]:
            print(f"[{i}/{len(runs)}] {run.name}: finished ({run.config.train.max_steps} steps), skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {run.name}", flush=True)
        status = launcher.run(train_command(args.config, run, args.nproc_per_node))
        if launcher.stopped:
            print(f"sweep stopped during {run.name}; run the same command again to continue", file=sys.stderr)
            return status or 130
        if status:
            print(f"{run.name} failed (exit status {status}); going on with the next run", file=sys.stderr)
            failed.append(run.name)
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"sweep done: {len(runs)} runs in {out}; compare them with: python scripts/compare.py {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
