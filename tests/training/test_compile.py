"""train.compile: auto compiles on CUDA only; a compile that fails, when compiling or at a call, leaves one warning
line and the model running eagerly with the same parameters."""

import pytest
import torch
from torch import nn

from training.compile import CompiledOrEager, compile_wanted, maybe_compile


@pytest.mark.parametrize("choice, device, wanted", [
    ("auto", "cuda", True), ("auto", "cpu", False), ("auto", "mps", False),
    ("true", "cpu", True), ("false", "cuda", False),
])
def test_auto_compiles_on_cuda_only(choice, device, wanted):
    assert compile_wanted(choice, torch.device(device)) is wanted


def test_not_wanted_means_the_model_itself():
    model = nn.Linear(3, 2)
    assert maybe_compile(model, "false", torch.device("cpu"), print) is model


def raising_at_compile(model):
    raise RuntimeError("Dynamo is not supported on this Python\nsecond line")


class RaisingAtCall:
    def __init__(self, model):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError("inductor: C++ compile error\nlong log")


@pytest.mark.parametrize("at", ["compile", "call"])
def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch, at):
    monkeypatch.setattr(torch, "compile", raising_at_compile if at == "compile" else RaisingAtCall)
    lines = []
    model = nn.Linear(3, 2)
    wrapped = maybe_compile(model, "true", torch.device("cpu"), lines.append)
    x = torch.randn(4, 3)
    for _ in range(3):
        torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=0)
    assert len(lines) == 1
    reason = "Dynamo is not supported on this Python" if at == "compile" else "inductor: C++ compile error"
    assert lines[0] == f"warning: torch.compile failed (RuntimeError: {reason}); training without it"
    assert list(wrapped.parameters()) == list(model.parameters())


def test_a_working_compile_is_called_and_the_parameters_are_the_models(monkeypatch):
    calls = []

    class Compiled:
        def __init__(self, model):
            self.model = model

        def __call__(self, *args):
            calls.append(len(args))
            return self.model(*args)

    monkeypatch.setattr(torch, "compile", Compiled)
    lines = []
    model = nn.Linear(3, 2)
    wrapped = CompiledOrEager(model, lines.append)
    wrapped(torch.randn(1, 3))
    assert calls == [1] and lines == []
    assert [name for name, _ in wrapped.named_parameters()] == ["model.weight", "model.bias"]
    wrapped.eval()
    assert not model.training


def wrapped_with_backend(monkeypatch, backend) -> tuple[nn.Linear, CompiledOrEager, list[str]]:
    """A Linear(3, 2) through CompiledOrEager with torch.compile using `backend`, and the warning lines it writes."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend=backend))
    lines = []
    model = nn.Linear(3, 2)
    return model, CompiledOrEager(model, lines.append), lines


def test_a_backend_that_fails_at_the_first_call_falls_back(monkeypatch):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler found")

    model, wrapped, lines = wrapped_with_backend(monkeypatch, broken_backend)
    x = torch.randn(4, 3)
    try:
        torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=0)
    finally:
        torch._dynamo.reset()
    assert lines == ["warning: torch.compile failed (BackendCompilerFailed: RuntimeError: no C++ compiler found); "
                     "training without it"]


def test_a_backward_that_fails_to_compile_falls_back_at_the_forward_call(monkeypatch):
    """The backward graph compiles before the forward returns, so its failure reaches the fallback too instead of
    raising from loss.backward() outside it."""
    from torch._dynamo.backends.common import aot_autograd

    def broken_backward(graph_module, example_inputs):
        raise RuntimeError("backward: C++ compile error")

    backend = aot_autograd(fw_compiler=lambda graph_module, example_inputs: graph_module, bw_compiler=broken_backward)
    model, wrapped, lines = wrapped_with_backend(monkeypatch, backend)
    x = torch.randn(4, 3)
    try:
        wrapped(x).sum().backward()
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(model.weight.grad, torch.ones(2, 1) * x.sum(0), rtol=1e-6, atol=1e-6)
    assert lines == ["warning: torch.compile failed (BackendCompilerFailed: RuntimeError: backward: C++ compile "
                     "error); training without it"]
