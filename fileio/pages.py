"""The opening of every generated results page: a heading, then one line that says what was measured, the command,
the config, the machine and the date, so that a page read on its own says what it is; `recorded_command`, which
reads the command back; `check_replace`, which keeps a run from replacing another command's page (`replacing`: again
while writing, under a lock); and `write_page`, which writes a page and the CSV of its numbers side by side."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from fileio.atomic import write_text_atomic
from fileio.tables import csv_text

REPO = Path(__file__).resolve().parents[1]


def opening(title: str, measured: str, command: str, config: str, machine: str, when: str) -> str:
    """`# title`, a blank line, the one-line description and a blank line."""
    return (f"# {title}\n\nMeasured: {measured}. Command: `{command}`. Config: {config}. Machine: {machine}. "
            f"Date: {when}.\n\n")


def recorded_command(page: str) -> str | None:
    """The command in the opening line of `page` (a page's text), or None where it has no such line: a script that
    would replace a page compares it with its own command line."""
    match = re.search(r"^Measured: .*?\. Command: `(.*?)`\. Config: ", page, re.MULTILINE)
    return match.group(1) if match else None


def check_replace(files: Sequence[Path], command: str, overwrite: bool, elsewhere: str) -> str:
    """Before any work: raise ValueError if writing `files` (a results page first, then the files beside it) would
    replace existing ones that another command wrote, unless `overwrite`: a trial run must not silently replace
    committed results. Running the very command the page records regenerates it, as its opening line promises.
    `elsewhere` says where else to write. Returns a note naming what will be replaced and why that is allowed, or ''
    where none of `files` exists."""
    existing = [path for path in files if path.exists()]
    if not existing:
        return ""
    page = files[0]
    recorded = recorded_command(page.read_text(errors="replace")) if page.is_file() else None  # ours are UTF-8
    if not overwrite and recorded != command:
        wrote = f"written by `{recorded}`" if recorded else "with no recorded command"
        raise ValueError(f"{existing[0]} exists, {wrote}; this would replace it: {elsewhere}, or --overwrite to "
                         "replace it")
    return (f"note: replacing {', '.join(map(str, existing))} "
            f"({'--overwrite' if recorded != command else 'the command that page records'})")


@contextlib.contextmanager
def replacing(files: Sequence[Path], command: str, overwrite: bool, elsewhere: str) -> Iterator[None]:
    """While the block writes `files`: an exclusive lock on their folder (the folder itself, opened, so that no lock
    file joins the outputs) and check_replace once more under it. Two commands that both passed the check before
    either wrote are told apart here: the second waits for the first, then finds its page and is refused."""
    folder = Path(files[0]).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        check_replace(files, command, overwrite, elsewhere)
        yield
    finally:
        os.close(fd)  # releases the lock


PAGE_SUFFIXES = (".md", ".csv", ".png")  # the files of a results page


def page_file(out: str | Path, suffix: str) -> Path:
    """The file of the results page `out` with `suffix` (one of PAGE_SUFFIXES): appended to the name, since
    with_suffix would eat a dotted name's tail (init-0.1 -> init-0.md); a name already ending in one of them is
    taken without it."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix in PAGE_SUFFIXES else out
    return base.with_name(base.name + suffix)


def write_page(out: str | Path, records: Iterable[dict[str, Any]], *, title: str, measured: str, command: str,
               config: str, body: str) -> None:
    """A results page and its data: `out`.md (the opening, on this machine today, then `body`) and `out`.csv
    (`records`), the folder made if need be."""
    page = opening(title, measured, command, config, this_machine(), today())
    write_page_files(out, page + body + "\n", records)


def write_page_files(out: str | Path, page: str, records: Iterable[dict[str, Any]]) -> None:
    """`out`.md (the page as given) and `out`.csv (`records`), each written atomically, the folder made if need
    be."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(page_file(out, ".csv"), csv_text(records))
    write_text_atomic(page_file(out, ".md"), page)


def command_line(script: str | Path, argv: Sequence[str] | None = None) -> str:
    """`python scripts/x.py ARGS` as typed from the repository root; `argv` defaults to this process's arguments."""
    path = Path(script).resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return shlex.join(["python", str(shown), *(sys.argv[1:] if argv is None else argv)])


def this_machine() -> str:
    """The CPU model as lscpu names it (the model name of /proc/cpuinfo) and the logical CPUs the OS reports."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.partition(":")[2].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} logical CPUs"


def code_revision(repo: Path = REPO) -> str:
    """The git commit of the checkout at `repo` (12 hex digits), with `+dirty` when tracked files outside results/
    differ from it; 'not a git checkout' for an installed copy. Runs record it because any change to the code can move
    a seed's loss; the results pages are records (a benchmark rewrites its own), not code."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout
    try:
        commit = git("rev-parse", "--short=12", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results").strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{commit}+dirty" if dirty else commit


def load_since(start: float) -> str:
    """'load average S at the start, E at the end' for a benchmark that read os.getloadavg()[0] = S when it started:
    other processes slow a timing, and a page says how busy its machine was."""
    return f"load average {start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"


def today() -> str:
    return date.today().isoformat()
