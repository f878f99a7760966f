"""compare averages the seeds of each group of runs (runs equal apart from the seed) into a table and a figure, labels
each group by what sets it apart, refuses runs that did not train and evaluate on the same footing, and writes
to a folder of its own."""

from __future__ import annotations

import csv
import json
import math

import pytest

from experiments.comparison import (
    ComparisonError, check_comparable, csv_rows, load_run, paired_table, paired_with, reference_label, summarise,
    summary_table,
)
from model.attention import BACKENDS

SECOND = next(name for name in BACKENDS if name != "softmax")
TINY_BUDGET = 20 * 4 * 2 * 32  # configs/tiny.yaml: max_steps x batch_size x grad_accum x block_size


@pytest.fixture
def compare(script_main):
    return script_main("compare")


def test_the_table_averages_the_seeds_of_each_backend(tmp_path, fake_run):
    runs = [
        load_run(fake_run(tmp_path / "softmax-0", "train.seed=0", losses=(5.0, 4.0, 4.3), seconds=8.0)),
        load_run(fake_run(tmp_path / "softmax-1", "train.seed=1", losses=(5.0, 4.2, 4.5), seconds=12.0)),
        load_run(fake_run(tmp_path / "other-0", f"model.attention={SECOND}", losses=(5.0, 3.0, 3.5))),
    ]
    check_comparable(runs)
    first, second = summarise(runs)  # best final val loss first
    assert (first.label, first.runs, second.label, second.runs) == (SECOND, 1, "softmax", 2)
    assert second.stats["final_val_loss"] == pytest.approx((4.4, math.sqrt(0.02)))
    assert second.stats["best_val_ppl"][0] == pytest.approx((math.exp(4.0) + math.exp(4.2)) / 2)
    assert first.stats["final_val_loss"][0] == 3.5 and first.stats["best_val_loss"][0] == 3.0
    assert math.isnan(first.stats["final_val_loss"][1])  # one run: its spread is unknown, not 0
    assert second.stats["tokens"] == (TINY_BUDGET, 0.0)
    assert second.stats["wall_time_s"] == (10.0, pytest.approx(math.sqrt(8.0)))
    assert second.stats["tokens_per_s"][0] == pytest.approx((TINY_BUDGET / 8 + TINY_BUDGET / 12) / 2)
    assert second.stats["peak_mem_mb"] == (503.0, 0.0)
    table = summary_table([first, second])
    assert table.splitlines()[1] == "|---|---:|" + "---:|" * 8  # numbers right-aligned
    assert "| softmax | 2 | 4.4000 ± 0.1414 | 4.1000 ± 0.1414 |" in table
    assert f"| {SECOND} | 1 | 3.5000 | 3.0000 |" in table
    assert "acc" not in table  # no run logged val_accuracy
    assert csv_rows([first, second])[1]["final_val_loss_std"] == pytest.approx(math.sqrt(0.02))


def test_mqar_accuracy_gets_columns_when_every_run_logs_it(tmp_path, fake_run):
    path = fake_run(tmp_path / "run", losses=(2.0, 1.0))
    lines = [json.loads(text) for text in (path / "metrics.jsonl").read_text().splitlines()]
    for line, accuracy in zip((line for line in lines if "val_loss" in line), (0.5, 0.25)):
        line["val_accuracy"] = accuracy
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (summary,) = summarise([load_run(path)])
    assert (summary.stats["final_val_accuracy"][0], summary.stats["best_val_accuracy"][0]) == (0.25, 0.5)
    assert "| final val acc | best val acc |" in summary_table([summary])


def test_a_step_logged_twice_by_a_resumed_run_counts_once(tmp_path, fake_run):
    path = fake_run(tmp_path / "run", losses=(6.0, 5.0))
    with (path / "metrics.jsonl").open("a") as handle:  # resumed from step 10: steps 10 .. 20 are written again
        handle.write(json.dumps({"step": 20, "val_loss": 4.5, "tokens": TINY_BUDGET, "elapsed": 11.0,
                                 "val_windows": "f" * 16}) + "\n")
    run = load_run(path)
    assert [line["val_loss"] for line in run.eval_lines] == [6.0, 4.5]
    assert summarise([run])[0].stats["final_val_loss"][0] == 4.5


@pytest.mark.parametrize(
    "overrides, kwargs, message",
    [
        (["data.block_size=16"], {}, "runs differ in data.block_size: 32 in .*, 16 in "),
        (["data.source=other.txt"], {}, "runs differ in data.source: 'shakespeare' in .*, 'other.txt' in "),
        ([], {"fingerprint": "e" * 16}, f"different val windows: {'f' * 16} in .* but {'e' * 16} in "),
        (["train.max_steps=10"], {}, f"different token budgets: {TINY_BUDGET:,} tokens in .* but {TINY_BUDGET // 2:,}"),
        ([], {"finished": False}, f"is unfinished \\({TINY_BUDGET // 2:,} of {TINY_BUDGET:,} tokens\\)"),
    ],
)
def test_compare_refuses_runs_that_are_not_comparable(tmp_path, fake_run, overrides, kwargs, message):
    runs = [load_run(fake_run(tmp_path / "a")), load_run(fake_run(tmp_path / "b", *overrides, **kwargs))]
    with pytest.raises(ComparisonError, match=message):
        check_comparable(runs)


def test_a_run_that_trained_past_its_configs_budget_is_refused(tmp_path, fake_run):
    """Resumed with a lower train.max_steps ("nothing to train"), its config.yaml names a budget it overran: its
    scores would be compared with runs of fewer tokens."""
    past = fake_run(tmp_path / "b")
    with (past / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"step": 40, "val_loss": 4.0, "tokens": 2 * TINY_BUDGET, "elapsed": 20.0,
                                 "val_windows": "f" * 16}) + "\n")
    with pytest.raises(ComparisonError, match=rf"trained {2 * TINY_BUDGET:,} tokens, past its config's budget"):
        check_comparable([load_run(fake_run(tmp_path / "a")), load_run(past)])


def test_where_the_data_lives_and_unused_mqar_knobs_do_not_matter(tmp_path, fake_run):
    runs = [load_run(fake_run(tmp_path / "a")),
            load_run(fake_run(tmp_path / "b", "data.prepared_dir=elsewhere", "data.mqar.num_pairs=9",
                              "data.mqar.num_queries=3", "train.seed=7", f"model.attention={SECOND}"))]
    check_comparable(runs)
    mqar = ["data.source=mqar", "model.vocab_size=8192", "data.mqar.num_queries=2"]
    runs = [load_run(fake_run(tmp_path / "c", *mqar)),
            load_run(fake_run(tmp_path / "d", *mqar, "data.mqar.num_pairs=9"))]
    with pytest.raises(ComparisonError, match="runs differ in data.mqar.num_pairs: 8 in .*, 9 in "):
        check_comparable(runs)


# --- paired with a reference, seed by seed ---


def paired_runs(tmp_path, fake_run, finals: dict[str, tuple[float, ...]]) -> list:
    """One fake run per (backend, seed) ending at the given final val loss, seeds 0, 1, ... in order."""
    return [load_run(fake_run(tmp_path / f"{name}-seed{seed}", f"model.attention={name}", f"train.seed={seed}",
                              losses=(6.0, loss)))
            for name, losses in finals.items() for seed, loss in enumerate(losses)]


def test_paired_differences_are_told_apart_by_a_paired_t_interval_computed_by_hand(tmp_path, fake_run):
    finals = {"softmax": (5.00, 5.10, 4.95), "logexp": (4.80, 4.92, 4.70), "taylor": (5.05, 5.00, 4.97)}
    runs = paired_runs(tmp_path, fake_run, finals)
    runs.append(load_run(fake_run(tmp_path / "expressive-seed7", "model.attention=expressive", "train.seed=7")))
    by_label = {p.label: p for p in paired_with(runs, "softmax")}
    assert set(by_label) == {"logexp", "taylor"}  # expressive shares no seed with softmax
    logexp = by_label["logexp"]
    assert logexp.seeds == [0, 1, 2] and logexp.differences == pytest.approx([-0.20, -0.18, -0.25])
    # by hand: mean -0.21, std sqrt((0.01² + 0.03² + 0.04²) / 2) = sqrt(0.0013), standard error std / sqrt(3);
    # t = -0.21 / 0.020817 = -10.09; t(0.975, 2 dof) = 4.3027 from a table, so the interval is -0.21 ± 0.08957
    assert logexp.mean == pytest.approx(-0.21) and logexp.std == pytest.approx(math.sqrt(0.0013))
    assert logexp.lower == 3 and logexp.t == pytest.approx(-0.21 / math.sqrt(0.0013 / 3))
    assert logexp.interval == pytest.approx((-0.29957, -0.12043), abs=1e-5) and logexp.told_apart
    taylor = by_label["taylor"]  # differences 0.05, -0.10, 0.02: mean -0.01, std sqrt(0.0063)
    assert taylor.lower == 1 and taylor.t == pytest.approx(-0.01 / math.sqrt(0.0063 / 3))
    assert taylor.interval == pytest.approx((-0.01 - 4.302653 * math.sqrt(0.0063 / 3),
                                             -0.01 + 4.302653 * math.sqrt(0.0063 / 3)), abs=1e-5)
    assert taylor.told_apart is False
    table = paired_table(list(by_label.values()), "softmax")
    assert "| t | 95% interval | told apart |" in table
    assert "| logexp | 3 | -0.2100 ± 0.0361 | 3 of 3 | -10.09 | -0.2996 to -0.1204 | yes |" in table
    assert "| taylor | 3 | -0.0100 ± 0.0794 | 1 of 3 | -0.22 | -0.2072 to 0.1872 | no |" in table
    with pytest.raises(ComparisonError, match="no row is labelled 'nonexistent'; the rows are 'softmax', "):
        paired_with(runs, "nonexistent")


def test_a_row_lower_by_the_same_amount_on_every_seed_is_told_apart_however_far_apart_the_seeds_are(tmp_path,
                                                                                                     fake_run):
    """The seeds' spread (0.25 here) is common to both rows and cancels seed by seed: a difference of exactly 0.1 on
    every seed has no spread at all and tells the rows apart (a verdict of the mean against the seed spread would
    not)."""
    softmax = (5.00, 5.30, 4.80)
    runs = paired_runs(tmp_path, fake_run, {"softmax": softmax, SECOND: tuple(loss - 0.1 for loss in softmax)})
    (paired,) = paired_with(runs, "softmax")
    assert paired.mean == pytest.approx(-0.1) and paired.std == pytest.approx(0.0, abs=1e-12)
    assert paired.interval == pytest.approx((-0.1, -0.1)) and paired.told_apart
    assert f"| {SECOND} | 3 | -0.1000 | 3 of 3 |" in paired_table([paired], "softmax")


def test_three_seeds_lower_by_less_than_their_paired_spread_are_not_told_apart(tmp_path, fake_run):
    """expressive_sq against softmax in results/shakespeare-cpu (the final val losses of its run records): lower on 3
    of 3 seeds by 0.0607, 0.0029 and 0.0218, mean 0.0284 beyond softmax's std (0.0239), but the differences' own std
    is 0.0295: paired t = -1.67 on 2 degrees of freedom (p = 0.24), and the 95% interval holds 0."""
    finals = {"softmax": (5.565512180328369, 5.51945161819458, 5.5315515995025635),
              "expressive_sq": (5.504849672317505, 5.516598582267761, 5.509793400764465)}
    (paired,) = paired_with(paired_runs(tmp_path, fake_run, finals), "softmax")
    assert paired.lower == 3 and paired.mean == pytest.approx(-0.0284, abs=5e-5)
    assert paired.std == pytest.approx(0.0295, abs=5e-5) and paired.t == pytest.approx(-1.670, abs=1e-3)
    assert paired.interval == pytest.approx((-0.1016, 0.0448), abs=1e-4) and paired.told_apart is False
    assert "| expressive_sq | 3 | -0.0284 ± 0.0295 | 3 of 3 | -1.67 | -0.1016 to 0.0448 | no |" in paired_table(
        [paired], "softmax")


def test_one_seed_cannot_tell_two_rows_apart(tmp_path, fake_run):
    (paired,) = paired_with(paired_runs(tmp_path, fake_run, {"softmax": (5.0,), SECOND: (4.0,)}), "softmax")
    assert paired.told_apart is None and math.isnan(paired.t) and math.isnan(paired.interval[0])
    assert f"| {SECOND} | 1 | -1.0000 | 1 of 1 | – | – | cannot tell (1 seed) |" in paired_table([paired], "softmax")


def test_the_same_run_twice_is_refused_naming_both_directories(tmp_path, fake_run):
    """A copied record would count as a second seed in the mean ± std (and the pairing would keep only one)."""
    runs = [load_run(fake_run(tmp_path / "sweep" / "softmax-seed0", "train.seed=0", losses=(6.0, 5.0))),
            load_run(fake_run(tmp_path / "sweep" / "softmax-seed1", "train.seed=1", losses=(6.0, 5.2))),
            load_run(fake_run(tmp_path / "copy" / "softmax-again", "train.seed=0", losses=(6.0, 5.0)))]
    message = (f"{tmp_path / 'sweep' / 'softmax-seed0'} and {tmp_path / 'copy' / 'softmax-again'} are both 'softmax' "
               "with seed 0: the same run twice would count as two seeds; leave one of them out")
    for check in (check_comparable, summarise, lambda runs: paired_with(runs, "softmax")):
        with pytest.raises(ComparisonError) as error:
            check(runs)
        assert str(error.value) == message


@pytest.mark.parametrize("reference, expected", [
    ("softmax threads=1", "softmax threads=1"),  # a label
    ("taylor", "taylor threads=1"),  # the backend of exactly one row
    ("softmax", "cannot compare: reference 'softmax' is the backend of 2 rows ('softmax threads=1', "
                "'softmax threads=2'); pass one of them in full"),
    ("logexp", "cannot compare: no row is labelled 'logexp'; the rows are 'softmax threads=1', 'softmax threads=2', "
               "'taylor threads=1': pass one of them as the reference"),
])
def test_reference_names_a_label_or_the_backend_of_one_row(reference, expected):
    labels = ["softmax threads=1", "softmax threads=2", "taylor threads=1"]
    if expected.startswith("cannot compare: "):
        with pytest.raises(ComparisonError) as error:
            reference_label(labels, reference)
        assert f"cannot compare: {error.value}" == expected
    else:
        assert reference_label(labels, reference) == expected


# --- the compare CLI -----------------------------------------------------------------------------------------------


def test_the_cli_writes_the_page_the_csv_and_the_figure_to_its_own_folder(tmp_path, fake_run, compare, capsys):
    fake_run(tmp_path / "sweep" / "softmax-seed0", "train.seed=0")
    fake_run(tmp_path / "sweep" / "softmax-seed1", "train.seed=1", losses=(6.0, 4.0))
    fake_run(tmp_path / "sweep" / f"{SECOND}-seed0", "train.seed=0", f"model.attention={SECOND}")
    out = tmp_path / "comparison"
    assert compare([str(tmp_path / "sweep"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| softmax | 2 | 4.5000 ± 0.7071 |" in captured.out and "warning" not in captured.err
    assert (out / "comparison_paired.csv").is_file() and "## Paired with softmax, seed by seed" in captured.out
    assert f"| {SECOND} | 1 | 0.0000 | 0 of 1 | – | – | cannot tell (1 seed) |" in captured.out
    page = (out / "comparison.md").read_text().splitlines()
    assert page[0] == "# Comparison of 3 runs on shakespeare"
    assert page[2].startswith("Measured: final and best val loss") and "Machine: not recorded" in page[2]
    assert f"Command: `python scripts/compare.py {tmp_path / 'sweep'} --out {out}`" in page[2]
    assert "groups set apart by model.attention; code revision not recorded." in page[2]
    assert page[2].endswith("Date: trained 2026-12-01.")
    with open(out / "comparison.csv", newline="") as handle:
        assert [(row["backend"], row["runs"]) for row in csv.DictReader(handle)] == [("softmax", "2"), (SECOND, "1")]
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "sweep").glob("comparison.*"))


def test_the_page_names_the_machines_and_code_revisions_the_runs_recorded(tmp_path, fake_run, compare, capsys):
    machine = "AMD EPYC, 2 logical CPUs"
    fake_run(tmp_path / "sweep" / "softmax-seed0", "train.seed=0", start={"machine": machine, "revision": "a" * 12})
    fake_run(tmp_path / "sweep" / "softmax-seed1", "train.seed=1", start={"machine": machine, "revision": "b" * 12})
    fake_run(tmp_path / "sweep" / "softmax-seed2", "train.seed=2")  # predates the start record
    out = tmp_path / "comparison"
    assert compare([str(tmp_path / "sweep"), "--out", str(out)]) == 0
    assert f"trained by 2 code revisions ({'a' * 12}, {'b' * 12})" in capsys.readouterr().err
    line = (out / "comparison.md").read_text().splitlines()[2]
    assert f"; code {'a' * 12}, {'b' * 12}. Machine: {machine}. Date:" in line


def test_the_cli_writes_to_a_new_folder_under_runs_by_default(tmp_path, fake_run, compare, monkeypatch):
    fake_run(tmp_path / "sweep" / "softmax-seed0")
    monkeypatch.chdir(tmp_path)
    assert compare(["sweep"]) == 0
    (written,) = (tmp_path / "runs").iterdir()
    assert written.name.startswith("compare-") and (written / "comparison.md").is_file()


@pytest.mark.parametrize("inside", ["sweep", "sweep/softmax-seed0", "sweep/softmax-seed0/cmp"])
def test_the_cli_never_writes_among_the_runs(tmp_path, fake_run, compare, capsys, inside):
    fake_run(tmp_path / "sweep" / "softmax-seed0")
    assert compare([str(tmp_path / "sweep"), "--out", str(tmp_path / inside)]) == 2
    assert capsys.readouterr().err.startswith(f"cannot compare: --out {tmp_path / inside} is inside ")
    assert not list(tmp_path.rglob("comparison.*"))


@pytest.mark.parametrize("out", ["afile", "afile/cmp"])
def test_an_out_that_is_or_lies_under_a_file_is_refused_before_any_work(tmp_path, fake_run, compare, capsys, out):
    """Checked first: the runs named here do not even exist, and the error is still the one about --out."""
    (tmp_path / "afile").write_text("x\n")
    assert compare([str(tmp_path / "no-such-sweep"), "--out", str(tmp_path / out)]) == 2
    where = "is an existing file" if out == "afile" else f"lies under {tmp_path / 'afile'}, an existing file"
    assert capsys.readouterr().err == (f"cannot compare: --out {tmp_path / out} {where}; give a folder for the table "
                                       "and figure\n")
    assert (tmp_path / "afile").read_text() == "x\n"


def test_a_reused_out_keeps_no_paired_csv_of_an_earlier_comparison(tmp_path, fake_run, compare, capsys):
    fake_run(tmp_path / "first" / "softmax-seed0", "train.seed=0")
    fake_run(tmp_path / "first" / f"{SECOND}-seed0", "train.seed=0", f"model.attention={SECOND}")
    fake_run(tmp_path / "second" / f"{SECOND}-seed0", "train.seed=0", f"model.attention={SECOND}")
    out = tmp_path / "comparison"
    assert compare([str(tmp_path / "first"), "--out", str(out)]) == 0 and (out / "comparison_paired.csv").is_file()
    assert compare([str(tmp_path / "second"), "--out", str(out), "--overwrite"]) == 0  # no softmax row: no pairing
    assert not (out / "comparison_paired.csv").exists()
    assert "Paired with" not in (out / "comparison.md").read_text()


def test_a_comparison_another_command_wrote_is_replaced_only_with_overwrite(tmp_path, fake_run, compare, capsys):
    fake_run(tmp_path / "first" / "softmax-seed0", "train.seed=0")
    fake_run(tmp_path / "second" / "softmax-seed1", "train.seed=1")
    out = ["--out", str(tmp_path / "comparison")]
    assert compare([str(tmp_path / "first"), *out]) == 0
    page = (tmp_path / "comparison" / "comparison.md").read_text()
    assert compare([str(tmp_path / "first"), *out]) == 0  # the command the page records regenerates it
    assert "note: replacing " in capsys.readouterr().err
    assert compare([str(tmp_path / "second"), *out]) == 2
    assert "comparison.md exists, written by `python scripts/compare.py " in capsys.readouterr().err
    assert (tmp_path / "comparison" / "comparison.md").read_text() == page
    assert compare([str(tmp_path / "second"), *out, "--overwrite"]) == 0


def test_a_row_sharing_no_seed_with_the_reference_is_named_as_not_paired(tmp_path, fake_run, compare, capsys):
    fake_run(tmp_path / "sweep" / "softmax-seed0", "train.seed=0")
    fake_run(tmp_path / "sweep" / f"{SECOND}-seed0", "train.seed=0", f"model.attention={SECOND}")
    fake_run(tmp_path / "sweep" / f"{SECOND}-rope-seed5", "train.seed=5", f"model.attention={SECOND}",
             "model.position=rope")
    assert compare([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    reference, lone = "softmax position=learned", f"{SECOND} position=rope"
    assert f"note: '{lone}' shares no seed with '{reference}': not paired" in capsys.readouterr().err
    page = (tmp_path / "out" / "comparison.md").read_text()
    assert f"| {SECOND} position=learned | 1 |" in page  # the paired row
    assert page.endswith(f"\nNot paired (no seed in common with {reference}): {lone}.\n")


def test_a_run_whose_evaluation_diverged_is_refused_by_name(tmp_path, fake_run):
    path = fake_run(tmp_path / "run", losses=(6.0, 5.0))
    lines = (path / "metrics.jsonl").read_text().replace('"val_loss": 6.0', '"val_loss": null')
    (path / "metrics.jsonl").write_text(lines)
    with pytest.raises(ComparisonError, match=r"run diverged: its val_loss at step 10 is not a finite number; leave "
                                              r"it out of the comparison"):
        load_run(path)


def test_the_cli_refuses_the_same_run_twice(tmp_path, fake_run, compare, capsys):
    fake_run(tmp_path / "sweep" / "softmax-seed0", "train.seed=0")
    fake_run(tmp_path / "copy", "train.seed=0")
    assert compare([str(tmp_path / "sweep"), str(tmp_path / "copy"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"cannot compare: {tmp_path / 'sweep' / 'softmax-seed0'} and {tmp_path / 'copy'}"
                                       " are both 'softmax' with seed 0: the same run twice would count as two seeds; "
                                       "leave one of them out\n")
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_runs_on_other_data_with_exit_status_2(tmp_path, fake_run, compare, capsys):
    fake_run(tmp_path / "sweep" / "softmax-seed0")
    fake_run(tmp_path / "short", "data.block_size=16")
    assert compare([str(tmp_path / "sweep"), str(tmp_path / "short"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("cannot compare: runs differ in data.block_size")
    assert not (tmp_path / "out").exists()


def test_the_demo_run_and_a_sweep_run_are_not_pooled_into_one_row(tmp_path, fake_run, compare, capsys):
    """The demo (seed 1337, torch's default threads, evaluations every 10 steps) beside a sweep's run (seed 0, one
    thread, every 5): same backend, but their wall times and evaluations are not the same measurement."""
    fake_run(tmp_path / "demo", "train.threads=0")
    fake_run(tmp_path / "sweep" / "softmax-seed0", "train.seed=0", "train.eval_interval=5", "train.threads=1")
    assert compare([str(tmp_path / "demo"), str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "| softmax eval_interval=10 threads=0 | 1 |" in captured.out
    assert "| softmax eval_interval=5 threads=1 | 1 |" in captured.out
    assert captured.err.startswith("warning: the runs also differ in train.eval_interval, train.threads;")


def test_the_default_reference_pairs_with_the_one_softmax_row_whatever_its_label(tmp_path, fake_run, compare,
                                                                                 capsys):
    """Runs that differ in threads are labelled 'softmax threads=1': softmax still names that one row."""
    for name, threads in (("softmax", 1), (SECOND, 2)):
        fake_run(tmp_path / "sweep" / name, "train.seed=0", f"model.attention={name}", f"train.threads={threads}")
    assert compare([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "## Paired with softmax threads=1, seed by seed" in captured.out
    assert f"| {SECOND} threads=2 | 1 | 0.0000 | 0 of 1 |" in captured.out
    assert (tmp_path / "out" / "comparison_paired.csv").is_file()


def test_an_explicit_reference_that_names_no_row_is_an_error_listing_the_rows(tmp_path, fake_run, compare, capsys):
    fake_run(tmp_path / "sweep" / "1-softmax", "train.seed=0")
    fake_run(tmp_path / "sweep" / "2-second", "train.seed=0", f"model.attention={SECOND}")
    assert compare([str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--reference", "softmax2"]) == 2
    assert capsys.readouterr().err == (f"cannot compare: no row is labelled 'softmax2'; the rows are 'softmax', "
                                       f"'{SECOND}': pass one of them as the reference\n")
    assert not (tmp_path / "out").exists()


def test_without_a_softmax_row_the_default_reference_only_skips_the_paired_table(tmp_path, fake_run, compare,
                                                                                capsys):
    fake_run(tmp_path / "sweep" / f"{SECOND}-seed0", "train.seed=0", f"model.attention={SECOND}")
    assert compare([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "Paired with" not in captured.out
    assert f"note: no paired table: no row is labelled 'softmax'; the rows are '{SECOND}'" in captured.err
    assert not (tmp_path / "out" / "comparison_paired.csv").exists()


def test_a_group_is_labelled_by_every_model_setting_that_sets_it_apart(tmp_path, fake_run, compare, capsys):
    fake_run(tmp_path / "softmax", "train.seed=0")
    fake_run(tmp_path / "taylor-rope-0", "train.seed=0", "model.attention=taylor", "model.position=rope")
    fake_run(tmp_path / "taylor-rope-1", "train.seed=1", "model.attention=taylor", "model.position=rope")
    assert compare([str(tmp_path / name) for name in ("softmax", "taylor-rope-0", "taylor-rope-1")]
                   + ["--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "| taylor position=rope | 2 |" in captured.out and "| softmax position=learned | 1 |" in captured.out
    assert "warning" not in captured.err  # the runs differ only in their model: what a comparison is for
