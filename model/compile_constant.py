"""torch.compile's "constant result" mark, set without importing torch._dynamo.

`torch.compiler.assume_constant_result` imports torch._dynamo to set one attribute on the function, and that import
takes most of a second in every process that imports the model, compiled or not (train.py imports torch._dynamo
anyway, through torch.optim; scripts/generate.py and the other tools need not). This sets the same attribute;
tests/model/test_compile_constant.py checks that it is the one torch's own decorator sets, and that torch.compile
then calls the function once while tracing and keeps its result, without a graph break.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

MARK = "_dynamo_marked_constant"  # what torch._dynamo.decorators.assume_constant_result sets


def assume_constant_result(fn: F) -> F:
    """Mark fn as torch.compiler.assume_constant_result does: while tracing a caller, torch.compile runs fn eagerly
    and keeps its result as a constant (no guard re-checks it). Returns fn itself."""
    setattr(fn, MARK, True)
    return fn
