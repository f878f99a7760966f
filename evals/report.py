"""The solver report: per-seed rows aggregated per (instance, problem, j, method), markdown + CSV tables, PNGs.

Files written into the report directory (each written to a temporary name, then renamed):
    solvers.md             summary tables (checkpoint instances by problem / j / method; synthetic controls per
                           instance; time against n), with the run's settings
    solvers.csv            one row per (instance, problem, j, method): κ(A), κ(M), status, success rate, median and
                           worst score, iterations, passes, time split, speed-up against the direct reference
    solvers_runs.csv       one row per seed
    time_vs_n.csv          median time per (problem, method, n)
    iterations_vs_kappa.png, time_vs_n.png
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from evals.solve import DIRECT
from fileio.atomic import write_text_atomic
from fileio.tables import cell, csv_text, markdown_table

REFERENCE_METHOD = {"gram_power": "qr", "a_gram_power": "qr", "exp_kernel": "cholesky"}
INSTANCE_KEYS = ("source", "label", "layer", "head", "problem", "j")


def _median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (instance, j, method) over its seeds; speed-up = the reference method's median time on the
    same instance / this method's."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in INSTANCE_KEYS) + (row["method"],)].append(row)
    out = []
    for key, runs in groups.items():
        first = runs[0]
        solved = [r for r in runs if r["status"] != "n/a"]
        record = {k: first[k] for k in INSTANCE_KEYS}
        record.update(method=first["method"], n=first["n"], d=first["d"], status=first["status"],
                      kappa_A=first.get("kappa_A", math.nan), kappa_KG=first.get("kappa_KG", math.nan),
                      kappa_M=first["kappa_M"], row_norm_sq_min=first["row_norm_sq_min"],
                      row_norm_sq_max=first["row_norm_sq_max"], seeds=len(runs))
        if solved:
            scores = [r["score"] for r in solved]
            record.update(success_rate=sum(r["success"] for r in solved) / len(solved),
                          median_score=_median(scores), worst_score=max(scores),
                          median_relres=_median(r["relres"] for r in solved),
                          median_fwd_err=_median(r["fwd_err"] for r in solved),
                          median_iterations=_median(r["iterations"] for r in solved),
                          median_passes=_median(r["passes"] for r in solved),
                          time_sketch=_median(r["time_sketch"] for r in solved),
                          time_factor=_median(r["time_factor"] for r in solved),
                          time_iterate=_median(r["time_iterate"] for r in solved),
                          time_total=_median(r["time_total"] for r in solved),
                          kappa_precond=_median(r["kappa_precond"] for r in solved))
        out.append(record)
    reference_time = {tuple(r[k] for k in INSTANCE_KEYS): r.get("time_total") for r in out
                      if r["method"] == REFERENCE_METHOD[r["problem"]]}
    for r in out:
        ref = reference_time.get(tuple(r[k] for k in INSTANCE_KEYS))
        r["speedup_vs_reference"] = ref / r["time_total"] if ref and r.get("time_total") else math.nan
    return out


def summarise(records: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Per (problem, j, method) over the instances of `source`: how many were scored (not beyond float64, method
    applicable), the success rate over their solves, and medians of score, iterations and speed-up."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["source"] == source:
            groups[(r["problem"], r["j"], r["method"])].append(r)
    out = []
    for (problem, j, method), recs in sorted(groups.items(), key=lambda kv: (_problem_order(kv[0][0]),) + kv[0][1:]):
        scored = [r for r in recs if r["status"] not in ("beyond float64", "n/a")]
        out.append({"problem": problem, "j": j, "method": method, "instances": len(recs), "scored": len(scored),
                    "success_rate": _median([r["success_rate"] for r in scored]) if scored else math.nan,
                    "all_succeeded": sum(r["success_rate"] == 1.0 for r in scored),
                    "median_score": _median(r["median_score"] for r in scored),
                    "median_iterations": _median(r.get("median_iterations") for r in scored),
                    "median_time_ms": 1e3 * _median(r.get("time_total") for r in scored),
                    "median_speedup": _median(r["speedup_vs_reference"] for r in scored)})
    return out


def _problem_order(problem: str) -> int:
    return list(REFERENCE_METHOD).index(problem)


# -------------------------------------------------------------------------------------------------------- writing

def write(out: Path, rows: list[dict[str, Any]], timing: list[dict[str, Any]], *, manifest: dict[str, Any],
          eps: float, threads: int, seeds: int, success_factor: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    records = aggregate(rows)
    texts = {"solvers.md": markdown(records, timing, manifest=manifest, eps=eps, threads=threads, seeds=seeds,
                                    success_factor=success_factor),
             "solvers.csv": csv_text(records), "solvers_runs.csv": csv_text(rows),
             "time_vs_n.csv": csv_text(timing)}
    paths = []
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        paths.append(out / name)
    paths.append(plot_iterations_vs_kappa(records, out / "iterations_vs_kappa.png"))
    paths.append(plot_time_vs_n(timing, out / "time_vs_n.png"))
    return paths


def markdown(records: list[dict[str, Any]], timing: list[dict[str, Any]], *, manifest: dict[str, Any], eps: float,
             threads: int, seeds: int, success_factor: float) -> str:
    ckpt, windows = manifest["checkpoint"], manifest["windows"]
    parts = [
        "# Regression-proxy solvers on attention matrices",
        "",
        f"Checkpoint `{ckpt['path']}` (step {ckpt['step']}, attention `{manifest['attention']['backend']}`), "
        f"layers {manifest['layers']}, heads {manifest['heads']}, {windows['count']} val windows of "
        f"{windows['block_size']} tokens. Float64, eps = {eps:g}, {seeds} seeds (right-hand side and sketch) per "
        f"instance, {threads} CPU thread(s). Scores: relres for gram_power, pred_err for a_gram_power, relres (or "
        f"the Jacobi-scaled relres where marked `scaled`) for exp_kernel; a solve succeeds when it converged with "
        f"score <= {success_factor:g}·eps. Instances with eps < 100·u·κ(M) are `beyond float64` and not scored. "
        "Speed-up is against Householder QR (a, b) or Jacobi-scaled Cholesky (c) on the same instance.",
        "",
        "## Checkpoint matrices: summary over layers and heads",
        "",
    ]
    header = ["problem", "j", "method", "instances", "scored", "all seeds ok", "success", "median score",
              "median iters", "median ms", "speed-up"]
    parts.append(markdown_table(header, [
        [s["problem"], s["j"], s["method"], s["instances"], s["scored"], s["all_succeeded"],
         cell(s["success_rate"], "pct"), cell(s["median_score"], "e"), cell(s["median_iterations"], "int"),
         cell(s["median_time_ms"]), cell(s["median_speedup"], "x")] for s in summarise(records, "checkpoint")]))
    parts += ["", "## Checkpoint matrices: conditioning", ""]
    seen, cond_rows = set(), []
    for r in records:
        key = (r["label"], r["problem"], r["j"])
        if r["source"] == "checkpoint" and key not in seen:
            seen.add(key)
            kappa = r["kappa_KG"] if r["problem"] == "exp_kernel" else r["kappa_A"]
            cond_rows.append([r["label"], r["problem"], str(r["j"]), f"{r['n']}×{r['d']}", cell(kappa, "e"),
                              cell(r["kappa_M"], "e"), cell(r["row_norm_sq_min"]), cell(r["row_norm_sq_max"]),
                              r["status"]])
    parts.append(markdown_table(["matrix", "problem", "j", "n×d", "κ(A) (c: κ(K_G))", "κ(M)", "min ‖a‖²",
                                 "max ‖a‖²", "status"], cond_rows))
    parts += ["", "## Synthetic controls", ""]
    synth = [r for r in records if r["source"] == "synthetic"]
    parts.append(markdown_table(
        ["instance", "problem", "j", "κ(A) (c: κ(K_G))", "κ(M)", "status", "method", "success", "median score",
         "worst", "iters", "ms", "κ(AR⁻¹)", "speed-up"],
        [[r["label"], r["problem"], str(r["j"]),
          cell(r["kappa_KG"] if r["problem"] == "exp_kernel" else r["kappa_A"], "e"), cell(r["kappa_M"], "e"),
          r["status"], r["method"], cell(r.get("success_rate"), "pct"), cell(r.get("median_score"), "e"),
          cell(r.get("worst_score"), "e"), cell(r.get("median_iterations"), "int"),
          cell(1e3 * r["time_total"] if r.get("time_total") is not None else None), cell(r.get("kappa_precond")),
          cell(r["speedup_vs_reference"], "x")] for r in synth]))
    parts += ["", "## Time against n (first checkpoint head's keys; median of 3)", ""]
    parts.append(markdown_table(["problem", "method", "n", "d", "ms", "iterations", "relres", "converged"],
                                [[t["problem"], t["method"], t["n"], t["d"], cell(1e3 * t["time"]), t["iterations"],
                                  cell(t["relres"], "e"), t["converged"]] for t in timing]))
    parts += ["", "![iterations against κ](iterations_vs_kappa.png)", "", "![time against n](time_vs_n.png)", ""]
    return "\n".join(parts)


def plot_iterations_vs_kappa(records: list[dict[str, Any]], path: Path) -> Path:
    """Median iterations of every iterative method against κ(A) (a and b, j = 1) and κ(K_G) (c)."""
    figure = Figure(figsize=(13, 4.2), layout="constrained")
    panels = figure.subplots(1, 3)
    for axes, problem in zip(panels, REFERENCE_METHOD):
        by_method: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in records:
            if r["problem"] == problem and r["j"] == 1 and r["method"] not in DIRECT and r.get("median_iterations"):
                kappa = r["kappa_KG"] if problem == "exp_kernel" else r["kappa_A"]
                if math.isfinite(kappa):
                    by_method[r["method"]].append((kappa, r["median_iterations"]))
        for method, points in sorted(by_method.items()):
            xs, ys = zip(*sorted(points))
            axes.scatter(xs, ys, s=14, label=method)
        axes.set(xscale="log", yscale="log", title=f"{problem} (j = 1)", ylabel="iterations (median over seeds)",
                 xlabel="κ(K_G)" if problem == "exp_kernel" else "κ(A)")
        axes.grid(alpha=0.3)
        if by_method:
            axes.legend(fontsize=7)
    figure.savefig(path, dpi=110)
    return path


def plot_time_vs_n(timing: list[dict[str, Any]], path: Path) -> Path:
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    panels = figure.subplots(1, 2)
    for axes, problem in zip(panels, ("a_gram_power", "exp_kernel")):
        by_method: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for t in timing:
            if t["problem"] == problem:
                by_method[t["method"]].append((t["n"], t["time"]))
        for method, points in sorted(by_method.items()):
            xs, ys = zip(*sorted(points))
            axes.plot(xs, ys, marker="o", markersize=3, label=method)
        axes.set(xscale="log", yscale="log", xlabel="n (rows)", ylabel="wall time (s)", title=problem)
        axes.grid(alpha=0.3)
        if by_method:
            axes.legend(fontsize=7)
    figure.savefig(path, dpi=110)
    return path
