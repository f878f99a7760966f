"""A reader of a file written atomically sees the old contents or the new ones, and no temporary file stays."""

from __future__ import annotations

import pytest

from fileio import atomic
from fileio.atomic import write_text_atomic


def test_the_new_text_replaces_the_old_and_nothing_else_is_left(tmp_path):
    path = tmp_path / "latest"
    write_text_atomic(path, "step_000001")
    write_text_atomic(path, "step_000002")
    assert path.read_text() == "step_000002"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    path.write_text("old")

    def failing_fsync(_):
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "fsync_file", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]
