"""Causal softmax attention on the CPU: torch SDPA against the blocked form of model/attention/blocked_softmax.py.

    python scripts/bench_blocked_softmax.py                       # bf16 and fp32, 1 and 2 threads, blocks 64-256
    python scripts/bench_blocked_softmax.py --dtypes bfloat16 --threads 1 --rounds 9

Each case times forward+backward (training) or the forward alone without gradients (evaluation) of SDPA
(is_causal=True) and of the blocked form at each block size, taking turns round after round, so load from other
processes slows all alike; the page gives the medians and each form's time over SDPA's. A last table gives each
form's error against the fp64 reference on the same bf16 inputs (relative Frobenius norm of the output and of the
three gradients). model/attention/blocked_softmax.py takes its block_rows
and its CPU rule from this page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from fileio.pages import command_line, load_since, write_page
from fileio.tables import cell, markdown_table
from model.attention import get_backend
from model.attention.blocked_softmax import blocked_causal_softmax, saved_bytes

D = 64
SHAPES = ("8x4x256", "16x4x256", "1x12x512", "1x12x1024", "1x12x2048")  # B x H x T: the demo's, GPT-2 small's
NO_GRAD_SHAPES = ("8x4x256", "1x12x1024", "1x12x4096", "1x12x8192")


def parse_shape(text: str) -> tuple[int, int, int]:
    b, h, t = map(int, text.split("x"))
    return b, h, t


def forms(blocks: list[int]) -> dict[str, int | None]:
    """Each form's name and its block size (None: torch SDPA)."""
    return {"sdpa": None} | {f"blocked {block}": block for block in blocks}


def attend(block: int | None, q, k, v):
    if block is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return blocked_causal_softmax(q, k, v, block)


TRAINING, EVALUATION = "fwd+bwd", "fwd, no grad"


def seconds(shape: tuple[int, int, int], dtype: torch.dtype, blocks: list[int], rounds: int,
            mode: str) -> dict[str, float]:
    """Median seconds of each form in `mode`, the forms taking turns for `rounds` rounds after an untimed one."""
    gen = torch.Generator().manual_seed(0)
    b, h, t = shape
    backward = mode == TRAINING
    q, k, v = (torch.randn(b, h, t, D, generator=gen, dtype=dtype).requires_grad_(backward) for _ in range(3))
    grad = torch.randn(b, h, t, D, generator=gen, dtype=dtype)
    times: dict[str, list[float]] = {}
    for _ in range(rounds + 1):
        for name, block in forms(blocks).items():
            start = time.perf_counter()
            y = attend(block, q, k, v)  # without gradients when the inputs need none
            if backward:
                y.backward(grad)
            times.setdefault(name, []).append(time.perf_counter() - start)
    return {name: statistics.median(found[1:]) for name, found in times.items()}


def case_rows(mode: str, threads: int, dtype: torch.dtype, shape: tuple[int, int, int], blocks: list[int],
              rounds: int) -> list[dict]:
    """One row per form: its median time, its time over SDPA's, and the weights it keeps for the backward pass."""
    found = seconds(shape, dtype, blocks, rounds, mode)
    meta = torch.empty(*shape, D, dtype=dtype, device="meta")
    print({name: round(value * 1e3, 2) for name, value in found.items()}, mode, threads, dtype, shape, flush=True)
    blocks_of = forms(blocks)
    return [dict(mode=mode, threads=threads, dtype=str(dtype).removeprefix("torch."), shape="x".join(map(str, shape)),
                 form=name, seconds=value, over_sdpa=value / found["sdpa"],
                 saved_mib=0 if blocks_of[name] is None or mode != TRAINING else saved_bytes(meta, blocks_of[name])
                 / 2**20)
            for name, value in found.items()]


def errors(shape: tuple[int, int, int], blocks: list[int]) -> dict[str, list[float]]:
    """Relative error of each form's output and gradients (q, k, v) in bf16 against the fp64 reference computed on
    the same bf16-rounded inputs."""
    gen = torch.Generator().manual_seed(1)
    b, h, t = shape
    q, k, v = (torch.randn(b, h, t, D, generator=gen).bfloat16() for _ in range(3))
    grad = torch.randn(b, h, t, D, generator=gen).bfloat16()
    exact = [x.double().requires_grad_() for x in (q, k, v)]
    reference = get_backend("softmax").reference(*exact)
    reference.backward(grad.double())

    def relative(x, ref):
        return ((x.double() - ref).norm() / ref.norm()).item()

    found = {}
    for name, block in forms(blocks).items():
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        y = attend(block, *inputs)
        y.backward(grad)
        found[name] = [relative(y, reference)] + [relative(x.grad, x_ref.grad) for x, x_ref in zip(inputs, exact)]
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma list of BxHxT (d = 64), timed fwd+bwd")
    parser.add_argument("--no-grad-shapes", default=",".join(NO_GRAD_SHAPES),
                        help="comma list of BxHxT timed forward alone, without gradients")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--blocks", default="64,128,256", help="query rows per block, comma list")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--error-shape", default="1x12x1024")
    parser.add_argument("--out", default="results/bench_blocked_softmax")
    args = parser.parse_args(argv)
    blocks = [int(x) for x in args.blocks.split(",")]
    shapes = {TRAINING: args.shapes, EVALUATION: args.no_grad_shapes}

    rows = []
    load_start = os.getloadavg()[0]
    for mode, mode_shapes in shapes.items():
        for threads in map(int, args.threads.split(",")):
            torch.set_num_threads(threads)
            for dtype_name in args.dtypes.split(","):
                dtype = getattr(torch, dtype_name)
                for shape in map(parse_shape, filter(None, mode_shapes.split(","))):
                    rows += case_rows(mode, threads, dtype, shape, blocks, args.rounds)
    torch.set_num_threads(1)
    found_errors = errors(parse_shape(args.error_shape), blocks)
    error_rows = [[name, *map(cell, values)] for name, values in found_errors.items()]

    columns = ["threads", "dtype", "B x H x T", "form", "ms", "/ SDPA", "weights kept, MiB"]
    timing = {mode: markdown_table(columns, [[r["threads"], r["dtype"], r["shape"], r["form"], cell(r["seconds"] * 1e3),
                                              cell(r["over_sdpa"]), cell(r["saved_mib"])]
                                             for r in rows if r["mode"] == mode], right=columns[4:] + ["threads"])
              for mode in shapes}
    error = markdown_table(["form", "output", "dq", "dk", "dv"], error_rows, right=("output", "dq", "dk", "dv"))
    body = (f"## Forward+backward time (training)\n\n{timing[TRAINING]}\n\n## Forward alone, without gradients "
            f"(evaluation)\n\n{timing[EVALUATION]}\n\n## Error in bf16 against the fp64 reference, "
            f"{args.error_shape} (relative Frobenius norm)\n\n{error}")
    config = (f"d = {D}, causal, no padding, random normal inputs, medians of {args.rounds} rounds after an untimed "
              f"one; 'weights kept' is what the blocked form holds for its backward pass (SDPA's is O(T)); torch "
              f"{torch.__version__}; {load_since(load_start)}")
    write_page(args.out, rows, title="Causal softmax attention on the CPU: SDPA and the blocked form",
               measured="seconds of forward+backward, and of the forward alone, of each form, taking turns, and "
               "their bf16 error",
               command=command_line(__file__, argv), config=config, body=body)
    print(body)


if __name__ == "__main__":
    main()
