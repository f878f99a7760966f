"""The Taylor-polynomial features: one independent TensorSketch per (seed, degree), scaled by 1/sqrt(l!)."""

import math

import torch

from evals import synthetic as syn
from evals.methods.kernel_preconditioners import MAX_TAYLOR_DEGREE, degree_seed, taylor_features
from evals.sketch import tensor_sketch


def test_every_seed_and_degree_gets_its_own_sketch_seed():
    pairs = [(seed, degree) for seed in range(64) for degree in range(MAX_TAYLOR_DEGREE + 1)]
    assert len({degree_seed(*pair) for pair in pairs}) == len(pairs)
    assert degree_seed(0, 3) != degree_seed(1, 2)  # seed + degree made these equal


def least_degree(t: float, tail: float = 1e-6) -> int:
    """The least q whose Taylor remainder of exp at t, sum_{l > q} t^l / l!, is <= tail · exp(t)."""
    q, kept, term = 0, math.exp(-t), math.exp(-t)  # Poisson(t) probabilities, summed
    while 1 - kept > tail:
        q += 1
        term *= t / q
        kept += term
    return q


def test_the_features_are_the_scaled_tensor_sketches_of_each_degree():
    A = syn.exp_rows(40, 6, 0.5, 1.0, seed=0)  # max ||a||² ~ 1
    m = 2 * A.shape[1]
    for seed in (0, 1):
        features = taylor_features(A, seed)
        widths = [1, A.shape[1]] + [m] * ((features.shape[1] - 1 - A.shape[1]) // m)
        assert sum(widths) == features.shape[1] and len(widths) == least_degree(float((A * A).sum(1).max())) + 1
        blocks = features.split(widths, dim=1)
        for degree, block in enumerate(blocks):
            expected = tensor_sketch(A, degree, m, degree_seed(seed, degree)) / math.sqrt(math.factorial(degree))
            torch.testing.assert_close(block, expected, rtol=0, atol=0)



def test_the_features_estimate_the_exponential_kernel_without_bias():
    """E[Φ Φᵀ] = Σ_{l <= q} (A Aᵀ)^{∘l} / l!, which is exp(A Aᵀ) to the 1e-6 tail: the mean over many seeds' sketches
    comes close to it, well inside the single sketch's spread."""
    A = syn.exp_rows(8, 4, 0.5, 1.0, seed=1)
    exact = torch.exp(A @ A.T)
    estimates = torch.stack([(f @ f.T) for f in (taylor_features(A, seed) for seed in range(400))])
    error_of_mean = (estimates.mean(0) - exact).abs().max() / exact.abs().max()
    error_of_one = (estimates - exact).abs().amax((1, 2)).median() / exact.abs().max()
    assert error_of_mean < 0.02 and error_of_mean < error_of_one / 5
