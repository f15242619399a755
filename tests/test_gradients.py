"""Every layer and loss against central finite differences (float64, batch > 1),
and every backend against NumPy to 1e-12."""
import numpy as np
import pytest

import nnkit

from helpers import to_np, assert_on_backend

ACTIVATIONS = [nnkit.Sigmoid, nnkit.Tanh, nnkit.ReLU, lambda: nnkit.LeakyReLU(0.1), nnkit.Softmax,
               nnkit.Identity, nnkit.Abs]
ACT_IDS = ["sigmoid", "tanh", "relu", "leaky_relu", "softmax", "identity", "abs"]
LOSSES = ["mse", "cross_entropy", "binary_cross_entropy"]


def data(loss, n=7, n_in=3, n_out=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    if loss == "cross_entropy":
        y = rng.integers(0, n_out, size=n)
    else:
        y = rng.random((n, n_out))
    return X, y


def net(act, backend, seed=3):
    return nnkit.Sequential([nnkit.Dense(3, 5), act(), nnkit.Dense(5, 4)],
                            backend=backend, dtype="float64", seed=seed)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACT_IDS)
def test_gradcheck_every_layer_and_loss(make_backend, act, loss):
    X, y = data(loss)
    assert nnkit.gradcheck(net(act, make_backend()), X, y, loss) < 1e-6


@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACT_IDS)
def test_gradcheck_activation_as_output_layer(make_backend, act):
    """Activations on the output (e.g. sigmoid + MSE, the worked example's) go through their backward too."""
    X, y = data("mse")
    model = nnkit.Sequential([nnkit.Dense(3, 5), nnkit.Tanh(), nnkit.Dense(5, 4), act()],
                             backend=make_backend(), dtype="float64", seed=1)
    assert nnkit.gradcheck(model, X, y, "mse") < 1e-6


def test_gradcheck_probability_targets_and_leading_activation(make_backend):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(6, 3))
    p = rng.random((6, 4))
    p /= p.sum(axis=1, keepdims=True)
    model = nnkit.Sequential([nnkit.Tanh(), nnkit.Dense(3, 4), nnkit.ReLU(), nnkit.Dense(4, 4)],
                             backend=make_backend(), dtype="float64", seed=2)
    assert nnkit.gradcheck(model, X, p, "cross_entropy") < 1e-6


def test_gradcheck_detects_a_wrong_gradient(monkeypatch):
    """The check can fail: break the Tanh derivative and it must notice."""
    X, y = data("mse")
    monkeypatch.setattr(nnkit.Tanh, "backward", lambda self, dA, need_dX=True: dA * (1.0 - self._cache))
    assert nnkit.gradcheck(net(nnkit.Tanh, "numpy"), X, y, "mse") > 1e-3


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACT_IDS)
def test_every_backend_equals_numpy(make_backend, act, loss):
    X, y = data(loss, n=9)
    be = make_backend()
    ref_loss, ref_grads = net(act, "numpy").value_and_grad(X, y, loss)
    value, grads = net(act, be).value_and_grad(X, y, loss)
    assert_on_backend(value, be, shape=())
    assert abs(float(to_np(value)) - float(ref_loss)) <= 1e-12
    assert set(grads) == set(ref_grads)
    for k, g in grads.items():
        assert_on_backend(g, be, shape=ref_grads[k].shape)
        np.testing.assert_allclose(to_np(g), ref_grads[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_same_initial_weights_on_every_backend(make_backend, dtype):
    layers = lambda: [nnkit.Dense(6, 5), nnkit.ReLU(), nnkit.Dense(5, 3, init="he_normal")]  # noqa: E731
    ref = nnkit.Sequential(layers(), backend="numpy", dtype=dtype, seed=42).state_dict()
    got = nnkit.Sequential(layers(), backend=make_backend(dtype), dtype=dtype, seed=42).state_dict()
    for k in ref:
        assert got[k].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got[k], ref[k])
    other = nnkit.Sequential(layers(), backend="numpy", dtype=dtype, seed=43).state_dict()
    assert not np.array_equal(other["0.W"], ref["0.W"])


def test_first_layer_does_not_compute_dX(monkeypatch):
    """dX = dZ·Wᵀ of the first Dense is never needed: backward must not ask for it."""
    asked = []
    original = nnkit.Dense.backward

    def spy(self, dZ, need_dX=True):
        asked.append(need_dX)
        return original(self, dZ, need_dX)

    monkeypatch.setattr(nnkit.Dense, "backward", spy)
    model = nnkit.Sequential([nnkit.Dense(3, 4), nnkit.ReLU(), nnkit.Dense(4, 4), nnkit.ReLU(),
                              nnkit.Dense(4, 2)], seed=0)
    X, y = data("mse", n_out=2)
    model.value_and_grad(X, y, "mse")
    assert asked == [True, True, False]


@pytest.mark.parametrize("n_in, n_out", [(300, 10), (300, 40), (3, 5)])
def test_a_backends_own_dense_products_equal_the_plain_ones(make_backend, n_in, n_out):
    """Dense's Z = X·W + b and dW = Xᵀ·dZ through the namespace's own forms (``affine``: torch's ``addmm``;
    ``matmul_tn``: (dZᵀ·X)ᵀ on torch's CPU for ≤ 16 outputs of ≥ 256 inputs) equal NumPy's plain products in
    float64, on (B, in) and (B, T, in) inputs, and a wide layer into few classes passes the gradient check."""
    be = make_backend()
    rng = np.random.default_rng(0)
    for shape in [(6, n_in), (3, 2, n_in)]:
        X, dZ = rng.normal(size=shape), rng.normal(size=shape[:-1] + (n_out,))
        ref = nnkit.Dense(n_in, n_out)
        ref.build(nnkit.get_backend("numpy", dtype="float64"), np.random.default_rng(1))
        layer = nnkit.Dense(n_in, n_out)
        layer.build(be, np.random.default_rng(1))
        b = rng.normal(size=n_out)
        ref.params["b"], layer.params["b"] = b, be.asarray(b, dtype=be.dtype)
        np.testing.assert_allclose(to_np(layer.forward(be.asarray(X, dtype=be.dtype))), ref.forward(X),
                                   rtol=1e-12, atol=1e-12)
        dX = layer.backward(be.asarray(dZ, dtype=be.dtype))
        np.testing.assert_allclose(to_np(dX), ref.backward(dZ), rtol=1e-12, atol=1e-12)
        for k in ("W", "b"):
            got = layer.grads[k]
            assert_on_backend(got, be, shape=ref.grads[k].shape)
            np.testing.assert_allclose(to_np(got), ref.grads[k], rtol=1e-12, atol=1e-12)
    if n_in == 300 and n_out == 10:
        X, y = rng.normal(size=(5, n_in)), rng.integers(0, n_out, size=5)
        model = nnkit.Sequential([nnkit.Dense(n_in, n_out)], backend=be, dtype="float64", seed=0)
        assert nnkit.gradcheck(model, X, y, "cross_entropy") < 1e-6
