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


def test_the_features_are_the_scaled_tensor_sketches_of_each_degree():
    A = syn.exp_rows(40, 6, 0.5, 1.0, seed=0)  # max ||a||² ~ 1: degrees 0 .. 10 for the 1e-6 Poisson tail
    m = 2 * A.shape[1]
    for seed in (0, 1):
        features = taylor_features(A, seed)
        widths = [1, A.shape[1]] + [m] * ((features.shape[1] - 1 - A.shape[1]) // m)
        assert sum(widths) == features.shape[1] and len(widths) == 11
        blocks = features.split(widths, dim=1)
        for degree, block in enumerate(blocks):
            expected = tensor_sketch(A, degree, m, degree_seed(seed, degree)) / math.sqrt(math.factorial(degree))
            torch.testing.assert_close(block, expected, rtol=0, atol=0)

