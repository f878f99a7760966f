"""Training-step throughput (tokens/s) and MFU of the model, measured like the anchors (docs/benchmarks.md).

    python scripts/bench_train.py                       # both anchor shapes, 1 and 2 threads, fp32 and bf16
    python scripts/bench_train.py --shapes demo --threads 2 --dtypes bfloat16

One step = forward + backward + AdamW update on random tokens; the median of `--steps` timed steps after
`--warmup` untimed ones. MFU = 6N + 12LCT FLOPs per token × tokens/s ÷ the peak of a 2048² torch.mm in the
same dtype and thread count (training.runtime.peak_flops, as train.py). malloc keeps freed memory as train.py does
on the CPU (training/malloc.py) unless `--malloc unchanged`; peak RSS is the process's so far. Writes CSV and
markdown to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from experiments.bench_shapes import SHAPES, BenchShape
from fileio.pages import command_line, load_since, write_page
from fileio.tables import cell, markdown_table
from model.gpt import GPT
from training.config import OptimConfig
from training.malloc import malloc_setting
from training.optim import make_optimizer
from training.runtime import peak_flops, peak_memory_mb


def step_time(shape: BenchShape, dtype: torch.dtype, attention: str, warmup: int, steps: int) -> tuple[float, GPT]:
    config = shape.model_config(attention=attention)
    torch.manual_seed(0)
    model = GPT(config)
    optimizer = make_optimizer(model, OptimConfig(), "cpu")
    size = (shape.batch, shape.seq_len)
    x, y = torch.randint(0, config.vocab_size, size), torch.randint(0, config.vocab_size, size)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="gpt2-small,demo", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--attention", default="softmax")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--malloc", choices=("kept", "unchanged"), default="kept",
                        help="kept: freed memory kept for reuse, as train.py does on the CPU")
    parser.add_argument("--out", default="results/bench_train")
    args = parser.parse_args()
    malloc = malloc_setting(args.malloc == "kept")
    load_start = os.getloadavg()[0]

    rows = []
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            peak = peak_flops(torch.device("cpu"), dtype)
            for name in args.shapes.split(","):
                shape = SHAPES[name]
                seconds, model = step_time(shape, dtype, args.attention, args.warmup, args.steps)
                tokens_per_s = shape.tokens / seconds
                mfu = model.flops_per_token(shape.seq_len) * tokens_per_s / peak
                row = dict(shape=name, attention=args.attention, malloc=malloc, threads=threads, dtype=dtype_name,
                           step_s=round(seconds, 4), tokens_per_s=round(tokens_per_s, 1), mfu=round(mfu, 3),
                           peak_gflops=round(peak / 1e9, 1),
                           peak_rss_mib=round(peak_memory_mb(torch.device("cpu"))))
                rows.append(row)
                print(row, flush=True)

    table = markdown_table(["shape", "threads", "dtype", "tokens/s", "MFU", "step s"],
                           [[r["shape"], r["threads"], r["dtype"], cell(r["tokens_per_s"], "int"),
                             cell(r["mfu"], "pct"), r["step_s"]] for r in rows])
    config = (f"attention {args.attention}, median of {args.steps} steps after {args.warmup} warm-up steps, "
              f"malloc {malloc}, torch {torch.__version__}, {load_since(load_start)}")
    write_page(args.out, rows, title="Training-step throughput",
               measured="tokens/s and MFU of a full training step (forward, backward, AdamW)",
               command=command_line(__file__), config=config, body=table)
    print(table)


if __name__ == "__main__":
    main()
