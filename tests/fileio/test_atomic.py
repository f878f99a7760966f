"""A reader of a file written atomically sees the old contents or the new ones, and no temporary file stays."""

from __future__ import annotations

import pytest

from fileio import atomic
from fileio.atomic import save_figure_atomic, write_atomic, write_text_atomic


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


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_one(tmp_path):
    """A full disk or a failing writer (savefig, csv) must not leave a truncated page or picture behind."""
    path = tmp_path / "page.csv"
    write_text_atomic(path, "old\n")

    def partial(tmp):
        tmp.write_text("new, cut sh")
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, partial)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["page.csv"]


def test_a_figure_is_saved_atomically_in_its_suffixs_format(tmp_path):
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    save_figure_atomic(figure, tmp_path / "curve.png", dpi=50)
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
