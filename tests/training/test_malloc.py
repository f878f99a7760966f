"""training/malloc.py: glibc keeps freed large tensors for reuse, so the large tensors of later steps fault in no
new pages; an environment that sets up malloc itself is left alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.malloc import is_glibc, keep_freed_memory, user_chose_malloc

# Page faults of the last 4 of 10 steps that each allocate, fill and free three large tensors (bf16 logits, their
# fp32 copy, a gradient: 164 MiB in all).
FAULTS = """
import resource, sys, torch
from training.malloc import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory({})
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits = torch.ones(2048, 12000, dtype=torch.bfloat16)
    wide, grad = logits.float(), torch.ones(12000, 512)
    del logits, wide, grad
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[6:]))  # the heap settles within the first steps
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
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                                       check=True, env=env_without_malloc_setup).stdout)
              for mode in ("unchanged", "kept")}
    # glibc maps the freed tensors anew on every step (one fault per page, fewer with transparent huge pages)
    assert faults["unchanged"] > 0
    assert faults["kept"] < faults["unchanged"] / 50
