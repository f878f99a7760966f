"""Decode a very long stream one token at a time and record latency and memory against the position.

    python scripts/bench_decode_long.py --tokens 1000000 --dtype bfloat16    # logexp and taylor: results/decode_1m
    python scripts/bench_decode_long.py --backends logexp --tokens 20000 --bucket 1000 --out /tmp/decode_20k

The model is the CPU demo's shape (configs/shakespeare-cpu.yaml: 4 layers, 256 wide, 4 heads, GPT-2 vocabulary)
with random weights and position `rope` (or `none`), fp32 or bf16 weights (`--dtype`; the recurrent states
accumulate in fp32 either way), batch 1, one thread. Every backend runs in its own
process (all at once), so its resident memory is its own: from an empty state, each token is one `GPT.decode` step
(the step generate() takes) whose greedy next token (`next_token` at temperature 0, as `--temperature 0` picks it)
is fed back. Per bucket of `--bucket` tokens it records the median, p99 and mean milliseconds per token (the decode
step plus the argmax; wall clock), the median CPU milliseconds of the decoding thread per token, the process's
resident memory (VmRSS of /proc/self/status) and the decode state's bytes at the bucket's end, and the load
average. On a shared machine the wall clock follows the load; the CPU time does much less so, and the latency
claim is judged on it. The page and its figure are rewritten as buckets arrive, so a run
stopped early leaves what it measured.

Claim checked: a constant-memory backend decodes flat, i.e. its median CPU time per token at the last bucket is
within TARGET_RATIO of the first, its resident memory does not grow (beyond the allocator's noise) and its state bytes are identical at
every position.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue as queue_module
import signal
import statistics
import time
from pathlib import Path

import torch

from fileio.atomic import save_figure_atomic
from fileio.pages import command_line, opening, page_file, this_machine, today, write_page_files
from fileio.tables import markdown_table
from model.attention import BACKENDS, get_backend
from model.gpt import GPT
from model.sampling import Sampler, next_token
from training.config import load_config
from training.runtime import process_status_mib

TARGET_RATIO = 1.15  # median latency of the last bucket / the first, at most this (as scripts/bench_decode.py)
RSS_GROWTH_MIB = 16  # resident memory may move this much between the first and the last bucket (allocator noise)
GREEDY = Sampler(temperature=0.0)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def demo_model(args: argparse.Namespace, backend: str) -> GPT:
    overrides = [f"model.attention={backend}", f"model.position={args.position}"]
    torch.manual_seed(0)
    return GPT(load_config(args.config, overrides).model).eval().to(DTYPES[args.dtype])


@torch.no_grad()
def decode_stream(backend: str, args: argparse.Namespace, rows: multiprocessing.Queue) -> None:
    """Decode args.tokens tokens one at a time (in a process of its own) and put one row per bucket on `rows`."""
    torch.set_num_threads(args.threads)
    model = demo_model(args, backend)
    state = model.init_decode_state(1, dtype=DTYPES[args.dtype], device="cpu")
    token = torch.zeros(1, 1, dtype=torch.long)  # the first input; every later one is the greedy choice
    start, times, cpu_times = time.perf_counter(), [], []
    for position in range(1, args.tokens + 1):
        t0, c0 = time.perf_counter(), time.thread_time()  # one torch thread: the ops run on this thread
        logits, state = model.decode(token, state)
        token = next_token(logits[:, -1], GREEDY)
        cpu_times.append(time.thread_time() - c0)
        times.append(time.perf_counter() - t0)
        if len(times) == args.bucket or position == args.tokens:
            ms = sorted(1e3 * t for t in times)
            rows.put({"backend": backend, "position": position, "tokens": len(ms),
                      "median_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
                      "mean_ms": statistics.fmean(ms), "cpu_median_ms": 1e3 * statistics.median(cpu_times),
                      "rss_mib": process_status_mib("VmRSS"), "state_bytes": model.decode_state_nbytes(state),
                      "load": os.getloadavg()[0], "elapsed_s": time.perf_counter() - start})
            times, cpu_times = [], []
    rows.put({"backend": backend, "done": True})


def summary_lines(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """Per backend: tokens done, latency of the last bucket against the first, resident-memory growth, state bytes."""
    lines = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        own = [r for r in rows if r["backend"] == backend]
        first, last = own[0], own[-1]
        ratio = last["median_ms"] / first["median_ms"]
        cpu_ratio = last["cpu_median_ms"] / first["cpu_median_ms"]
        growth = last["rss_mib"] - first["rss_mib"]
        sizes = {r["state_bytes"] for r in own}
        flat = cpu_ratio <= TARGET_RATIO and abs(growth) <= RSS_GROWTH_MIB and len(sizes) == 1
        medians = [r["median_ms"] for r in own]
        lines.append(
            f"- **{backend}**: {last['position']:,} of {args.tokens:,} tokens in {last['elapsed_s'] / 60:.0f} min. "
            f"Median latency {first['median_ms']:.2f} ms/token in the first bucket, {last['median_ms']:.2f} in the "
            f"last: ratio {ratio:.3f} (bucket medians from {min(medians):.2f} to {max(medians):.2f}, as the load "
            f"moved). CPU time per token {first['cpu_median_ms']:.2f} ms in the first bucket, "
            f"{last['cpu_median_ms']:.2f} in the last: ratio {cpu_ratio:.3f}. Resident "
            f"memory {first['rss_mib']:.1f} MiB after the first bucket, {last['rss_mib']:.1f} after the last: "
            f"{growth:+.1f} MiB ({max(r['rss_mib'] for r in own):.1f} at most). State "
            + (f"{first['state_bytes']:,} bytes at every bucket" if len(sizes) == 1
               else f"bytes NOT constant: {sorted(sizes)}")
            + f". Flat: {'yes' if flat else 'NO'} (CPU-time ratio <= {TARGET_RATIO}, resident memory within "
              f"{RSS_GROWTH_MIB} MiB, constant state).")
    return lines


def markdown(rows: list[dict], args: argparse.Namespace, load_start: float, status: str) -> str:
    config = (f"{args.config} model shape, random weights, position {args.position}, {args.dtype} weights, batch 1, greedy tokens "
              f"fed back, torch {torch.__version__}, {args.threads} thread per backend, one process per backend, "
              f"buckets of {args.bucket:,} tokens")
    page = opening("Decoding a long stream", "per-token decode latency, resident memory and decode-state bytes "
                   "against the position, one token at a time from an empty state", command_line(__file__),
                   config, this_machine(), today())
    header = ["backend", "position", "median ms", "p99 ms", "CPU median ms", "RSS MiB", "state bytes", "load"]
    shown = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        own = rows_of(rows, backend)
        shown += [r for r in own if r is own[0] or r is own[-1] or r["position"] % (10 * args.bucket) == 0]
    table = [[r["backend"], f"{r['position']:,}", f"{r['median_ms']:.2f}", f"{r['p99_ms']:.2f}",
              f"{r['cpu_median_ms']:.2f}", f"{r['rss_mib']:.1f}", f"{r['state_bytes']:,}", f"{r['load']:.2f}"] for r in shown]
    lines = [
        f"Run {status} (the page is rewritten as buckets arrive). Load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (other "
        "processes share the machine, and the backends run side by side). Latency is the time of the decode step "
        "and the greedy choice, wall clock and CPU time of the decoding thread; medians and p99 are over each "
        "bucket's tokens.", "",
        "## Is it flat?", "", *summary_lines(rows, args), "",
        f"## Buckets (the first, every {10 * args.bucket:,} tokens, the last; all of them in the CSV)", "",
        markdown_table(header, table, right=header[1:]), "",
    ]
    return page + "\n".join(lines)


def rows_of(rows: list[dict], backend: str) -> list[dict]:
    return [r for r in rows if r["backend"] == backend]


def plot(path: Path, rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    latency, memory = fig.subplots(1, 2)
    for backend in dict.fromkeys(r["backend"] for r in rows):
        own = rows_of(rows, backend)
        x = [r["position"] for r in own]
        (line,) = latency.plot(x, [r["median_ms"] for r in own], label=f"{backend} median")
        latency.plot(x, [r["p99_ms"] for r in own], ":", color=line.get_color(), label=f"{backend} p99")
        latency.plot(x, [r["cpu_median_ms"] for r in own], "--", color=line.get_color(), label=f"{backend} CPU median")
        memory.plot(x, [r["rss_mib"] for r in own], color=line.get_color(), label=backend)
    for axes, title in ((latency, "decode latency (ms / token)"), (memory, "resident memory, VmRSS (MiB)")):
        axes.set_title(title)
        axes.set_xlabel("position (tokens decoded)")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def write(out: Path, rows: list[dict], args: argparse.Namespace, load_start: float, status: str) -> None:
    settings = {"threads": args.threads, "position_encoding": args.position}
    rows = sorted(rows, key=lambda r: (args.backends.index(r["backend"]), r["position"]))
    write_page_files(out, markdown(rows, args, load_start, status), [r | settings for r in rows])
    plot(page_file(out, ".png"), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["logexp", "taylor"],
                        choices=[b for b in BACKENDS if get_backend(b).constant_memory])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens decoded per backend")
    parser.add_argument("--bucket", type=int, default=10_000, help="tokens per latency bucket")
    parser.add_argument("--config", default="configs/shakespeare-cpu.yaml", help="the model shape (its model section)")
    parser.add_argument("--position", default="rope", choices=["rope", "none"], help="position encoding")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="weights and activations (bfloat16 halves the bytes every step reads for the weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each backend's process")
    parser.add_argument("--redraw-s", type=float, default=60, help="rewrite the page at most this often")
    parser.add_argument("--out", default="results/decode_1m", help="output prefix (.csv, .md, .png)")
    args = parser.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    spawn = multiprocessing.get_context("spawn")  # a fresh process per backend: its memory is its own
    queue = spawn.Queue()
    workers = [spawn.Process(target=decode_stream, args=(b, args, queue)) for b in args.backends]
    for worker in workers:
        worker.start()
    # A signal to this process (kill PID) stops the run at the next check: the page then says where it stopped.
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    rows, running, drawn = [], len(workers), 0.0
    try:
        while running:
            if stop:
                raise KeyboardInterrupt
            try:
                row = queue.get(timeout=2)
            except queue_module.Empty:
                if any(w.exitcode for w in workers):
                    raise SystemExit(f"a decode process failed: exit codes {[w.exitcode for w in workers]}")
                continue
            if row.pop("done", False):
                running -= 1
            else:
                rows.append(row)
                print(f"{row['backend']:<8} {row['position']:>9,}: {row['median_ms']:6.2f} ms/token (p99 "
                      f"{row['p99_ms']:.2f}), RSS {row['rss_mib']:.1f} MiB, load {row['load']:.2f}", flush=True)
            if rows and (not running or time.monotonic() - drawn >= args.redraw_s):
                write(out, rows, args, load_start, "running" if running else "finished")
                drawn = time.monotonic()
    except KeyboardInterrupt:
        for worker in workers:
            worker.terminate()
        if rows:
            write(out, rows, args, load_start, "stopped by a signal before the last token")
        raise SystemExit("stopped")
    for worker in workers:
        worker.join()
        if worker.exitcode:
            raise SystemExit(f"a decode process exited with {worker.exitcode}")
    print("\n".join(summary_lines(rows, args)))
    print(f"wrote {', '.join(str(page_file(out, suffix)) for suffix in ('.csv', '.md', '.png'))}")


if __name__ == "__main__":
    main()
