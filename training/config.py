"""The run configuration: typed sections for model, data, optimiser, training loop and logging.

A YAML file overrides the defaults (it may `extends:` another file, path relative to itself), then command-line
overrides `section.key=value` override the file. Everything is validated before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from data.config import MQAR, DataConfig
from model.config import ModelConfig
from training.runtime import device_named
from typedconfig.parsing import ConfigError, YamlScalar, coerce_fields, from_dict, load_value, load_yaml, to_dict

SEED_LIMIT = 2**63  # train.seed (+ rank) seeds torch and numpy; both take any integer in [0, 2**63)
THREADS_LIMIT = 2**31 - 1  # torch.set_num_threads takes a C int


def require_finite(key: str, value: float) -> None:
    """Refuse nan and inf by name: nan fails no `<` / `>` range check and inf passes every lower bound."""
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value}")


@dataclass
class OptimConfig:
    lr: float = 6e-4  # peak learning rate, reached after the warm-up
    min_lr: float = 6e-5  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warm-up from 0 to lr over this many optimiser steps
    decay_steps: int | None = None  # cosine decay ends at this step (None: train.max_steps), then stays at min_lr
    weight_decay: float = 0.1  # AdamW decay on matmul weights only (not biases, LayerNorms or embeddings)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 disables)
    # a resumed run whose train.max_steps differs from its schedule's end: continue that schedule (min_lr after
    # its end) or restart (warm-up + cosine from the resume step to the new max_steps)
    on_extend: Literal["continue", "restart"] = "continue"

    def __post_init__(self) -> None:
        coerce_fields(self, "optim")
        for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "eps", "grad_clip"):
            require_finite(f"optim.{name}", getattr(self, name))
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr must be in [0, optim.lr] = [0, {self.lr}], got {self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        self._check_decay_steps()
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optim.{name} must be in [0, 1), got {getattr(self, name)}")
        # eps = 0 divides 0 by 0 (nan) for every parameter whose gradient has been zero so far
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"optim.{name} must be >= 0, got {getattr(self, name)}")

    def _check_decay_steps(self) -> None:
        """The cosine decay runs from the end of the warm-up to decay_steps, so it must end after the warm-up."""
        if self.decay_steps is None:
            return
        if self.decay_steps < 1:
            raise ValueError(f"optim.decay_steps must be >= 1 or null (train.max_steps), got {self.decay_steps}")
        if self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"optim.decay_steps ({self.decay_steps}) must be > optim.warmup_steps ({self.warmup_steps}): the "
                "decay follows the warm-up; raise optim.decay_steps, lower optim.warmup_steps, or set "
                "optim.decay_steps=null"
            )


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"  # run directory: config, metrics.jsonl, checkpoints
    max_steps: int = 1000  # optimiser steps
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimiser step in total, split across processes (torchrun)
    eval_interval: int = 100  # evaluate on the fixed val windows every this many steps (and at the end)
    eval_batch_size: int = 8  # sequences per evaluation batch
    log_interval: int = 10  # write a metrics line every this many steps
    ckpt_interval: int = 0  # checkpoint every this many steps (0: at evaluations only); always at the end
    keep_checkpoints: int = 2  # how many checkpoints to keep in the run directory
    seed: int = 1337  # seeds the init, the data order and dropout
    device: str = "auto"  # auto (cuda if present, else mps, else cpu), cpu, cuda, cuda:N, mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # autocast dtype; auto: bf16 where supported
    # torch.compile the model. auto: on CUDA only (on the CPU measured here it pays at no run length:
    # results/bench_compile.md);
    # a compile that fails leaves a one-line warning and trains without it
    compile: Literal["auto", "true", "false"] = "auto"
    threads: int = 0  # torch CPU threads (0: torch's default)
    resume: str = "never"  # never, auto (latest checkpoint in out_dir if any), or a checkpoint path
    sample_tokens: int = 0  # after training, print a sample of this many tokens
    sample_prompt: str = "\n"  # prompt of that sample

    def __post_init__(self) -> None:
        coerce_fields(self, "train")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batch_size", "log_interval",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ckpt_interval", "threads", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.device != "auto":  # the name only: whether this machine has that device is checked at the start
            device_named(self.device)
        if self.threads > THREADS_LIMIT:
            raise ValueError(f"train.threads must be at most 2**31 - 1 (0: torch's default), got {self.threads}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"train.seed must be in [0, 2**63), got {self.seed}")
        self.out_dir, self.resume = os.path.expanduser(self.out_dir), os.path.expanduser(self.resume)  # ~/runs/x
        if not self.out_dir.strip():  # an unset shell variable: the run would write into the working directory
            raise ValueError("train.out_dir is empty; give the run's directory, e.g. train.out_dir=runs/my-run")
        if not self.resume.strip():
            raise ValueError("train.resume is empty; give never, auto or a checkpoint's path")


@dataclass
class LoggingConfig:
    wandb: Literal["off", "offline", "online"] = "off"  # Weights & Biases logging; offline writes to <out_dir>/wandb
    wandb_project: str = "attnlab"  # wandb project name
    wandb_group: str | None = None  # groups runs of a sweep
    wandb_tags: list[str] = field(default_factory=list)  # tags of the wandb run (e.g. the backend)
    run_name: str | None = None  # display name (default: the out_dir's name)
    progress: bool = True  # tqdm progress bar on stderr

    def __post_init__(self) -> None:
        coerce_fields(self, "logging")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the architecture and its attention backend
    data: DataConfig = field(default_factory=DataConfig)  # the text (or MQAR task), its tokenizer and windows
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW and the learning-rate schedule
    train: TrainConfig = field(default_factory=TrainConfig)  # the loop: steps, batches, precision, checkpoints
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # metrics.jsonl, progress bar, wandb

    def __post_init__(self) -> None:
        coerce_fields(self, "")  # a section given as a dict becomes its dataclass
        if self.data.block_size > self.model.n_positions:
            raise ValueError(
                f"data.block_size ({self.data.block_size}) > model.n_positions ({self.model.n_positions}): "
                "lower data.block_size or raise model.n_positions"
            )
        if self.data.block_size < 1:
            raise ValueError(f"data.block_size must be >= 1, got {self.data.block_size}")
        if self.data.source == MQAR and self.data.mqar.vocab_size > self.model.vocab_size:
            raise ValueError(
                f"data.mqar.vocab_size ({self.data.mqar.vocab_size}) > model.vocab_size ({self.model.vocab_size}): "
                "lower data.mqar.vocab_size or raise model.vocab_size"
            )
        if self.train.sample_tokens and self.data.source == MQAR:
            raise ValueError("train.sample_tokens: the mqar task has no tokenizer to sample text with; set "
                             "train.sample_tokens=0")
        if self.train.sample_tokens and not self.train.sample_prompt:
            raise ValueError("train.sample_prompt is empty: a sample needs at least one prompt token (the default "
                             "is a newline), or set train.sample_tokens=0")


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML file as a dict, following `extends:` chains (the extending file wins key by key)."""
    path = Path(path)
    if not path.is_file():
        where = f" (extended by {_seen[-1]})" if _seen else ""
        what = "is a folder, not a YAML file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {path} {what}{where} (the shipped ones are in configs/)")
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"{path}: extends: forms a cycle ({chain}); remove one of the extends: lines")
    try:
        data = load_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if data is None:  # an unsaved or truncated file would otherwise train GPT-2 small's defaults without a word
        raise ConfigError(f"{path}: holds no settings (empty, or comments only); write its sections, or `{{}}` to "
                          "take every default")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, optim, train, logging)")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: must be one file name, got {parent!r}")
    return merge(read_yaml(path.parent / parent, (*_seen, path.resolve())), data)


def merge(base: dict[str, Any], override: dict[str, Any], shape: type = RunConfig) -> dict[str, Any]:
    """Config dicts shaped like the dataclass `shape` merged key by key, the override winning. A section or nested
    config given empty (YAML's `model:` with nothing under it, or `{}`) adds nothing; a mapping field
    (model.attention_options) given `{}` is cleared, and given entries takes them over its own."""
    hints = typing.get_type_hints(shape) if dataclasses.is_dataclass(shape) else {}
    merged = dict(base)
    for key, value in override.items():
        nested = hints.get(key)
        if dataclasses.is_dataclass(nested) and value in (None, {}):
            continue
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value, nested)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """`train.lr=3e-4` -> {'train': {'lr': '3e-4'}}, the value as `load_value` reads it: the text as given for a
    string field, YAML's reading for the others (numbers, true/false, lists, mappings)."""
    key, sep, raw = text.partition("=")
    key = key.strip().removeprefix("--")
    if not sep or "." not in key or not all(key.split(".")):
        raise ConfigError(f"bad override {text!r}: write section.key=value, e.g. train.max_steps=100")
    value = load_value(raw)
    if isinstance(value, YamlScalar) and isinstance(value.value, dict) and not takes_text(field_type(key)):
        value = value.value  # `data.mqar=num_pairs: 4` sets entries, as `{num_pairs: 4}` does
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def field_type(key: str) -> Any:
    """The declared type of the dotted `key` in RunConfig; None where no field has that name."""
    tp: Any = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def takes_text(tp: Any) -> bool:
    """Whether a field of type `tp` takes text: str, or an optional str."""
    return tp is str or typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)


def yaml_problem(exc: yaml.YAMLError | UnicodeDecodeError) -> str:
    """What a YAML parser objected to and where: 'line 2, column 2: expected ',' or ']', but got ':' (while parsing
    a flow sequence from line 1, column 4)', lines and columns counted from 1."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    opened = f" from line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
    where = f" ({context}{opened})" if context else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{where}"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """The validated run config from a YAML file (or defaults) plus `section.key=value` overrides."""
    data = read_yaml(path) if path is not None else {}
    for text in overrides:
        data = merge(data, parse_override(text))
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return from_dict(RunConfig, data)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return to_dict(cfg)
