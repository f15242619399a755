"""Dense forward/backward and one SGD train step on NumPy, next to the raw matmuls they need.

Run:  pytest benchmarks --benchmark-enable --benchmark-columns=mean,stddev,rounds
(CI runs these once with --benchmark-disable, so they cannot rot.)
"""
import numpy as np
import pytest

import nnkit
from nnkit.optim import SGD

SHAPES = {"S": ((64, 128, 64, 10), 64), "M": ((784, 1024, 1024, 10), 256)}


def build(sizes, dtype="float32"):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nnkit.Dense(a, b, init="he_uniform"))
        if i < len(sizes) - 2:
            layers.append(nnkit.ReLU())
    return nnkit.Sequential(layers, dtype=dtype, seed=0)


def data(sizes, batch, dtype="float32"):
    rng = np.random.default_rng(0)
    return rng.normal(size=(batch, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], size=batch)


@pytest.mark.parametrize("shape", SHAPES)
def test_train_step(benchmark, shape):
    sizes, batch = SHAPES[shape]
    model, (X, y) = build(sizes), data(sizes, batch)
    X = model.backend.asarray(X, dtype=model.backend.dtype)
    T = nnkit.CrossEntropy().prepare_target(y, sizes[-1], model.backend)
    opt, loss = SGD(0.01), nnkit.CrossEntropy()
    value = benchmark(model.train_step, X, T, loss, opt, check_input=False)
    assert np.isfinite(float(value))


@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_floor(benchmark, shape):
    """The three matmuls per Dense layer (X·W, Xᵀ·dZ, dZ·Wᵀ), without the first layer's dX."""
    sizes, batch = SHAPES[shape]
    rng = np.random.default_rng(0)
    Ws = [rng.normal(size=(a, b)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    Xs = [rng.normal(size=(batch, a)).astype(np.float32) for a in sizes[:-1]]
    dZs = [rng.normal(size=(batch, b)).astype(np.float32) for b in sizes[1:]]

    def floor():
        for i, (W, X, dZ) in enumerate(zip(Ws, Xs, dZs)):
            X @ W
            X.T @ dZ
            if i:
                dZ @ W.T

    benchmark(floor)
