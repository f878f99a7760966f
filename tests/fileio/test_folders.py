"""An --out folder is checked before long work: a file where it, or a folder above it, should be is refused with a
message that names the file and what the folder is for."""

from __future__ import annotations

import pytest

from fileio.folders import NotAFolderError, check_out_folder


def test_a_new_or_existing_folder_passes(tmp_path):
    (tmp_path / "there").mkdir()
    for out in (tmp_path / "there", tmp_path / "new", tmp_path / "there" / "new" / "deeper"):
        check_out_folder(out, "the report")


def test_a_file_is_refused_with_what_the_folder_is_for(tmp_path):
    (tmp_path / "afile").write_text("x\n")
    with pytest.raises(NotAFolderError) as caught:
        check_out_folder(tmp_path / "afile", "the report")
    assert str(caught.value) == f"--out {tmp_path / 'afile'} is an existing file; give a folder for the report"


@pytest.mark.parametrize("below", ["out", "a/b/out"])
def test_a_folder_under_a_file_is_refused_naming_the_file(tmp_path, below):
    (tmp_path / "afile").write_text("x\n")
    out = tmp_path / "afile" / below
    with pytest.raises(NotAFolderError) as caught:
        check_out_folder(out, "the export")
    assert str(caught.value) == (f"--out {out} lies under {tmp_path / 'afile'}, an existing file; "
                                 "give a folder for the export")


def test_the_refusal_is_a_value_error_so_callers_that_catch_bad_arguments_catch_it(tmp_path):
    (tmp_path / "afile").write_text("x\n")
    with pytest.raises(ValueError):
        check_out_folder(tmp_path / "afile", "the run")
