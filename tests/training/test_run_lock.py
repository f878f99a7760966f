"""training/run_lock.py: one training process per run directory, named when another holds it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.run_lock import LOCK, run_lock
from typedconfig.parsing import ConfigError

HOLD = "import sys, time; from pathlib import Path; from training.run_lock import run_lock\n" \
       "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"


def test_a_second_process_is_refused_naming_the_first_and_the_lock_goes_with_the_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=rf"^{tmp_path / 'run'} is in use by process {holder.pid} \(a train.py "
                                              r"writing there\); wait for it to end, or choose another"):
            with run_lock(tmp_path / "run"):
                pass
    finally:
        holder.kill()  # as kill -9 would: the kernel releases the lock
        holder.wait()
    with run_lock(tmp_path / "run"):  # the file stays, and locks again
        assert (tmp_path / "run" / LOCK).read_text() == str(os.getpid())


def test_the_lock_is_taken_again_once_released_and_a_folder_it_made_for_nothing_goes(tmp_path):
    with run_lock(tmp_path / "new" / "run"):  # makes the folder
        assert (tmp_path / "new" / "run" / LOCK).is_file()
    assert not (tmp_path / "new" / "run").exists()  # a run refused before its first file leaves nothing
    with run_lock(tmp_path / "new" / "run"):
        (tmp_path / "new" / "run" / "config.yaml").write_text("")
    assert sorted(p.name for p in (tmp_path / "new" / "run").iterdir()) == [LOCK, "config.yaml"]


def test_a_process_that_lost_the_race_for_a_new_folder_leaves_the_winners_lock_and_folder(tmp_path, monkeypatch):
    """Both found no folder; the other made it and took the lock first. The refused one must not remove them: a
    third process would then lock a new file of the same name and train beside the winner."""
    run = tmp_path / "run"
    held = []

    def made_by_the_winner(self, *args, **kwargs):  # between this process's look and its lock
        os.mkdir(self)
        fd = os.open(self / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fd)

    monkeypatch.setattr(Path, "mkdir", made_by_the_winner)
    try:
        with pytest.raises(ConfigError, match="is in use by"):
            with run_lock(run):
                pass
        assert [path.name for path in run.iterdir()] == [LOCK]
    finally:
        os.close(held[0])
