"""Crash-safe file writes shared by data preparation, checkpoints and reports: a reader sees the old file or the
new one, never a partial write."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_file(path: Path) -> None:
    """Flush `path`'s contents to disk (before a rename makes them visible)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Have `write` write a temporary file beside `path`, flush it to disk, then rename it over `path`: a reader sees
    the old file or the new one, never part of one (a full disk or a kill leaves the old one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (`write_atomic`)."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def save_figure_atomic(figure: Any, path: Path, dpi: int) -> None:
    """A matplotlib figure saved to `path` atomically (`write_atomic`), in the format its suffix names."""
    write_atomic(path, lambda tmp: figure.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=dpi))


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (the writer of a temporary file named after it)."""
    try:
        os.kill(pid, 0)  # signal 0 checks only that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True
