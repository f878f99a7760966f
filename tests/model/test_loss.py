"""Both forms of the LM-head cross-entropy equal the definition (full logits, then cross-entropy), in value and
gradients; negative targets (torch's and transformers' -100) mark positions without a target; the form is chosen by
device and autocast dtype."""

import math

import pytest
import torch
import torch.nn.functional as F

from model import loss as loss_module
from model.loss import chunked_linear_cross_entropy, linear_cross_entropy, linear_cross_entropy_reference


def inputs(n=37, c=16, v=101, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(v, c, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    return h, w, t


@pytest.mark.parametrize("vocab_align", [1, 64, 101])  # v = 101: 27 padding rows by default, none at 1 and 101
@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
def test_loss_and_gradients_match_the_reference(chunk_size, vocab_align):
    h, w, t = inputs()
    t[::5] = -100
    t[1::7] = -1
    t[2] = 100  # the last real row, beside the padding
    loss = chunked_linear_cross_entropy(h, w, t, chunk_size, vocab_align)
    gh, gw = torch.autograd.grad(3.0 * loss, (h, w))
    ref = linear_cross_entropy_reference(h, w, t)
    rh, rw = torch.autograd.grad(3.0 * ref, (h, w))
    torch.testing.assert_close(loss.double(), ref.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, rh, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gw, rw, rtol=1e-6, atol=1e-8)


# bf16 and fp16 take different paths (fp16: softmax in fp32, 1/N' after the weight gradient's GEMM); tolerances
# of a few units of each one's roundoff (2^-8, 2^-11), in relative Frobenius norm.
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)], ids=["bf16", "fp16"])
def test_half_precision_autocast_is_close_to_fp64(dtype, tolerance):
    h, w, t = inputs(n=64, c=32, v=500, dtype=torch.float32)
    t[::3] = -100  # rows without a target add nothing, in either path
    with torch.autocast("cpu", dtype=dtype):
        loss = chunked_linear_cross_entropy(h, w, t, 16)
    gh, gw = torch.autograd.grad(loss, (h, w))
    exact = [x.detach().double().requires_grad_() for x in (h, w)]
    ref = linear_cross_entropy_reference(*exact, t)
    rh, rw = torch.autograd.grad(ref, exact)
    assert gh.dtype == torch.float32 and gw.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=tolerance)
    assert (gh - rh).norm() / rh.norm() < tolerance and (gw - rw).norm() / rw.norm() < tolerance


@pytest.mark.parametrize("synchronous", [True, False])  # False: the maxima of every row are read, as on a GPU
@pytest.mark.parametrize("autocast", [False, True])
def test_a_target_whose_probability_underflows_keeps_its_exact_loss(autocast, synchronous, monkeypatch):
    if not synchronous:
        monkeypatch.setattr(loss_module, "SYNCHRONOUS_DEVICES", frozenset())
    # target logits 200 below the row's maximum: p_t = e^-200 underflows fp32 and bf16, its loss is ~200 nats
    h, w, t = inputs(n=8, c=4, v=50, dtype=torch.float32)
    with torch.no_grad():
        w[:, 0] = 0.0
        w[1:, 0] = 100.0  # logit 100 · h_i0 for every class but class 0
        h[:, 0] = torch.tensor([2.0, -2.0] * 4)
    t.fill_(0)
    t[1::2] = 1  # the rows with h_i0 = -2 have class 1's logit 200 below class 0's
    expected = F.cross_entropy((h @ w.T).double(), t)
    rh, rw = torch.autograd.grad(F.cross_entropy(h.double() @ w.double().T, t), (h, w))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = chunked_linear_cross_entropy(h, w, t, 3)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert expected.item() > 200 and loss.item() == pytest.approx(expected.item(), rel=1e-2 if autocast else 1e-6)
    tolerance = 2e-2 if autocast else 1e-5
    assert (gh - rh).norm() / rh.norm() < tolerance and (gw - rw).norm() / rw.norm() < tolerance


def confident_rows(n=48, v=300, margin=12.0):
    """Rows whose target is far more probable than the rest (p_t ~ 0.98-0.998): h_i = 2 e_i, and each row's own
    target class gets a logit `margin` above the others' ~N(0, 0.2²)."""
    g = torch.Generator().manual_seed(1)
    h = (2.0 * torch.eye(n) + 0.01 * torch.randn(n, n, generator=g)).requires_grad_()
    t = torch.randperm(v, generator=g)[:n]
    w = 0.1 * torch.randn(v, n, generator=g)
    w[t, torch.arange(n)] += margin / 2.0
    return h, w.requires_grad_(), t


@pytest.mark.parametrize("margin, other_target, low, high", [
    # The same rounded logits in both: what is left is the loss's own rounding. Stored in bf16, p_t ~ 0.997 is off by
    # up to 2^-8, as much as 1 - p_t itself; the one-hot entry and the loss must not inherit that.
    (12.0, False, 0.001, 0.05),
    # The target is another class (loss ~8 nats) while one token takes p_j ~ 0.9: log p_t goes through p_j as stored.
    (8.0, True, 7.0, 10.0),
])
def test_confident_rows_under_bf16_autocast_match_the_full_form_under_it(margin, other_target, low, high):
    h, w, t = confident_rows(margin=margin)
    if other_target:
        t = (t + 1) % w.shape[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_linear_cross_entropy(h, w, t, 16)
        ref = linear_cross_entropy_reference(h, w, t)
    gh, gw = torch.autograd.grad(loss, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert low < ref.item() < high
    assert loss.item() == pytest.approx(ref.item(), rel=1e-3)
    assert (gh - rh).norm() / rh.norm() < 5e-3 and (gw - rw).norm() / rw.norm() < 5e-3


def test_fp16_weights_keep_the_precision_of_a_probability_in_fp16s_subnormal_range():
    # Uniform rows over 20,000 classes: every probability is 5e-5, below fp16's smallest normal (6.1e-5), where a
    # softmax stored in fp16 would move log p by ~2e-4; the loss is log V.
    v = 20000
    h = torch.zeros(4, 8, dtype=torch.float16, requires_grad=True)
    w = torch.randn(v, 8, generator=torch.Generator().manual_seed(0)).half().requires_grad_()
    loss = chunked_linear_cross_entropy(h, w, torch.arange(4), 2)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert loss.dtype == torch.float32 and gh.dtype == gw.dtype == torch.float16
    assert loss.item() == pytest.approx(math.log(v), abs=1e-5)
    torch.testing.assert_close(gh.double(), (w.double().mean(0) - w.double()[:4]) / 4, rtol=1e-2, atol=1e-3)


def test_fp16_autocast_keeps_the_weight_gradient_of_rows_rarely_a_target_out_of_fp16s_subnormals():
    """4,096 rows over 20,000 classes, targets among the first 5,000: the other rows' gradient sums products of
    probabilities ~5e-5 and h; scaled by 1/4096 before an fp16 GEMM they landed in fp16's subnormals (1.3e-2 off,
    0.9% of them exactly 0); with 1/N' applied after it, in fp32, they are as precise as the rest."""
    g = torch.Generator().manual_seed(0)
    n, c, v = 4096, 32, 20000
    h, w = torch.randn(n, c, generator=g), torch.randn(v, c, generator=g) * 0.05
    t = torch.randint(0, v // 4, (n,), generator=g)
    ref_w = w.double().requires_grad_()
    linear_cross_entropy_reference(h.double(), ref_w, t).backward()
    w16 = w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        chunked_linear_cross_entropy(h, w16, t, 1024).backward()
    rare = slice(v // 4, None)
    assert (w16.grad[rare].double() - ref_w.grad[rare]).norm() / ref_w.grad[rare].norm() < 1e-3
    assert (w16.grad[rare] == 0).float().mean() < 1e-4


def test_fp16_autocast_keeps_the_weight_gradient_of_a_token_every_row_targets_finite():
    """1,024 rows, all with target 5 and a coherent |h| of 70: unscaled, their sum (71,680) overflows fp16."""
    n, c, v = 1024, 8, 512
    h = torch.randn(n, c, generator=torch.Generator().manual_seed(0))
    h[:, 0] = 70.0
    w = (torch.randn(v, c, generator=torch.Generator().manual_seed(1)) * 0.01).requires_grad_()
    t = torch.full((n,), 5)
    with torch.autocast("cpu", dtype=torch.float16):
        chunked_linear_cross_entropy(h, w, t, 1024).backward()
    ref_w = w.detach().double().requires_grad_()
    linear_cross_entropy_reference(h.double(), ref_w, t).backward()
    assert torch.isfinite(w.grad).all()
    assert (w.grad.double() - ref_w.grad).norm() / ref_w.grad.norm() < 1e-2


@pytest.mark.parametrize("autocast", [False, True])
def test_torch_compile_traces_the_chunked_loss_into_one_graph(autocast):
    h, w, t = inputs(dtype=torch.float32)

    def loss(h, w, t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return chunked_linear_cross_entropy(h, w, t, 16)

    assert torch._dynamo.explain(loss)(h, w, t).graph_break_count == 0


def test_without_grad_it_only_computes_the_loss():
    h, w, t = inputs()
    with torch.no_grad():
        loss = chunked_linear_cross_entropy(h, w, t, 8)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(linear_cross_entropy_reference(h, w, t).item(), rel=1e-9)


def test_the_reference_is_torch_cross_entropy_with_its_ignore_index():
    h, w, t = inputs()
    t[::3] = -100
    expected = F.cross_entropy(h @ w.T, t, ignore_index=-100)
    torch.testing.assert_close(linear_cross_entropy_reference(h, w, t), expected, rtol=1e-12, atol=1e-12)


def test_all_targets_ignored_gives_zero_not_nan():
    h, w, t = inputs()
    assert chunked_linear_cross_entropy(h, w, torch.full_like(t, -100), 8).item() == 0.0
    assert linear_cross_entropy_reference(h, w, torch.full_like(t, -100)).item() == 0.0


def test_the_head_is_padded_with_zero_rows_to_the_alignment():
    w = torch.randn(101, 3)
    padded = loss_module.padded_head(w, torch.bfloat16, 64)
    assert padded.shape == (128, 3) and padded.dtype == torch.bfloat16 and not padded[101:].any()
    assert torch.equal(padded[:101], w.to(torch.bfloat16))
    assert loss_module.padded_head(w, torch.float32, 101) is w  # aligned already: no copy


def test_no_rows_gives_zero_loss_and_zero_gradients():
    h, w, t = inputs(n=0)
    loss = chunked_linear_cross_entropy(h, w, t, 8)
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert loss.item() == 0.0 and gh.shape == (0, 16) and not gw.any()


@pytest.mark.parametrize("rows", [None, 8])
def test_linear_cross_entropy_runs_the_form_the_table_names(monkeypatch, rows):
    ran = []  # (form, its arguments after h, weight, targets)
    monkeypatch.setitem(loss_module.LOSS_FORMS, ("cpu", None), rows)
    for name in ("linear_cross_entropy_reference", "chunked_linear_cross_entropy"):
        def spy(*args, _form=getattr(loss_module, name), _name=name):
            ran.append((_name, args[3:]))
            return _form(*args)

        monkeypatch.setattr(loss_module, name, spy)
    h, w, t = inputs()
    loss = linear_cross_entropy(h, w, t)
    torch.testing.assert_close(loss, linear_cross_entropy_reference(h, w, t), rtol=1e-9, atol=1e-9)
    expected = ("linear_cross_entropy_reference", ()) if rows is None else ("chunked_linear_cross_entropy", (8,))
    assert ran[0] == expected


def test_the_table_is_read_by_device_and_autocast_dtype(monkeypatch):
    monkeypatch.setattr(loss_module, "LOSS_FORMS", {("cpu", torch.bfloat16): None, ("cpu", None): 64})
    assert loss_module.chunk_rows("cpu", torch.bfloat16) is None
    assert loss_module.chunk_rows("cpu", None) == 64
    assert loss_module.chunk_rows("cuda", torch.float16) == loss_module.DEFAULT_CHUNK_ROWS
