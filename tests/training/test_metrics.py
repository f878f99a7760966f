"""metrics.jsonl is the run's record: one JSON object per log call, appended, read back in order; wandb only mirrors
it, under one run id per run directory so that a resumed run continues its wandb run."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

from training.config import LoggingConfig
from training.metrics import METRICS_FILE, WANDB_ID_FILE, MetricsError, MetricsLog, read_metrics
from typedconfig.parsing import ConfigError


def test_a_run_without_metrics_yet_reads_as_empty(tmp_path):
    assert read_metrics(tmp_path) == []


def test_each_call_appends_one_record_with_its_step_and_time(tmp_path, monkeypatch):
    monkeypatch.setattr("training.metrics.time.time", lambda: 1796083200.0)
    log = MetricsLog(tmp_path, LoggingConfig(), config={}, fresh=True, say=print)
    log.log(10, train_loss=6.5, lr=1e-3)
    log.log(10, val_loss=6.0, val_windows="f" * 16)
    log.close()
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 10, "time": 1796083200.0, "train_loss": 6.5, "lr": 1e-3},
        {"step": 10, "time": 1796083200.0, "val_loss": 6.0, "val_windows": "f" * 16},
    ]
    assert log.wandb_run is None and not (tmp_path / WANDB_ID_FILE).exists()  # wandb off: nothing but the file


def test_records_read_back_in_order_with_repeated_steps_and_blank_lines(tmp_path):
    """A resumed run writes steps again after the ones it already logged; readers pick what they need."""
    records = [{"step": 20, "val_loss": 5.0}, {"step": 10, "train_loss": 6.0}, {"step": 20, "val_loss": 4.5}]
    (tmp_path / METRICS_FILE).write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_metrics(tmp_path) == records
    MetricsLog(tmp_path, LoggingConfig(), config={}, fresh=False, say=print).log(30, train_loss=4.0)
    assert read_metrics(tmp_path)[:3] == records and read_metrics(tmp_path)[3]["step"] == 30


def test_a_record_cut_short_is_left_out_and_removed_before_a_resumed_run_appends(tmp_path):
    """A kill during a write leaves a last line without its newline: readers skip it, and the next run's log starts
    its records on a line of their own instead of gluing the first onto it."""
    whole = json.dumps({"step": 1, "train_loss": 6.0}) + "\n"
    (tmp_path / METRICS_FILE).write_text(whole + '{"step": 2, "train_lo')
    assert read_metrics(tmp_path) == [{"step": 1, "train_loss": 6.0}]
    said = []
    MetricsLog(tmp_path, LoggingConfig(), config={}, fresh=False, say=said.append).log(2, train_loss=5.0)
    assert [(r["step"], r["train_loss"]) for r in read_metrics(tmp_path)] == [(1, 6.0), (2, 5.0)]
    assert said == [f"warning: {tmp_path / METRICS_FILE} ended in a record cut short (a killed write); removed it"]


def test_a_whole_last_record_without_its_newline_is_kept_and_ended(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\n{"step": 2}')  # a hand-edited file
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    MetricsLog(tmp_path, LoggingConfig(), config={}, fresh=False, say=print).log(3, train_loss=5.0)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("line", ['{"step": 2, "train_lo', "[1, 2]", "null"])
def test_a_damaged_line_before_the_last_is_named_with_the_fix(tmp_path, line):
    (tmp_path / METRICS_FILE).write_text(f'{{"step": 1}}\n{line}\n{{"step": 3}}\n')
    with pytest.raises(MetricsError, match=rf"{METRICS_FILE}, line 2: not a JSON record .*; delete that line"):
        read_metrics(tmp_path)


def test_bytes_that_are_not_utf8_are_named_by_line_with_the_fix(tmp_path):
    (tmp_path / METRICS_FILE).write_bytes(b'{"step": 1}\n{"step": 2}\n\xff\xfe\n')
    with pytest.raises(MetricsError, match=rf"{METRICS_FILE}, line 3: not UTF-8 text \(byte 0xff\); delete that "
                                           "line, or every line from it on"):
        read_metrics(tmp_path)


def test_a_fresh_run_replaces_the_records_of_a_run_that_saved_no_checkpoint(tmp_path):
    (tmp_path / METRICS_FILE).write_text(json.dumps({"step": 5, "train_loss": 9.0}) + "\n")
    said = []
    MetricsLog(tmp_path, LoggingConfig(), config={}, fresh=True, say=said.append).log(1, train_loss=7.0)
    assert [record["step"] for record in read_metrics(tmp_path)] == [1]
    assert said == [f"warning: {tmp_path / METRICS_FILE} holds records of an earlier run that saved no checkpoint; "
                    "this fresh run replaces them"]


def test_a_non_finite_number_is_written_as_null_which_strict_json_parsers_read(tmp_path):
    MetricsLog(tmp_path, LoggingConfig(), config={}, fresh=True, say=print).log(
        3, val_loss=float("nan"), val_ppl=float("inf"), train_loss=2.5)
    line = (tmp_path / METRICS_FILE).read_text()
    assert "NaN" not in line and "Infinity" not in line
    record = json.loads(line, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    assert (record["val_loss"], record["val_ppl"], record["train_loss"]) == (None, None, 2.5)
    (read,) = read_metrics(tmp_path)  # read back as the numbers they were, for the tools that compare runs
    assert math.isnan(read["val_loss"]) and math.isnan(read["val_ppl"]) and read["train_loss"] == 2.5


class FakeWandbError(Exception):
    """Stands for wandb.errors.Error, the base of what wandb.init raises (UsageError without a login)."""


def fake_wandb(monkeypatch, refuse: str | None = None) -> list:
    """wandb replaced by a recorder of the calls MetricsLog makes (init, define_metric, log, finish); with `refuse`,
    init raises wandb's error with that message."""
    calls = []

    class FakeRun:
        def define_metric(self, name, **options):
            calls.append(("define_metric", name, options))

        def log(self, values, **options):
            calls.append(("log", values, options))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        if refuse:
            raise FakeWandbError(refuse)
        return FakeRun()

    errors = types.SimpleNamespace(Error=FakeWandbError)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, errors=errors))
    return calls


def test_wandb_mirrors_the_numbers_under_one_run_id_per_run_directory(tmp_path, monkeypatch):
    calls = fake_wandb(monkeypatch)
    cfg = LoggingConfig(wandb="offline", wandb_group="sweep", wandb_tags=["taylor"])
    first = MetricsLog(tmp_path, cfg, config={"model": {"attention": "taylor"}}, fresh=True, say=print)
    first.log(5, train_loss=6.0, note="text is not mirrored")
    first.close()
    assert read_metrics(tmp_path)[0]["note"] == "text is not mirrored"
    MetricsLog(tmp_path, cfg, config={}, fresh=False, say=print).close()  # resumed: the same wandb run
    MetricsLog(tmp_path / "new", cfg, config={}, fresh=True, say=print).close()  # its folder made for the id file
    MetricsLog(tmp_path, cfg, config={}, fresh=True, say=print).close()  # a new run in the folder: a new wandb run
    (_, started), (_, resumed), _, (_, restarted) = [call for call in calls if call[0] == "init"]
    assert started["id"] == resumed["id"] != restarted["id"] == (tmp_path / WANDB_ID_FILE).read_text()
    assert (started["mode"], started["group"], started["tags"], started["name"]) == ("offline", "sweep",
                                                                                      ["taylor"], tmp_path.name)
    assert ("log", {"step": 5, "train_loss": 6.0}, {}) in calls and ("finish",) in calls


def test_wandb_keeps_the_steps_a_run_resumed_from_an_earlier_checkpoint_logs_again(tmp_path, monkeypatch):
    """wandb drops a record whose step= is not above the run's last; the step is a metric every chart is plotted
    against instead, so the records of steps 5 and 10 logged again after a resume from step 0 are kept."""
    calls = fake_wandb(monkeypatch)
    cfg = LoggingConfig(wandb="offline")
    for loss in (6.0, 5.0):  # the run, then its resume from the start
        log = MetricsLog(tmp_path, cfg, config={}, fresh=False, say=print)
        log.log(5, train_loss=loss)
        log.log(10, val_loss=loss - 0.5)
        log.close()
    assert [call[1:] for call in calls if call[0] == "define_metric"] == [
        ("step", {}), ("*", {"step_metric": "step"})] * 2
    assert [call[1:] for call in calls if call[0] == "log"] == [
        ({"step": 5, "train_loss": 6.0}, {}), ({"step": 10, "val_loss": 5.5}, {}),
        ({"step": 5, "train_loss": 5.0}, {}), ({"step": 10, "val_loss": 4.5}, {})]


def test_wandb_that_cannot_start_is_a_config_error_naming_the_fixes(tmp_path, monkeypatch):
    fake_wandb(monkeypatch, refuse="No API key configured. Use `wandb login` to log in.")
    with pytest.raises(ConfigError) as caught:
        MetricsLog(tmp_path, LoggingConfig(wandb="online"), config={}, fresh=True, say=print)
    assert str(caught.value) == (
        "logging.wandb=online: wandb could not start (No API key configured. Use `wandb login` to log in.); run "
        "`wandb login` or set WANDB_API_KEY, or set logging.wandb=offline (sync later) or off")
