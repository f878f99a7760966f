"""Training step of our GPT beside nanoGPT's, taking turns step by step in one process.

    python scripts/bench_nanogpt.py --nanogpt path/to/nanoGPT/model.py                  # GPT-2 small, bf16, 1 thread
    python scripts/bench_nanogpt.py --nanogpt model.py --shape demo --dtype float32 --threads 2

nanoGPT is not a dependency: give the path of its `model.py` (https://github.com/karpathy/nanoGPT). Both models get
the same shape, GPT-2's vocabulary (nanoGPT's padded to a multiple of 64, 50,304, as its train.py pads it for speed;
ours pads the head inside its loss, model/loss.py), no dropout, biases on, and the same random batch; each is trained as
its own code configures it: nanoGPT's `configure_optimizers` (AdamW, fused on CUDA only) and F.cross_entropy over
the full logits, ours through training/optim.py and model/loss.py. One step = forward and backward under autocast
(when the dtype is not fp32), gradient clipping at 1.0, the optimizer step. The two take turns, so load from other
processes slows both alike; the page gives each side's median step and the median of the per-round ratios, and
our MFU (6N + 12LCT FLOPs per token against the peak of a 2048² torch.mm in the same dtype, as train.py reports it).
Both run under one malloc: glibc's unchanged, or with `--malloc kept` freed memory kept as train.py keeps it on
the CPU (training/malloc.py; scripts/bench_malloc.py measures what that alone changes). With --profile, one more
step of each runs under torch.profiler and the page lists where the time goes: self time per aten op, the ops that
take the most in either model.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch

from experiments.bench_shapes import SHAPES
from fileio.pages import command_line, load_since, write_page
from fileio.tables import cell, markdown_table, range_cell
from model.gpt import GPT
from training.config import OptimConfig
from training.malloc import malloc_setting
from training.optim import make_optimizer
from training.runtime import peak_flops
from typedconfig.cli import path_argument


def load_nanogpt(path: Path):
    """nanoGPT's model module, loaded from its file."""
    if not path.is_file():
        raise SystemExit(f"--nanogpt {path}: no such file; give the path of nanoGPT's model.py")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def padded_vocab(vocab: int) -> int:
    """nanoGPT's vocabulary for a tokenizer of `vocab` ids: the next multiple of 64 (its train.py's 50,304)."""
    return -(-vocab // 64) * 64


def sides(nanogpt, shape: str) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
    """(model, optimizer) of ours and of nanoGPT, same shape, each initialised and configured by its own code."""
    config = SHAPES[shape].model_config()
    cfg = OptimConfig()
    torch.manual_seed(0)
    ours = GPT(config)
    torch.manual_seed(0)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(block_size=config.n_positions, vocab_size=padded_vocab(config.vocab_size),
                                           n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                           dropout=0.0, bias=True))
    their_optimizer = theirs.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), "cpu")
    return {"ours": (ours, make_optimizer(ours, cfg, "cpu")), "nanoGPT": (theirs, their_optimizer)}


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
         dtype: torch.dtype) -> float:
    """Seconds of one training step."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def profile_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 dtype: torch.dtype) -> dict[str, float]:
    """Self seconds per aten op of one training step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, optimizer, x, y, dtype)
    return {event.key.removeprefix("aten::"): event.self_cpu_time_total / 1e6 for event in prof.key_averages()
            if event.key.startswith("aten::")}


def profile_table(profiles: dict[str, dict[str, float]], top: int) -> str:
    """The `top` ops by their larger self time in either model, then the rest and the total, in seconds."""
    ops = sorted({op for found in profiles.values() for op in found},
                 key=lambda op: -max(found.get(op, 0.0) for found in profiles.values()))
    rows = [[op, *(cell(found.get(op, 0.0)) for found in profiles.values())] for op in ops[:top]]
    rows.append(["other ops", *(cell(sum(found.get(op, 0.0) for op in ops[top:])) for found in profiles.values())])
    rows.append(["all aten ops", *(cell(sum(found.values())) for found in profiles.values())])
    headers = ["aten op (self time)", *(f"{name}, s" for name in profiles)]
    return markdown_table(headers, rows, right=headers[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=path_argument, required=True, help="path of nanoGPT's model.py")
    parser.add_argument("--shape", choices=SHAPES, default="gpt2-small")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="also list each model's self time per aten op")
    parser.add_argument("--malloc", choices=("unchanged", "kept"), default="unchanged",
                        help="kept: freed memory kept for reuse, for both models (as train.py on the CPU)")
    parser.add_argument("--out", default="results/bench_nanogpt")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    malloc = malloc_setting(args.malloc == "kept")
    dtype = getattr(torch, args.dtype)
    models = sides(load_nanogpt(args.nanogpt), args.shape)
    shape = SHAPES[args.shape]
    batch, seq, vocab = shape.batch, shape.seq_len, models["ours"][0].config.vocab_size
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, vocab, (batch, seq), generator=generator) for _ in range(2))
    load_start = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(args.warmup + args.steps):
        for name, (model, optimizer) in models.items():
            seconds = step(model, optimizer, x, y, dtype)
            if round_ >= args.warmup:
                times[name].append(seconds)
        print({name: found[-1] for name, found in times.items() if found}, flush=True)

    profiles = {name: profile_step(*models[name], x, y, dtype) for name in models} if args.profile else {}
    ours, theirs = (statistics.median(times[name]) for name in ("ours", "nanoGPT"))
    ratios = [t / o for o, t in zip(times["ours"], times["nanoGPT"])]
    speedup = statistics.median(ratios)
    mfu = models["ours"][0].flops_per_token(seq) * batch * seq / ours / peak_flops(torch.device("cpu"), dtype)
    row = dict(shape=args.shape, dtype=args.dtype, threads=args.threads, ours_tokens_per_s=batch * seq / ours,
               nanogpt_tokens_per_s=batch * seq / theirs, speedup=speedup, speedup_min=min(ratios),
               speedup_max=max(ratios), ours_mfu=mfu)
    # the range says whether the rounds told the two apart (a range that holds 1 did not)
    headers = ["shape", "dtype", "threads", "ours, tokens/s", "nanoGPT, tokens/s",
               "ours / nanoGPT speed (median of rounds)", "range over rounds", "our MFU"]
    table = markdown_table(headers, [[args.shape, args.dtype, args.threads, cell(row["ours_tokens_per_s"], "int"),
                                      cell(row["nanogpt_tokens_per_s"], "int"), cell(speedup),
                                      range_cell(row["speedup_min"], row["speedup_max"]), cell(mfu, "pct")]],
                           right=headers[2:])
    config = (f"{shape.n_layer} layers x {shape.n_embd}, batch {batch} x {seq} tokens, vocabulary {vocab} "
              f"(nanoGPT's padded to {padded_vocab(vocab)}), "
              f"{args.dtype}, {args.threads} thread(s), medians of {args.steps} alternating steps after "
              f"{args.warmup} warm-up; malloc {malloc} for both (training/malloc.py); "
              f"torch {torch.__version__}; {load_since(load_start)}")
    where = (f"\n## Where the time goes\n\nOne step of each under torch.profiler:\n\n{profile_table(profiles, 14)}"
             if profiles else "")
    write_page(args.out, [row], title="Training step beside nanoGPT",
               measured="seconds of a full training step of each model, taking turns",
               command=command_line(__file__, argv), config=config, body=table + where)
    print(table + where)


if __name__ == "__main__":
    main()
