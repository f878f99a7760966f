"""Sketches: the FWHT is the Hadamard product, every sketch embeds a subspace, TensorSketch estimates (a·b)^l."""

import math

import pytest
import torch

from evals.sketch import SKETCHES, Sketch, fwht, hadamard, tensor_sketch


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_fwht_equals_the_dense_hadamard_multiply(n):
    x = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(fwht(x), hadamard(n) @ x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fwht(fwht(x)) / n, x)  # H H = n I


def test_fwht_refuses_lengths_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(12, 2))


def _orthonormal(n, d, seed):
    return torch.linalg.qr(torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))[0]


@pytest.mark.parametrize("kind", SKETCHES)
def test_every_sketch_embeds_a_subspace_over_seeds(kind):
    """All singular values of S U (U an orthonormal basis of a 10-dim subspace of R^2000) lie in [1 - e, 1 + e]: the
    norm of every vector of the subspace is kept within that factor, for every seed tried."""
    n, d, k = 2000, 10, 400
    U = _orthonormal(n, d, 0)
    for seed in range(5):
        s = torch.linalg.svdvals(Sketch(kind, n, k, seed)(U))
        assert 0.6 < float(s.min()) and float(s.max()) < 1.4, (kind, seed, s)


@pytest.mark.parametrize("kind", SKETCHES)
def test_sketches_are_unbiased_and_deterministic_in_the_seed(kind):
    n, k = 300, 60
    x = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    squares = torch.stack([Sketch(kind, n, k, seed)(x).square().sum() for seed in range(300)])
    assert abs(float(squares.mean()) / float(x.square().sum()) - 1) < 0.05
    torch.testing.assert_close(Sketch(kind, n, k, 7)(x), Sketch(kind, n, k, 7)(x), rtol=0, atol=0)


def test_one_sketch_applies_the_same_matrix_to_every_column_block():
    """S(A) and S(b) must use one S (sketch-and-solve needs both): S [A, b] == [S A, S b]."""
    A = torch.randn(500, 4, dtype=torch.float64)
    for kind in SKETCHES:
        S = Sketch(kind, 500, 40, 3)
        torch.testing.assert_close(S(A)[:, 3:], S(A[:, 3:]), rtol=1e-12, atol=1e-12)


def test_sketch_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown sketch"):
        Sketch("fourier", 10, 4)
    with pytest.raises(ValueError, match="applies to"):
        Sketch("gaussian", 10, 4)(torch.zeros(9, 2))
    with pytest.raises(ValueError, match="too many"):
        Sketch("srht", 10, 20)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_tensor_sketch_estimates_powers_of_inner_products(degree):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 16, dtype=torch.float64, generator=gen) / 4 ** 0.5
    exact = float(a[0] @ a[1]) ** degree
    estimates = torch.tensor([float(f[0] @ f[1]) for f in (tensor_sketch(a, degree, 256, seed) for seed in range(200))],
                             dtype=torch.float64)
    spread = float(estimates.std()) / math.sqrt(len(estimates)) + 1e-12 * abs(exact)
    assert abs(float(estimates.mean()) - exact) < 4 * spread
