"""What a run trains and evaluates on: prepared text, or the MQAR recall task generated on the fly.

Both kinds give the training loop the same three things: `batch(index)` (micro-batch `index`, a pure function of
the seed and the index, so resume and rank sharding need no iterator state), `evaluate(model)` on a fixed val set
(the same for every run with the same data, identified by `fingerprint`), and a one-line `description`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from data import mqar
from data.config import MQAR, DataConfig
from data.loader import TrainWindows, eval_batches, val_windows, windows_fingerprint
from data.prepare import dataset_dir, is_prepared, load_prepared, prepare
from data.tokenizer import load_tokenizer
from training import runtime as rt
from training.config import RunConfig
from typedconfig.parsing import ConfigError


class TextData:
    """Windows of a prepared token corpus (prepared once by the main process while the others wait for its files,
    memory-mapped by every process)."""

    def __init__(self, cfg: RunConfig, runtime: rt.Runtime):
        if runtime.is_main:
            message = preparing_message(cfg.data, runtime.world_size)
            if message:
                print(message, flush=True)
            # the vocabulary is checked before preparing, which can take hours (prepare reuses the cached tokenizer);
            # prepared data is checked against its meta.json below (a hub tokenizer's file is read from the hub
            # cache, and loaded only where it is not there yet)
            if not is_prepared(cfg.data):
                check_vocabulary(cfg, load_tokenizer(cfg.data.tokenizer).vocab_size)
                prepare(cfg.data)
        else:
            wait_until_prepared(cfg.data, runtime.rank)
        meta, train_tokens, self.val_tokens = load_prepared(cfg.data)
        check_vocabulary(cfg, meta["vocab_size"])
        self.block_size, self.runtime = cfg.data.block_size, runtime
        self.vocab_size = meta["vocab_size"]  # of the tokenizer: every id is below it, unless a file was damaged
        self.windows = TrainWindows(train_tokens, cfg.data.block_size, cfg.train.batch_size, seed=cfg.train.seed,
                                    vocab_size=self.vocab_size)
        self.val_starts = val_windows(self.val_tokens, cfg.data.block_size, cfg.data.eval_windows)
        self.eval_batch_size = cfg.train.eval_batch_size
        self.fingerprint = windows_fingerprint(meta, cfg.data.block_size, cfg.data.eval_windows)
        self.description = f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens from {meta['source']}"

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows.batch(index)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean loss over the fixed val windows (sharded over ranks, summed with all_reduce)."""
        runtime = self.runtime
        total = torch.zeros(2, dtype=torch.float64, device=runtime.device)  # loss sum, windows
        starts = self.val_starts[runtime.rank :: runtime.world_size]
        for x, y in eval_batches(self.val_tokens, starts, self.block_size, self.eval_batch_size, self.vocab_size):
            x, y = rt.to_device(x, runtime.device), rt.to_device(y, runtime.device)
            with runtime.autocast():
                _, loss = model(x, y)
            total[0] += loss.double() * len(x)  # on the device: no host sync per batch
            total[1] += len(x)
        loss_sum, windows = _summed_over_ranks(total, runtime)
        return {"val_loss": loss_sum / windows}


def check_vocabulary(cfg: RunConfig, tokenizer_vocab: int) -> None:
    """Refuse a model whose embedding cannot hold every token id the tokenizer gives."""
    if tokenizer_vocab > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's vocabulary "
            f"({tokenizer_vocab}); set model.vocab_size >= {tokenizer_vocab}"
        )


class RecallData:
    """Multi-query associative recall: loss and accuracy count the answer tokens only."""

    def __init__(self, cfg: RunConfig, runtime: rt.Runtime):
        task, block_size = cfg.data.mqar, cfg.data.block_size
        self.runtime, self.eval_batch_size = runtime, cfg.train.eval_batch_size
        self.windows = mqar.MQARBatches(task, block_size, cfg.train.batch_size, seed=cfg.train.seed)
        self.val_x, self.val_y = mqar.val_set(task, block_size, cfg.data.eval_windows)
        self.holdout_x, self.holdout_y = mqar.holdout_set(task, block_size, cfg.data.eval_windows)
        self.fingerprint = mqar.val_fingerprint(task, block_size, cfg.data.eval_windows)
        self.description = (f"MQAR, {task.num_pairs} pairs, {task.num_queries} queries, vocabulary {task.vocab_size}, "
                            f"length {block_size} ({cfg.data.eval_windows} val and as many holdout sequences)")

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows.batch(index)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean loss and accuracy over the answers of the fixed val set, and of the holdout set (data/mqar.py),
        each sharded over ranks and all_reduce'd: val_loss, val_accuracy, holdout_loss, holdout_accuracy."""
        runtime = self.runtime
        scores = {}
        for name, set_x, set_y in (("val", self.val_x, self.val_y), ("holdout", self.holdout_x, self.holdout_y)):
            total = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # loss sum, correct, answers
            rows = slice(runtime.rank, None, runtime.world_size)
            for x, y in zip(set_x[rows].split(self.eval_batch_size), set_y[rows].split(self.eval_batch_size)):
                x, y = rt.to_device(x, runtime.device), rt.to_device(y, runtime.device)
                with runtime.autocast():
                    logits, _ = model(x)  # (B, T, vocab): recall tasks keep the vocabulary small
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=mqar.IGNORE_INDEX,
                                       reduction="sum")
                total += torch.stack([loss.double(), *mqar.answer_accuracy(logits, y)])  # on the device: no sync
            loss_sum, correct, answers = _summed_over_ranks(total, runtime)
            scores.update({f"{name}_loss": loss_sum / answers, f"{name}_accuracy": correct / answers})
        return scores


def preparing_message(data: DataConfig, world_size: int) -> str | None:
    """The run log's explanation of a wait: the main process is about to tokenise while the other ranks wait."""
    if world_size == 1 or is_prepared(data):
        return None
    others = "rank 1 waits" if world_size == 2 else f"ranks 1..{world_size - 1} wait"
    return (f"preparing {dataset_dir(data)} before training; {others} for it "
            "(run python -m data.prepare first to start training at once)")


def wait_until_prepared(data: DataConfig, rank: int, poll_s: float = 5.0, remind_s: float = 600.0,
                        sleep: Callable[[float], None] = time.sleep) -> None:
    """Block until the main process has prepared `data`, saying every `remind_s` why this rank still waits.
    Polling the files, not a collective barrier: a large corpus takes longer to tokenise than a collective's timeout
    (NCCL's default: 10 minutes). If the main process fails, torchrun stops this one."""
    remind_every = max(1, round(remind_s / poll_s))
    polls = 0
    while not is_prepared(data):
        if polls and polls % remind_every == 0:
            print(f"rank {rank}: waited {polls * poll_s:.0f} s for rank 0 to prepare {dataset_dir(data)} "
                  "(every machine must see that directory: a shared filesystem)", flush=True)
        sleep(poll_s)
        polls += 1


def open_run_data(cfg: RunConfig, runtime: rt.Runtime) -> TextData | RecallData:
    return RecallData(cfg, runtime) if cfg.data.source == MQAR else TextData(cfg, runtime)


def _summed_over_ranks(total: torch.Tensor, runtime: rt.Runtime) -> list[float]:
    if runtime.distributed:
        dist.all_reduce(total)
    return total.tolist()
