"""glibc's malloc set up for CPU training: large tensors come from the heap, and freed memory stays there for reuse.

glibc serves every allocation above its mmap threshold (32 MiB at most, by its own adjustment) with a fresh mmap
and unmaps it when freed, so the large tensors of each step (the LM head's logits, their fp32 copies and
gradients, the embedding's gradient) fault in zero-filled pages again on every step. Raising the mmap and trim
thresholds keeps those pages in the process from one step to the next, as jemalloc and tcmalloc do by design. The
price is resident memory that stays at its peak instead of shrinking between steps. What either costs:
results/bench_malloc.md.

Left alone: other C libraries, and processes whose malloc the user set up (MALLOC_*_ variables, GLIBC_TUNABLES,
an allocator in LD_PRELOAD).
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # heap allocations up to 1 GiB: a chunk of GPT-2 logits in fp32 is 0.4 GB
TRIM_THRESHOLD = 2**31 - 1  # the largest its int argument takes: freed memory is kept

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def user_chose_malloc(environ: dict[str, str]) -> bool:
    """Whether the environment sets up malloc itself (glibc's variables or tunables, or a preloaded allocator)."""
    return (any(name in environ for name in USER_SETTINGS) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", "")
            or "malloc" in environ.get("LD_PRELOAD", ""))


def keep_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (the module docstring says why). Returns whether it
    did: False on other C libraries and where the environment already sets up malloc."""
    environ = os.environ if environ is None else environ
    if user_chose_malloc(environ):
        return False
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name: not glibc
        return False
    if not glibc:
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
