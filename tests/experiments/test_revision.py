"""experiments.revision: a baseline revision resolved to the commit a page records, and unpacked as files."""

import subprocess

import pytest

from experiments.revision import REPO, RevisionError, commit_of, extract_revision


def test_commit_of_names_the_commit_a_moving_name_stands_at():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    assert commit_of("HEAD") == head.stdout.strip()[:12]
    assert commit_of(head.stdout.strip()) == commit_of("HEAD")


@pytest.mark.parametrize("rev", ["no-such-rev", "HEAD:README.md", ""])
def test_commit_of_refuses_what_is_not_a_commit(rev):
    with pytest.raises(RevisionError, match="is not a commit of"):
        commit_of(rev)


def test_extract_revision_unpacks_the_tracked_files(tmp_path):
    tree = extract_revision("HEAD", tmp_path)
    assert (tree / "README.md").read_bytes() == subprocess.run(
        ["git", "show", "HEAD:README.md"], cwd=REPO, capture_output=True, check=True).stdout
