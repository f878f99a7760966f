"""The check a command makes on its output folder (--out, train.out_dir) before its long work: a file where that
folder, or one of its parents, should be, or a folder it cannot write in, would otherwise stop the command only when
it writes, minutes or hours of work later."""

from __future__ import annotations

import os
from pathlib import Path


class OutFolderError(ValueError):
    """An output folder (--out, train.out_dir) that is, or lies under, an existing file, or that cannot be written."""


def check_out_folder(out: Path, purpose: str, option: str = "--out") -> None:
    """Raise OutFolderError if `out`, or the nearest of its parents that exists, is not a folder this process can
    write in; `purpose` says what the folder is for ('the report'), so that the message says what to give instead,
    and `option` names where the folder was given. A missing `out` under a writable folder passes: the caller makes
    it."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is an existing file" if path == out else f"lies under {path}, an existing file"
                raise OutFolderError(f"{option} {out} {where}; give a folder for {purpose}")
            if not os.access(path, os.W_OK | os.X_OK):  # also false for an immutable folder, even for root
                where = "" if path == out else f" lies under {path}, which"
                raise OutFolderError(f"{option} {out}{where} cannot be written by this user; make it writable, or "
                                     f"give another folder for {purpose}")
            return
