"""Where and how a run executes: device, autocast dtype, torchrun / DistributedDataParallel, hardware peak."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from model.cpu import cpu_multiplies_bf16

# Dense bf16 tensor-core peaks (FLOP/s) for MFU, by a part of the device name, the first match counting (the PCIe
# and NVL parts before the SXM ones, which the name "H100 80GB HBM3" gives); fp32 uses the TF32 figure on these parts.
_GPU_PEAK_BF16 = {"H200 NVL": 835e12, "H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12,
                  "A10G": 125e12, "L4": 121e12, "4090": 165e12}


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype  # autocast dtype (float32: no autocast)
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


# what the training and generation code runs on; torch also names devices it cannot train on here (meta, xla, hpu)
DEVICE_TYPES = ("cpu", "cuda", "mps")


def device_named(name: str, option: str = "train.device") -> torch.device:
    """The device `name` names, if one of DEVICE_TYPES (whether this machine has it is `pick_device`'s check)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"{option}: {name!r} is not a device (allowed: auto, cpu, cuda, cuda:N, mps)")
    return device


def pick_device(name: str, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """'auto' -> cuda (this process's local rank) if present, else mps, else cpu; otherwise the named device.
    Errors name the setting `option`."""
    if name == "auto":
        if torch.cuda.is_available():
            return _local_rank_gpu(local_rank, f"{option}=auto")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = device_named(name, option)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}=cuda but no CUDA device is visible; use {option}=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option}=mps but this machine has no usable MPS device; use {option}=auto or cpu")
    if device.type == "cuda" and device.index is None:
        return _local_rank_gpu(local_rank, f"{option}={name}")
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"{option}={name} but {count} CUDA device(s) are visible; choose one of cuda:0 to "
                         f"cuda:{count - 1}, or {option}=cuda")
    return device


def _local_rank_gpu(local_rank: int, setting: str) -> torch.device:
    """The GPU of this process's local rank (0 without torchrun)."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"{setting}: local rank {local_rank} has no GPU of its own ({count} visible); run at most "
                         f"{count} processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def pick_dtype(name: str, device: torch.device, option: str = "train.dtype") -> torch.dtype:
    """'auto' -> bfloat16 where the device computes it natively (Ampere and later GPUs, bf16 CPUs), float16 on
    older GPUs, else float32. Errors name the setting `option`."""
    if name == "auto":
        if device.type == "cuda":
            # the default including_emulation=True also says yes on pre-Ampere GPUs, where bf16 is emulated and slow
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            return torch.bfloat16 if native else torch.float16
        if device.type == "cpu" and cpu_multiplies_bf16():
            return torch.bfloat16
        return torch.float32
    dtype = getattr(torch, name)
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError(f"{option}=float16 is not supported on CPU; use bfloat16 or float32")
    return dtype


def start(device_name: str, dtype_name: str) -> Runtime:
    """Join the torchrun process group if launched by torchrun (NCCL on GPU, gloo on CPU), pick device and dtype."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    # torchrun sets LOCAL_WORLD_SIZE; without it, assume every process shares this machine
    if int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) > 1 and device_name.startswith("cuda:"):
        raise ValueError(f"train.device={device_name} under torchrun would put this machine's processes on that one "
                         "GPU; use train.device=cuda or auto (each process takes the GPU of its local rank)")
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        # TF32 for the fp32 GEMMs that autocast leaves in fp32 (the linear attention states, run with autocast off
        # to keep their sums in fp32; fp32 configs): tensor-core speed at a 10-bit mantissa, as the MFU peak assumes
        torch.set_float32_matmul_precision("high")
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, dtype=pick_dtype(dtype_name, device), rank=rank, local_rank=local_rank,
                   world_size=world_size)


# What a collective's error says where the other end of a connection went away (gloo raises a plain RuntimeError,
# the store a DistNetworkError); a DistError says nothing of the kind where this process failed itself
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def peer_lost(exc: BaseException) -> str | None:
    """Where a collective failed because another process of the torchrun job stopped, a short reason (that
    process's own output says why; this one's traceback from inside the collective says nothing more); else None."""
    if isinstance(exc, RuntimeError) and (gone := next((m for m in PEER_GONE if m in str(exc)), None)):
        return f"{'gloo' if type(exc) is RuntimeError else type(exc).__name__}: {gone}"
    return None


def stop(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`. To a GPU through pinned memory, without waiting: a copy from pageable memory
    waits for the host whatever non_blocking says, so the next batch could not be copied while the GPU computes."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on an asynchronous device (CUDA, MPS); the CPU runs each op as it is called."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak FLOP/s for MFU: a table for known GPUs; on CPU the best of a few 2048² matmuls in the training dtype
    (as in docs/benchmarks.md; on a loaded machine this underestimates the peak and so overstates MFU)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in _GPU_PEAK_BF16.items():
            if key in name:
                return flops if dtype != torch.float32 else flops / 2
        return float("nan")
    if device.type != "cpu":
        return float("nan")
    n = 2048
    generator = torch.Generator().manual_seed(0)  # leave the global RNG (dropout) untouched
    a, b = (torch.randn(n, n, generator=generator).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def process_status_mib(field: str) -> float | None:
    """A memory field of Linux's /proc/self/status (VmRSS: resident now; VmHWM: resident peak) in MiB; None where
    there is no such file or field."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated tensor memory on CUDA, the process's maximum resident set size on CPU.

    On Linux the resident peak is VmHWM, which starts afresh at exec; ru_maxrss there carries over the peak of the
    process that forked this one (a benchmark driver that has imported torch, say)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if (peak_mib := process_status_mib("VmHWM")) is not None:
        return peak_mib
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere
