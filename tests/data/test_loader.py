"""Windows: training batches are a pure function of (seed, index); val windows are fixed and evenly spaced."""

import re

import numpy as np
import pytest
import torch

from data.errors import DataError
from data.loader import TrainWindows, eval_batches, gather_windows, val_windows, windows_fingerprint

TOKENS = np.arange(1000, dtype=np.uint16)  # token k sits at offset k, so a window's first token is its start
META = {"tokenizer": "gpt2", "val_tokens": 1000, "val_sha256": "ab" * 32}


def test_y_is_x_shifted_by_one_token():
    x, y = gather_windows(TOKENS, np.array([5, 990]), 8)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (2, 8)
    assert x[0].tolist() == list(range(5, 13)) and y[0].tolist() == list(range(6, 14))
    assert y[1, -1].item() == 998  # the last window may end at the last token


def test_a_training_batch_depends_only_on_seed_and_index():
    windows = TrainWindows(TOKENS, block_size=16, batch_size=8, seed=1)
    x, y = windows.batch(7)
    again_x, again_y = TrainWindows(TOKENS, block_size=16, batch_size=8, seed=1).batch(7)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    assert not torch.equal(x, windows.batch(8)[0])  # the next micro-batch (or the next rank) differs
    assert not torch.equal(x, TrainWindows(TOKENS, block_size=16, batch_size=8, seed=2).batch(7)[0])
    assert x.shape == (8, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_training_windows_cover_the_whole_file_and_never_run_past_it():
    windows = TrainWindows(TOKENS, block_size=16, batch_size=64, seed=0)
    starts = np.concatenate([windows.starts(i) for i in range(200)])
    assert starts.min() == 0 and starts.max() == 1000 - 17
    x, y = windows.batch(3)
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous runs of the file


def test_val_windows_are_evenly_spaced_from_first_to_last_full_window():
    starts = val_windows(TOKENS, block_size=99, count=10)
    assert starts.tolist() == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    assert val_windows(TOKENS, block_size=99, count=1).tolist() == [0]
    assert val_windows(TOKENS, block_size=998, count=2).tolist() == [0, 1]
    # 900 does not divide by 7: the last window is still the last full one, the rest rounded down between
    assert val_windows(TOKENS, block_size=99, count=8).tolist() == [0, 128, 257, 385, 514, 642, 771, 900]


def test_ids_past_the_vocabulary_are_a_damaged_file_named_with_the_fix(tmp_path):
    """Same-size damage to a prepared token file passes its size check; unchecked, the embedding's index error is a
    traceback on the CPU and a device-side assert on a GPU."""
    path = tmp_path / "train.bin"
    ids = np.arange(1000, dtype=np.uint16)
    ids[500] = 65535
    ids.tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    assert TrainWindows(tokens, 16, 2, seed=0, vocab_size=65536).batch(0)[0].shape == (2, 16)
    with pytest.raises(DataError, match=rf"^token id 65,535 in {re.escape(str(path))} is past the tokenizer's 50,257 "
                                        r"ids: the file is damaged; delete its folder and prepare the data again"):
        list(eval_batches(tokens, np.array([0, 490]), 16, 1, vocab_size=50257))
    assert len(list(eval_batches(tokens, np.array([0, 300]), 16, 1, vocab_size=50257))) == 2  # the damage unread


def test_more_val_windows_than_the_split_holds_are_refused_not_repeated():
    """1,000 tokens hold 2 different windows of 998 + 1: a third would repeat one and count it twice."""
    with pytest.raises(DataError, match=r"^data.eval_windows \(3\) is more than the val split holds: its 1,000 tokens "
                                        r"hold 2 different windows of data.block_size \+ 1 = 999 tokens; lower "
                                        r"data.eval_windows or data.block_size, or prepare more val data"):
        val_windows(TOKENS, block_size=998, count=3)


def test_eval_batches_walk_the_val_windows_in_order():
    starts = val_windows(TOKENS, block_size=10, count=5)
    batches = list(eval_batches(TOKENS, starts, block_size=10, batch_size=2))
    assert [x.shape[0] for x, _ in batches] == [2, 2, 1]
    assert [int(s) for x, _ in batches for s in x[:, 0]] == starts.tolist()


def test_too_short_splits_say_how_many_tokens_a_window_needs():
    with pytest.raises(DataError,
                       match="the val split has 1,000 tokens but one window needs data.block_size \\+ 1 = 1,025"):
        val_windows(TOKENS, block_size=1024, count=4)
    with pytest.raises(DataError, match="the train split has 1,000 tokens"):
        TrainWindows(TOKENS, block_size=1000, batch_size=1, seed=0)


def test_the_windows_fingerprint_changes_with_anything_that_moves_the_windows():
    base = windows_fingerprint(META, 64, 8)
    assert base == windows_fingerprint(dict(META), 64, 8) and len(base) == 16
    assert base != windows_fingerprint(META, 32, 8)
    assert base != windows_fingerprint(META, 64, 9)
    assert base != windows_fingerprint({**META, "val_sha256": "cd" * 32}, 64, 8)
