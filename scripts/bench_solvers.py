"""Benchmark the regression-proxy solvers against their targets (float64, pinned threads).

    python scripts/bench_solvers.py                                   # all three parts, synthetic inputs
    python scripts/bench_solvers.py --extracted DIR                   # part 3 on a checkpoint's keys
    python scripts/bench_solvers.py --parts kappa --kappa-n 4096 16384

Parts (results in <out>.md and <out>.csv):
  kappa   sketch + LSQR (k = 4d) on min ||A y - b||, A = Q diag(s) Vᵀ with κ(A) = 1e2 .. 1e8, incoherent and
          coherent, several n, b = A x + a residual orthogonal to range(A) (||r|| = 0.1 ||A x||, so x is exact):
          iterations to LSQR's tolerance 1e-10, without and with one refinement step, and the forward error beside
          Householder QR's (the float64 floor, ~u κ) and unpreconditioned LSQR's (3000 iterations at most).
          Target: <= 40 iterations, flat in κ and n.
  tall    min ||A y - b|| with n = 2^18, d = 768 (as stacked hidden states of a GPT-2-small-wide model): wall time
          (median of --repeats) of Householder QR, torch.linalg.lstsq, Gram + Cholesky and the sketched solvers,
          each with its prediction error against the QR solution. Target: the best sketched solver >= 2x faster
          than QR and >= 4x faster than lstsq at equal accuracy (pred_err <= 1e-10).
  kernel  exp(A Aᵀ) x = b on keys scaled by d^-1/4 (n stacked rows of one head, or synthetic heterogeneous rows):
          dense Jacobi-scaled Cholesky against plain CG, Jacobi-PCG and Nyström-PCG to relres 1e-8 for growing n
          (median of --repeats); names the sizes where the iterative route pays. Target: Jacobi- or Nyström-PCG
          converge where CG does not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from evals import problems as P
from evals import synthetic as syn
from evals.extract import load_extracted
from evals.instances import distinct_rows
from evals.run import KERNEL_METHODS, time_vs_n
from evals.solve import least_squares
from fileio.pages import command_line, opening, page_file, this_machine, today, write_page_files
from fileio.tables import cell, markdown_table
from typedconfig.cli import path_argument

KAPPAS = (1e2, 1e4, 1e6, 1e8)
ITERATION_TARGET = 40
TALL_METHODS = (("qr", None, None), ("lstsq", None, None), ("gram_cholesky", None, None),
                ("sketch_cholqr", "sparse_sign", 4), ("sketch_lsqr", "sparse_sign", 4),
                ("sketch_pcg", "sparse_sign", 4), ("sketch_pcg", "sparse_sign", 8), ("sketch_pcg", "countsketch", 8),
                ("sketch_pcg", "countsketch", 12))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def bench_kappa(sizes: list[int], d: int, seeds: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        for coherent in (False, True):
            for kappa in KAPPAS:
                for seed in range(seeds):
                    A = syn.conditioned(n, d, kappa, seed, coherent=coherent)
                    Q, R = torch.linalg.qr(A)
                    x_true, noise = syn.rhs(d, seed), syn.rhs(n, seed + 1)
                    noise -= Q @ (Q.T @ noise)  # orthogonal to range(A): x_true stays the exact solution
                    fit = A @ x_true
                    b = fit + 0.1 * torch.linalg.vector_norm(fit) * noise / torch.linalg.vector_norm(noise)
                    y_qr, _ = least_squares(A, b, method="qr")
                    for method, refine, maxiter in (("sketch_lsqr", 0, 200), ("sketch_lsqr", 1, 200),
                                                    ("lsqr", 0, 3000)):
                        y, info = least_squares(A, b, method=method, eps=1e-10, seed=seed, maxiter=maxiter,
                                                refine=refine, diagnostics=False)
                        rows.append({"part": "kappa", "n": n, "d": d, "kappa": kappa, "coherent": coherent,
                                     "seed": seed, "method": method, "refine": refine,
                                     "iterations": sum(info.iterations.values()),
                                     "converged": info.converged, "fwd_err": _rel(y, x_true),
                                     "fwd_err_R": _rel(R @ y, R @ x_true), "qr_fwd_err": _rel(y_qr, x_true),
                                     "time": info.time_total})
                print(f"kappa: n={n} coherent={coherent} kappa={kappa:.0e} done", flush=True)
    return rows


def tall_matrix(n: int, d: int, kappa: float) -> torch.Tensor:
    """n x d with column scales from 1 to 1/kappa after a random rotation: like stacked hidden states, whose
    coordinates are correlated and unevenly scaled (Gaussian, so not exactly κ; cheap at 2^18 x 768)."""
    gen = torch.Generator().manual_seed(0)
    V = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen))[0]
    scales = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), d, dtype=torch.float64)
    return (torch.randn(n, d, dtype=torch.float64, generator=gen) * scales) @ V.T


def bench_tall(A: torch.Tensor, source: str, repeats: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(1)
    b = A @ torch.randn(A.shape[1], dtype=torch.float64, generator=gen)
    b += 0.1 * torch.linalg.vector_norm(b) / A.shape[0] ** 0.5 * torch.randn(A.shape[0], dtype=torch.float64,
                                                                              generator=gen)
    y_qr, _ = least_squares(A, b, method="qr", diagnostics=False)  # the reference every prediction error is against
    rows = []
    for method, sketch, mult in TALL_METHODS:
        infos, y = [], None
        for _ in range(repeats):
            y, info = least_squares(A, b, method=method, eps=1e-10, sketch=sketch or "sparse_sign",
                                    sketch_rows=mult * A.shape[1] if mult else None, diagnostics=False)
            infos.append(info)
        pred = float(torch.linalg.vector_norm(A @ (y - y_qr)) / torch.linalg.vector_norm(b))
        best = min(infos, key=lambda i: i.time_total)
        rows.append({"part": "tall", "source": source, "n": A.shape[0], "d": A.shape[1], "method": method,
                     "sketch": sketch, "sketch_rows": mult and mult * A.shape[1],
                     "time": statistics.median(i.time_total for i in infos), "time_best": best.time_total,
                     "time_sketch": best.time_sketch, "time_factor": best.time_factor,
                     "time_iterate": best.time_iterate, "iterations": best.iterations.get("ls", 0),
                     "passes": best.passes, "pred_err_vs_qr": pred, "relres": best.relres})
        print(f"tall: {method} {sketch or ''} {rows[-1]['time']:.2f} s", flush=True)
    return rows


def bench_kernel(A: torch.Tensor, source: str, sizes: list[int], maxiter: int, repeats: int) -> list[dict[str, Any]]:
    rows = time_vs_n(A, "exp_kernel", sizes, eps=1e-8, repeats=repeats, methods=KERNEL_METHODS, maxiter=maxiter)
    conditioning = {n: P.conditioning("exp_kernel", A[:n]) for n in {row["n"] for row in rows}}
    for row in rows:
        cond = conditioning[row["n"]]
        row.update(part="kernel", source=source, kappa_K=cond["kappa_K"], kappa_KG=cond["kappa_KG"],
                   row_norm_sq_min=cond["row_norm_sq_min"], row_norm_sq_max=cond["row_norm_sq_max"])
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The `columns` of `rows` as a markdown table."""
    return markdown_table(columns, [[cell(r.get(c), "auto") for c in columns] for r in rows])


def markdown(args: argparse.Namespace, kappa: list, tall: list, kernel: list) -> str:
    measured = [what for what, rows in (("iterations and accuracy of sketch + LSQR over κ", kappa),
                                         ("wall time of the least-squares solvers on a tall matrix", tall),
                                         ("iterations and wall time of the exp(A Aᵀ) solvers", kernel)) if rows]
    parts = [opening("Solver benchmarks", ", and ".join(measured), command_line(__file__),
                     f"float64, {args.threads} thread(s)", this_machine(), today()).rstrip("\n"), ""]
    if kappa:
        summary = []
        for key in sorted({(r["n"], r["coherent"], r["kappa"], r["method"], r["refine"]) for r in kappa}):
            group = [r for r in kappa if (r["n"], r["coherent"], r["kappa"], r["method"], r["refine"]) == key]
            summary.append({"n": key[0], "coherent": key[1], "kappa": key[2], "method": key[3], "refine": key[4],
                            "iterations (max)": max(r["iterations"] for r in group),
                            "converged": all(r["converged"] for r in group),
                            "fwd_err (max)": max(r["fwd_err"] for r in group),
                            "‖R(y−x)‖/‖Rx‖ (max)": max(r["fwd_err_R"] for r in group),
                            "QR fwd_err (max)": max(r["qr_fwd_err"] for r in group)})
        worst = max(s["iterations (max)"] for s in summary if s["method"] == "sketch_lsqr" and not s["refine"])
        refined = max(s["iterations (max)"] for s in summary if s["method"] == "sketch_lsqr" and s["refine"])
        parts += ["## κ sweep: sketch + LSQR (sparse sign, k = 4d) against plain LSQR", "",
                  f"Worst case over n, κ, coherence and {args.seeds} seeds: **{worst} iterations** to LSQR's tolerance "
                  f"1e-10 (target <= {ITERATION_TARGET}); **{refined}** with one refinement step. The tolerance bounds "
                  "the error in the preconditioned variable, ‖R(y − x)‖/‖Rx‖; the forward error in y is larger by up "
                  "to κ(A), and no float64 method beats Householder QR's ~u·κ(A) there.", "",
                  _table(summary, list(summary[0])), ""]
    if tall:
        qr = next(r for r in tall if r["method"] == "qr")
        lstsq = next(r for r in tall if r["method"] == "lstsq")
        for r in tall:
            r["speedup_vs_qr"] = qr["time"] / r["time"]
            r["speedup_vs_lstsq"] = lstsq["time"] / r["time"]
        accurate = [r for r in tall if r["method"].startswith("sketch") and r["pred_err_vs_qr"] <= 1e-10]
        best = min(accurate, key=lambda r: r["time"]) if accurate else None
        verdict = (f"Best sketched solver: `{best['method']}` ({best['sketch']}, k = {best['sketch_rows']}), "
                   f"**{best['speedup_vs_qr']:.2f}× QR** (target 2×) and **{best['speedup_vs_lstsq']:.2f}× lstsq** "
                   f"(target 4×); from the fastest runs alone {qr['time_best'] / best['time_best']:.2f}× and "
                   f"{lstsq['time_best'] / best['time_best']:.2f}×." if best
                   else "No sketched solver reached pred_err <= 1e-10.")
        parts += [f"## Tall least squares, {qr['n']} × {qr['d']} ({tall[0]['source']})", "",
                  f"time: median of {args.repeats} runs, time_best: the fastest of them, whose parts time_sketch, "
                  f"time_factor and time_iterate are (they add up to time_best, not to the median), as are its "
                  f"iterations and passes. {verdict}", "",
                  _table(tall, ["method", "sketch", "sketch_rows", "time", "time_best", "time_sketch", "time_factor",
                                "time_iterate", "iterations", "passes", "pred_err_vs_qr", "speedup_vs_qr",
                                "speedup_vs_lstsq"]), ""]
    if kernel:
        parts += [f"## exp(A Aᵀ) x = b ({kernel[0]['source']})", "",
                  _table(kernel, ["n", "method", "kappa_K", "kappa_KG", "row_norm_sq_min", "row_norm_sq_max",
                                  "iterations", "converged", "relres", "scaled_relres", "time"]), ""]
        parts += [kernel_verdict(kernel, args.repeats), ""]
    return "\n".join(parts)


def kernel_verdict(kernel: list[dict[str, Any]], repeats: int) -> str:
    """The sizes n where a converged iterative solver took less time than dense Cholesky, and those where it did
    not, named one by one (a size where it pays need not be followed by larger ones where it does)."""
    faster, slower = [], []
    for n in sorted({r["n"] for r in kernel}):
        cholesky = next(r["time"] for r in kernel if r["n"] == n and r["method"] == "cholesky")
        iterative = min((r["time"] for r in kernel if r["n"] == n and r["method"] != "cholesky" and r["converged"]),
                        default=float("inf"))
        (faster if iterative < cholesky else slower).append(str(n))
    timing = f"median of {repeats} timings each" if repeats > 1 else "one timing each"
    if not faster:
        return f"Dense Cholesky was fastest at every n measured ({timing})."
    said = f"A converged iterative solver took less time than dense Cholesky at n = {', '.join(faster)}"
    return said + (f"; Cholesky was faster at n = {', '.join(slower)}" if slower else "") + f" ({timing})."


PARTS = ("kappa", "tall", "kernel")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The parts asked for; a parser error for a part that does not exist or a size no part can measure."""
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts or parts - set(PARTS):
        parser.error(f"--parts takes a comma-separated choice of {', '.join(PARTS)}, got {args.parts!r}")
    for name in ("threads", "repeats", "seeds", "maxiter", "kappa_d", "tall_n", "tall_d"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("kappa_n", "kernel_n"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} takes sizes >= 1, got {min(getattr(args, name))}")
    if "kappa" in parts and min(args.kappa_n) < args.kappa_d:
        parser.error(f"--kappa-n must be at least --kappa-d ({args.kappa_d}): a tall matrix, got {min(args.kappa_n)}")
    if "tall" in parts and args.tall_n < args.tall_d:
        parser.error(f"--tall-n must be at least --tall-d ({args.tall_d}): a tall matrix, got {args.tall_n}")
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="kappa,tall,kernel", help="comma-separated: kappa, tall, kernel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--kappa-n", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--kappa-d", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tall-n", type=int, default=1 << 18)
    parser.add_argument("--tall-d", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extracted", type=path_argument,
                        help="extraction directory: keys of its first layer and head for "
                        "the kernel part, its hidden states for the tall part when they are --tall-d wide")
    parser.add_argument("--kernel-n", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--maxiter", type=int, default=1000)
    parser.add_argument("--out", default="results/bench_solvers", help="output prefix (.md, .csv)")
    args = parser.parse_args()
    parts = check_args(parser, args)
    torch.set_num_threads(args.threads)
    try:
        extraction = load_extracted(args.extracted)[1] if args.extracted else None
    except ValueError as exc:
        print(f"bench_solvers: {exc}", file=sys.stderr)
        return 2
    keys = None
    if "kernel" in parts and extraction:  # checked before the other parts' long runs
        m = extraction.manifest
        keys = distinct_rows(extraction.k(m["layers"][0], m["heads"][0]).double())
        if max(args.kernel_n) > keys.shape[0]:
            print(f"bench_solvers: --kernel-n {max(args.kernel_n)} is more than the {keys.shape[0]} distinct key "
                  f"rows of {args.extracted}; give sizes up to that, or extract more windows", file=sys.stderr)
            return 2
    start = time.perf_counter()
    kappa = bench_kappa(args.kappa_n, args.kappa_d, args.seeds) if "kappa" in parts else []
    tall = []
    if "tall" in parts:
        hidden = extraction.x(extraction.manifest["layers"][0]).double() if extraction else None
        if hidden is not None and hidden.shape[1] == args.tall_d and hidden.shape[0] >= args.tall_n:
            tall = bench_tall(hidden[: args.tall_n], f"stacked hidden states of {args.extracted}", args.repeats)
        else:
            tall = bench_tall(tall_matrix(args.tall_n, args.tall_d, 1e4), "synthetic, column scales 1 .. 1e-4",
                              args.repeats)
    kernel = []
    if "kernel" in parts:
        if keys is not None:
            source = (f"keys of layer {m['layers'][0]} head {m['heads'][0]} of {args.extracted}, exact repeats removed, "
                      "scaled by d^-1/4")
            kernel = bench_kernel(keys * keys.shape[1] ** -0.25, source, args.kernel_n, args.maxiter, args.repeats)
        else:
            rows = syn.exp_rows(max(args.kernel_n), 64, 2.0, 40.0, seed=0)
            kernel = bench_kernel(rows, "synthetic rows, squared norms 2 .. 40", args.kernel_n, args.maxiter,
                                  args.repeats)
    if not kappa + tall + kernel:  # every size skipped: nothing to write over a page
        print("bench_solvers: nothing was measured (every size was skipped); no page written", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_page_files(out, markdown(args, kappa, tall, kernel), kappa + tall + kernel)
    print(f"wrote {page_file(out, '.md')} and {page_file(out, '.csv')} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
