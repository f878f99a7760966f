"""Solve every (layer, head, problem, j, method) of an extraction with several seeds, plus the synthetic controls,
and write the report (markdown, CSV, PNGs; see evals/report.py).

    python -m evals.run --extracted DIR --out results/solvers
    python -m evals.run --ckpt runs/x --layers 0,3 --heads all --windows 64 --out DIR   # extracts to DIR/extracted
    python -m evals.run --rescore results/solvers --out results/solvers   # score a report's rows again, no solving

Each seed draws a new right-hand side b ~ N(0, I) and a new sketch. Every solve is scored by the paper's criterion
(`score` in evals/problems.py: relres for (a) and (c), pred_err for (b)) and succeeds where its score is <= eps;
`success_10eps` counts the scores <= 10 eps too. Beside each instance stands the a-priori worst-case prediction
`float64_predicted_ok` (eps >= 100 u κ(M)), which the report checks against what was measured. Timings run on
`--threads` BLAS threads (1 by default: steadier on small CPUs), after one warm-up solve per method.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from evals import problems as P
from evals import report
from evals import synthetic as syn
from evals.extract import extract, load_extracted
from evals.instances import Instance, check_rows, distinct_rows, from_extraction, synthetic_controls
from evals.methods import get_method
from evals.solve import METHODS, NotApplicable, solve
from fileio.atomic import write_text_atomic
from fileio.folders import check_out_folder
from fileio.pages import opening, this_machine, today
from training.checkpoint import CheckpointError
from typedconfig.cli import ArgumentParser, path_argument

LOOSE_FACTOR = 10.0  # success_10eps: score <= 10 eps
SETTINGS = "report.json"  # the run's settings, beside the report
# the exp-kernel methods timed against n (KernelMethod.timed_against_n)
KERNEL_METHODS = tuple(name for name in METHODS["exp_kernel"] if get_method("exp_kernel", name).timed_against_n)


def rhs_for(instance: Instance, seed: int) -> torch.Tensor:
    n, d = instance.A.shape
    return syn.rhs(d if instance.problem == "gram_power" else n, seed)


def scoring(row: dict[str, Any], eps: float) -> dict[str, Any]:
    """The scoring columns of one solve from its row (problem, method, kappa_M, and for an applicable method its
    metrics): the float64 prediction, whether the score is independent of the method (P.scored_independently), the
    score, success (score <= eps) and success_10eps."""
    shares_reference = get_method(row["problem"], row["method"]).shares_reference
    out = {"float64_predicted_ok": P.float64_predicted_ok(row["kappa_M"], eps),
           "scored_independently": P.scored_independently(row["problem"], shares_reference)}
    if row["applicable"]:
        value = P.score(row["problem"], row)
        out.update(score=value, success=value <= eps, success_10eps=value <= LOOSE_FACTOR * eps)
    return out


def evaluate(instance: Instance, *, seeds: int, eps: float, maxiter: int) -> list[dict[str, Any]]:
    """One row per (j, seed, method): the SolveInfo, the metrics against the float64 reference, the scoring."""
    rows, reference = [], P.Reference(instance.problem, instance.A)
    for j in instance.js:
        cond = reference.conditioning(j)
        for seed in range(seeds):
            b = rhs_for(instance, seed)
            x_ref, opt = reference.solution(b, j), reference.optimum(b)
            for method in METHODS[instance.problem]:
                row = {"source": instance.source, "label": instance.label, "layer": instance.layer,
                       "head": instance.head, "problem": instance.problem, "j": j, "method": method, "seed": seed,
                       "n": instance.A.shape[0], "d": instance.A.shape[1], **cond,
                       "shared_factor": reference.shares_factor(get_method(instance.problem, method))}
                rows.append(solve_row(row, instance.A, b, x_ref, opt, eps=eps, maxiter=maxiter))
    return rows


def solve_row(row: dict[str, Any], A: torch.Tensor, b: torch.Tensor, x_ref: torch.Tensor, opt: float, *,
              eps: float, maxiter: int) -> dict[str, Any]:
    """`row` (the instance's columns, method and seed) completed by one solve. A method that does not apply gets
    applicable = False; one that raises a solver or LAPACK error (a rank-deficient A, say) a failed solve with the
    reason in `error`, so that one bad instance costs its own rows and never the report (a float division by zero
    or overflow on a degenerate instance included)."""
    problem, j = row["problem"], row["j"]
    try:
        x, info = solve(problem, A, b, j=j, eps=eps, method=row["method"], seed=row["seed"], maxiter=maxiter)
    except NotApplicable:
        row = {**row, "applicable": False}
        return {**row, **scoring(row, eps)}
    except (P.SolverError, torch.linalg.LinAlgError, ArithmeticError) as exc:
        row = {**row, "applicable": True, "relres": math.nan, "pred_err": math.nan, "fwd_err": math.nan,
               "subopt": math.nan}
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return {**row, **scoring(row, eps), "converged": False, "error": reason}
    row = {**row, "applicable": True, **P.metrics(problem, A, b, x, x_ref, j, opt)}
    return {**row, **scoring(row, eps), "converged": info.converged,
            "iterations": info.as_dict()["iterations_total"], "iterations_per_stage": info.iterations,
            "passes": info.passes, "time_sketch": info.time_sketch, "time_factor": info.time_factor,
            "time_iterate": info.time_iterate, "time_total": info.time_total, "kappa_precond": info.kappa_precond}


def rescore(rows: list[dict[str, Any]], eps: float) -> list[dict[str, Any]]:
    """Per-seed rows of an earlier report with their scoring columns computed again from the stored metrics."""
    return [{**row, **scoring(row, eps)} for row in rows]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a report CSV with their values typed again: numbers, booleans, JSON dicts; empty cells None.
    Raises ValueError, naming the row, for a row with fewer or more cells than the header (a file cut short)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows, 2):
        if None in row or None in row.values():
            raise ValueError(f"{path}, line {number}: not as many cells as the header has (a file cut short?)")
    return [{key: _typed(text) for key, text in row.items()} for row in rows]


def _typed(text: str) -> Any:
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    if text.startswith("{"):
        return json.loads(text)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def time_vs_n(A: torch.Tensor, problem: str, sizes: Iterable[int], *, eps: float, repeats: int = 3,
              methods: Iterable[str] | None = None, maxiter: int = 2000) -> list[dict[str, Any]]:
    """Median wall time (of `repeats`) per method on the first n rows of A, for each n in `sizes` (those <= n)."""
    rows = []
    for n in (n for n in sizes if n <= A.shape[0]):
        sub = A[:n]
        b = syn.rhs(sub.shape[1] if problem == "gram_power" else n, 0)
        try:  # rows stacked from every window: a later window's keys may pose no instance (a norm past 709.78)
            P.check_problem(problem, sub, b, 1)
        except P.SolverError as exc:
            print(f"evals.run: no {problem} timing at n = {n}: {exc}", flush=True)
            continue
        for method in methods or METHODS[problem]:
            runs = []
            for _ in range(repeats):
                try:
                    x, info = solve(problem, sub, b, eps=eps, method=method, maxiter=maxiter, diagnostics=False)
                except NotApplicable:
                    break
                runs.append(info)
            if runs:
                rows.append({"problem": problem, "method": method, "n": n, "d": sub.shape[1],
                             "time": statistics.median(r.time_total for r in runs), "relres": runs[0].relres,
                             "iterations": sum(runs[0].iterations.values()), "converged": runs[0].converged})
                if problem == "exp_kernel":
                    rows[-1]["scaled_relres"] = P.scaled_relres(sub, x, b)
    return rows


def _warm_up() -> None:
    """One small solve per method, so that the first timed solve does not pay for lazy initialisation."""
    for problem in P.PROBLEMS:
        A = syn.exp_rows(64, 8, 0.5, 1.0) if problem == "exp_kernel" else syn.conditioned(256, 8, 10.0)
        b = syn.rhs(8 if problem == "gram_power" else A.shape[0])
        for method in METHODS[problem]:
            try:
                solve(problem, A, b, method=method)
            except NotApplicable:
                pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m evals.run", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--extracted", type=path_argument, help="an extraction directory (python -m evals.extract)")
    source.add_argument("--ckpt", help="a run or checkpoint directory: extract first, into OUT/extracted")
    source.add_argument("--rescore", type=path_argument,
                        help="a report directory: score its per-seed rows again with its eps and the current "
                        "scoring (no solving), and write the report")
    # None stands for "not given": with --extracted or --rescore these would select nothing, so giving them is an error
    parser.add_argument("--layers", help="with --ckpt: layers to extract (default: all)")
    parser.add_argument("--heads", help="with --ckpt: heads to extract (default: all)")
    parser.add_argument("--windows", type=int, help="with --ckpt: val windows to extract (default: 64)")
    parser.add_argument("--out", type=path_argument, required=True,
                        help="report directory (created; files are replaced)")
    parser.add_argument("--seeds", type=int, default=3, help="right-hand sides and sketches per instance (>= 1)")
    parser.add_argument("--eps", type=float, default=1e-8, help="target relative accuracy, in (0, 1)")
    parser.add_argument("--j", default="1,2", help="powers j for gram_power and a_gram_power")
    parser.add_argument("--maxiter", type=int, default=500, help="iterations per Krylov stage")
    parser.add_argument("--max-rows", type=int, default=None, help="use at most this many stacked rows of K and X")
    parser.add_argument("--no-hidden-states", action="store_true", help="skip the X (hidden state) instances")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic controls")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads while solving")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.maxiter < 1 or args.threads < 1:
        parser.error("--seeds, --maxiter and --threads must be >= 1")
    if not 0 < args.eps < 1:  # also rejects nan; x = 0 already has relres 1
        parser.error(f"--eps must be a relative accuracy in (0, 1), got {args.eps:g}")
    selection = [flag for flag, value in (("--layers", args.layers), ("--heads", args.heads),
                                          ("--windows", args.windows)) if value is not None]
    if selection and not args.ckpt:
        parser.error(f"{', '.join(selection)} only select what --ckpt extracts; the report solves every layer, head "
                     "and window of an extraction, so drop them or extract the selection first "
                     "(python -m evals.extract --layers ... --heads ... --windows ...)")
    solving = ("seeds", "eps", "j", "maxiter", "max_rows", "no_hidden_states", "no_synthetic", "threads")
    given = [f"--{name.replace('_', '-')}" for name in solving if getattr(args, name) != parser.get_default(name)]
    if args.rescore and given:  # the rows were solved with the report's own settings, which the rescore keeps
        parser.error(f"{', '.join(given)} set how instances are solved; --rescore scores the rows of "
                     f"{args.rescore} again with the settings they were solved with: drop them, or solve anew")
    args.layers = "all" if args.layers is None else args.layers
    args.heads = "all" if args.heads is None else args.heads
    args.windows = 64 if args.windows is None else args.windows
    if args.max_rows is not None and args.max_rows < 1:
        parser.error(f"--max-rows must be >= 1, got {args.max_rows}")
    if args.windows < 1:
        parser.error(f"--windows must be >= 1 (val windows to extract), got {args.windows}")
    try:
        args.js = tuple(sorted({int(v) for v in args.j.split(",")}))
    except ValueError:
        parser.error(f"--j takes comma-separated integers >= 1, got {args.j!r}")
    if min(args.js) < 1:
        parser.error(f"--j takes integers >= 1, got {args.j!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "evals.run", *(sys.argv[1:] if argv is None else argv)])
    made = [folder for folder in (args.out, *args.out.parents) if not folder.exists()]  # deepest first
    try:
        writable_folder(args.out)  # before the solves: a report that cannot be written would lose hours of them
    except ValueError as exc:
        print(f"evals.run: {exc}", file=sys.stderr)
        return 2
    code = _rescore(args.rescore, args.out, command) if args.rescore else _solve(args, command)
    if code:  # refused: the folders made for the report go again, as far as nothing was written into them
        with contextlib.suppress(OSError):
            for folder in made:
                folder.rmdir()
    return code


def _solve(args: argparse.Namespace, command: str) -> int:
    """The extraction (from --ckpt, or --extracted), the solves and the report; 2 where the input is refused."""
    torch.set_num_threads(args.threads)
    try:
        extracted = args.extracted
        rows_fit = functools.partial(check_rows, max_rows=args.max_rows, hidden_states=not args.no_hidden_states)
        if args.ckpt:  # --max-rows checked against the shapes to come, before the extraction's minutes
            extracted = extract(args.ckpt, args.out / "extracted", layers=args.layers, heads=args.heads,
                                windows=args.windows, force=True, check_planned=rows_fit)
        manifest, extraction = load_extracted(extracted)
        rows_fit(manifest)
    except (ValueError, CheckpointError) as exc:
        print(f"evals.run: {exc}", file=sys.stderr)
        return 2
    _warm_up()
    instances = list(from_extraction(extraction, js=args.js, max_rows=args.max_rows,
                                     hidden_states=not args.no_hidden_states))
    if not args.no_synthetic:
        instances += list(synthetic_controls(js=args.js))
    rows, start = [], time.perf_counter()
    for i, instance in enumerate(instances, 1):
        rows += evaluate(instance, seeds=args.seeds, eps=args.eps, maxiter=args.maxiter)
        print(f"[{i}/{len(instances)}] {instance.source} {instance.label} {instance.problem} "
              f"{tuple(instance.A.shape)} ({time.perf_counter() - start:.0f} s)", flush=True)
    first = instances[0]
    keys = extraction.k(first.layer, first.head).double()[: args.max_rows]
    timing = time_vs_n(keys, "a_gram_power", (1024, 4096, 16384, 65536, 262144), eps=args.eps)
    kernel_keys = distinct_rows(keys) * keys.shape[1] ** -0.25
    timing += time_vs_n(kernel_keys, "exp_kernel", (128, 256, 512, 1024, 2048),
                        eps=args.eps, methods=KERNEL_METHODS, maxiter=args.maxiter)
    settings = {"manifest": manifest, "eps": args.eps, "seeds": args.seeds, "threads": args.threads, "j": list(args.js),
                "maxiter": args.maxiter, "max_rows": args.max_rows, "hidden_states": not args.no_hidden_states,
                "command": command, "machine": this_machine(), "date": today()}
    _write(args.out, rows, timing, settings)
    return 0


def _rescore(source: Path, out: Path, command: str) -> int:
    try:
        settings = json.loads((source / SETTINGS).read_text())
        eps = settings["eps"]
        rows, timing = read_rows(source / "solvers_runs.csv"), read_rows(source / "time_vs_n.csv")
        if not rows:
            raise ValueError("solvers_runs.csv holds no rows")
        rescored = rescore(rows, eps)
        opening_of(settings)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # ValueError: JSON that does not parse, SolverError
        print(f"evals.run: {source} is not a solver report that this version can rescore ({type(exc).__name__}: "
              f"{exc}); solve it anew", file=sys.stderr)
        return 2
    settings["rescored"] = {"command": command, "machine": this_machine(), "date": today()}
    _write(out, rescored, timing, settings)
    return 0


def writable_folder(out: Path) -> None:
    """Make the report's folder, or raise ValueError saying why it cannot hold the report."""
    check_out_folder(out, "the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out} cannot be created ({exc.strerror}); give a writable folder") from None


def _write(out: Path, rows: list[dict[str, Any]], timing: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """The report, and its settings (SETTINGS) so that --rescore can write it again."""
    synthetic = any(row["source"] == "synthetic" for row in rows)
    paths = report.write(out, rows, timing, opening=opening_of(settings, synthetic=synthetic), eps=settings["eps"])
    write_text_atomic(out / SETTINGS, json.dumps(settings, indent=2) + "\n")
    print(f"evals.run: wrote {', '.join(str(p) for p in [*paths, out / SETTINGS])}")


def opening_of(settings: dict[str, Any], *, synthetic: bool = True) -> str:
    """The report page's heading and the line saying what was measured (the synthetic controls only where the rows
    have them), how, on what and when."""
    manifest = settings["manifest"]
    ckpt, windows = manifest["checkpoint"], manifest["windows"]
    controls = " and on synthetic controls" if synthetic else ""
    measured = (f"every solver of evals/ on every layer and head's matrices{controls}, float64, "
                f"eps = {settings['eps']:g}, {settings['seeds']} seeds (right-hand side and sketch) per instance, "
                f"{settings['threads']} CPU thread(s)")
    rescored = settings.get("rescored")
    if rescored:
        measured += (f"; the per-seed rows re-scored without solving again by `{rescored['command']}` on "
                     f"{rescored['machine']}, {rescored['date']}")
    config = (f"checkpoint `{ckpt['path']}` (step {ckpt['step']}, attention `{manifest['attention']['backend']}`), "
              f"layers {manifest['layers']}, heads {manifest['heads']}, {windows['count']} val windows of "
              f"{windows['block_size']} tokens")
    # reports written before these settings were recorded have none; a --max-rows above the rows cuts nothing
    if settings.get("max_rows") and settings["max_rows"] < windows["count"] * windows["block_size"]:
        config += f", each matrix's first {settings['max_rows']:,} rows (--max-rows)"
    if settings.get("hidden_states") is False:
        config += ", the hidden states X not solved (--no-hidden-states)"
    return opening("Regression-proxy solvers on attention matrices", measured, settings["command"], config,
                   settings["machine"], settings["date"])


if __name__ == "__main__":
    sys.exit(main())
