"""glibc's malloc set up for CPU training: large tensors come from the heap, and freed memory stays there for reuse.

glibc serves every allocation above its mmap threshold (32 MiB at most, by its own adjustment) with a fresh mmap
and unmaps it when freed, so the large tensors of each step (the LM head's logits and softmax, the embedding's
gradient) fault in zero-filled pages again on every step. Raising the mmap and trim thresholds keeps those pages in
the process from one step to the next, as jemalloc and tcmalloc do by design. The price is resident memory that
stays at its peak instead of shrinking between steps. What either costs: results/bench_malloc.md.

A glibc that refuses a threshold above 32 MiB (mallopt(3) documents that limit; 2.36 accepts 1 GiB) gets mmap
turned off for allocations instead (M_MMAP_MAX 0, which every release takes), so that the large tensors come from
the heap there too. Either way this holds for the main thread's arena (other threads' arenas map allocations above
64 MiB regardless), and freed space at the heap's top is kept up to the trim threshold, 2 GiB. Left alone: other C
libraries, and processes whose malloc the environment sets up: any of USER_SETTINGS, a glibc.malloc tunable in
GLIBC_TUNABLES, or an allocator (a library named *malloc*) in LD_PRELOAD.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD = 1 << 30  # heap allocations up to 1 GiB: a chunk of GPT-2 logits in fp32 is 0.4 GB
TRIM_THRESHOLD = 2**31 - 1  # the largest its int argument takes: freed memory is kept

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "MALLOC_ARENA_MAX")


def is_glibc() -> bool:
    """Whether this process runs on glibc (its version string is empty or missing elsewhere)."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name
        return False


def user_chose_malloc(environ: dict[str, str]) -> bool:
    """Whether the environment sets up malloc itself (the module docstring lists what counts)."""
    return (any(name in environ for name in USER_SETTINGS) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", "")
            or "malloc" in environ.get("LD_PRELOAD", ""))


def keep_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """Raise glibc's mmap threshold (or turn mmap off where the threshold is refused) and its trim threshold for this
    process (the module docstring says why). Returns whether it did; where it does not (see the module docstring),
    malloc is left as it was."""
    environ = os.environ if environ is None else environ
    if user_chose_malloc(environ) or not is_glibc():
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # the threshold first: a glibc that refuses it returns 0 before anything has changed, and takes the fallback
    heap_only = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(M_MMAP_MAX, 0)
    return bool(heap_only and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def malloc_setting(keep: bool) -> str:
    """The setting a run records: `kept` when asked to keep freed memory and keep_freed_memory did, else
    `unchanged`."""
    return "kept" if keep and keep_freed_memory() else "unchanged"
