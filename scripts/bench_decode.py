"""Benchmark decoding of the whole model: per-token latency and decode-state bytes at growing context positions.

    python scripts/bench_decode.py                                    # every backend, positions 128 .. 64k
    python scripts/bench_decode.py --backends softmax taylor --positions 128 1024 4096 --steps 16
    python scripts/bench_decode.py --config configs/shakespeare-cpu.yaml --positions 16384 --batches 1 8 32 64 \
        --kv-max-position 16384 --steps 8 --out results/bench_decode_batch     # batched throughput, the demo's shape

The model has the 125M shape (12 layers, 12 heads, 768 wide, GPT-2 vocabulary), or the shape of --config's model
section, with random weights and position encoding `none` (or `rope`), so positions past n_positions are allowed;
it runs on the CPU. Per backend, every position P gets its own decode state at batch 1, prefilled with P random
token ids in chunks of --prefill-chunk (never P single steps). For every batch size B in --batches, a copy of each
state is repeated B times along the batch (a step's time depends on the state's size, not its content, so B rows
holding the same context time as B different ones would), then --steps single-token steps of B tokens are timed at
every position, round-robin (median and best ms per step; tokens/s = B / median step), and the bytes of each decode
state recorded. A batch whose states would not fit in the memory available now is skipped, with the reason. KV
caches (softmax, expressive) are preallocated and only go up to --kv-max-position; the constant-memory backends take
every position. Writes <out>.csv, <out>.md and <out>.png (the png: batch 1, when there are several positions).
A full run takes minutes on a CPU, mostly prefill, which grows with the position: pass fewer --backends and
--positions for a quick look.

Target: a constant-memory backend keeps its latency at 16,384 within 1.15x of that at 128 and its state bytes
identical at every position, since its decode state, and so the work of a step, does not grow with the context.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import torch

from experiments.log_axes import style_log_axes
from fileio.atomic import save_figure_atomic
from fileio.pages import command_line, opening, page_file, this_machine, today, write_page_files
from fileio.tables import markdown_table
from model.attention import BACKENDS, get_backend
from model.config import ModelConfig
from model.generation import available_bytes
from model.gpt import GPT, DecodeState
from training.config import load_config

TARGET_RATIO = 1.15  # constant-memory backends: latency(16384) / latency(128) at most this
TARGET_POSITIONS = (128, 16384)
MEMORY_MARGIN = 1.25  # a batch's states times this must fit in MemAvailable (the step's own buffers come on top)


def build_model(name: str, args: argparse.Namespace) -> GPT:
    """The benchmarked model with random weights: the 125M shape, or --config's model section."""
    torch.manual_seed(0)
    if args.config is None:
        cfg = ModelConfig(attention=name, position=args.position)
    else:
        cfg = load_config(args.config, [f"model.attention={name}", f"model.position={args.position}"]).model
    return GPT(cfg).to(getattr(torch, args.dtype)).eval()


def repeat_state(state: DecodeState, batch: int) -> DecodeState:
    """A copy of a batch-1 decode state holding its one row `batch` times (every tensor of a backend's state has the
    batch along its first dimension)."""
    def repeat(x):
        return x.repeat(batch, *[1] * (x.ndim - 1)) if isinstance(x, torch.Tensor) else x

    layers = [dataclasses.replace(s, **{f.name: repeat(getattr(s, f.name)) for f in dataclasses.fields(s)})
              for s in state.layers]
    return DecodeState(layers, state.position, repeat(state.pads))


@torch.no_grad()
def bench_backend(name: str, args: argparse.Namespace) -> list[dict]:
    """Rows (position, batch, median and best ms per step, tokens/s, state bytes, prefill seconds) of one backend.

    Each position gets its own batch-1 state, prefilled from scratch (a KV cache with room for exactly P + steps
    tokens), and every batch size times its own copies of them; the timed steps go round-robin over the positions,
    so a load that changes during the run (a shared machine) slows every position alike instead of skewing their
    ratios.
    """
    dtype = getattr(torch, args.dtype)
    model = build_model(name, args)
    constant = model.constant_memory_decoding
    positions = sorted(p for p in args.positions if constant or p <= args.kv_max_position)
    ids = torch.randint(0, model.config.vocab_size, (1, max(positions) + args.steps),
                        generator=torch.Generator().manual_seed(0))
    prefilled, prefill_s = {}, {}
    for position in positions:
        state = model.init_decode_state(1, dtype=dtype, device="cpu", capacity=position + args.steps)
        start = time.perf_counter()
        for t0 in range(0, position, args.prefill_chunk):
            _, state = model.decode(ids[:, t0 : min(t0 + args.prefill_chunk, position)], state, last_only=True)
        prefill_s[position] = time.perf_counter() - start
        prefilled[position] = state
    rows = []
    for batch in args.batches:
        base = {"backend": name, "constant_memory": constant, "batch": batch}
        needed = {p: batch * model.decode_state_nbytes(s) for p, s in prefilled.items()}
        available = available_bytes(torch.device("cpu"))
        if available is None:
            raise RuntimeError("the memory available is unknown here (no MemAvailable in /proc/meminfo)")
        if MEMORY_MARGIN * sum(needed.values()) > available:
            reason = f"needs {sum(needed.values()) / 2**30:.1f} GiB of states, {available / 2**30:.1f} GiB available"
            print(f"{name:<14} batch {batch:>3}: skipped, {reason}", flush=True)
            rows += [base | {"position": p, "state_bytes": needed[p], "skipped": reason} for p in positions]
            continue
        states = {p: repeat_state(s, batch) for p, s in prefilled.items()}
        times: dict[int, list[float]] = {p: [] for p in positions}
        for step in range(args.steps):
            for position in positions:
                token = ids[:, position + step : position + step + 1].expand(batch, 1)
                start = time.perf_counter()
                _, states[position] = model.decode(token, states[position])
                times[position].append(time.perf_counter() - start)
        for position in positions:
            step_s = statistics.median(times[position])
            row = base | {"position": position, "step_ms": 1e3 * step_s, "step_ms_min": 1e3 * min(times[position]),
                          "tokens_per_s": batch / step_s, "state_bytes": model.decode_state_nbytes(states[position]),
                          "prefill_s": prefill_s[position], "skipped": ""}
            print(f"{name:<14} batch {batch:>3} position {position:>6}: {row['step_ms']:8.1f} ms/step "
                  f"(best {row['step_ms_min']:.1f}), {row['tokens_per_s']:8.1f} tokens/s, "
                  f"state {row['state_bytes'] / 2**20:9.2f} MiB, prefill {row['prefill_s']:6.1f} s", flush=True)
            rows.append(row)
        del states
    return rows


def lookup(rows: list[dict], backend: str, position: int, batch: int = 1) -> dict | None:
    """The measured row of one backend, position and batch; None where it was not run or was skipped."""
    return next((r for r in rows if r["backend"] == backend and r["position"] == position and r["batch"] == batch
                 and not r["skipped"]), None)


def target_lines(rows: list[dict]) -> list[str]:
    """The targets of the constant-memory backends (see the module docstring), as measured."""
    lines = []
    lo, hi = TARGET_POSITIONS
    for backend in dict.fromkeys(r["backend"] for r in rows if r["constant_memory"]):
        sizes = {r["state_bytes"] for r in rows if r["backend"] == backend and r["batch"] == 1}
        a, b = lookup(rows, backend, lo), lookup(rows, backend, hi)
        if a and b:
            ratio = b["step_ms"] / a["step_ms"]
            verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
            lines.append(f"- {backend}: latency({hi}) / latency({lo}) = {ratio:.3f} ({verdict}, target <= "
                         f"{TARGET_RATIO})")
        else:
            lines.append(f"- {backend}: latency ratio not measured (needs positions {lo} and {hi})")
        if sizes:
            verdict = "identical at every position" if len(sizes) == 1 else f"NOT constant: {sorted(sizes)}"
            lines.append(f"- {backend}: state bytes at batch 1 {verdict} ({min(sizes):,} bytes)")
    return lines


def markdown(rows: list[dict], args: argparse.Namespace, load: tuple[float, float]) -> str:
    positions = sorted({r["position"] for r in rows})
    shape = "125M shape" if args.config is None else f"{args.config} model shape"
    batches = "batch 1" if args.batches == [1] else f"batches {', '.join(map(str, args.batches))}"
    config = (f"{shape}, random weights, position {args.position}, {args.dtype}, {batches}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} of {os.cpu_count()} CPU thread(s)")
    page = opening("Decode benchmark", "per-token decode latency and decode-state bytes at growing context positions"
                   if args.batches == [1] else "decode throughput and decode-state bytes by batch size and position",
                   command_line(__file__), config, this_machine(), today())
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    columns = [(p, b) for p in positions for b in args.batches]
    if args.batches == [1]:
        header = [f"{p:,}" for p in positions]
        what = "Cells: ms per token (decode-state MiB); `-` = not run."
    else:
        header = [f"batch {b}" if len(positions) == 1 else f"{p:,} x {b}" for p, b in columns]
        what = ("Cells: tokens/s = batch / median step time, ms per step (decode-state MiB); `-` = not run. Each "
                "batch repeats the row of a batch-1 state prefilled to the position (the step's work depends on the "
                "state's size, not on its content).")
    table = [[backend, "constant" if get_backend(backend).constant_memory else "KV cache",
              *(cell_text(rows, backend, p, b, args.batches) for p, b in columns)] for backend in backends]
    skipped = [f"- {r['backend']} at position {r['position']:,}, batch {r['batch']}: {r['skipped']}"
               for r in rows if r.get("skipped")]
    lines = [
        f"Load average {load[0]:.2f} at the start, {load[1]:.2f} at the end. "
        f"Median of {args.steps} single-token steps, round-robin over the positions, after a prefill (chunks of "
        f"{args.prefill_chunk}) to the position. {what}",
        "",
        markdown_table(["backend", "state", *header], table),
        "", *(["## Skipped (memory)", "", *skipped, ""] if skipped else []),
        "## Targets (constant-memory backends)", "", *target_lines(rows), "",
    ]
    return page + "\n".join(lines)


def cell_text(rows: list[dict], backend: str, position: int, batch: int, batches: list[int]) -> str:
    """`ms per token (state MiB)` at batch 1 only, else `tokens/s, ms per step (state MiB)`; `-` where not run."""
    r = lookup(rows, backend, position, batch)
    if r is None:
        return "-"
    mib = f"({r['state_bytes'] / 2**20:.1f})"
    if batches == [1]:
        return f"{r['step_ms']:.1f} {mib}"
    return f"{r['tokens_per_s']:,.0f}, {r['step_ms']:.1f} ms {mib}"


def plot(path: Path, rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5))
    latency, memory = fig.subplots(1, 2)
    for backend in dict.fromkeys(r["backend"] for r in rows):
        x, ms, mib = zip(*sorted((r["position"], r["step_ms"], r["state_bytes"] / 2**20)
                                 for r in rows if r["backend"] == backend and r["batch"] == 1 and not r["skipped"]))
        style = "-" if get_backend(backend).constant_memory else "--"
        latency.plot(x, ms, style, marker="o", label=backend)
        memory.plot(x, mib, style, marker="o", label=backend)
    style_log_axes(latency, "decode latency (ms / token)", "context position")
    style_log_axes(memory, "decode state (MiB)", "context position")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--config", help="a run config whose model section gives the shape (default: 125M)")
    parser.add_argument("--positions", type=int, nargs="+", default=[128, 1024, 4096, 16384, 65536])
    parser.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes timed at every position")
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
    settings = {"threads": torch.get_num_threads(), "dtype": args.dtype, "position_encoding": args.position}
    write_page_files(out, markdown(rows, args, (load_start, os.getloadavg()[0])), [row | settings for row in rows])
    written = [page_file(out, ".csv"), page_file(out, ".md")]
    if 1 in args.batches and len(args.positions) > 1:
        written.append(page_file(out, ".png"))
        plot(written[-1], rows)
    print("\n".join(target_lines(rows)))
    print(f"wrote {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
