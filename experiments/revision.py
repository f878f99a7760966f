"""A git revision of this repository as a directory of files, for benchmarks that time it beside the working tree."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extract_revision(rev: str, into: Path) -> Path:
    """The tracked files of `rev` (git archive) unpacked under `into`; returns the tree's root."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, capture_output=True, check=True).stdout
    path = into / "baseline.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"
