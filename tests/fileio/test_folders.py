"""An --out folder is checked before long work: a file where it, or a folder above it, should be is refused with a
message that names the file and what the folder is for."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from fileio.folders import OutFolderError, check_out_folder


def test_a_new_or_existing_folder_passes(tmp_path):
    (tmp_path / "there").mkdir()
    for out in (tmp_path / "there", tmp_path / "new", tmp_path / "there" / "new" / "deeper"):
        check_out_folder(out, "the report")


def test_a_file_is_refused_with_what_the_folder_is_for(tmp_path):
    (tmp_path / "afile").write_text("x\n")
    with pytest.raises(OutFolderError) as caught:
        check_out_folder(tmp_path / "afile", "the report")
    assert str(caught.value) == f"--out {tmp_path / 'afile'} is an existing file; give a folder for the report"


@pytest.mark.parametrize("below", ["out", "a/b/out"])
def test_a_folder_under_a_file_is_refused_naming_the_file(tmp_path, below):
    (tmp_path / "afile").write_text("x\n")
    out = tmp_path / "afile" / below
    with pytest.raises(OutFolderError) as caught:
        check_out_folder(out, "the export")
    assert str(caught.value) == (f"--out {out} lies under {tmp_path / 'afile'}, an existing file; "
                                 "give a folder for the export")


def test_the_refusal_is_a_value_error_so_callers_that_catch_bad_arguments_catch_it(tmp_path):
    (tmp_path / "afile").write_text("x\n")
    with pytest.raises(ValueError):
        check_out_folder(tmp_path / "afile", "the run")


@contextmanager
def unwritable(folder: Path):
    """`folder` made one this process cannot write in: read-only, or, for root (whom permissions do not stop),
    immutable; skips the test where neither works."""
    folder.chmod(0o555)
    immutable = os.access(folder, os.W_OK) and subprocess.run(["chattr", "+i", str(folder)],
                                                              capture_output=True).returncode == 0
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("no way to make a folder unwritable for this user here")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("below", ["", "run/deeper"])
def test_a_folder_that_cannot_be_written_is_refused(tmp_path, below):
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / below if below else locked
    with unwritable(locked), pytest.raises(OutFolderError) as caught:
        check_out_folder(out, "the report")
    where = "" if not below else f" lies under {locked}, which"
    assert str(caught.value) == (f"--out {out}{where} cannot be written by this user; make it writable, or give "
                                 "another folder for the report")
