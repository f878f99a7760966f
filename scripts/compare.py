"""Compare runs, grouped by their settings: a markdown + CSV table and a PNG of the val-loss curves.

    python scripts/compare.py runs/sweeps/shakespeare-cpu                    # a sweep directory (scripts/sweep.py)
    python scripts/compare.py runs/a runs/b runs/c --out runs/compare-abc    # or run directories

Runs whose settings are equal apart from the seed and bookkeeping (where a run was kept, how often it logged and
checkpointed, wandb: experiments/run_identity.py) form one row, labelled by the backend and any other setting that
sets it apart (`taylor position=rope`). Per row: final and best val loss and perplexity (and MQAR answer accuracy
when logged) as mean ± std over the seeds, tokens, wall time, train tokens/s and peak memory; see
experiments/comparison.py for each definition. Prints the table and writes comparison.md, comparison.csv and
comparison.png to --out (default: a new runs/compare-<date>-<time>), which must not lie inside the compared
directories. Runs trained on different data, evaluated on different val windows, with different token budgets or
unfinished are refused (exit status 2); runs that differ in optimiser or training settings are compared with a
warning on stderr, since the table then compares those settings too.

Below the table, each row's final val loss minus the reference row's (--reference: a row label, or a backend that
labels one row; default softmax), seed by seed: the mean ± std of those paired differences, on how many seeds the
row ends lower, the paired t statistic and the 95% confidence interval of the mean difference (Student t, n - 1
degrees of freedom), and whether the seeds tell the two apart: the interval excludes 0 (with one seed they cannot
tell). Also written as comparison_paired.csv; a comparison without pairing removes a comparison_paired.csv left
in --out by an earlier one, so that the folder never holds another comparison's pairs. A --reference that names no
row, or several, is an error that lists the rows, and so is an --out that is an existing file (checked before any
work). A row that shares no seed with the reference is named as not paired. An --out that holds a comparison another
command wrote is refused before any work, unless --overwrite: the command a page records regenerates it.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from experiments.comparison import (
    CONFIDENCE, ComparisonError, check_comparable, check_out_dir, csv_rows, group_runs, load_run, paired_rows,
    paired_table, paired_with, recorded, reference_label, run_dirs, settings_beyond_model, summarise, summary_table,
    trained_dates, val_curve, varying_settings,
)
from experiments.comparison_plot import plot_val_curves
from fileio.atomic import write_text_atomic
from fileio.folders import OutFolderError, check_out_folder
from fileio.pages import check_replace, command_line, opening, replacing
from fileio.tables import csv_text
from typedconfig.cli import ArgumentParser, path_argument

DEFAULT_REFERENCE = "softmax"
OUTPUTS = ("comparison.md", "comparison.csv", "comparison_paired.csv", "comparison.png")  # the page first
MEASURED = ("final and best val loss and perplexity, tokens, wall time, train tokens/s and peak memory of each group "
            "of runs (mean ± std over seeds)")


ELSEWHERE = "pass another --out (by default a new runs/compare-<date>-<time>)"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="compare", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories, or a sweep directory that holds them")
    parser.add_argument("--out", type=path_argument,
                        help="folder for the table and figure, outside the compared directories "
                        "(default: runs/compare-<date>-<time>)")
    parser.add_argument("--reference", help="the row the others are paired with, seed by seed: a row label, or a "
                        "backend that labels exactly one row (default: softmax, where it labels one row)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a comparison in --out that another command wrote")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        check_out_folder(out, "the table and figure")
        paths = run_dirs(args.runs)
        check_out_dir(out, [*map(Path, args.runs), *paths])
        outputs = ([out / name for name in OUTPUTS], command_line(__file__, argv), args.overwrite, ELSEWHERE)
        note = check_replace(*outputs)
        runs = [load_run(path) for path in paths]
        check_comparable(runs)
    except (ValueError, OutFolderError) as exc:  # ComparisonError is a ValueError
        print(f"cannot compare: {exc}", file=sys.stderr)
        return 2
    if note:
        print(note, file=sys.stderr)
    beyond_model = settings_beyond_model(runs)
    if beyond_model:
        print(f"warning: the runs also differ in {', '.join(beyond_model)}; each setting gets its own row, and the "
              "table compares those settings as well as the models", file=sys.stderr)

    revisions = recorded(runs, "revision")
    if len(revisions) > 1:
        print(f"warning: the runs were trained by {len(revisions)} code revisions ({', '.join(revisions)}); a change "
              "of code can move a seed's loss at floating-point level, so small differences may be the code's",
              file=sys.stderr)

    summaries = summarise(runs)
    table = summary_table(summaries)
    data = runs[0].config["data"]
    config = (f"the runs' config.yaml: data.source={data['source']}, block_size {data['block_size']}, "
              f"{runs[0].budget:,} training tokens each, val windows {runs[0].eval_lines[-1].get('val_windows')}; "
              f"groups set apart by {', '.join(varying_settings(runs)) or 'nothing'}; code "
              f"{', '.join(revisions) or 'revision not recorded'}")
    page = opening(f"Comparison of {len(runs)} runs on {data['source']}", MEASURED, outputs[1],
                   config, "; ".join(recorded(runs, "machine")) or "not recorded in the run records",
                   f"trained {trained_dates(runs)}")
    groups = group_runs(runs)
    try:
        reference = reference_label(list(groups), args.reference or DEFAULT_REFERENCE)
    except ComparisonError as exc:
        if args.reference:
            print(f"cannot compare: {exc}", file=sys.stderr)
            return 2
        print(f"note: no paired table: {exc} (--reference)", file=sys.stderr)
        reference = None
    paired = paired_with(runs, reference) if reference else []
    paired_labels = {p.label for p in paired}
    unpaired = [label for label in groups if reference and label != reference and label not in paired_labels]
    if unpaired:
        verb = "shares" if len(unpaired) == 1 else "share"
        print(f"note: {', '.join(map(repr, unpaired))} {verb} no seed with {reference!r}: not paired", file=sys.stderr)
    pairs = (f"\n## Paired with {reference}, seed by seed\n\nFinal val loss minus {reference}'s on the same seed "
             f"(mean ± std over seeds), the paired t statistic and the {CONFIDENCE:.0%} confidence interval of the "
             "mean difference (Student t with seeds − 1 degrees of freedom); *told apart*: the interval excludes 0. "
             "With one seed there is no spread to judge a difference against, and the seeds cannot tell.\n\n"
             f"{paired_table(paired, reference)}") if paired else ""
    if unpaired:
        pairs += f"\nNot paired (no seed in common with {reference}): {', '.join(unpaired)}.\n"
    print(table + pairs, end="")

    page_file, csv_file, paired_file, plot_file = (out / name for name in OUTPUTS)
    try:
        # another compare into the same --out may have written since the check above
        with replacing(*outputs):
            write_text_atomic(page_file, f"{page}{table}\n![val loss]({plot_file.name})\n{pairs}")
            write_text_atomic(csv_file, csv_text(csv_rows(summaries)))
            if paired:
                write_text_atomic(paired_file, csv_text(paired_rows(paired)))
            else:  # a reused --out: an earlier comparison's pairs would read as this one's
                paired_file.unlink(missing_ok=True)
            plot_val_curves({s.label: val_curve(groups[s.label]) for s in summaries}, plot_file)
    except ValueError as exc:
        print(f"cannot compare: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be written (permissions, a full disk)
        print(f"cannot compare: cannot write to --out {out}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'comparison.md'}, comparison.csv, comparison.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
