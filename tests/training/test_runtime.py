"""Device and dtype choice, autocast, and the CPU peak used for MFU."""

import math
import mmap
import sys
from pathlib import Path

import pytest
import torch

from training import runtime as rt


def test_device_names_are_checked():
    assert rt.pick_device("cpu") == torch.device("cpu")
    for name in ("gpu0", "meta", "xla", "hpu"):  # the last three torch names, but nothing here runs on them
        with pytest.raises(ValueError, match=rf"^--device: '{name}' is not a device \(allowed: auto, cpu, cuda"):
            rt.pick_device(name, option="--device")
    if not torch.cuda.is_available():
        assert rt.pick_device("auto") == torch.device("cpu") or rt.pick_device("auto").type == "mps"
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            rt.pick_device("cuda")


def test_a_gpu_index_must_be_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rt.pick_device("cuda:1") == torch.device("cuda", 1)
    assert rt.pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"train.device=cuda:2 but 2 CUDA device\(s\) are visible; choose one of "
                                         r"cuda:0 to cuda:1, or train.device=cuda$"):
        rt.pick_device("cuda:2")
    for name in ("auto", "cuda"):
        with pytest.raises(ValueError, match=rf"train.device={name}: local rank 3 has no GPU of its own \(2 visible\)"
                                             r"; run at most 2 processes per node"):
            rt.pick_device(name, local_rank=3)


def test_mps_must_be_available(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="train.device=mps but this machine has no usable MPS device"):
        rt.pick_device("mps")


def test_torchrun_refuses_one_gpu_index_for_the_processes_of_one_machine(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="train.device=cuda:0 under torchrun would put this machine's processes on"):
        rt.start("cuda:0", "auto")  # no LOCAL_WORLD_SIZE: every process may be on this machine
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process per node (torchrun --nnodes=2 --nproc_per_node=1)

    def reached(name, local_rank):
        raise LookupError(name)

    monkeypatch.setattr(rt, "pick_device", reached)
    with pytest.raises(LookupError, match="cuda:0"):  # past the check, on to choosing the device
        rt.start("cuda:0", "auto")


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_dtypes_follow_the_hardware(monkeypatch, native_bf16, expected):
    cpu = torch.device("cpu")
    monkeypatch.setattr(rt, "cpu_multiplies_bf16", lambda: native_bf16)
    assert rt.pick_dtype("auto", cpu) == expected
    assert rt.pick_dtype("float32", cpu) == torch.float32
    with pytest.raises(ValueError, match="float16 is not supported on CPU"):
        rt.pick_dtype("float16", cpu, option="--dtype")


def test_autocast_is_off_in_float32_and_on_in_bfloat16():
    x = torch.randn(4, 4)
    with rt.Runtime(torch.device("cpu"), torch.float32).autocast():
        assert (x @ x).dtype == torch.float32
    with rt.Runtime(torch.device("cpu"), torch.bfloat16).autocast():
        assert (x @ x).dtype == torch.bfloat16


def test_a_single_process_runtime():
    runtime = rt.start("cpu", "float32")
    assert (runtime.rank, runtime.world_size, runtime.distributed, runtime.is_main) == (0, 1, False, True)
    rt.barrier(runtime)  # a no-op without a process group
    rt.stop(runtime)


def test_the_cpu_peak_is_a_plausible_flop_rate_and_leaves_the_rng_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    peak = rt.peak_flops(torch.device("cpu"), torch.float32)
    assert torch.equal(torch.get_rng_state(), before)
    assert 1e9 < peak < 1e14  # between 1 GFLOP/s and 100 TFLOP/s on any CPU
    assert rt.peak_memory_mb(torch.device("cpu")) > 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's")
def test_status_fields_follow_a_new_allocation():
    """VmRSS grows by 64 MiB of fresh pages written to and VmHWM (the peak) with it; an unknown field is None."""
    size = 64 * 2**20
    before = rt.process_status_mib("VmRSS")
    with mmap.mmap(-1, size) as pages:  # its own mapping: not heap memory an earlier test freed and malloc kept
        for offset in range(0, size, mmap.PAGESIZE):
            pages[offset] = 1
        after = rt.process_status_mib("VmRSS")
        assert after - before > 60
        assert rt.process_status_mib("VmHWM") >= after
    assert rt.peak_memory_mb(torch.device("cpu")) == rt.process_status_mib("VmHWM")
    assert rt.process_status_mib("NoSuchField") is None


def test_status_fields_are_read_in_mib_and_the_cpu_peak_is_vmhwm(tmp_path, monkeypatch):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t    2048 kB\nVmRSS:\t    1536 kB\n")
    monkeypatch.setattr(rt, "Path", lambda path: status if path == "/proc/self/status" else Path(path))
    assert (rt.process_status_mib("VmHWM"), rt.process_status_mib("VmRSS")) == (2.0, 1.5)  # kB / 1024
    assert rt.peak_memory_mb(torch.device("cpu")) == 2.0  # VmHWM, not getrusage's peak
    assert rt.process_status_mib("VmSwap") is None


def _fake_bf16_check(emulated: bool):
    """torch.cuda.is_bf16_supported as on a GPU that computes bf16 natively (emulated=False) or only emulates it
    (compute capability 7.x: V100, T4)."""
    return lambda including_emulation=True: including_emulation or not emulated


@pytest.mark.parametrize("emulated, expected", [(False, torch.bfloat16), (True, torch.float16)])
def test_auto_dtype_on_cuda_is_bf16_only_where_native(monkeypatch, emulated, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", _fake_bf16_check(emulated))
    assert rt.pick_dtype("auto", torch.device("cuda", 0)) == expected


def test_synchronize_waits_for_an_asynchronous_device_only(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(("cuda", device)))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append(("mps", None)))
    rt.synchronize(torch.device("cpu"))
    assert waited == []  # the CPU has nothing queued
    rt.synchronize(torch.device("cuda", 1))
    rt.synchronize(torch.device("mps"))
    assert waited == [("cuda", torch.device("cuda", 1)), ("mps", None)]


def test_a_cuda_runtime_runs_fp32_matmuls_in_tf32(monkeypatch):
    """The kernels that keep autocast off run fp32 GEMMs: on CUDA they take TF32 (checked without a GPU: only the
    device choice is faked); a CPU runtime leaves the setting alone."""
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        rt.start("cpu", "float32")
        assert torch.get_float32_matmul_precision() == "highest"
        with monkeypatch.context() as patch:
            patch.setattr(rt, "pick_device", lambda name, local_rank: torch.device("cuda", 0))
            patch.setattr(rt, "pick_dtype", lambda name, device: torch.bfloat16)
            rt.start("auto", "auto")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_collective_failed_by_a_process_gone_is_told_from_other_errors():
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:59069. GLHF!")
    assert rt.peer_lost(gloo) == "gloo: Connection closed by peer"
    assert rt.peer_lost(torch.distributed.DistNetworkError("store: Connection reset by peer")) == (
        "DistNetworkError: Connection reset by peer")
    assert rt.peer_lost(torch.distributed.DistBackendError("NCCL error: invalid usage")) is None  # this process's
    assert rt.peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert rt.peer_lost(ValueError("Connection closed by peer")) is None


def test_a_batch_goes_to_a_gpu_through_pinned_memory_without_waiting_and_to_the_cpu_as_it_is():
    class HostBatch:
        def __init__(self):
            self.calls = []

        def pin_memory(self):
            self.calls.append("pin_memory")
            return self

        def to(self, device, non_blocking=False):
            self.calls.append(("to", str(device), non_blocking))
            return self

    batch = HostBatch()
    rt.to_device(batch, torch.device("cuda", 1))
    assert batch.calls == ["pin_memory", ("to", "cuda:1", True)]
    x = torch.arange(6).view(2, 3)
    assert rt.to_device(x, torch.device("cpu")) is x


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("Tesla T4", math.nan)])
def test_a_gpus_peak_is_its_own_parts(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
    found = rt.peak_flops(torch.device("cuda"), torch.bfloat16)
    assert found == peak or (math.isnan(peak) and math.isnan(found))
    assert rt.peak_flops(torch.device("cuda"), torch.float32) == found / 2 or math.isnan(peak)
