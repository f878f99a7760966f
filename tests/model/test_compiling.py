"""model/compiling.py: the mark torch's decorator sets, set without importing torch._dynamo, and what
torch.compile does with it."""

from __future__ import annotations

import subprocess
import sys

import torch

from model.compiling import assume_constant_result


def test_the_mark_is_the_one_torch_sets():
    def ours():
        return 1

    def torchs():
        return 1

    assert assume_constant_result(ours) is ours
    torch.compiler.assume_constant_result(torchs)
    assert vars(ours) == vars(torchs) != {}


def test_torch_compile_calls_a_marked_function_once_and_keeps_its_result():
    calls = []

    @assume_constant_result
    def scale() -> float:
        calls.append(1)
        with open(__file__) as f:  # a file read: dynamo would break the graph to run it
            f.read(1)
        return 2.0 + len(calls)

    def caller(x):
        return x * scale()

    x = torch.ones(3)
    assert torch._dynamo.explain(caller)(x).graph_break_count == 0
    torch._dynamo.reset()
    calls.clear()
    compiled = torch.compile(caller, backend="eager")
    assert torch.equal(compiled(x), torch.full((3,), 3.0))
    assert torch.equal(compiled(x), torch.full((3,), 3.0))  # the constant kept: scale() would now return 4
    assert len(calls) == 1


def test_importing_the_model_leaves_torch_dynamo_unimported():
    code = "import sys, model.generation; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_an_out_of_memory_error_is_found_at_the_bottom_of_a_compilers_chain():
    from model.compiling import out_of_memory

    memory = torch.OutOfMemoryError("CUDA out of memory")
    wrapped = RuntimeError("backend compiler failed")
    wrapped.inner_exception = memory  # as dynamo's BackendCompilerFailed keeps it
    chained = ValueError("outer")
    chained.__cause__ = wrapped
    assert out_of_memory(memory) is memory and out_of_memory(chained) is memory
    assert out_of_memory(RuntimeError("no C++ compiler")) is None
    # the CPU's: torch's allocator raises a plain RuntimeError, numpy and Python a MemoryError
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 52698284032 bytes. Error code 12 (Cannot allocate memory)")
    host = MemoryError("Unable to allocate 2.98 TiB for an array with shape (1, 2) and data type int64")
    windows = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you "
                           "tried to allocate 52698284032 bytes.")
    mps = RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB, other allocations: 1.00 GB, max allowed: "
                       "9.07 GB). Tried to allocate 256.00 MB on private pool.")
    for error in (cpu, host, windows, mps):
        assert out_of_memory(error) is error
