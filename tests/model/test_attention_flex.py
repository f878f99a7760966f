"""The direct form through flex_attention (model/attention/flex.py) computes each backend's reference, and the
form that runs on a device is the one DIRECT_FORMS names.

torch runs flex_attention's backward on CUDA only: on the CPU a Python guard refuses it. The code behind that guard
is torch's dense reference implementation of flex_attention, backward included, so with the guard lifted
(`eager_flex`, which runs that implementation) the gradients of our score_mod (log w, floored) and of the eps
factor (through the logsumexp) are checked here in fp64. The fused CPU kernel (compiled, inference only, no
logsumexp) is checked in fp32 with eps = 0; the CUDA kernels cannot be run on this machine.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex

from model.attention import flex, get_backend
from model.attention.expressive import SaturatingSquare
from model.attention.linear import QuadraticKernel

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")

BACKENDS = [
    ("expressive", {}),
    ("expressive_sq", {}),
    ("taylor", {}),
    ("taylor", {"output_normalized": True}),
]
IDS = ["expressive", "expressive_sq", "taylor", "taylor-output_normalized"]


@pytest.fixture
def direct_forms_run(record_calls) -> list[str]:
    """The direct forms that ran, in call order: 'flex' or 'tiled'."""
    return record_calls(flex, {"flex_causal_attention": "flex", "tiled_direct_attention": "tiled"})


# torch's dense implementation of flex_attention, forward and backward, traced by dynamo but not fused. Plain
# flex_attention would do the same through its own torch.compile, whose automatic dynamic floats fail to trace a
# score_mod once a second weight (other a, b, c) has been seen.
dense_flex_attention = torch.compile(torch_flex.flex_attention, backend="aot_eager", dynamic=False)


@pytest.fixture
def many_compiles():
    """Room for every shape and weight of this file: past dynamo's recompile limit flex would run unfused."""
    with torch._dynamo.config.patch(recompile_limit=256):
        yield


@pytest.fixture
def eager_flex(monkeypatch, many_compiles):
    """fp64 on the CPU runs flex_attention's dense implementation, backward allowed."""
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *tensors: None)
    monkeypatch.setattr(flex, "_compiled_flex_attention", dense_flex_attention)
    monkeypatch.setitem(flex.DIRECT_FORMS, ("cpu", torch.float64), "flex")
    monkeypatch.setattr(flex, "_flex_failed", False)


def padding_mask(kind: str | None, b: int, t: int) -> torch.Tensor | None:
    """None, or (b, t) with the first row padded on the left or the right and the others not."""
    if kind is None:
        return None
    mask = torch.ones(b, t, dtype=torch.bool)
    if kind == "left":
        mask[0, :5] = False
    else:
        mask[0, -4:] = False
    return mask


def qkv(b=2, h=2, t=37, d=8, d_v=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, width, generator=g, dtype=dtype) for width in (d, d, d_v)]


def forward_and_grads(fn, q, k, v, mask):
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    y = fn(q, k, v, mask)
    g = torch.Generator().manual_seed(1)
    grads = torch.autograd.grad((y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum(), (q, k, v))
    return y, grads


def assert_same_forward_and_grads(backend, q, k, v, mask, atol=1e-10, rtol=1e-10):
    y, grads = forward_and_grads(backend.forward, q, k, v, mask)
    y_ref, grads_ref = forward_and_grads(backend.reference, q, k, v, mask)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    for grad, grad_ref in zip(grads, grads_ref):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, grad_ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize(("name", "options"), BACKENDS, ids=IDS)
def test_the_flex_form_matches_the_reference_in_fp64_forward_and_backward(
    eager_flex, direct_forms_run, name, options, padding
):
    q, k, v = qkv()
    assert_same_forward_and_grads(get_backend(name, **options), q, k, v, padding_mask(padding, 2, 37))
    assert set(direct_forms_run) == {"flex"}


@pytest.mark.parametrize("name", ["expressive", "expressive_sq"])
def test_the_eps_of_a_row_whose_weights_nearly_vanish_is_exact(eager_flex, direct_forms_run, name):
    q, k, v = qkv()
    q = q * 1e-3  # s ~ 1e-3: sum_j w_ij ~ 1e-5 .. 1e-4, of the order of eps
    backend = get_backend(name, eps=1e-4)
    assert_same_forward_and_grads(backend, q, k, v, padding_mask("left", 2, 37))
    without_eps = get_backend(name, eps=1e-300).reference(q, k, v)  # eps must be > 0; this one adds nothing
    assert (backend.reference(q, k, v).norm() < 0.9 * without_eps.norm()).item()  # eps matters in these rows
    assert set(direct_forms_run) == {"flex"}


@pytest.mark.parametrize("name", ["expressive", "expressive_sq"])
def test_no_nan_where_a_score_is_exactly_zero(eager_flex, name):
    q, k, v = qkv()
    q[..., 1:] = 0.0  # queries along the first axis, keys orthogonal to it: s = 0 exactly for every pair
    k[..., :1] = 0.0
    k[:, :, ::3] = torch.randn(k[:, :, ::3].shape, dtype=k.dtype)  # and every third key not
    assert_same_forward_and_grads(get_backend(name), q, k, v, padding_mask("right", 2, 37))


@pytest.mark.parametrize(
    ("weight", "floored"),  # floored: the scores below whose weight is under the floor (0 and 1e-20, or -1)
    [(SaturatingSquare(), 2), (SaturatingSquare(0.125), 2), (QuadraticKernel(a=0.25), 2),
     (QuadraticKernel(0.5, 1.0, 1.0), 0), (QuadraticKernel(0.5, 1.0, 0.5), 1)],
    ids=["saturating", "saturating-scaled", "square", "taylor", "taylor-touching-zero"],
)
def test_log_weight_is_the_log_of_the_weight_with_a_finite_derivative_at_zero(weight, floored):
    s = torch.tensor([-3.0, -2.0, -1.0, -0.2, 0.0, 1e-20, 0.3, 2.0, 50.0], dtype=torch.float64, requires_grad=True)
    log_w = weight.log(s)
    w, dw_ds = weight.with_derivative(s.detach().clone())
    positive = w > flex.WEIGHT_FLOOR
    assert (~positive).sum() == floored
    torch.testing.assert_close(log_w[positive], w[positive].log(), atol=1e-12, rtol=1e-12)
    assert (log_w[~positive] == torch.tensor(flex.WEIGHT_FLOOR, dtype=torch.float64).log()).all()
    (grad,) = torch.autograd.grad(log_w.sum(), s)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[positive], (dw_ds / w)[positive], atol=1e-12, rtol=1e-10)


@pytest.mark.slow  # compiles flex_attention's CPU kernel once per backend (5-15 s each)
@pytest.mark.parametrize(("name", "options"), BACKENDS, ids=IDS)
def test_the_compiled_cpu_kernel_matches_the_reference_in_fp32(
    monkeypatch, many_compiles, direct_forms_run, one_thread, name, options
):
    monkeypatch.setitem(flex.DIRECT_FORMS, ("cpu", torch.float32), "flex")
    monkeypatch.setattr(flex, "_flex_failed", False)
    backend = get_backend(name, **options)
    if name.startswith("expressive"):  # the CPU kernel has no logsumexp, so it runs eps = 0 only, which the option
        object.__setattr__(backend, "eps", 0.0)  # refuses (a row of vanishing weights would be 0/0): set it here
    q, k, v = qkv(t=200, d=16, d_v=16, dtype=torch.float32)  # 200: not a multiple of flex's 128-token blocks
    mask = torch.ones(2, 200, dtype=torch.bool)
    mask[0, :7] = False  # left padding in one row, right padding in the other
    mask[1, -9:] = False
    with torch.no_grad():  # the CPU kernel runs inference only
        y = backend.forward(q, k, v, mask)
    y_ref = backend.reference(q.double(), k.double(), v.double(), mask)
    assert direct_forms_run == ["flex"] and not flex._flex_failed
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_the_form_that_runs_on_the_cpu_is_the_one_the_table_names(direct_forms_run, dtype):
    q, k, v = qkv(dtype=dtype)
    for name in ("expressive", "expressive_sq", "taylor"):
        get_backend(name).forward(q, k, v)
    assert direct_forms_run == [flex.DIRECT_FORMS.get(("cpu", dtype), "tiled")] * 3


def test_a_table_entry_switches_the_form(monkeypatch, direct_forms_run):
    monkeypatch.setitem(flex.DIRECT_FORMS, ("cpu", torch.float32), "flex")
    monkeypatch.setattr(flex, "_flex_failed", False)
    monkeypatch.setattr(flex, "_compiled_flex_attention", lambda q, k, v, **kwargs: torch.zeros_like(v))
    q, k, v = qkv(dtype=torch.float32)
    get_backend("taylor").forward(q, k, v)
    assert direct_forms_run == ["flex"]


def test_cuda_runs_flex_and_fp64_runs_tiled_everywhere():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert flex.direct_form_for(torch.device("cuda"), dtype) == "flex"
    for device in ("cuda", "cpu"):
        assert flex.direct_form_for(torch.device(device), torch.float64) == "tiled"


def test_a_failing_flex_falls_back_to_the_tiled_form_with_one_warning(monkeypatch, direct_forms_run, capsys):
    def failing(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setitem(flex.DIRECT_FORMS, ("cpu", torch.float32), "flex")
    monkeypatch.setattr(flex, "_flex_failed", False)
    monkeypatch.setattr(flex, "_compiled_flex_attention", failing)
    backend = get_backend("expressive")
    q, k, v = qkv(dtype=torch.float32)
    y = [backend.forward(q, k, v) for _ in range(2)]
    assert direct_forms_run == ["flex", "tiled", "tiled"]
    assert capsys.readouterr().err.splitlines() == [
        "warning: flex_attention failed (RuntimeError: no C++ compiler); the direct attention form runs tiled"
    ]
    torch.testing.assert_close(y[0], backend.reference(q, k, v), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y[0], y[1], atol=0, rtol=0)


def test_running_out_of_memory_in_flex_is_raised_not_taken_for_a_compiler_failure(monkeypatch, direct_forms_run):
    """The tiled form would not be the cure, and the rest of the process would have lost flex for nothing."""
    def out_of_memory(*args, **kwargs):  # raised inside the compiler, as dynamo wraps it
        failed = RuntimeError("backend compiler failed")
        failed.inner_exception = torch.OutOfMemoryError("CUDA out of memory")
        raise failed

    monkeypatch.setitem(flex.DIRECT_FORMS, ("cpu", torch.float32), "flex")
    monkeypatch.setattr(flex, "_flex_failed", False)
    monkeypatch.setattr(flex, "_compiled_flex_attention", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        get_backend("taylor").forward(*qkv(dtype=torch.float32))
    assert direct_forms_run == ["flex"] and not flex._flex_failed


def test_the_compiled_kernel_runs_under_a_recompile_limit_of_its_own(monkeypatch):
    """Past dynamo's default of 8 shapes torch would run flex_attention unfused, without a word."""
    import torch._dynamo.config as dynamo_config

    seen = []
    monkeypatch.setattr(flex, "_compiled_flex_attention", None)
    monkeypatch.setattr(flex.torch, "compile", lambda fn, **kwargs: lambda *a, **k: seen.append(
        dynamo_config.recompile_limit))
    default = dynamo_config.recompile_limit
    flex._compiled_kernel()(None)
    assert seen == [flex.FLEX_RECOMPILE_LIMIT] and dynamo_config.recompile_limit == default
