"""Train a GPT-style model from a config.

    python train.py configs/shakespeare-cpu.yaml [section.key=value ...] [--resume [CHECKPOINT]]
    torchrun --nproc_per_node=8 train.py configs/gpt2-125m.yaml        # DistributedDataParallel

Prepares the data if needed, trains with AdamW + warm-up/cosine, evaluates on fixed val windows, logs to
<out_dir>/metrics.jsonl (and wandb when enabled), and checkpoints atomically. Ctrl-C / SIGTERM saves a checkpoint
before exiting; `--resume` continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import time
from contextlib import nullcontext, suppress
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.errors import DataError
from data.tokenizer import load_tokenizer
from model.generation import ContextLimitReached, generate
from model.gpt import GPT
from model.sampling import Sampler
from training import checkpoint as ckpt
from training import runtime as rt
from training.config import RunConfig, config_to_dict, load_config
from training.dataclass_parsing import ConfigError
from training.metrics import MetricsLog
from training.optim import make_optimizer
from training.run_data import RecallData, TextData, open_run_data
from training.schedule import learning_rate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (see configs/); omitted: all defaults")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100")
    parser.add_argument(
        "--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
        help="continue from CHECKPOINT, or from the run directory's latest checkpoint (same as train.resume=auto)",
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and the parameter count, then exit (no data, no training)")
    args, unknown = parser.parse_known_args(argv)
    # allow --section.key=value as well as section.key=value
    bad = [u for u in unknown if not (u.startswith("--") and "=" in u)]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)}")
    args.overrides += unknown
    if args.config and "=" in args.config:  # first positional was an override, not a file
        args.overrides.insert(0, args.config)
        args.config = None
    if args.resume is not None:
        args.overrides.append(f"train.resume={args.resume}")
    return args


class StopRequest:
    """Records SIGINT / SIGTERM so the loop can checkpoint at the end of the current step and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.signal = signum

    def requested(self, runtime: rt.Runtime) -> bool:
        """True on every rank as soon as any rank got a signal (so all ranks stop at the same step)."""
        flag = self.signal is not None
        if runtime.distributed:
            t = torch.tensor([float(flag)], device=runtime.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag


def resolve_resume(cfg: RunConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to overwrite an existing run."""
    existing = ckpt.latest_checkpoint(run_dir)
    if cfg.train.resume == "never":
        if existing is not None:
            raise ConfigError(
                f"{run_dir} already holds checkpoints ({existing.name}); pass --resume to continue it "
                "or choose another train.out_dir"
            )
        return None
    if cfg.train.resume == "auto":
        return existing
    return ckpt.find_checkpoint(cfg.train.resume)


def check_resumable(cfg: RunConfig, saved: dict, sections: tuple[str, ...]) -> None:
    """A checkpoint continues only the same model (and, unless it holds weights only, on the same data)."""
    current, defaults = config_to_dict(cfg), config_to_dict(RunConfig())
    for section in sections:
        # keys a checkpoint predates count as their defaults
        recorded = {**defaults[section], **saved[section]}
        diff = [k for k in current[section] if current[section][k] != recorded[k]]
        if diff:
            raise ConfigError(
                f"cannot resume: {section}.{diff[0]} is {current[section][diff[0]]!r} here but "
                f"{recorded[diff[0]]!r} in the checkpoint; use the checkpoint's config"
            )


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def evaluate(data: TextData | RecallData, model: torch.nn.Module) -> dict[str, float]:
    model.eval()
    scores = data.evaluate(model)
    model.train()
    return scores


def print_sample(model: GPT, cfg: RunConfig, runtime: rt.Runtime) -> None:
    """Print a short continuation of train.sample_prompt (fp32, temperature 0.8, top-k 200)."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    prompt = torch.tensor([tokenizer.encode(cfg.train.sample_prompt)], device=runtime.device)
    generator = torch.Generator(device=runtime.device).manual_seed(cfg.train.seed)
    model.eval()
    ids = []
    sampler = Sampler(temperature=0.8, top_k=200, vocab_size=tokenizer.vocab_size)
    with suppress(ContextLimitReached):  # a sample longer than the context ends there
        for token in generate(model, prompt, cfg.train.sample_tokens, sampler=sampler, generator=generator,
                              stop_id=tokenizer.eot_id):
            if token.item() == tokenizer.eot_id:
                break
            ids.append(token.item())
    print(f"--- sample ({len(ids)} tokens) ---\n{cfg.train.sample_prompt}{tokenizer.decode(ids)}\n---", flush=True)


def print_plan(cfg: RunConfig) -> None:
    """The resolved config, the parameter count and the batch geometry (the model is built on the meta device)."""
    with torch.device("meta"):
        model = GPT(cfg.model)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    tokens = cfg.train.batch_size * cfg.data.block_size * cfg.train.grad_accum
    print(f"parameters: {model.num_params():,}\ntokens per step: {tokens:,} "
          f"({cfg.train.batch_size} x {cfg.data.block_size} x {cfg.train.grad_accum} micro-batches)\n"
          f"tokens in total: {tokens * cfg.train.max_steps:,}")


def train(cfg: RunConfig, runtime: rt.Runtime) -> dict:
    """Run the training loop; returns the final metrics (val loss, steps, tokens)."""
    tc, oc = cfg.train, cfg.optim
    run_dir = Path(tc.out_dir)
    if tc.grad_accum % runtime.world_size:
        raise ConfigError(
            f"train.grad_accum ({tc.grad_accum}) must be divisible by the number of processes ({runtime.world_size})"
        )
    accum = tc.grad_accum // runtime.world_size
    resume_from = resolve_resume(cfg, run_dir)
    if tc.threads:
        torch.set_num_threads(tc.threads)

    data = open_run_data(cfg, runtime)  # prepares text data once (main process), checks the val set is usable

    torch.manual_seed(tc.seed)
    model = GPT(cfg.model).to(runtime.device)
    optimizer = make_optimizer(model, oc, runtime.device.type)
    # fp16 (GPUs without bf16) needs loss scaling; for bf16 and fp32 the scaler is a no-op
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.dtype == torch.float16)
    resolved = config_to_dict(cfg)
    step, tokens_seen, elapsed, best_val = 0, 0, 0.0, math.inf
    state = ckpt.load_state(resume_from) if resume_from is not None else None
    weights_only = state is not None and "optimizer" not in state  # scripts/import_gpt2.py: a start, not a pause
    if state is not None:
        check_resumable(cfg, ckpt.read_config(resume_from), ("model",) if weights_only else ("model", "data"))
        ckpt.load_weights(resume_from, model)
    if state is not None and not weights_only:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["grad_scaler"])
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed"]
        best_val = state["best_val_loss"]
        set_rng_state(state["rng"][min(runtime.rank, len(state["rng"]) - 1)])
    else:
        torch.manual_seed(tc.seed + runtime.rank)  # dropout streams differ per rank

    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        print(f"model: {model.num_params():,} parameters | attention {cfg.model.attention} | "
              f"position {cfg.model.position} | {runtime.device} {str(runtime.dtype).removeprefix('torch.')} | "
              f"{runtime.world_size} process(es)", flush=True)
        print(f"data: {data.description}", flush=True)
        if weights_only:
            print(f"starting from the weights of {resume_from} (fresh optimiser, schedule and data order)", flush=True)
        elif resume_from is not None:
            print(f"resuming from {resume_from} (step {step})", flush=True)
    log = MetricsLog(run_dir, cfg.logging, resolved) if runtime.is_main else None

    forward_model = torch.compile(model) if tc.compile else model  # evaluation uses it too
    train_model = forward_model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = DistributedDataParallel(forward_model, device_ids=device_ids)

    tokens_per_step = tc.batch_size * cfg.data.block_size * tc.grad_accum
    peak = rt.peak_flops(runtime.device, runtime.dtype) if runtime.is_main else float("nan")
    flops_per_token = model.flops_per_token(cfg.data.block_size)
    stop = StopRequest()
    decay_steps = oc.decay_steps if oc.decay_steps is not None else tc.max_steps

    def save(at_step: int) -> None:
        """Checkpoint on the main process; every rank takes part (its RNG state is gathered)."""
        rng_states = gather_rng()
        if runtime.is_main:
            state = {
                "step": at_step, "optimizer": optimizer.state_dict(), "grad_scaler": scaler.state_dict(),
                "tokens_seen": tokens_seen,
                "elapsed": elapsed, "best_val_loss": best_val, "rng": rng_states,
                "data": {"seed": tc.seed, "next_micro_batch": at_step * tc.grad_accum},
            }
            path = ckpt.save_checkpoint(run_dir, at_step, model, state, resolved, tc.keep_checkpoints)
            tqdm.write(f"saved {path}", file=sys.stderr)
        rt.barrier(runtime)

    def gather_rng() -> list:
        if not runtime.distributed:
            return [rng_state()]
        states: list = [None] * runtime.world_size
        dist.all_gather_object(states, rng_state())
        return states

    bar = tqdm(total=tc.max_steps, initial=step, disable=not (runtime.is_main and cfg.logging.progress),
               dynamic_ncols=True, file=sys.stderr)
    window_loss, window_tokens, window_time = 0.0, 0, 0.0
    val_loss = float("nan")
    interrupted = False
    model.train()
    while step < tc.max_steps:
        t0 = time.perf_counter()
        lr = learning_rate(step, lr=oc.lr, min_lr=oc.min_lr, warmup_steps=oc.warmup_steps, decay_steps=decay_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        for micro in range(accum):
            index = (step * accum + micro) * runtime.world_size + runtime.rank  # global micro-batch index
            x, y = (t.to(runtime.device, non_blocking=True) for t in data.batch(index))
            sync = nullcontext() if (not runtime.distributed or micro == accum - 1) else train_model.no_sync()
            with sync, runtime.autocast():
                _, loss = train_model(x, y)
            scaler.scale(loss / accum).backward()
            step_loss += loss.item() / accum
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss is {step_loss} at step {step}; lower optim.lr or use train.dtype=float32")
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip or float("inf")).item()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        elapsed += dt
        tokens_seen += tokens_per_step
        window_loss, window_tokens, window_time = window_loss + step_loss, window_tokens + tokens_per_step, \
            window_time + dt

        if step % tc.log_interval == 0 or step == tc.max_steps:
            loss_avg = window_loss / (window_tokens / tokens_per_step)
            if runtime.distributed:
                t = torch.tensor([loss_avg], device=runtime.device)
                dist.all_reduce(t)
                loss_avg = t.item() / runtime.world_size
            tok_s = window_tokens / window_time
            mfu = flops_per_token * tok_s / peak
            if log is not None:
                log.log(step, train_loss=loss_avg, lr=lr, grad_norm=grad_norm, tokens=tokens_seen, tokens_per_s=tok_s,
                        mfu=mfu, elapsed=elapsed, peak_mem_mb=rt.peak_memory_mb(runtime.device))
            bar.set_postfix(loss=f"{loss_avg:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{100 * mfu:.1f}%", refresh=False)
            window_loss, window_tokens, window_time = 0.0, 0, 0.0
        bar.update(1)

        is_eval = step % tc.eval_interval == 0 or step == tc.max_steps
        if is_eval:
            scores = evaluate(data, forward_model)
            val_loss = scores["val_loss"]
            best_val = min(best_val, val_loss)
            if log is not None:
                log.log(step, **scores, val_ppl=math.exp(min(val_loss, 50)), tokens=tokens_seen, elapsed=elapsed,
                        val_windows=data.fingerprint)
            if runtime.is_main:
                tqdm.write(f"step {step}: val loss {val_loss:.4f} (ppl {math.exp(min(val_loss, 50)):.2f})",
                           file=sys.stderr)
        interrupted = stop.requested(runtime)
        if step == tc.max_steps or interrupted or is_eval and tc.ckpt_interval == 0 or (
            tc.ckpt_interval and step % tc.ckpt_interval == 0
        ):
            save(step)
        if interrupted:
            break
    bar.close()
    if math.isnan(val_loss):  # resumed a run that had already finished: report where it stands
        val_loss = evaluate(data, forward_model)["val_loss"]

    if runtime.is_main and not interrupted and tc.sample_tokens:
        print_sample(model, cfg, runtime)
    if log is not None:
        log.close()
    if interrupted:
        print(f"interrupted at step {step}; checkpoint saved, continue with --resume", file=sys.stderr, flush=True)
        raise SystemExit(128 + stop.signal if stop.signal else 1)
    return {"val_loss": val_loss, "best_val_loss": best_val, "step": step, "tokens": tokens_seen}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print_plan(cfg)
        return 0
    try:
        runtime = rt.start(cfg.train.device, cfg.train.dtype)
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, runtime)
    except (ConfigError, ckpt.CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        rt.stop(runtime)
    if runtime.is_main:
        print(f"final val loss {result['val_loss']:.4f} (ppl {math.exp(min(result['val_loss'], 50)):.2f}) "
              f"after {result['step']} steps, {result['tokens']:,} tokens", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
