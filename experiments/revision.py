"""A git revision of this repository as a directory of files, for benchmarks that time it beside the working tree."""

from __future__ import annotations

import argparse
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class RevisionError(ValueError):
    """A revision git cannot resolve to a commit of this repository."""


def commit_of(rev: str) -> str:
    """The commit `rev` names (12 hex digits), which a page records: a name such as HEAD moves on, a commit stays."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--short=12", f"{rev}^{{commit}}"], cwd=REPO,
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise RevisionError(f"--baseline-rev {rev!r} is not a commit of {REPO}; give a commit, tag or branch "
                            "(`git log --oneline` lists them)")
    return found.stdout.strip()


def baseline_commit(parser: argparse.ArgumentParser, rev: str) -> str:
    """commit_of(rev) for a script's --baseline-rev, or the parser's one-line error before any work."""
    try:
        return commit_of(rev)
    except RevisionError as exc:
        parser.error(str(exc))


def extract_revision(rev: str, into: Path) -> Path:
    """The tracked files of `rev` (git archive) unpacked under `into`; returns the tree's root."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit_of(rev)], cwd=REPO, capture_output=True,
                             check=True).stdout
    path = into / "baseline.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"
