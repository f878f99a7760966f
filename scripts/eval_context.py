"""Val loss against position past the training context, one line per checkpoint (see evals/context.py).

    python scripts/eval_context.py --ckpt runs/ctx-softmax --ckpt runs/ctx-taylor --max-length 2048 --out runs/ctx
    python scripts/eval_context.py --ckpt runs/ctx-logexp --max-length 2048 --form decode --out runs/ctx-decode

Writes OUT/context.md (a table of loss per bucket), OUT/context.csv (one row per checkpoint and bucket) and
OUT/context.png (loss against position). Every checkpoint is scored on the same val sequences, so lines compare.
Exit status 2 with one line on stderr for unusable arguments or checkpoints.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from data.prepare import load_prepared
from evals.context import FORMS, ContextCurve, context_curve, ratio_to_first_bucket, records
from experiments.log_axes import style_log_axes
from fileio.atomic import write_text_atomic
from fileio.pages import command_line, opening, this_machine, today
from fileio.tables import cell, csv_text, markdown_table
from training.checkpoint import load_checkpoint_model
from training.config import RunConfig
from typedconfig.cli import ArgumentParser


def label(cfg: RunConfig) -> str:
    """The backend, with what sets the model apart from the backend's defaults (options, positions)."""
    options = " ".join(f"{k}={v}" for k, v in sorted(cfg.model.attention_options.items()))
    return " ".join(part for part in (cfg.model.attention, options, f"position={cfg.model.position}") if part)


def markdown(curves: list[ContextCurve], argv: list[str], form: str) -> str:
    longest = max(curves, key=lambda c: len(c.edges))
    header = ["checkpoint", *(f"{a}–{b}" for a, b in zip(longest.edges, longest.edges[1:])), "last / first"]
    rows = [[c.label, *(cell(v, "g") for v in c.loss), *([""] * (len(header) - 2 - len(c.loss))),
             cell(ratio_to_first_bucket(c), "x")] for c in curves]
    notes = [f"- {c.label}: {c.note}" for c in curves if c.note]
    contexts = sorted({c.train_context for c in curves})
    return (
        opening("Loss against position past the training context",
                f"mean next-token val loss (nats) per position bucket, {curves[0].sequences} val sequences of "
                f"{longest.length} tokens, the {form} form", command_line(__file__, argv),
                "the checkpoints' own configs", this_machine(), today())
        + f"Trained context: {', '.join(map(str, contexts))} tokens; the first bucket is the trained regime.\n\n"
        + markdown_table(header, rows, right=header[1:]) + "\n"
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
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(prog="eval_context", description=__doc__)
    parser.add_argument("--ckpt", action="append", required=True, help="run or checkpoint directory (repeatable)")
    parser.add_argument("--max-length", type=int, default=2048, help="positions to score per sequence")
    parser.add_argument("--sequences", type=int, default=16, help="val sequences (the same for every checkpoint)")
    parser.add_argument("--form", choices=FORMS, default="forward",
                        help="forward: the training form; decode: chunk by chunk through the decode state")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True, help="folder for context.md, context.csv, context.png")
    args = parser.parse_args(argv)
    if args.max_length < 2 or args.sequences < 1:
        parser.error("--max-length must be >= 2 and --sequences >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    curves = []
    try:
        if args.out.exists() and not args.out.is_dir():
            raise FileExistsError(f"--out {args.out} is an existing file; name a folder")
        for path in args.ckpt:
            model, cfg, ckpt = load_checkpoint_model(path)
            _, _, val_tokens = load_prepared(cfg.data)
            curves.append(context_curve(model, val_tokens, label=label(cfg), train_context=cfg.data.block_size,
                                        max_length=args.max_length, sequences=args.sequences, form=args.form))
            print(f"{ckpt}: " + ", ".join(f"{v:.3f}" for v in curves[-1].loss), flush=True)
    except (ValueError, OSError) as exc:  # CheckpointError, DataError, FileExistsError: each names the path
        print(f"eval_context: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "context.md", markdown(curves, argv, args.form))
    write_text_atomic(args.out / "context.csv", csv_text(records(curves)))
    plot(curves, args.out / "context.png")
    print(f"eval_context: wrote {args.out}/context.md, context.csv, context.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
