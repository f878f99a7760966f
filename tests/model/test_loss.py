"""The chunked LM-head cross-entropy equals full-logits cross-entropy, in value and gradients; negative targets
(torch's and transformers' -100) mark positions without a target."""

import pytest
import torch
import torch.nn.functional as F

from model.loss import linear_cross_entropy, linear_cross_entropy_reference


def inputs(n=37, c=16, v=101, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(v, c, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    return h, w, t


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
def test_loss_and_gradients_match_the_reference(chunk_size):
    h, w, t = inputs()
    t[::5] = -100
    t[1::7] = -1
    loss = linear_cross_entropy(h, w, t, chunk_size)
    gh, gw = torch.autograd.grad(3.0 * loss, (h, w))
    ref = linear_cross_entropy_reference(h, w, t)
    rh, rw = torch.autograd.grad(3.0 * ref, (h, w))
    torch.testing.assert_close(loss.double(), ref.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, rh, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gw, rw, rtol=1e-6, atol=1e-8)


def test_bf16_autocast_is_close_to_fp32():
    h, w, t = inputs(n=64, c=32, v=500, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, t, 16)
    gh, gw = torch.autograd.grad(loss, (h, w))
    ref = linear_cross_entropy_reference(h, w, t)
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert gh.dtype == torch.float32 and gw.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)
    assert (gh - rh).norm() / rh.norm() < 2e-2 and (gw - rw).norm() / rw.norm() < 2e-2


def test_without_grad_it_only_computes_the_loss():
    h, w, t = inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, t, 8)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(linear_cross_entropy_reference(h, w, t).item(), rel=1e-9)


def test_the_reference_is_torch_cross_entropy_with_its_ignore_index():
    h, w, t = inputs()
    t[::3] = -100
    expected = F.cross_entropy(h @ w.T, t, ignore_index=-100)
    torch.testing.assert_close(linear_cross_entropy_reference(h, w, t), expected, rtol=1e-12, atol=1e-12)


def test_all_targets_ignored_gives_zero_not_nan():
    h, w, t = inputs()
    assert linear_cross_entropy(h, w, torch.full_like(t, -100)).item() == 0.0
