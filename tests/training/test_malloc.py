"""training/malloc.py: glibc keeps freed large tensors for reuse, so the large tensors of later steps fault in no
new pages, also where glibc refuses the raised mmap threshold; an environment that sets up malloc itself is left
alone."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

from training import malloc as malloc_module
from training.malloc import is_glibc, keep_freed_memory, user_chose_malloc

# Page faults of each of 12 steps that allocate, fill and free three large tensors (bf16 logits, their fp32 copy, a
# gradient: 164 MiB in all).
FAULTS = """
import ctypes, resource, sys, torch
from training import malloc
if sys.argv[1] == "refused":  # a glibc that refuses the 1 GiB threshold, as mallopt(3) allows
    class Refusing:
        def __init__(self, libc):
            self.libc = libc
        def mallopt(self, param, value):
            return 0 if param == malloc.M_MMAP_THRESHOLD and value > 32 << 20 else self.libc.mallopt(param, value)
    malloc.ctypes.CDLL = lambda name, _real=ctypes.CDLL: Refusing(_real(name))
if sys.argv[1] != "unchanged":
    assert malloc.keep_freed_memory({})
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits = torch.ones(2048, 12000, dtype=torch.bfloat16)
    wide, grad = logits.float(), torch.ones(12000, 512)
    del logits, wide, grad
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


@pytest.mark.parametrize("environ", [{"MALLOC_TRIM_THRESHOLD_": "0"}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                     {"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
                                     {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},
                                     {"LD_PRELOAD": "libtcmalloc_minimal.so.4"}])
def test_an_environment_that_sets_up_malloc_is_left_alone(environ):
    assert user_chose_malloc(environ)
    assert keep_freed_memory(environ) is False


def test_an_unrelated_environment_is_not_a_malloc_choice():
    assert not user_chose_malloc({"GLIBC_TUNABLES": "glibc.pthread.rseq=0", "LD_PRELOAD": "libfoo.so", "PATH": "/"})


@pytest.mark.skipif(not is_glibc(), reason="glibc's malloc only")
def test_kept_memory_reuses_the_pages_of_freed_large_tensors(env_without_malloc_setup):
    # the median step after the first four: the heap settles within a few steps, though where the kernel places it
    # now and then has a later step grow it once more
    faults = {mode: statistics.median(int(n) for n in subprocess.run(
                  [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                  env=env_without_malloc_setup).stdout.split()[4:])
              for mode in ("unchanged", "kept", "refused")}
    # glibc maps the freed tensors anew on every step (one fault per page, fewer with transparent huge pages)
    assert faults["unchanged"] > 0
    assert faults["kept"] < faults["unchanged"] / 50
    assert faults["refused"] < faults["unchanged"] / 50  # the fallback, mmap turned off, keeps them as well


class FakeLibc:
    """mallopt of a glibc that takes every setting, or refuses the mmap threshold above 32 MiB; records the calls."""

    def __init__(self, refuse_threshold: bool):
        self.refuse_threshold, self.calls = refuse_threshold, []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return int(not (self.refuse_threshold and param == malloc_module.M_MMAP_THRESHOLD and value > 32 << 20))


@pytest.mark.parametrize("refuse_threshold", [False, True])
def test_a_refused_threshold_turns_mmap_off_instead(monkeypatch, refuse_threshold):
    libc = FakeLibc(refuse_threshold)
    monkeypatch.setattr(malloc_module, "is_glibc", lambda: True)
    monkeypatch.setattr(malloc_module.ctypes, "CDLL", lambda name: libc)
    assert keep_freed_memory({}) is True
    expected = [(malloc_module.M_MMAP_THRESHOLD, malloc_module.MMAP_THRESHOLD)]
    expected += [(malloc_module.M_MMAP_MAX, 0)] if refuse_threshold else []
    assert libc.calls == [*expected, (malloc_module.M_TRIM_THRESHOLD, malloc_module.TRIM_THRESHOLD)]
