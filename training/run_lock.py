"""One training process at a time per run directory: two runs sharing a train.out_dir would replace each other's
checkpoints and mix their records in one metrics.jsonl.

The lock is an exclusive flock on `<out_dir>/.lock`, which holds the PID of the process that has it. The kernel
releases it when that process exits, however it exits (kill -9 included), so a stale file never blocks a run; the
file itself stays, since removing it could let two later runs lock two different files of the same name; only a
directory the lock made for a run that then wrote nothing is removed again, lock file included.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from typedconfig.parsing import ConfigError

LOCK = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock while the block runs (making the directory if need be, and removing it again
    if the block wrote nothing there); ConfigError, naming the process that holds it, where another process does."""
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise ConfigError(
                f"{run_dir} is in use by {f'process {holder}' if holder else 'another process'} (a train.py writing "
                "there); wait for it to end, or choose another train.out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        # a run refused before its first file; only by the process holding the lock: a process refused after
        # finding no folder lost a race to one that made it, whose lock and folder these are
        if locked and made and [path.name for path in run_dir.iterdir()] == [LOCK]:
            (run_dir / LOCK).unlink()
            run_dir.rmdir()
        os.close(fd)  # releases the lock
