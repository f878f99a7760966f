"""Seconds of one AdamW step over a model's parameters: torch's foreach form against its fused form.

    python scripts/bench_optim.py                                  # GPT-2 small and the demo's shape, 1 and 2 threads
    python scripts/bench_optim.py --shapes gpt2-small --threads 1 --rounds 9

The two optimizers hold the same parameters and the same random gradients and take turns step after step, so load
from other processes slows both alike; the page gives the median of each and their ratio. training/optim.py picks
the form per device from this page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from experiments.bench_shapes import SHAPES
from fileio.pages import command_line, load_since, write_page
from fileio.tables import cell, markdown_table
from model.gpt import GPT
from training.config import OptimConfig
from training.optim import parameter_groups

FORMS = {"foreach": {"foreach": True}, "fused": {"fused": True}}


def step_seconds(shape: str, rounds: int) -> dict[str, float]:
    """Median seconds of one step of each form, the forms taking turns for `rounds` rounds after an untimed one."""
    model = GPT(SHAPES[shape].model_config())
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 1e-3
    cfg = OptimConfig()
    optimizers = {name: torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr,
                                          betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **options)
                  for name, options in FORMS.items()}
    times: dict[str, list[float]] = {name: [] for name in FORMS}
    for _ in range(rounds + 1):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(found[1:]) for name, found in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="gpt2-small,demo", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="results/bench_optim")
    args = parser.parse_args(argv)

    rows = []
    load_start = os.getloadavg()[0]
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for shape in args.shapes.split(","):
            seconds = step_seconds(shape, args.rounds)
            rows.append(dict(shape=shape, threads=threads, foreach_s=seconds["foreach"], fused_s=seconds["fused"],
                             ratio=seconds["fused"] / seconds["foreach"]))
            print(rows[-1], flush=True)

    table = markdown_table(["shape", "threads", "foreach, s", "fused, s", "fused / foreach"],
                           [[r["shape"], r["threads"], cell(r["foreach_s"]), cell(r["fused_s"]), cell(r["ratio"])]
                            for r in rows], right=("threads", "foreach, s", "fused, s", "fused / foreach"))
    shapes = args.shapes.split(",")
    config = (f"AdamW over the parameters of {', '.join(shapes)} "
              f"({'; '.join(f'{s}: {SHAPES[s].n_layer} layers x {SHAPES[s].n_embd}' for s in shapes)}), "
              f"fp32, random gradients, medians of {args.rounds} alternating rounds after an untimed one; torch "
              f"{torch.__version__}; {load_since(load_start)}")
    write_page(args.out, rows, title="AdamW step: foreach and fused",
               measured="seconds of one optimizer step of each form, taking turns",
               command=command_line(__file__, argv), config=config, body=table)
    print(table)


if __name__ == "__main__":
    main()
