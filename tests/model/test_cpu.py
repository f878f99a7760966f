"""model/cpu.py: bf16 counts as native only where the CPU's flags name bf16 instructions."""

from __future__ import annotations

import pytest
import torch

from model.cpu import cpu_flags, cpu_multiplies_bf16

SKYLAKE_SP = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (SKYLAKE_SP, False),  # AVX-512 without its BF16 instructions: oneDNN would emulate bf16
        (SKYLAKE_SP.replace("avx512_vnni", "avx512_vnni avx512_bf16"), True),  # Zen 4, Cooper Lake
        (SKYLAKE_SP.replace("avx512_vnni", "amx_bf16 amx_tile"), True),  # Sapphire Rapids
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm with the BF16 extension
        ("processor\t: 0\nFeatures\t: fp asimd\n", False),
    ],
)
def test_bf16_is_native_only_with_bf16_instructions(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_multiplies_bf16(path) == (native and torch.backends.mkldnn.is_available())


def test_without_a_readable_cpuinfo_no_flags_and_fp32(tmp_path):
    assert cpu_flags(tmp_path / "missing") == set()
    assert not cpu_multiplies_bf16(tmp_path / "missing")


def test_only_the_first_processors_flags_are_read(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(SKYLAKE_SP + "\n" + SKYLAKE_SP.replace("avx2", "other"))
    assert "avx2" in cpu_flags(path) and "other" not in cpu_flags(path)
