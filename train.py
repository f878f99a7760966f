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
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.errors import DataError
from data.tokenizer import load_tokenizer
from fileio.atomic import write_text_atomic
from fileio.folders import OutFolderError, check_out_folder
from fileio.pages import code_revision, this_machine
from model.compiling import out_of_memory
from model.generation import ContextLimitReached, DecodeStateTooLarge, context_limit, generate
from model.gpt import GPT
from model.sampling import Sampler
from training import checkpoint as ckpt
from training import runtime as rt
from training.compile import compile_wanted, maybe_compile
from training.config import RunConfig, config_to_dict, load_config
from training.malloc import malloc_setting
from training.metrics import MetricsError, MetricsLog, read_metrics
from training.optim import make_optimizer
from training.resume import resume_point, shared_resume_path, start_state
from training.run_data import RecallData, TextData, open_run_data
from training.run_lock import run_lock
from training.saving import Saver
from training.schedule import learning_rate
from training.throughput import Throughput
from typedconfig.cli import ArgumentParser, split_overrides
from typedconfig.parsing import ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="train.py", description=__doc__)
    parser.add_argument("config", nargs="?",
                        help="YAML config (see configs/); omitted: the defaults, with the overrides given")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100")
    parser.add_argument(
        "--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
        help="continue from CHECKPOINT, or from the run directory's latest checkpoint (same as train.resume=auto)",
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and the parameter count, then exit (no data, no training)")
    argv = sys.argv[1:] if argv is None else argv
    # overrides are set aside first: argparse would take one after a bare --resume as its CHECKPOINT, and refuses
    # positionals that follow an option
    overrides, rest = split_overrides(argv)
    args = parser.parse_args(rest)
    # a first positional with "=" that names no file is an override (parse_override explains a malformed one)
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.overrides.insert(0, args.config)
        args.config = None
    args.overrides = overrides + args.overrides
    if args.config is None and not args.overrides and not args.dry_run:
        # all defaults is GPT-2 small for 1000 steps: hours and GBs on a laptop, never what a bare command meant
        parser.error("give a config file, e.g. python train.py configs/shakespeare-cpu.yaml (the CPU demo; configs/ "
                     "holds the others); with neither a config nor overrides, train.py would train GPT-2 small on all "
                     "defaults (python train.py --dry-run prints that plan)")
    if args.config is None and args.resume and Path(args.resume).suffix in (".yaml", ".yml"):
        parser.error(f"--resume took {args.resume} as the checkpoint to resume from; give the config first "
                     f"(python train.py {args.resume} --resume), or the checkpoint as --resume=CHECKPOINT")
    if args.resume is not None:
        args.overrides.append(f"train.resume={args.resume}")
    return args


class StopRequest:
    """Records SIGINT / SIGTERM so the loop can checkpoint at the end of a step and exit.

    Under torchrun every rank must stop at the same step (the save is collective), and soon: torchrun kills its
    workers 30 s after passing a SIGTERM on. Each step launches an all-reduce of the ranks' flags on a gloo group
    of its own, on the CPU, and reads the one the step before launched, long arrived by then: every rank stops at
    the end of the step after the one the signal came in, and no step waits on the device for it."""

    def __init__(self, runtime: rt.Runtime) -> None:
        self.signal: int | None = None
        # under torchrun: the signal some rank got, as the flags read it (the ranks' largest signal number), so a
        # rank that got none still exits with the code of the signal that stopped the job
        self.agreed = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._group = None
        self._pending: tuple[torch.Tensor, dist.Work] | None = None  # the flags launched at the last step
        if runtime.distributed:
            self._group = dist.new_group(backend="gloo")
            dist.barrier(group=self._group)  # past here every rank has its handler: a signal reaches a listener

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: give up immediately (a save cut short is put back on resume)
            print("second interrupt: stopped without saving; --resume continues from the run's last checkpoint, "
                  "if it has one", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.signal = signum

    def close(self) -> None:
        """Give the signals back to the handlers before this one: past the loop no step is left to end, so a signal
        during the sample, or the evaluation of a run that was already finished, stops the process at once."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, last: bool = False) -> bool:
        """True once this process got a signal; under torchrun once any rank had got one by the end of the step
        before (by the end of this one at the `last` step, which nothing follows), the same answer on every rank."""
        if self._group is None:
            return self.signal is not None
        previous, self._pending = self._pending, self._launch()
        if previous is not None:
            self._settle(previous)
        if self.agreed or last:  # no step follows: wait for this step's flags too (every rank launched them)
            self._settle(self._pending)
            self._pending = None
        return bool(self.agreed)

    def _launch(self) -> tuple[torch.Tensor, dist.Work]:
        flag = torch.tensor([self.signal or 0])
        return flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)

    def _settle(self, launched: tuple[torch.Tensor, dist.Work]) -> None:
        flag, work = launched
        work.wait()
        self.agreed = max(self.agreed, int(flag.item()))


def say(message: str) -> None:
    """One line of the run's log: stdout, printed above the progress bar (which alone goes to stderr)."""
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def accumulate_gradients(train_model: torch.nn.Module, data: TextData | RecallData, position: int, accum: int,
                         scaler: torch.amp.GradScaler, runtime: rt.Runtime) -> torch.Tensor:
    """Forward and backward over this process's `accum` micro-batches of the optimiser step whose global
    micro-batches start at `position`; the mean loss, kept on the device (no host sync per micro-batch). Under DDP
    the gradients are all-reduced once, on the last one."""
    step_loss = torch.zeros((), device=runtime.device)
    for micro in range(accum):
        index = position + micro * runtime.world_size + runtime.rank  # global micro-batch index
        x, y = (rt.to_device(t, runtime.device) for t in data.batch(index))
        sync = nullcontext() if (not runtime.distributed or micro == accum - 1) else train_model.no_sync()
        with sync, runtime.autocast():
            _, loss = train_model(x, y)
        scaler.scale(loss / accum).backward()
        step_loss += loss.detach() / accum
    return step_loss


def evaluate(data: TextData | RecallData, model: torch.nn.Module) -> dict[str, float]:
    model.eval()
    scores = data.evaluate(model)
    model.train()
    return scores


def evaluate_and_log(data: TextData | RecallData, model: torch.nn.Module, state: ckpt.TrainState,
                     log: MetricsLog | None, log_line) -> float:
    """Evaluate on the fixed val set, record it (metrics.jsonl, the run log, the best so far); the val loss."""
    scores = evaluate(data, model)
    val_loss = scores["val_loss"]
    state.best_val_loss = min(state.best_val_loss, val_loss)
    ppl = math.exp(min(val_loss, 50))
    if log is not None:
        log.log(state.step, **scores, val_ppl=ppl, tokens=state.tokens_seen, elapsed=state.elapsed,
                val_windows=data.fingerprint)
    accuracies = "".join(f", {name.removesuffix('_accuracy')} accuracy {value:.3f}"
                         for name, value in scores.items() if name.endswith("_accuracy"))  # recall tasks
    log_line(f"step {state.step}: val loss {val_loss:.4f} (ppl {ppl:.2f}){accuracies}")
    return val_loss


def print_sample(model: GPT, cfg: RunConfig, runtime: rt.Runtime) -> None:
    """Print a short continuation of train.sample_prompt (fp32, temperature 0.8, top-k 200)."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    prompt = torch.tensor([tokenizer.encode(cfg.train.sample_prompt)], device=runtime.device)
    generator = torch.Generator(device=runtime.device).manual_seed(cfg.train.seed)
    model.eval()
    ids = []
    sampler = Sampler(temperature=0.8, top_k=200, vocab_size=tokenizer.vocab_size)
    # the run is done and saved: a sample that cannot be drawn is a note, not a failure
    limit = context_limit(model)
    if limit.tokens is not None and prompt.shape[1] > limit.tokens:
        print(f"--- no sample: train.sample_prompt has {prompt.shape[1]} tokens, more than the context limit of "
              f"{limit.tokens} ({limit.reason}); shorten it ---", flush=True)
        return
    try:
        tokens = generate(model, prompt, cfg.train.sample_tokens, sampler=sampler, generator=generator,
                          stop_id=tokenizer.eot_id)
    except DecodeStateTooLarge as exc:
        print(f"--- no sample: {exc.needs}, {exc.over}; lower train.sample_tokens ---", flush=True)
        return
    ended = ""
    try:
        for token in tokens:
            if token.item() == tokenizer.eot_id:
                break
            ids.append(token.item())
    except ContextLimitReached as exc:  # a sample longer than the context ends there
        ended = f", {exc}"
    print(f"--- sample ({len(ids)} tokens{ended}) ---\n{cfg.train.sample_prompt}{tokenizer.decode(ids)}\n---",
          flush=True)


def print_plan(cfg: RunConfig) -> None:
    """The resolved config, the parameter count and the batch geometry (the model is built on the meta device)."""
    with torch.device("meta"):
        model = GPT(cfg.model)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    tokens = cfg.train.batch_size * cfg.data.block_size * cfg.train.grad_accum
    print(f"parameters: {model.num_params():,}\ntokens per step: {tokens:,} "
          f"({cfg.train.batch_size} x {cfg.data.block_size} x {cfg.train.grad_accum} micro-batches)\n"
          f"tokens in total: {tokens * cfg.train.max_steps:,}")


def val_windows_note(run_dir: Path, fingerprint: str) -> str | None:
    """A warning where a continued run's val windows differ from those its logged evaluations used: the source's
    text changed between the two (its settings are the checkpoint's), so val losses before and after it differ in
    what they measure. None where they agree, or where nothing was evaluated or the records cannot be read."""
    try:
        earlier = [record for record in read_metrics(run_dir) if "val_windows" in record]
    except MetricsError:
        return None
    if not earlier or earlier[-1]["val_windows"] == fingerprint:
        return None
    return (f"warning: the val windows differ from those of the evaluations logged up to step {earlier[-1]['step']} "
            "(the source's text changed since): val losses before and after this point are not comparable")


def train(cfg: RunConfig, runtime: rt.Runtime) -> dict:
    """Run the training loop; returns the final metrics (val loss, steps, tokens)."""
    tc, oc = cfg.train, cfg.optim
    run_dir = Path(tc.out_dir)
    if tc.grad_accum % runtime.world_size:
        raise ConfigError(
            f"train.grad_accum ({tc.grad_accum}) must be divisible by the number of processes ({runtime.world_size})"
        )
    accum = tc.grad_accum // runtime.world_size
    log_line = say if runtime.is_main else (lambda message: None)
    # a checkpoint this run cannot continue is refused here, before the data: preparing it can take hours
    resume = resume_point(cfg, shared_resume_path(cfg, run_dir, runtime, log_line))
    # checkpoints numbered above this run's saves belong to it only when it continued one of this directory
    resumed_here = resume is not None and ckpt.in_run(resume.path, run_dir)
    resolved = config_to_dict(cfg)
    # before the data too: a wandb login that is missing stops the run before hours of preparation
    fresh = resume is None or resume.kind == "weights_only"
    log = MetricsLog(run_dir, cfg.logging, resolved, fresh=fresh, say=log_line) if runtime.is_main else None
    if tc.threads:
        torch.set_num_threads(tc.threads)
    data = open_run_data(cfg, runtime)  # prepares text data once (main process), checks the val set is usable
    if log is not None and not fresh:
        note = val_windows_note(run_dir, data.fingerprint)
        if note:
            log_line(note)

    torch.manual_seed(tc.seed)
    model = GPT(cfg.model).to(runtime.device)
    optimizer = make_optimizer(model, oc, runtime.device.type)
    # fp16 (GPUs without bf16) needs loss scaling; for bf16 and fp32 the scaler is a no-op
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.dtype == torch.float16)
    log_line(f"model: {model.num_params():,} parameters | attention {cfg.model.attention} | position "
             f"{cfg.model.position} | {runtime.device} {str(runtime.dtype).removeprefix('torch.')} | "
             f"{runtime.world_size} process(es)")
    log_line(f"data: {data.description}")
    state = start_state(cfg, runtime, resume, model, optimizer, scaler, log_line)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if state.step < tc.max_steps:  # with nothing to train the run stays what its config.yaml says it was
            write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))  # never half written
    # from the first file a watcher can see, a signal means: finish this step, checkpoint, exit
    stop = StopRequest(runtime)
    try:  # however the run ends (a divergence raises out of it), the signals go back to their handlers
        # after data preparation and the checkpoint load, whose freed memory goes back to the system as usual: from
        # here each step's large tensors reuse the last step's pages (training/malloc.py)
        malloc = malloc_setting(runtime.device.type == "cpu")
        if log is not None:  # where this stretch of the run trained: speeds are only comparable on the same machine
            log.log(state.step, event="start", machine=this_machine(), device=str(runtime.device),
                    dtype=str(runtime.dtype).removeprefix("torch."), processes=runtime.world_size,
                    threads=torch.get_num_threads(), malloc=malloc, torch=torch.__version__, revision=code_revision())

        if compile_wanted(tc.compile, runtime.device):
            model.settle_crossovers(cfg.data.block_size, runtime.autocast())
        forward_model = maybe_compile(model, tc.compile, runtime.device, log_line)  # evaluation uses it too
        train_model = forward_model
        if runtime.distributed:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            train_model = DistributedDataParallel(forward_model, device_ids=device_ids)

        saver = Saver(run_dir, model, optimizer, scaler, runtime, resolved, tc.keep_checkpoints, resumed_here, log_line,
                      verified=state.step)
        tokens_per_step = tc.batch_size * cfg.data.block_size * tc.grad_accum
        meter = Throughput(model.flops_per_token(cfg.data.block_size),
                           rt.peak_flops(runtime.device, runtime.dtype) if runtime.is_main else float("nan"))
        # saved between log lines (Ctrl-C, an evaluation): the window goes on
        if (window := meter.saved_window(state.log_windows, runtime.rank, runtime.world_size)) is not None:
            meter.continue_window(window, runtime.device)
        state.log_windows = []
        bar = tqdm(total=tc.max_steps, initial=state.step, disable=not (runtime.is_main and cfg.logging.progress),
                   dynamic_ncols=True, file=sys.stderr)
        val_loss, interrupted = float("nan"), False
        model.train()
        while state.step < tc.max_steps:
            t0 = time.perf_counter()
            lr = learning_rate(state.step - state.schedule_start, lr=oc.lr, min_lr=oc.min_lr,
                               warmup_steps=oc.warmup_steps, decay_steps=state.schedule_end - state.schedule_start)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = accumulate_gradients(train_model, data, state.data_position, accum, scaler, runtime)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip or float("inf"))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.data_position += tc.grad_accum
            is_log = state.step % tc.log_interval == 0 or state.step == tc.max_steps
            if is_log:  # a GPU may still be running queued steps: the window's time must include them (tokens/s, MFU)
                rt.synchronize(runtime.device)
            dt = time.perf_counter() - t0
            state.elapsed += dt
            state.tokens_seen += tokens_per_step
            meter.add(step_loss, tokens_per_step, dt)
            bar.update(1)

            if is_log:
                steps = meter.steps
                # a last line off the log grid: its window goes on (into the checkpoint), so that a run extending this
                # one logs on the grid the same averages a straight run logs; the loss and grad norm come to the host
                window = meter.read(runtime, new_window=state.step % tc.log_interval == 0)
                saver.check_loss(window["train_loss"], state.step, steps)
                if log is not None:
                    log.log(state.step, **window, lr=lr, grad_norm=grad_norm.item(), tokens=state.tokens_seen,
                            elapsed=state.elapsed, peak_mem_mb=rt.peak_memory_mb(runtime.device))
                bar.set_postfix(loss=f"{window['train_loss']:.3f}", tok_s=f"{window['tokens_per_s']:,.0f}",
                                mfu=f"{100 * window['mfu']:.1f}%", refresh=False)

            is_eval = state.step % tc.eval_interval == 0 or state.step == tc.max_steps
            if is_eval:
                val_loss = evaluate_and_log(data, forward_model, state, log, log_line)
            interrupted = stop.requested(last=state.step == tc.max_steps)
            if state.step == tc.max_steps or interrupted or (is_eval and tc.ckpt_interval == 0) or (
                tc.ckpt_interval and state.step % tc.ckpt_interval == 0
            ):
                saver.save(state, meter)
            if interrupted:
                break
    finally:
        stop.close()
    bar.close()
    if log is not None:
        log.close()
    if stop.signal is not None and not interrupted:  # it came after the last step's check: the save is done
        interrupted = True
    if interrupted:  # straight out: no evaluation or sample stands between the signal and the exit
        log_line(f"interrupted at step {state.step}; checkpoint saved, continue with --resume")
        raise SystemExit(128 + (stop.signal or stop.agreed))
    if math.isnan(val_loss):  # resumed a run that had already finished: report where it stands
        val_loss = evaluate(data, forward_model)["val_loss"]
    if runtime.is_main and tc.sample_tokens:
        print_sample(model, cfg, runtime)
    return {"val_loss": val_loss, "best_val_loss": state.best_val_loss, "step": state.step,
            "tokens": state.tokens_seen}


def file_system_error(exc: OSError, cfg: RunConfig) -> str:
    """The file system's own error names no fix (a run folder deleted or unwritable, a disk full, a source file
    unreadable): one line naming the setting whose folder or file failed."""
    resume = "--resume continues from the run's last checkpoint"
    # a failed rename names its target second: the file the run was writing, not the temporary one it wrote
    filename = exc.filename2 or exc.filename
    if not filename:
        return (f"{exc.strerror}; train.out_dir and data.prepared_dir must stay in place and writable, with room to "
                f"spare; {resume}")
    path = Path(os.path.abspath(filename))
    folders = {option: Path(os.path.abspath(folder)) for option, folder in
               (("train.out_dir", cfg.train.out_dir), ("data.prepared_dir", cfg.data.prepared_dir))}
    holding = [option for option, folder in folders.items() if path.is_relative_to(folder)]
    if holding:  # the innermost, where one folder lies inside the other
        option = max(holding, key=lambda option: len(folders[option].parts))
        return f"{exc.strerror}: {filename}; {option} must stay in place and writable, with room to spare; {resume}"
    return (f"{exc.strerror}: {filename}; the file must be readable, and its disk have room (data.source and "
            "data.tokenizer name the files a run reads outside train.out_dir and data.prepared_dir)")


def complain(message: str, *, same_on_every_rank: bool) -> None:
    """One line on stderr, in one write: torchrun's processes share stderr, and a line written in parts interleaves
    with another rank's. Under torchrun a message every rank comes to alike (the config's, the checkpoint's) is
    rank 0's alone; the other ranks' own messages name their rank."""
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and rank != 0:
        if same_on_every_rank:
            return
        message = f"rank {rank}: {message}"
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        complain(f"config error: {exc}", same_on_every_rank=True)
        return 2
    if args.dry_run:
        print_plan(cfg)
        return 0
    try:
        run_dir = Path(cfg.train.out_dir)
        check_out_folder(run_dir, "the run's checkpoints and metrics", option="train.out_dir")
        # where it exists, every save goes there
        check_out_folder(run_dir / ckpt.CHECKPOINTS, "the run (train.out_dir)", option="the checkpoint folder")
    except OutFolderError as exc:
        complain(f"config error: {exc}", same_on_every_rank=True)
        return 2
    try:
        runtime = rt.start(cfg.train.device, cfg.train.dtype)
    except ValueError as exc:
        complain(f"config error: {exc}", same_on_every_rank=True)
        return 2
    try:
        with run_lock(run_dir) if runtime.is_main else nullcontext():  # the other ranks share the main one's
            result = train(cfg, runtime)
    except (ConfigError, DataError, OSError, FloatingPointError) as exc:  # each names the problem and the fix
        # the config, a divergence (its loss all-reduced) and what rank 0 found of the run's checkpoints are alike
        # on every rank
        alike = isinstance(exc, (ConfigError, FloatingPointError)) or getattr(exc, "told_by_rank_0", False)
        message = str(exc)
        if isinstance(exc, OSError) and not isinstance(exc, ckpt.CheckpointError) and exc.strerror:
            message = file_system_error(exc, cfg)
        complain(f"error: {message}", same_on_every_rank=alike)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if (memory := out_of_memory(exc)) is not None:
            reason = str(memory).strip().splitlines()[0] if str(memory).strip() else "no message"
            complain(f"error: out of memory ({reason}); lower train.batch_size, and raise train.grad_accum to keep "
                     "the tokens per step (train.eval_batch_size for an evaluation's; data.eval_windows and the "
                     "model's size count too); --resume continues from the run's last checkpoint",
                     same_on_every_rank=False)
            return 2
        if not runtime.distributed or (reason := rt.peer_lost(exc)) is None:
            raise
        complain(f"error: another process of this torchrun job stopped ({reason}); its own output says why; "
                 "--resume continues from the run's last checkpoint", same_on_every_rank=False)
        return 1
    except KeyboardInterrupt:  # before the loop (data preparation, a checkpoint's load) or after it (the sample)
        complain("\ninterrupted: nothing more was saved; --resume continues from the run's last checkpoint, if it "
                 "has one", same_on_every_rank=True)  # Ctrl-C reaches every rank
        return 130
    finally:
        rt.stop(runtime)
    if runtime.is_main:
        print(f"final val loss {result['val_loss']:.4f} (ppl {math.exp(min(result['val_loss'], 50)):.2f}) "
              f"after {result['step']} steps, {result['tokens']:,} tokens", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
