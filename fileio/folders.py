"""The check a command makes on its output folder (--out, train.out_dir) before its long work: a file where that
folder, or one of its parents, should be would otherwise stop the command only when it writes, minutes or hours of
work later."""

from __future__ import annotations

from pathlib import Path


class NotAFolderError(ValueError):
    """An output folder (--out, train.out_dir) that is, or lies under, an existing file."""


def check_out_folder(out: Path, purpose: str, option: str = "--out") -> None:
    """Raise NotAFolderError if `out`, or the nearest of its parents that exists, is not a folder; `purpose` says
    what the folder is for ('the report'), so that the message says what to give instead, and `option` names where
    the folder was given. A missing `out` under a folder passes: the caller makes it."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is an existing file" if path == out else f"lies under {path}, an existing file"
                raise NotAFolderError(f"{option} {out} {where}; give a folder for {purpose}")
            return
