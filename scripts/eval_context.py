"""Val loss against position past the training context, one line per checkpoint (see evals/context.py).

    python scripts/eval_context.py --ckpt runs/ctx-softmax --ckpt runs/ctx-taylor --max-length 2048 --out runs/ctx
    python scripts/eval_context.py --ckpt runs/ctx-logexp --max-length 2048 --form decode --out runs/ctx-decode

Writes OUT/context.md (a table of loss per bucket, one per training context: buckets are one training context
wide), OUT/context.csv (one row per checkpoint and bucket) and OUT/context.png (loss against position). Every
checkpoint is scored on the same val sequences, so lines compare: a checkpoint whose data gives other sequences than
the first's (another source or tokenizer) is refused, as is one given twice and one trained on MQAR (no val text);
--sequences may not exceed the distinct sequences the val split holds. A checkpoint is labelled by its backend,
options, positions and block size, and by its folder's name where that still leaves two alike. Exit status 2 with
one line on stderr for unusable arguments or checkpoints, before any checkpoint is scored.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure

from data.config import MQAR
from data.prepare import dataset_dir, load_prepared
from evals.context import FORMS, ContextCurve, context_curve, ratio_to_first_bucket, records, val_sequences
from experiments.log_axes import style_log_axes
from fileio.atomic import save_figure_atomic, write_text_atomic
from fileio.folders import check_out_folder
from fileio.pages import check_replace, command_line, opening, replacing, this_machine, today
from fileio.tables import cell, csv_text, markdown_table
from training.checkpoint import checkpoint_model, load_checkpoint_config
from training.config import RunConfig
from typedconfig.cli import ArgumentParser, path_argument

OUTPUTS = ("context.md", "context.csv", "context.png")  # the page first, as check_replace reads it


def label(cfg: RunConfig) -> str:
    """The backend, with what sets the model apart from the backend's defaults (options, positions) and the context
    it was trained on (data.block_size), which decides its buckets."""
    options = " ".join(f"{k}={v}" for k, v in sorted(cfg.model.attention_options.items()))
    return " ".join(part for part in (cfg.model.attention, options, f"position={cfg.model.position}",
                                      f"block_size={cfg.data.block_size}") if part)


def unique_labels(labels: list[str], paths: list[str]) -> list[str]:
    """Each label, with its checkpoint's folder name in brackets where another checkpoint has the same label (the
    path as given where those names are the same too): a row, a CSV line and a legend entry each name one
    checkpoint."""
    shown = []
    for text, path in zip(labels, paths):
        twins = [other for other_label, other in zip(labels, paths) if other_label == text]
        if len(twins) == 1:
            shown.append(text)
            continue
        names = [Path(other).resolve().name for other in twins]
        name = Path(path).resolve().name
        shown.append(f"{text} ({name if names.count(name) == 1 else path})")
    return shown


def bucket_table(curves: list[ContextCurve]) -> str:
    """The curves of one training context as a markdown table: a column per bucket any of them has, each loss under
    its own bucket's header and an empty cell where a checkpoint was scored on fewer positions."""
    buckets = sorted({bucket for c in curves for bucket in zip(c.edges, c.edges[1:])})
    header = ["checkpoint", *(f"{a}–{b}" for a, b in buckets), "last / first"]
    rows = []
    for c in curves:
        loss = dict(zip(zip(c.edges, c.edges[1:]), c.loss))
        rows.append([c.label, *(cell(loss[bucket], "g") if bucket in loss else "" for bucket in buckets),
                     cell(ratio_to_first_bucket(c), "x")])
    return markdown_table(header, rows, right=header[1:]) + "\n"


def markdown(curves: list[ContextCurve], argv: list[str], form: str) -> str:
    """The page: one table per training context, since buckets are one training context wide and those of
    different contexts do not line up."""
    longest = max(curves, key=lambda c: c.length)
    notes = [f"- {c.label}: {c.note}" for c in curves if c.note]
    tables = [f"Trained context: {context} tokens; the first bucket is the trained regime.\n\n"
              + bucket_table([c for c in curves if c.train_context == context])
              for context in sorted({c.train_context for c in curves})]
    return (
        opening("Loss against position past the training context",
                f"mean next-token val loss (nats) per position bucket, {curves[0].sequences} val sequences of "
                f"{longest.length} tokens, the {form} form", command_line(__file__, argv),
                "the checkpoints' own configs", this_machine(), today())
        + "\n".join(tables)
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
    )


def plot(curves: list[ContextCurve], path: Path) -> None:
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for c in curves:
        centres = [(a + b) / 2 for a, b in zip(c.edges, c.edges[1:])]
        axes.plot(centres, c.loss, marker="o", label=c.label)
    for context in {c.train_context for c in curves}:
        axes.axvline(context, color="grey", linestyle=":", linewidth=1)
    style_log_axes(axes, "Loss against position", "position (bucket centre; dotted: training context)",
                   ylabel="val loss (nats)", yscale="linear")
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=120)


class Scored(NamedTuple):
    """A checkpoint ready to score: its config and directory, its val split and the sequences it reads (its model is
    loaded when its turn comes, so that one model at a time is in memory)."""

    cfg: RunConfig
    ckpt: Path
    val_tokens: np.ndarray
    sequences: np.ndarray  # (sequences, max_length + 1) tokens


def load_scored(path: str, max_length: int, sequences: int) -> Scored:
    """The checkpoint `path` means, with the val sequences of its own data; a checkpoint trained on MQAR, which has
    no val text, is refused."""
    cfg, ckpt = load_checkpoint_config(path)
    if cfg.data.source == MQAR:
        raise ValueError(f"--ckpt {path}: {ckpt} was trained on data.source {MQAR} (generated recall sequences, no "
                         "val text); eval_context scores checkpoints trained on text only")
    _, _, val_tokens = load_prepared(cfg.data)
    return Scored(cfg, ckpt, val_tokens, val_sequences(val_tokens, max_length, sequences))


def check_alike(paths: list[str], loaded: list[Scored]) -> None:
    """Raise ValueError for a checkpoint given twice (two rows no label could tell apart), however its path was
    written, and for one scored on other val sequences than the first, whose losses would not compare."""
    first = loaded[0]
    for i, (path, scored) in enumerate(zip(paths, loaded)):
        same = [other for other, earlier in zip(paths, loaded[:i]) if earlier.ckpt.resolve() == scored.ckpt.resolve()]
        if same:
            raise ValueError(f"--ckpt {path} is the checkpoint {scored.ckpt}, as --ckpt {same[0]} is; give each "
                             "checkpoint once")
        if not np.array_equal(scored.sequences, first.sequences):
            raise ValueError(
                f"--ckpt {path} reads other val sequences than --ckpt {paths[0]} (data.source "
                f"{scored.cfg.data.source!r} prepared in {dataset_dir(scored.cfg.data)}, against "
                f"{first.cfg.data.source!r} in {dataset_dir(first.cfg.data)}), so their losses would not compare; "
                "score checkpoints trained on the same data together")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="eval_context", description=__doc__)
    parser.add_argument("--ckpt", action="append", required=True, help="run or checkpoint directory (repeatable)")
    parser.add_argument("--max-length", type=int, default=2048, help="positions to score per sequence")
    parser.add_argument("--sequences", type=int, default=16, help="val sequences (the same for every checkpoint)")
    parser.add_argument("--form", choices=FORMS, default="forward",
                        help="forward: the training form; decode: chunk by chunk through the decode state")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=path_argument, required=True,
                        help="folder for context.md, context.csv, context.png")
    parser.add_argument("--overwrite", action="store_true", help="replace a page in --out that another command wrote")
    args = parser.parse_args(argv)
    if args.max_length < 2 or args.sequences < 1:
        parser.error("--max-length must be >= 2 and --sequences >= 1")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    curves = []
    try:
        check_out_folder(args.out, "the page, CSV and plot")
        outputs = ([args.out / name for name in OUTPUTS], command_line(__file__, argv), args.overwrite,
                   "give another --out")
        note = check_replace(*outputs)
        if note:  # before the minutes of scoring, as the other commands say it
            print(f"eval_context: {note}", flush=True)
        loaded = [load_scored(path, args.max_length, args.sequences) for path in args.ckpt]
        check_alike(args.ckpt, loaded)
        for cfg, ckpt, val_tokens, _ in loaded:
            # the model is referenced by this call alone: freed before the next checkpoint's loads
            curves.append(context_curve(checkpoint_model(ckpt, cfg), val_tokens, label=label(cfg),
                                        train_context=cfg.data.block_size, max_length=args.max_length,
                                        sequences=args.sequences, form=args.form))
            print(f"{ckpt}: " + ", ".join(f"{v:.3f}" for v in curves[-1].loss), flush=True)
    except (ValueError, OSError) as exc:  # CheckpointError, DataError, OutFolderError: each names the path
        print(f"eval_context: {exc}", file=sys.stderr)
        return 2
    curves = [replace(c, label=text) for c, text in zip(curves, unique_labels([c.label for c in curves], args.ckpt))]
    try:
        with replacing(*outputs):  # another command may have written there during the minutes above
            write_text_atomic(args.out / "context.md", markdown(curves, argv, args.form))
            write_text_atomic(args.out / "context.csv", csv_text(records(curves)))
            plot(curves, args.out / "context.png")
    except (ValueError, OSError) as exc:
        print(f"eval_context: {exc}", file=sys.stderr)
        return 2
    print(f"eval_context: wrote {args.out}/context.md, context.csv, context.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
