"""What the model needs of torch.compile without importing torch._dynamo: the "constant result" mark, and compiling
a backward graph when its forward compiles.

`torch.compiler.assume_constant_result` imports torch._dynamo to set one attribute on the function, and that import
takes most of a second in every process that imports the model, compiled or not (train.py imports torch._dynamo
anyway, through torch.optim; scripts/generate.py and the other tools need not). `assume_constant_result` here sets
the same attribute; tests/model/test_compiling.py checks that it is the one torch's own decorator sets, and that
torch.compile then calls the function once while tracing and keeps its result, without a graph break.

AOTAutograd compiles a backward graph lazily, at the first backward, outside any fallback around the compiled
forward; `EAGER_BACKWARD_COMPILE` has it compile with the forward, on torch releases that offer that.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import TypeVar

import torch
from torch._functorch import config as aot_autograd_config

F = TypeVar("F", bound=Callable)

MARK = "_dynamo_marked_constant"  # what torch._dynamo.decorators.assume_constant_result sets

# torch releases before the flag compile the backward lazily whatever is asked; a fallback then covers the forward
EAGER_BACKWARD_COMPILE = (aot_autograd_config.patch(force_non_lazy_backward_lowering=True)
                          if hasattr(aot_autograd_config, "force_non_lazy_backward_lowering") else nullcontext())


# What allocators that raise a plain RuntimeError say: torch's CPU allocator on Linux ("DefaultCPUAllocator: can't
# allocate memory: you tried to allocate N bytes") and on Windows ("not enough memory"), and MPS's ("MPS backend out
# of memory"). CUDA raises torch.OutOfMemoryError, Python and numpy MemoryError.
ALLOCATOR_FAILURES = ("can't allocate memory", "not enough memory", "MPS backend out of memory")


def out_of_memory(exc: BaseException) -> BaseException | None:
    """The out-of-memory error at the bottom of `exc`'s chain (`__cause__`, and the `inner_exception` that dynamo's
    BackendCompilerFailed keeps), or None: the batch's failure, which no fallback from compiling would cure."""
    while not (isinstance(exc, (torch.OutOfMemoryError, MemoryError))
               or (isinstance(exc, RuntimeError) and any(failure in str(exc) for failure in ALLOCATOR_FAILURES))):
        exc = exc.__cause__ or getattr(exc, "inner_exception", None)
        if exc is None:
            return None
    return exc


def assume_constant_result(fn: F) -> F:
    """Mark fn as torch.compiler.assume_constant_result does: while tracing a caller, torch.compile runs fn eagerly
    and keeps its result as a constant (no guard re-checks it). Returns fn itself."""
    setattr(fn, MARK, True)
    return fn
