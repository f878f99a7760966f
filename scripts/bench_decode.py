"""Benchmark decoding of the whole model: per-token latency and decode-state bytes at growing context positions.

    python scripts/bench_decode.py                                    # every backend, positions 128 .. 64k
    python scripts/bench_decode.py --backends softmax taylor --positions 128 1024 4096 --steps 16

The model has the 125M shape (12 layers, 12 heads, 768 wide, GPT-2 vocabulary) with random weights and position
encoding `none` (or `rope`), so positions past n_positions are allowed; it runs on the CPU. Per backend, every
position P gets its own decode state, prefilled with P random token ids in chunks of --prefill-chunk (never P
single steps); then --steps single-token steps are timed at every position, round-robin (median and best ms per
token), and the bytes of each decode state recorded. KV caches (softmax, expressive) are preallocated and only go up
to --kv-max-position; the constant-memory backends take every position. Writes <out>.csv, <out>.md and <out>.png.
On the 2-core reference machine, positions 128 .. 16,384 of all five backends take about 13 minutes; 65,536 adds
several minutes of prefill per constant-memory backend.

Target: a constant-memory backend keeps its latency at 16,384 within 1.15x of that at 128 and its state bytes
identical at every position, since its decode state, and so the work of a step, does not grow with the context.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from experiments.log_axes import style_log_axes
from fileio.pages import command_line, opening, this_machine, today
from fileio.tables import csv_text, markdown_table
from model.attention import BACKENDS, get_backend
from model.config import ModelConfig
from model.gpt import GPT

TARGET_RATIO = 1.15  # constant-memory backends: latency(16384) / latency(128) at most this
TARGET_POSITIONS = (128, 16384)


@torch.no_grad()
def bench_backend(name: str, args: argparse.Namespace) -> list[dict]:
    """Rows (position, median and best ms per token, state bytes, prefill seconds) of one backend.

    Each position gets its own state, prefilled from scratch (a KV cache with room for exactly P + steps tokens);
    the timed steps then go round-robin over the positions, so a load that changes during the run (a shared
    machine) slows every position alike instead of skewing their ratios.
    """
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = GPT(ModelConfig(attention=name, position=args.position)).to(dtype).eval()
    constant = model.constant_memory_decoding
    positions = sorted(p for p in args.positions if constant or p <= args.kv_max_position)
    ids = torch.randint(0, model.config.vocab_size, (1, max(positions) + args.steps),
                        generator=torch.Generator().manual_seed(0))
    states, prefill_s = {}, {}
    for position in positions:
        state = model.init_decode_state(1, dtype=dtype, device="cpu", capacity=position + args.steps)
        start = time.perf_counter()
        for t0 in range(0, position, args.prefill_chunk):
            _, state = model.decode(ids[:, t0 : min(t0 + args.prefill_chunk, position)], state, last_only=True)
        prefill_s[position] = time.perf_counter() - start
        states[position] = state
    times: dict[int, list[float]] = {p: [] for p in positions}
    for step in range(args.steps):
        for position in positions:
            token = ids[:, position + step : position + step + 1]
            start = time.perf_counter()
            _, states[position] = model.decode(token, states[position])
            times[position].append(time.perf_counter() - start)
    rows = []
    for position in positions:
        row = {"backend": name, "constant_memory": constant, "position": position,
               "step_ms": 1e3 * statistics.median(times[position]), "step_ms_min": 1e3 * min(times[position]),
               "state_bytes": model.decode_state_nbytes(states[position]), "prefill_s": prefill_s[position]}
        print(f"{name:<14} position {position:>6}: {row['step_ms']:8.1f} ms/token (best {row['step_ms_min']:.1f}), "
              f"state {row['state_bytes'] / 2**20:9.2f} MiB, prefill {row['prefill_s']:6.1f} s", flush=True)
        rows.append(row)
    return rows


def lookup(rows: list[dict], backend: str, position: int) -> dict | None:
    return next((r for r in rows if r["backend"] == backend and r["position"] == position), None)


def target_lines(rows: list[dict]) -> list[str]:
    """The targets of the constant-memory backends (see the module docstring), as measured."""
    lines = []
    lo, hi = TARGET_POSITIONS
    for backend in dict.fromkeys(r["backend"] for r in rows if r["constant_memory"]):
        sizes = {r["state_bytes"] for r in rows if r["backend"] == backend}
        a, b = lookup(rows, backend, lo), lookup(rows, backend, hi)
        if a and b:
            ratio = b["step_ms"] / a["step_ms"]
            verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
            lines.append(f"- {backend}: latency({hi}) / latency({lo}) = {ratio:.3f} ({verdict}, target <= "
                         f"{TARGET_RATIO})")
        else:
            lines.append(f"- {backend}: latency ratio not measured (needs positions {lo} and {hi})")
        verdict = "identical at every position" if len(sizes) == 1 else f"NOT constant: {sorted(sizes)}"
        lines.append(f"- {backend}: state bytes {verdict} ({min(sizes):,} bytes)")
    return lines


def markdown(rows: list[dict], args: argparse.Namespace, load: tuple[float, float]) -> str:
    positions = sorted({r["position"] for r in rows})
    config = (f"125M shape, random weights, position {args.position}, {args.dtype}, batch 1, "
              f"torch {torch.__version__}, {torch.get_num_threads()} of {os.cpu_count()} CPU thread(s)")
    page = opening("Decode benchmark", "per-token decode latency and decode-state bytes at growing context positions",
                   command_line(__file__), config, this_machine(), today())
    table = [[backend, "constant" if get_backend(backend).constant_memory else "KV cache",
              *(position_cell(rows, backend, p) for p in positions)]
             for backend in dict.fromkeys(r["backend"] for r in rows)]
    lines = [
        f"Load average {load[0]:.2f} at the start, {load[1]:.2f} at the end (other processes share the machine). "
        f"Median of {args.steps} single-token steps, round-robin over the positions, after a prefill (chunks of "
        f"{args.prefill_chunk}) to the position. Cells: ms per token (decode-state MiB); `-` = not run.",
        "",
        markdown_table(["backend", "state", *(f"{p:,}" for p in positions)], table),
        "", "## Targets (constant-memory backends)", "", *target_lines(rows), "",
    ]
    return page + "\n".join(lines)


def position_cell(rows: list[dict], backend: str, position: int) -> str:
    """`ms per token (state MiB)` of one backend at one position; `-` where not run."""
    r = lookup(rows, backend, position)
    return f"{r['step_ms']:.1f} ({r['state_bytes'] / 2**20:.1f})" if r else "-"


def plot(path: Path, rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    latency, memory = fig.subplots(1, 2)
    for backend in dict.fromkeys(r["backend"] for r in rows):
        x, ms, mib = zip(*sorted((r["position"], r["step_ms"], r["state_bytes"] / 2**20)
                                 for r in rows if r["backend"] == backend))
        style = "-" if get_backend(backend).constant_memory else "--"
        latency.plot(x, ms, style, marker="o", label=backend)
        memory.plot(x, mib, style, marker="o", label=backend)
    style_log_axes(latency, "decode latency (ms / token)", "context position")
    style_log_axes(memory, "decode state (MiB)", "context position")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--positions", type=int, nargs="+", default=[128, 1024, 4096, 16384, 65536])
    parser.add_argument("--kv-max-position", type=int, default=16384,
                        help="KV-cache backends skip positions above this (their cache grows with the context)")
    parser.add_argument("--steps", type=int, default=24, help="timed single-token steps per position")
    parser.add_argument("--prefill-chunk", type=int, default=1024)
    parser.add_argument("--position", default="none", choices=["none", "rope"], help="position encoding")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default); 1 is steadiest on a shared machine")
    parser.add_argument("--out", default="results/bench_decode", help="output prefix (.csv, .md, .png)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)

    load_start = os.getloadavg()[0]
    rows = [row for name in args.backends for row in bench_backend(name, args)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"threads": torch.get_num_threads(), "dtype": args.dtype, "position_encoding": args.position}
    out.with_suffix(".csv").write_text(csv_text(row | settings for row in rows))
    out.with_suffix(".md").write_text(markdown(rows, args, (load_start, os.getloadavg()[0])))
    plot(out.with_suffix(".png"), rows)
    print("\n".join(target_lines(rows)))
    print(f"wrote {out}.csv, {out}.md, {out}.png")


if __name__ == "__main__":
    main()
