"""`train.compile`: torch.compile where it is measured faster, and eager training where compiling fails.

auto compiles on CUDA. On the CPU it stays eager: there the compile comes before the first step and the compiled
steps are measured no faster than the eager ones, so neither the CPU demo's run nor the shorter ones (the tests,
sweeps and recall grids that train one small model per setting) earn it back (measurements:
results/bench_compile.md); train.compile=true compiles there all the same.
torch.compile is lazy: it traces and compiles at the first call (and again when a new input shape or mode needs
it), so a failure shows there; the model then falls back to eager for the rest of the run, with one warning line.
AOTAutograd would compile the backward graph lazily too, at the first loss.backward(), where a failure would escape
the fallback after the forward had run compiled; the calls here have it compile the backward before the forward
returns, on torch releases that offer that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from model.compiling import EAGER_BACKWARD_COMPILE, out_of_memory

CompileChoice = Literal["auto", "true", "false"]


def compile_wanted(choice: CompileChoice, device: torch.device) -> bool:
    """Whether to compile: `true` and `false` say so; `auto` compiles on CUDA, where it is measured faster."""
    return choice == "true" or (choice == "auto" and device.type == "cuda")


class CompiledOrEager(nn.Module):
    """`model` through torch.compile until compiling raises, then `model` itself (the same parameters)."""

    def __init__(self, model: nn.Module, warn: Callable[[str], None]) -> None:
        super().__init__()
        self.model = model
        self._warn = warn
        self.compiled: Callable | None = None
        try:  # a bound method, so that the compiled wrapper is not registered as a second submodule
            self.compiled = torch.compile(model).__call__
        except Exception as exc:  # noqa: BLE001 - e.g. a Python version dynamo does not support
            self._fall_back(exc)

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                with EAGER_BACKWARD_COMPILE:
                    return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - dynamo, inductor and the C++ compiler raise many types
                if (memory := out_of_memory(exc)) is not None:  # the batch's: eager would need the memory too
                    raise memory from exc
                self._fall_back(exc)
        return self.model(*args, **kwargs)

    def _fall_back(self, exc: Exception) -> None:
        self._warn(f"warning: torch.compile failed ({failure_reason(exc)}); training without it")
        self.compiled = None


def failure_reason(exc: BaseException) -> str:
    """`Type: first line`, naming the root cause too when the error wraps one (dynamo's BackendCompilerFailed keeps
    it as `inner_exception`)."""
    root = exc
    while (inner := root.__cause__ or getattr(root, "inner_exception", None)) is not None:
        root = inner
    lines = str(root).strip().splitlines()
    kind = type(exc).__name__ if root is exc else f"{type(exc).__name__}: {type(root).__name__}"
    return f"{kind}: {lines[0] if lines else 'no message'}"


def maybe_compile(model: nn.Module, choice: CompileChoice, device: torch.device,
                  warn: Callable[[str], None]) -> nn.Module:
    """`model` compiled (with the eager fallback) when `compile_wanted`, else `model` itself."""
    return CompiledOrEager(model, warn) if compile_wanted(choice, device) else model
