"""Whether torch.compile pays for itself on a run: compile time plus compiled steps against eager steps.

    python scripts/bench_compile.py                                   # the CPU demo, configs/shakespeare-cpu.yaml
    python scripts/bench_compile.py configs/tiny.yaml --pairs 5

One process builds the config's model twice from the same seed: one runs eagerly, the other through torch.compile.
The first compiled training step and the first compiled evaluation batch carry the compile time (their time less a
compiled step's), with the compile caches off, as a first run pays it. Then eager and compiled training steps
(forward and backward of train.grad_accum micro-batches, AdamW, on random tokens of the config's shape) take turns
`--pairs` times, so load from other processes slows both alike, and so do evaluation batches; malloc keeps freed
memory, as train.py on the CPU. The run's total is extrapolated from these medians to the config's train.max_steps
and its evaluations (training/compile.py says what compile=auto makes of this).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from fileio.pages import command_line, write_page
from fileio.tables import cell, markdown_table
from model.gpt import GPT
from training import runtime as rt
from training.config import load_config
from training.malloc import malloc_setting
from training.optim import make_optimizer


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/shakespeare-cpu.yaml")
    parser.add_argument("--pairs", type=int, default=10, help="alternating eager/compiled steps timed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = malloc_setting(True)  # as train.py on the CPU
    torch.compiler.config.force_disable_caches = True  # the compile time a first run pays

    cfg = load_config(args.config, [])
    tc = cfg.train
    cpu = torch.device("cpu")
    runtime = rt.Runtime(device=cpu, dtype=rt.pick_dtype(tc.dtype, cpu))
    torch.manual_seed(tc.seed)
    eager = GPT(cfg.model)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    optimizers = {name: make_optimizer(m, cfg.optim, "cpu") for name, m in (("eager", eager), ("compiled",
                                                                                             compiled_model))}
    g = torch.Generator().manual_seed(0)
    batch = [torch.randint(0, cfg.model.vocab_size, (tc.batch_size, cfg.data.block_size), generator=g)
             for _ in range(2)]
    val = [torch.randint(0, cfg.model.vocab_size, (tc.eval_batch_size, cfg.data.block_size), generator=g)
           for _ in range(2)]

    def train_step(name: str) -> None:
        model = eager if name == "eager" else compiled
        for _ in range(tc.grad_accum):  # a step's micro-batches, as train.py runs them
            with runtime.autocast():
                _, loss = model(*batch)
            (loss / tc.grad_accum).backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    def eval_batch(name: str) -> None:
        model = eager if name == "eager" else compiled
        model.eval()
        with torch.no_grad(), runtime.autocast():
            model(*val)
        model.train()

    first = {"train": timed(lambda: train_step("compiled")), "eval": timed(lambda: eval_batch("compiled"))}
    train_step("eager"), eval_batch("eager")  # warm-up of the eager side
    times: dict[tuple[str, str], list[float]] = {(k, n): [] for k in ("train", "eval") for n in ("eager", "compiled")}
    for _ in range(args.pairs):
        for name in ("eager", "compiled"):
            times["train", name].append(timed(lambda: train_step(name)))
            times["eval", name].append(timed(lambda: eval_batch(name)))
    median = {key: statistics.median(found) for key, found in times.items()}
    compile_s = {kind: first[kind] - median[kind, "compiled"] for kind in ("train", "eval")}

    evaluations = len({*range(tc.eval_interval, tc.max_steps + 1, tc.eval_interval), tc.max_steps})
    eval_batches = evaluations * -(-cfg.data.eval_windows // tc.eval_batch_size)
    total = {name: tc.max_steps * median["train", name] + eval_batches * median["eval", name]
             for name in ("eager", "compiled")}
    total["compiled"] += sum(compile_s.values())
    rows = [dict(what="training step s", eager=median["train", "eager"], compiled=median["train", "compiled"]),
            dict(what="evaluation batch s", eager=median["eval", "eager"], compiled=median["eval", "compiled"]),
            dict(what="compile s (training / evaluation)", eager=0.0,
                 compiled=f"{compile_s['train']:.1f} / {compile_s['eval']:.1f}"),
            dict(what=f"run of {tc.max_steps} steps + {eval_batches} evaluation batches s (extrapolated)",
                 eager=total["eager"], compiled=total["compiled"])]
    for row in rows:
        print(row, flush=True)
    table = markdown_table(["", "eager", "torch.compile"], [[r["what"], cell(r["eager"]), cell(r["compiled"])]
                                                          for r in rows], right=("eager", "torch.compile"))
    step_ratios = [c / e for c, e in zip(times["train", "compiled"], times["train", "eager"])]
    verdict = (f"Compiled / eager over the run: {total['compiled'] / total['eager']:.2f}× "
               f"(steps alone: {median['train', 'compiled'] / median['train', 'eager']:.2f}×; the pairs' own ratios "
               f"range over {min(step_ratios):.2f}–{max(step_ratios):.2f}×).")
    config = (f"{args.config} ({cfg.model.n_layer} layers × {cfg.model.n_embd}, {cfg.model.attention}, batch "
              f"{tc.batch_size} × {cfg.data.block_size} × {tc.grad_accum} micro-batch(es) per step, "
              f"{str(runtime.dtype).removeprefix('torch.')}), "
              f"{args.threads} thread(s), medians of {args.pairs} alternating pairs, malloc {malloc} "
              f"(training/malloc.py), torch {torch.__version__}")
    write_page(args.out, rows, title="torch.compile on a training run",
               measured="compile time, training-step and evaluation-batch times eager and compiled, alternating in "
               "one process, and the run's total extrapolated from them",
               command=command_line(__file__), config=config, body=table + "\n\n" + verdict)
    print(table, verdict, sep="\n")


if __name__ == "__main__":
    main()
