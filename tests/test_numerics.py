"""Logits of ±1000 in float32 and float64: no overflow, NaN or warning."""
import warnings

import numpy as np
import pytest

import nnkit
from nnkit import functional as F

from helpers import to_np

Z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, 1000.0], [1000.0, 1000.0, -1000.0]])


@pytest.fixture(autouse=True)
def strict_warnings():
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_functional_extremes(make_backend, dtype):
    be = make_backend(dtype)
    xp, z = be.xp, be.asarray(Z, dtype=be.dtype)
    s = to_np(F.sigmoid(xp, z))
    np.testing.assert_array_equal(s, (Z > 0).astype(float) + 0.5 * (Z == 0))
    p = to_np(F.softmax(xp, z))
    np.testing.assert_allclose(p, [[1, 0, 0], [0, 0, 1], [0.5, 0.5, 0]], atol=1e-7)
    lse = to_np(F.logsumexp(xp, z))
    np.testing.assert_allclose(lse[:, 0], [1000.0, 1000.0, 1000.0 + np.log(2.0)], rtol=1e-6)
    assert np.all(np.isfinite(to_np(F.softplus(xp, z))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_losses_on_extreme_logits(make_backend, dtype):
    be = make_backend(dtype)
    z = be.asarray(Z, dtype=be.dtype)
    # cross-entropy: right class at +1000 costs 0, wrong class costs 2000
    T = nnkit.CrossEntropy().prepare_target(np.array([0, 1, 2]), 3, be)
    value, grad = nnkit.CrossEntropy().value_and_grad(z, T)
    assert float(to_np(value)) == pytest.approx((0 + 2000 + 2000 + np.log(2)) / 3, rel=1e-6)
    g = to_np(grad)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g * 3, [[0, 0, 0], [0, -1, 1], [0.5, 0.5, -1]], atol=1e-6)
    # binary cross-entropy with targets 1: cost 0 at +1000, 1000 at -1000
    value, grad = nnkit.BinaryCrossEntropy().value_and_grad(z, be.asarray(np.ones((3, 3)), dtype=be.dtype))
    assert float(to_np(value)) == pytest.approx((1000 + np.log(2) + 2000 + 1000) / 3, rel=1e-6)
    assert np.all(np.isfinite(to_np(grad)))


@pytest.mark.parametrize("act", [nnkit.Sigmoid, nnkit.Softmax, nnkit.Tanh])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activation_layers_on_extreme_inputs(make_backend, act, dtype):
    be = make_backend(dtype)
    layer = act()
    layer.build(be, None)
    a = layer.forward(be.asarray(Z, dtype=be.dtype))
    dz = layer.backward(be.asarray(np.ones_like(Z), dtype=be.dtype))
    assert np.all(np.isfinite(to_np(a))) and np.all(np.isfinite(to_np(dz)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_train_step_on_huge_logits_stays_finite(make_backend, dtype):
    model = nnkit.Sequential([nnkit.Dense(3, 3)], backend=make_backend(dtype), dtype=dtype, seed=0)
    model.load_state_dict({"0.W": np.eye(3), "0.b": np.zeros(3)})
    for loss, y in (("cross_entropy", np.array([0, 1, 2])), ("binary_cross_entropy", np.ones((3, 3)))):
        value, grads = model.value_and_grad(Z, y, loss)
        assert np.isfinite(float(to_np(value)))
        assert all(np.all(np.isfinite(to_np(g))) for g in grads.values())
