"""Every generated results page opens with a heading and one line: what, command, config, machine, date."""

from __future__ import annotations

import csv
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fileio.pages import (REPO, check_replace, code_revision, command_line, opening, page_file, recorded_command,
                          replacing, this_machine, today, write_page)


def test_the_opening_is_a_heading_and_one_line():
    text = opening("Decode benchmark", "latency per token", "python scripts/bench_decode.py", "fp32, 1 thread",
                   "AMD EPYC, 2 logical CPUs", "2026-12-02")
    assert text == ("# Decode benchmark\n\nMeasured: latency per token. Command: `python scripts/bench_decode.py`. "
                    "Config: fp32, 1 thread. Machine: AMD EPYC, 2 logical CPUs. Date: 2026-12-02.\n\n")


@pytest.mark.parametrize("command", [
    "python scripts/recall_grid.py configs/mqar-cpu.yaml --seeds 3",
    "python scripts/x.py --title 'a `quoted` word. Command: `not this`'",  # backticks and the field name inside
    "",
])
def test_the_recorded_command_reads_back_what_the_opening_wrote(command):
    page = opening("T", "time of `x` per token", command, "`cfg`. Config: z", "a CPU", "2026-12-02") + "| a |\n"
    assert recorded_command(page) == command


def test_a_page_without_an_opening_line_records_no_command():
    assert recorded_command("# A page\n\nCommand: `python x.py` in the body.\n") is None
    assert recorded_command("") is None


def test_a_page_and_its_csv_are_written_side_by_side_in_a_new_folder(tmp_path):
    out = tmp_path / "new" / "bench_x"
    write_page(out, [{"n": 1, "s": 0.5}, {"n": 2, "s": 0.25}], title="X", measured="seconds of x",
               command="python scripts/bench_x.py", config="tiny", body="| a |\n|---|\n| 1 |")
    page = (tmp_path / "new" / "bench_x.md").read_text()
    assert page == opening("X", "seconds of x", "python scripts/bench_x.py", "tiny", this_machine(), today()) + (
        "| a |\n|---|\n| 1 |\n")
    with open(tmp_path / "new" / "bench_x.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{"n": "1", "s": "0.5"}, {"n": "2", "s": "0.25"}]


def test_a_page_rewritten_on_a_full_disk_keeps_its_old_files_whole(tmp_path, monkeypatch):
    """The CSV and the page go through temporary files: a failure leaves the earlier ones, never a cut CSV."""
    out = tmp_path / "bench_x"
    write_page(out, [{"n": 1}], title="X", measured="x", command="python x.py", config="old", body="old")
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    real_write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_page(out, [{"n": i} for i in range(100)], title="X", measured="x", command="python x.py",
                   config="new", body="new")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_two_commands_that_passed_the_check_before_either_wrote_are_told_apart_while_writing(tmp_path):
    """The first to write takes the folder's lock; the second waits, then finds the first's page and is refused."""
    files = [tmp_path / "out" / "page.md", tmp_path / "out" / "page.csv"]
    assert check_replace(files, "python a.py", False, "elsewhere") == ""  # both looked: nothing there yet
    assert check_replace(files, "python b.py", False, "elsewhere") == ""
    entered = threading.Event()

    def first() -> None:
        with replacing(files, "python a.py", False, "elsewhere"):
            entered.set()
            time.sleep(0.3)
            files[0].write_text(opening("A", "a", "python a.py", "c", "m", "d"))

    writer = threading.Thread(target=first)
    writer.start()
    entered.wait()
    with pytest.raises(ValueError, match=r"page.md exists, written by `python a.py`; this would replace it: "
                                         r"elsewhere, or --overwrite"):
        with replacing(files, "python b.py", False, "elsewhere"):
            pytest.fail("the second command wrote")
    writer.join()
    with replacing(files, "python a.py", False, "elsewhere"):  # the command the page records regenerates it
        pass


def test_the_command_is_shown_as_typed_from_the_repository_root():
    script = REPO / "scripts" / "compare.py"
    assert command_line(script, ["runs/a b", "--out", "x"]) == "python scripts/compare.py 'runs/a b' --out x"
    assert command_line(Path("/elsewhere/tool.py"), []) == "python /elsewhere/tool.py"


def test_the_machine_names_a_cpu_and_counts_its_logical_cpus():
    model, _, count = this_machine().rpartition(", ")
    assert model and count.endswith(" logical CPUs") and int(count.split()[0]) >= 1


def test_the_code_revision_is_the_commit_marked_dirty_by_uncommitted_changes(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)
    assert code_revision(tmp_path) == "not a git checkout"
    git("init", "-q")
    (tmp_path / "train.py").write_text("a\n")
    page = tmp_path / "results" / "a_page.md"  # a page of the checkout's own results folder
    page.parent.mkdir()
    page.write_text("# a page\n")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    clean = code_revision(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{12}", clean)
    (tmp_path / "notes.txt").write_text("untracked files do not change what runs\n")
    page.write_text("# the page a benchmark rewrote\n")
    assert code_revision(tmp_path) == clean
    (tmp_path / "train.py").write_text("b\n")
    assert code_revision(tmp_path) == f"{clean}+dirty"


@pytest.mark.parametrize("out, expected", [("runs/init-0.1", "runs/init-0.1.md"), ("runs/page", "runs/page.md"),
                                           ("runs/page.md", "runs/page.md"), ("runs/page.csv", "runs/page.md")])
def test_a_pages_files_append_their_suffix_to_a_dotted_name(out, expected):
    assert page_file(out, ".md") == Path(expected)  # with_suffix gave runs/init-0.md


def test_a_page_that_is_not_utf8_has_no_recorded_command(tmp_path):
    page = tmp_path / "page.md"
    page.write_bytes(b"\xff\xfe not ours")
    with pytest.raises(ValueError, match="page.md exists, with no recorded command"):
        check_replace([page], "python scripts/x.py", False, "elsewhere")
