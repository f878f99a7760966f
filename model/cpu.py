"""What the CPU multiplies natively, from the feature flags the kernel reports.

oneDNN's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) also says yes on every AVX-512 CPU without the
BF16 instructions (Skylake-SP to Ice Lake), where it emulates bf16 GEMMs slower than fp32; the flags do not.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from model.compiling import assume_constant_result

# x86 AVX512-BF16 and AMX-BF16; Arm's BF16 extension (its "Features" line)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache  # read once per process: the kernels ask on every call
def cpu_flags(cpuinfo: Path) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo's first processor (x86 "flags", Arm "Features"); empty where unreadable."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:  # no /proc: not Linux
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@assume_constant_result  # run eagerly while torch.compile traces a caller, kept as a constant
def cpu_multiplies_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has bf16 matmul instructions and torch has oneDNN to use them; False where the flags cannot
    be read (fp32 is then the safe choice)."""
    return torch.backends.mkldnn.is_available() and bool(cpu_flags(cpuinfo) & BF16_FLAGS)
