"""Benchmark the attention backends' training forms and decode steps on CPU.

    python scripts/bench_attention.py                       # full grid, one thread (as docs/benchmarks.md)
    python scripts/bench_attention.py --lengths 1024 4096 --dtypes float32 --backends softmax taylor:crossover=1

Training form: forward and forward+backward time (median of the timed repetitions after one untimed run) and
peak extra memory, for q, k, v of shape (B, H, n, d) with causal attention. Each (backend, dtype, n, mode) runs in
a fresh subprocess: the peak resident set size is reset after the inputs are built (Linux /proc/self/clear_refs)
and read back after the first run (VmHWM), so "extra MB" is what the run itself added, allocator caches included.
Decode: per-token step time and state bytes after prefilling several context lengths.

A backend spec is a registry name with optional options, e.g. `taylor:crossover=1` (always the linear form) or
`taylor:crossover=1000000` (always the direct form); those two measure taylor's crossover. Cases whose predicted
time exceeds --max-case-seconds are skipped (reported as such). Writes <out>.csv, <out>.md and <out>.png.

Every case process keeps freed memory as train.py does on the CPU (training/malloc.py), unless `--malloc unchanged`:
under glibc's defaults the kernels' large temporaries fault in fresh pages on every call, which slows most the
backends that cast or allocate more, and so ranks the allocator as much as the kernels.

Paired mode (`--against softmax:blocked=false`: torch SDPA; `--against softmax`: our softmax's training form, on the
CPU model/attention/blocked_softmax.py): forward+backward of each backend and of the reference backend take turns
in one process, round after round, and the median of the per-round time ratios is reported, so load from other
jobs slows both alike. `--baseline-rev REV` runs every case also from REV's tree (git archive), taking turns with this
tree; `--profile` adds where one forward+backward of each backend spends its time (torch.profiler, self time of
each op, grouped by kind), and the time of one tile's GEMMs in float32, bfloat16 and float16. Writes <out>.csv and
<out>.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Runnable as a plain script from anywhere; a paired case of --baseline-rev imports the model from that tree.
sys.path.insert(0, os.environ.get("BENCH_ATTENTION_TREE", str(REPO)))

import torch  # noqa: E402

from experiments.log_axes import style_log_axes  # noqa: E402
from fileio.pages import command_line, opening, this_machine, today  # noqa: E402
from fileio.tables import markdown_table  # noqa: E402
from model.attention import BACKENDS, get_backend  # noqa: E402

# This tree's malloc setup, by path: a baseline tree may predate it, and it imports nothing of the repository.
_spec = importlib.util.spec_from_file_location("attnlab_malloc", REPO / "training" / "malloc.py")
malloc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(malloc)

# docs/benchmarks.md: one thread, B=1, H=12, d=64, causal; seconds (fwd, fwd+bwd).
ANCHORS = {
    "SDPA fp32": {1024: (0.036, 0.14), 4096: (0.43, 1.71), 8192: (1.7, 7.7), 16384: (6.9, 21.8)},
    "SDPA bf16": {1024: (0.033, 0.093), 4096: (0.40, 1.15), 8192: (1.6, 5.0), 16384: (6.3, 17.1)},
    "official Heinsen fp32": {1024: (2.08, 9.7), 4096: (9.7, 51.7), 8192: (23.6, 96.9)},
    "official TaylorShift efficient fp32": {1024: (0.57, 2.8), 4096: (2.8, 14.8), 8192: (8.1, 38.0), 16384: (21.1, 81.8)},
}
# Which of our backends each anchor is compared with.
ANCHOR_OURS = {
    "SDPA fp32": ("softmax", "float32"), "SDPA bf16": ("softmax", "bfloat16"),
    "official Heinsen fp32": ("logexp", "float32"), "official TaylorShift efficient fp32": ("taylor", "float32"),
}
LINEAR = ("expressive_sq", "logexp", "taylor")  # linear in n: time(16384) / time(1024) <= 20 (16x the tokens + slack)


def parse_spec(spec: str) -> tuple[str, dict]:
    """'taylor:crossover=1,chunk_size=128' -> ('taylor', {'crossover': 1, 'chunk_size': 128})."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value not in ("None", "none") else None
    get_backend(name, **options)  # validate early
    return name, options


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB; here rather than training.runtime's reader, which a baseline tree's
    child may predate."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def this_tree_crossover(backend, d: int, heads: int, dtype: torch.dtype) -> int | None:
    """The crossover `backend` uses for a layer of `heads` heads on the CPU (measured now when not cached), by the
    rule of the tree that runs the case; None for a backend without one, or a baseline tree without that rule."""
    try:
        from model.attention.crossover import crossover_length
    except ImportError:
        return None
    if not hasattr(backend, "crossover"):
        return None
    return crossover_length(backend, d, heads, dtype, torch.device("cpu"))


def make_inputs(name, options, b, h, n, d, dtype, requires_grad):
    backend = get_backend(name, **options)
    this_tree_crossover(backend, d, h, dtype)  # a measurement happens here, outside the timed runs and memory
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
    with torch.no_grad():
        q, k = backend.make_qk_transform(h, d)(q, k)  # taylor normalises; identity elsewhere
    q, k, v = (x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v))
    return backend, q, k, v


def training_step(backend, q, k, v, backward: bool):
    """One forward (and backward, against a fixed random output gradient) of the training form, as a closure."""
    grad_out = torch.randn(q.shape, dtype=q.dtype)

    def run():
        y = backend.forward(q, k, v)
        if backward:
            torch.autograd.backward(y, grad_out)
            for x in (q, k, v):
                x.grad = None

    return run


def run_training_case(case: dict) -> dict:
    """Child process: time and peak memory of one (backend, dtype, n, mode)."""
    torch.set_num_threads(case["threads"])
    dtype = getattr(torch, case["dtype"])
    backend, q, k, v = make_inputs(case["name"], case["options"], case["batch"], case["heads"], case["n"],
                                   case["head_dim"], dtype, requires_grad=True)
    run = training_step(backend, q, k, v, backward=case["mode"] == "fwd+bwd")
    baseline = status_mib("VmRSS")
    exact_peak = reset_peak_rss()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    peak_mb = status_mib("VmHWM") - baseline
    reps = max(1, min(case["reps"], int(case["max_case_seconds"] / max(first, 1e-9))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"time_s": times[len(times) // 2], "first_s": first, "reps": reps, "peak_extra_mb": peak_mb,
            "peak_exact": exact_peak}


def run_decode_case(case: dict) -> list[dict]:
    """Child process: per-token decode time and state bytes after prefilling each context length."""
    torch.set_num_threads(case["threads"])
    dtype = getattr(torch, case["dtype"])
    b, h, d = case["batch"], case["heads"], case["head_dim"]
    total = max(case["contexts"]) + case["steps"]
    backend, q, k, v = make_inputs(case["name"], case["options"], b, h, total, d, dtype, requires_grad=False)
    state = backend.init_state(b, h, d, d, dtype=dtype, device="cpu")
    rows, filled = [], 0
    with torch.no_grad():
        for context in sorted(case["contexts"]):
            # One long sequence: the timed steps of a shorter context are the next tokens of the longer prefill.
            start = time.perf_counter()
            for t0 in range(filled, context, 4096):  # prefill in chunks of at most 4096 tokens
                t1 = min(t0 + 4096, context)
                _, state = backend.step(q[:, :, t0:t1], k[:, :, t0:t1], v[:, :, t0:t1], state)
            prefill_s = time.perf_counter() - start
            nbytes = backend.state_nbytes(state)
            times = []
            for i in range(max(filled, context), max(filled, context) + case["steps"]):
                start = time.perf_counter()
                _, state = backend.step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], state)
                times.append(time.perf_counter() - start)
            filled = max(filled, context) + case["steps"]
            times.sort()
            rows.append({"context": context, "step_ms": 1e3 * times[len(times) // 2], "state_bytes": nbytes,
                         "prefill_s": prefill_s})
    return rows


# Profiled aten ops by what they do; the rest (views, autograd bookkeeping) counts as "other ops".
OP_KINDS = {
    "GEMM": {"bmm", "baddbmm", "baddbmm_", "mm", "addmm", "matmul", "addbmm"},
    "pointwise": {"mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_", "reciprocal", "reciprocal_", "square",
                  "square_", "pow", "pow_", "neg", "rsub"},
    "masking": {"tril", "tril_", "masked_fill", "masked_fill_", "where"},
    "casts, copies": {"copy_", "_to_copy", "clone", "cat", "constant_pad_nd"},
    "allocation, fill": {"empty", "empty_strided", "empty_like", "zeros", "zeros_like", "new_zeros", "new_empty",
                         "fill_", "zero_"},
    "reductions": {"sum"},
}
PROFILE_COLUMNS = [*OP_KINDS, "other ops", "outside ops"]


def profile_by_kind(run) -> dict:
    """Seconds of one run of `run` per kind of op (self time under torch.profiler); "outside ops" is the wall time
    that no aten op accounts for (Python, autograd, the profiler itself)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    seconds = dict.fromkeys(PROFILE_COLUMNS, 0.0)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            op = event.key.removeprefix("aten::")
            kind = next((kind for kind, ops in OP_KINDS.items() if op in ops), "other ops")
            seconds[kind] += event.self_cpu_time_total / 1e6
    seconds["outside ops"] = wall - sum(seconds.values())
    return seconds | {"profiled_s": wall}


def run_paired_case(case: dict) -> dict:
    """Child process: forward+backward of the backend and of the reference backend (`against`) taking turns for
    `rounds` rounds after an untimed run of each; with `profile`, one more run of the backend under the profiler."""
    torch.set_num_threads(case["threads"])
    dtype = getattr(torch, case["dtype"])
    shape = (case["batch"], case["heads"], case["n"], case["head_dim"])
    runs = {}
    sides = (("ours", case["name"], case["options"]), ("reference", *parse_spec(case["against"])))
    for side, name, options in sides:
        backend, q, k, v = make_inputs(name, options, *shape, dtype, requires_grad=True)
        runs[side] = training_step(backend, q, k, v, backward=True)
        runs[side]()
    times = {side: [] for side in runs}
    for _ in range(case["rounds"]):
        for side, run in runs.items():
            start = time.perf_counter()
            run()
            times[side].append(time.perf_counter() - start)
    result = times | {"load": os.getloadavg()[0]}
    return result | ({"profile": profile_by_kind(runs["ours"])} if case["profile"] else {})


def run_tile_gemm_case(case: dict) -> list[dict]:
    """Child process: the direct forms' two tile GEMMs, scores (BH, block, d) x (BH, d, block) and weighted values
    (BH, block, block) x (BH, block, d), in each dtype in turn; median seconds over `rounds` rounds."""
    torch.set_num_threads(case["threads"])
    bh, block, d = case["batch"] * case["heads"], case["block"], case["head_dim"]
    gen = torch.Generator().manual_seed(0)
    products = {}
    for dtype in case["dtypes"]:
        q, k, v = (torch.randn(bh, block, d, generator=gen).to(getattr(torch, dtype)) for _ in range(3))
        w = torch.randn(bh, block, block, generator=gen).to(q.dtype)
        products[dtype, "scores q kᵀ"] = lambda q=q, k=k: torch.bmm(q, k.transpose(1, 2))
        products[dtype, "weighted values w v"] = lambda w=w, v=v: torch.bmm(w, v)
    times = {key: [] for key in products}
    for product in products.values():
        product()
    for _ in range(case["rounds"]):
        for key, product in products.items():
            start = time.perf_counter()
            product()
            times[key].append(time.perf_counter() - start)
    flops = 2 * bh * block * block * d
    return [{"dtype": dtype, "product": name, "time_s": statistics.median(t), "gflops": flops / statistics.median(t) / 1e9}
            for (dtype, name), t in times.items()]


def in_subprocess(kind: str, case: dict, tree: Path = REPO) -> dict | list | None:
    """Run one case in a fresh process, importing the model from `tree` (this repository or a baseline's)."""
    command = [sys.executable, str(Path(__file__).resolve()), f"--{kind}-case", json.dumps(case)]
    env = os.environ | {"BENCH_ATTENTION_TREE": str(tree)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tree, env=env)
    if result.returncode != 0:
        print(f"  failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def label(name: str, options: dict) -> str:
    return name + ("[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]" if options else "")


def growth(name: str, options: dict, n0: int, n1: int) -> float:
    """Predicted time ratio from n0 to n1 tokens: linear for a recurrent form already past its crossover at n0,
    quadratic otherwise (also for a crossover left to be measured in the case's process: the slower prediction)."""
    backend = get_backend(name, **options)
    crossover = getattr(backend, "crossover", 0)
    linear = backend.constant_memory and crossover is not None and crossover <= n0
    return (n1 / n0) ** (1 if linear else 2)


def benchmark(args) -> tuple[list[dict], list[dict]]:
    specs = [parse_spec(s) for s in args.backends]
    common = {"threads": args.threads, "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
              "malloc": args.malloc}
    train_rows, decode_rows = [], []
    for name, options in specs:
        for dtype in args.dtypes:
            for mode in ("fwd", "fwd+bwd"):
                skip_from = None
                previous = prev_n = None
                for n in sorted(args.lengths):
                    row = {"backend": label(name, options), "name": name, "dtype": dtype, "n": n, "mode": mode}
                    if previous is not None and previous * growth(name, options, prev_n, n) > args.max_case_seconds:
                        skip_from = skip_from or n
                    if skip_from is not None:
                        train_rows.append(row | {"skipped": True})
                        print(f"{row['backend']:<32} {dtype:<9} {mode:<8} n={n:<6} skipped (predicted too slow)")
                        continue
                    result = in_subprocess("training", common | row | {
                        "options": options, "reps": args.reps, "max_case_seconds": args.max_case_seconds})
                    if result is None:
                        train_rows.append(row | {"failed": True})
                        skip_from = n
                        continue
                    train_rows.append(row | result)
                    previous, prev_n = result["time_s"], n
                    print(f"{row['backend']:<32} {dtype:<9} {mode:<8} n={n:<6} {result['time_s']:8.3f} s "
                          f"(x{result['reps']})  +{result['peak_extra_mb']:7.0f} MB", flush=True)
        if args.decode_contexts and not options:
            for dtype in args.dtypes:
                result = in_subprocess("decode", common | {
                    "name": name, "options": options, "dtype": dtype, "contexts": args.decode_contexts,
                    "steps": args.decode_steps})
                for r in result or []:
                    decode_rows.append({"backend": name, "dtype": dtype} | r)
                    print(f"{name:<32} {dtype:<9} decode   ctx={r['context']:<6} {r['step_ms']:8.2f} ms/token "
                          f"state {r['state_bytes'] / 2**20:8.2f} MiB", flush=True)
    return train_rows, decode_rows


def paired(args) -> tuple[list[dict], list[dict]]:
    """Paired mode: every (backend, dtype, n) case in `turns` fresh processes per tree, the trees taking turns."""
    from experiments.revision import extract_revision  # here: a baseline tree's child may predate the module

    specs = [parse_spec(s) for s in args.backends]
    parse_spec(args.against)  # validated here, before any case runs
    common = {"threads": args.threads, "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
              "malloc": args.malloc, "rounds": args.rounds}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"this tree": REPO}
        if args.baseline_rev:
            trees[f"baseline {args.baseline_rev}"] = extract_revision(args.baseline_rev, Path(scratch))
        for name, options in specs:
            for dtype in args.dtypes:
                for n in sorted(args.lengths):
                    case = common | {"name": name, "options": options, "against": args.against, "dtype": dtype,
                                     "n": n}
                    results = {tree: [] for tree in trees}
                    for turn in range(args.turns):
                        for tree, path in trees.items():
                            result = in_subprocess("paired", case | {"profile": args.profile and turn == 0}, path)
                            if result is not None:
                                results[tree].append(result)
                    for tree, found in results.items():
                        if found:
                            rows.append(paired_row(label(name, options), dtype, n, tree, found))
                            print(f"{rows[-1]['backend']:<32} {dtype:<9} n={n:<6} {tree:<20} "
                                  f"{rows[-1]['ratio']:.2f}x {args.against}", flush=True)
        gemm_rows = []
        if args.profile:
            gemm_case = common | {"block": args.block, "dtypes": ["float32", "bfloat16", "float16"]}
            gemm_rows = in_subprocess("tile-gemm", gemm_case) or []
    return rows, gemm_rows


def paired_row(backend: str, dtype: str, n: int, tree: str, results: list[dict]) -> dict:
    """Medians over every round of every turn; the ratio is the median of the rounds' ours / reference ratios."""
    ours = [t for r in results for t in r["ours"]]
    reference = [t for r in results for t in r["reference"]]
    ratios = [o / ref for o, ref in zip(ours, reference)]
    profile = next((r["profile"] for r in results if "profile" in r), {})
    return {"backend": backend, "dtype": dtype, "n": n, "tree": tree, "rounds": len(ratios),
            "ours_s": statistics.median(ours), "reference_s": statistics.median(reference),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "load": statistics.mean(r["load"] for r in results), "malloc": results[0]["malloc"]} | profile


def malloc_used(rows: list[dict]) -> str:
    """The malloc setting the case processes recorded (training/malloc.py), for a page's config line."""
    return "malloc " + "/".join(sorted({r["malloc"] for r in rows if "malloc" in r}) or ["not run"])


def paired_markdown(args, rows: list[dict], gemm_rows: list[dict], loads: tuple[float, float]) -> str:
    measured = (f"forward+backward time of each backend's training form over that of {args.against} in the same "
                "process, the two taking turns round after round (ratio: median of the rounds' ratios)"
                + (f"; each case also from the tree of {args.baseline_rev}, the trees taking turns"
                   if args.baseline_rev else "")
                + ("; where one forward+backward spends its time" if args.profile else ""))
    config = (f"{args.threads} thread(s), B={args.batch}, H={args.heads}, d={args.head_dim}, causal, {args.turns} "
              f"process(es) per tree x {args.rounds} rounds after an untimed run, {malloc_used(rows)}, "
              f"torch {torch.__version__}")
    page = opening("Paired attention benchmark", measured, command_line(__file__), config, this_machine(), today())
    lines = [f"Load average (1 min) {loads[0]:.2f} at the start, {loads[1]:.2f} at the end, on "
             f"{os.cpu_count()} logical CPUs; per case in the `load` column of the CSV.", "",
             f"## Time / {args.against}'s time, forward+backward", ""]
    trees = list(dict.fromkeys(r["tree"] for r in rows))
    cases = list(dict.fromkeys((r["backend"], r["dtype"], r["n"]) for r in rows))
    by_key = {(r["backend"], r["dtype"], r["n"], r["tree"]): r for r in rows}
    table = []
    for backend, dtype, n in cases:
        found = [by_key.get((backend, dtype, n, tree)) for tree in trees]
        table.append([backend, dtype, n, *(
            f"{r['ratio']:.2f}× ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}); {r['ours_s']:.3g} s / "
            f"{r['reference_s']:.3g} s" if r else "–" for r in found)])
    lines += [markdown_table(["backend", "dtype", "n", *trees], table), "",
              "Each cell: median ratio (range over the rounds); median seconds of the backend / of "
              f"{args.against}.", ""]
    profiled = [r for r in rows if "profiled_s" in r]
    if profiled:
        lines += ["## Where the time goes (one profiled forward+backward)", "",
                  "Milliseconds of self time per kind of aten op, share of the profiled run in parentheses; "
                  "`outside ops`: wall time no op accounts for (Python, autograd, profiler).", ""]
        table = [[r["backend"], r["dtype"], r["n"], r["tree"],
                  *(f"{1e3 * r[c]:.0f} ({r[c] / r['profiled_s']:.0%})" for c in PROFILE_COLUMNS),
                  f"{1e3 * r['profiled_s']:.0f}"]
                 for r in sorted(profiled, key=lambda r: (r["backend"], r["dtype"], r["n"], r["tree"]))]
        lines += [markdown_table(["backend", "dtype", "n", "tree", *PROFILE_COLUMNS, "total"], table), ""]
    if gemm_rows:
        lines += [f"## One tile's GEMMs (block {args.block}, {args.batch * args.heads} heads batched)", "",
                  markdown_table(["dtype", "product", "µs", "GFLOP/s"],
                                 [[r["dtype"], r["product"], f"{1e6 * r['time_s']:.0f}", f"{r['gflops']:.0f}"]
                                  for r in gemm_rows]), ""]
    return page + "\n".join(lines)


def lookup(rows, backend, dtype, n, mode):
    for r in rows:
        if r["backend"] == backend and r["dtype"] == dtype and r["n"] == n and r["mode"] == mode and "time_s" in r:
            return r
    return None


def crossover(rows, efficient: str, direct: str, dtype: str, mode: str) -> str:
    """Smallest measured n from which the efficient form is at least as fast as the direct one at every longer n,
    with the geometric interpolation of the crossing between the two grid points around it."""
    points = []
    for n in sorted({r["n"] for r in rows}):
        e, d = lookup(rows, efficient, dtype, n, mode), lookup(rows, direct, dtype, n, mode)
        if e and d:
            points.append((n, e["time_s"] / d["time_s"]))
    if not points:
        return "not measured"
    wins = [i for i in range(len(points)) if all(ratio <= 1 for _, ratio in points[i:])]
    if not wins:
        return f"> {points[-1][0]} (efficient still {points[-1][1]:.2f}x the direct time)"
    i = wins[0]
    if i == 0:
        return f"<= {points[0][0]}"
    (n0, r0), (n1, r1) = points[i - 1], points[i]
    t = math.log(r0) / (math.log(r0) - math.log(r1))  # log-ratio crosses zero
    return f"~{n0 * (n1 / n0) ** t:.0f} (between {n0} and {n1})"


def markdown(args, train_rows, decode_rows) -> str:
    measured = ("time and peak extra memory of each backend's training form (forward, forward+backward) and time of "
                "its decode step")
    config = (f"{args.threads} thread(s), B={args.batch}, H={args.heads}, d={args.head_dim}, causal, "
              f"{malloc_used(train_rows + decode_rows)}, torch {torch.__version__}")
    page = opening("Attention benchmark", measured, command_line(__file__), config, this_machine(), today())
    lines = ["Seconds, median; fwd / fwd+bwd; peak extra MB of fwd+bwd in parentheses; `skip` = predicted over "
             f"{args.max_case_seconds:.0f} s.", ""]
    backends = list(dict.fromkeys(r["backend"] for r in train_rows))
    lengths = sorted({r["n"] for r in train_rows})
    for dtype in args.dtypes:
        rows = [[n, *(training_cell(train_rows, b, dtype, n) for b in backends)] for n in lengths]
        lines += [f"## Training form, {dtype}", "", markdown_table(["n", *backends], rows), ""]
    anchor_rows = []
    for anchor, table in ANCHORS.items():
        ours, dtype = ANCHOR_OURS[anchor]
        for n, (af, afb) in table.items():
            f, fb = lookup(train_rows, ours, dtype, n, "fwd"), lookup(train_rows, ours, dtype, n, "fwd+bwd")
            if f or fb:
                anchor_rows.append([anchor, f"{ours} {dtype}", n, f"{af / f['time_s']:.1f}x" if f else "-",
                                    f"{afb / fb['time_s']:.1f}x" if fb else "-"])
    if anchor_rows:  # (a run of other backends or lengths than the anchors' has none)
        lines += ["## Against the anchors (anchor time / our time; > 1 means ours is faster)", "",
                  markdown_table(["anchor", "ours", "n", "fwd", "fwd+bwd"], anchor_rows), ""]
    targets: list[str] = []
    for dtype in args.dtypes:
        for mode in ("fwd", "fwd+bwd"):
            # The linear backends' scaling, as configured and (where measured) for the linear form alone: with the
            # default crossover taylor and expressive_sq run the direct form at 1024 and the linear one at 16384.
            for b in [b for b in backends if b.split("[")[0] in LINEAR and b.split("[")[-1] in (b, "crossover=1]")]:
                lo, hi = lookup(train_rows, b, dtype, 1024, mode), lookup(train_rows, b, dtype, 16384, mode)
                if lo and hi:
                    ratio = hi["time_s"] / lo["time_s"]
                    targets.append(f"- {b} {dtype} {mode}: time(16384)/time(1024) = {ratio:.1f} "
                                 f"({'met' if ratio <= 20 else 'NOT met'}, target <= 20)")
            e, s = lookup(train_rows, "expressive", dtype, 1024, mode), lookup(train_rows, "softmax", dtype, 1024, mode)
            if e and s:
                ratio = e["time_s"] / s["time_s"]
                targets.append(f"- expressive / softmax at n=1024, {dtype} {mode}: {ratio:.2f} "
                             f"({'met' if ratio <= 1.5 else 'NOT met'}, target <= 1.5)")
            if not any(row["backend"] == "taylor" and row["dtype"] == dtype for row in train_rows):
                continue
            # the crossover this machine uses for taylor at the cases' threads (main() set them; measured on first
            # use and cached: model/attention/crossover.py)
            crossover_n = this_tree_crossover(get_backend("taylor"), args.head_dim, args.heads, getattr(torch, dtype))
            compared = [(n, t["time_s"] / s["time_s"]) for n in lengths if n >= crossover_n
                        and (t := lookup(train_rows, "taylor", dtype, n, mode))
                        and (s := lookup(train_rows, "softmax", dtype, n, mode))]
            if compared:
                targets.append(f"- taylor / softmax from taylor's crossover ({crossover_n}) on, {dtype} {mode}: "
                             + ", ".join(f"n={n}: {r:.2f}" for n, r in compared)
                             + f" ({'met' if all(r < 1 for _, r in compared) else 'NOT met'}, target < 1)")
    if targets:
        lines += ["## Targets (measured in this run)", "", *targets]
    for name in ("taylor", "expressive_sq"):
        efficient = [b for b in backends if b == f"{name}[crossover=1]"]
        direct = [b for b in backends if b.startswith(f"{name}[crossover=") and b not in efficient]
        if not (efficient and direct):
            continue
        d = args.head_dim
        n1 = (d * d + 2 * d + 1 + math.sqrt(d**4 + 12 * d**3 + 14 * d * d + 4 * d + 1)) / 4
        lines += ["", f"## Crossover of {name}'s forms ({efficient[0]} vs {direct[0]})", "",
                  f"Paper (TaylorShift): N0 = d² + d + 1 = {d * d + d + 1} (FLOPs), N1 = {n1:.0f} (memory)."]
        for dtype in args.dtypes:
            for mode in ("fwd", "fwd+bwd"):
                lines.append(f"- {dtype} {mode}: the linear form is faster from n = "
                             f"{crossover(train_rows, efficient[0], direct[0], dtype, mode)}")
    if decode_rows:
        contexts = sorted({r["context"] for r in decode_rows})
        rows = [[b, dtype, *(decode_cell(decode_rows, b, dtype, c) for c in contexts)]
                for b in dict.fromkeys(r["backend"] for r in decode_rows) for dtype in args.dtypes]
        lines += ["", "## Decode: ms per token (state MiB) after a prefill of the context", "",
                  markdown_table(["backend", "dtype", *contexts], rows)]
    return page + "\n".join(lines) + "\n"


def training_cell(rows, backend: str, dtype: str, n: int) -> str:
    """`fwd / fwd+bwd (extra MB)` seconds of one backend at one length; `skip` where not measured."""
    f, fb = lookup(rows, backend, dtype, n, "fwd"), lookup(rows, backend, dtype, n, "fwd+bwd")
    cell = (f"{f['time_s']:.3g}" if f else "skip") + " / " + (f"{fb['time_s']:.3g}" if fb else "skip")
    return cell + (f" ({fb['peak_extra_mb']:.0f})" if fb else "")


def decode_cell(rows, backend: str, dtype: str, context: int) -> str:
    """`ms per token (state MiB)` of one backend after a prefill of `context` tokens; `-` where not measured."""
    r = next((r for r in rows if r["backend"] == backend and r["dtype"] == dtype and r["context"] == context), None)
    return f"{r['step_ms']:.2f} ({r['state_bytes'] / 2**20:.2f})" if r else "-"


def plot(path: Path, args, train_rows, decode_rows) -> None:
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    from fileio.atomic import save_figure_atomic  # the parent's alone, as page_file in main()

    fig = Figure(figsize=(18, 5.5))
    axes = fig.subplots(1, 3)
    backends = list(dict.fromkeys(r["backend"] for r in train_rows))
    colors = dict(zip(backends, rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for b in backends:
        for dtype, style in zip(args.dtypes, ("-", "--")):
            pts = sorted((r["n"], r["time_s"], r["peak_extra_mb"]) for r in train_rows
                         if r["backend"] == b and r["dtype"] == dtype and r["mode"] == "fwd+bwd" and "time_s" in r)
            if pts:
                n, t, m = zip(*pts)
                axes[0].plot(n, t, style, marker="o", color=colors[b], label=f"{b} {dtype}")
                axes[1].plot(n, [max(x, 1) for x in m], style, marker="o", color=colors[b], label=f"{b} {dtype}")
    for anchor, table in ANCHORS.items():
        if "fp32" in anchor and not anchor.startswith("SDPA"):
            n, t = zip(*sorted((k, v[1]) for k, v in table.items()))
            axes[0].plot(n, t, ":", marker="x", color="gray", label=f"anchor: {anchor}")
    for b in dict.fromkeys(r["backend"] for r in decode_rows):
        pts = sorted((r["context"], r["step_ms"]) for r in decode_rows if r["backend"] == b and r["dtype"] == args.dtypes[0])
        if pts:
            c, t = zip(*pts)
            axes[2].plot(c, t, marker="o", color=colors.get(b), label=b)
    style_log_axes(axes[0], "fwd+bwd time (s)", "sequence length", legend_fontsize=7)
    style_log_axes(axes[1], "fwd+bwd peak extra memory (MB)", "sequence length", legend_fontsize=7)
    style_log_axes(axes[2], f"decode step (ms/token), {args.dtypes[0]}", "context length", legend_fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (anchors: 1)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 6144, 8192, 16384])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--backends", nargs="+", default=[*BACKENDS, "taylor:crossover=1", "taylor:crossover=1000000"],
                        help="registry names, optionally with options: taylor:crossover=1")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (after one untimed run)")
    parser.add_argument("--max-case-seconds", type=float, default=60.0,
                        help="skip longer sequences of a backend once one run is predicted to take longer")
    parser.add_argument("--decode-contexts", type=int, nargs="*", default=[256, 1024, 4096, 16384])
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--out", default="results/bench_attention", help="output prefix (.csv, .md, .png)")
    parser.add_argument("--against",
                        help="paired mode: the reference backend (a spec, e.g. softmax:blocked=false for torch SDPA "
                        "on the CPU) timed in turn with each backend; its options must exist in a --baseline-rev tree")
    parser.add_argument("--baseline-rev", help="paired mode: also time each case from this git revision's tree")
    parser.add_argument("--profile", action="store_true",
                        help="paired mode: where the time goes (torch.profiler), and one tile's GEMMs per dtype")
    parser.add_argument("--rounds", type=int, default=5, help="paired mode: rounds per process")
    parser.add_argument("--turns", type=int, default=2, help="paired mode: processes per case and tree")
    parser.add_argument("--block", type=int, default=128, help="paired mode: tile size of the GEMM timings")
    parser.add_argument("--malloc", choices=("kept", "unchanged"), default="kept",
                        help="keep freed memory in every case process as train.py does (training/malloc.py), or "
                             "leave glibc's defaults")
    for kind in ("training", "decode", "paired", "tile-gemm"):
        parser.add_argument(f"--{kind}-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    children = {"training_case": run_training_case, "decode_case": run_decode_case, "paired_case": run_paired_case,
                "tile_gemm_case": run_tile_gemm_case}
    for option, child in children.items():
        if getattr(args, option):
            case = json.loads(getattr(args, option))
            setting = malloc.malloc_setting(case["malloc"] == "kept")  # before the case allocates anything
            result = child(case)
            print(json.dumps([row | {"malloc": setting} for row in result] if isinstance(result, list)
                             else result | {"malloc": setting}))
            return
    torch.set_num_threads(args.threads)  # the cases' own (each runs in a child); the page's crossover lookup too
    # the parent runs this tree; a case's child may import an older one's
    from fileio.pages import page_file, write_page_files
    if args.against:
        if args.baseline_rev:
            from experiments.revision import baseline_commit  # the parent always runs this tree
            args.baseline_rev = baseline_commit(parser, args.baseline_rev)  # the page names the commit
        loads = [os.getloadavg()[0]]
        rows, gemm_rows = paired(args)
        loads.append(os.getloadavg()[0])
        out = Path(args.out)
        write_page_files(out, paired_markdown(args, rows, gemm_rows, tuple(loads)),
                         [{"kind": "paired"} | r for r in rows] + [{"kind": "tile gemm"} | r for r in gemm_rows])
        print(f"wrote {page_file(out, '.csv')}, {page_file(out, '.md')}")
        return

    train_rows, decode_rows = benchmark(args)
    out = Path(args.out)
    write_page_files(out, markdown(args, train_rows, decode_rows),
                     [{"kind": "training"} | r for r in train_rows] + [{"kind": "decode"} | r for r in decode_rows])
    plot(page_file(out, ".png"), args, train_rows, decode_rows)
    print(f"wrote {', '.join(str(page_file(out, suffix)) for suffix in ('.csv', '.md', '.png'))}")


if __name__ == "__main__":
    main()
