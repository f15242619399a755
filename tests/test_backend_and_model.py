"""The backend switch, transfers, state dicts, moving models, inference and display."""
import sys

import numpy as np
import pytest

import nnkit
from nnkit.optim import SGD

from helpers import to_np, assert_on_backend


def small(backend="numpy", dtype="float64", seed=0):
    return nnkit.Sequential([nnkit.Dense(4, 6), nnkit.Tanh(), nnkit.Dense(6, 3)],
                            backend=backend, dtype=dtype, seed=seed)


def test_get_backend_by_name_and_module():
    import array_api_strict

    assert nnkit.get_backend("numpy").name == "numpy"
    assert nnkit.get_backend(np).name == "numpy"
    be = nnkit.get_backend(array_api_strict, dtype="float64")
    assert be.name == "array_api_strict" and be.dtype == array_api_strict.float64
    assert nnkit.get_backend(be) is be


def test_cupy_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(RuntimeError, match=r"CuPy, which is not installed: pip install 'nnkit\[cuda12\]'"):
        nnkit.get_backend("cupy")


def test_cupy_without_device_says_so(monkeypatch):
    import types

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(RuntimeError, match="CuPy is installed but no CUDA device is usable.*no CUDA-capable"):
        nnkit.get_backend("cupy")


def test_numpy_and_native_inputs_are_accepted(make_backend):
    be = make_backend()
    model = small(be)
    X = np.random.default_rng(1).normal(size=(5, 4))
    out_host = model.predict(X)
    out_native = model.predict(be.asarray(X))
    assert_on_backend(out_host, be, shape=(5, 3))
    np.testing.assert_array_equal(to_np(out_host), to_np(out_native))
    ints = model.predict([[1, 2, 3, 4]])  # a list of ints works too
    assert_on_backend(ints, be, shape=(1, 3))


def test_predict_in_batches_equals_whole(make_backend):
    model = small(make_backend())
    X = np.random.default_rng(2).normal(size=(11, 4))
    np.testing.assert_allclose(to_np(model.predict(X, batch_size=4)), to_np(model.predict(X)), rtol=0, atol=1e-15)


def test_predict_does_not_disturb_a_pending_backward(make_backend):
    model = small(make_backend())
    X = np.random.default_rng(3).normal(size=(5, 4))
    y = np.array([0, 1, 2, 1, 0])
    _, ref = model.value_and_grad(X, y, "cross_entropy")
    out = model.forward(X)
    model.predict(np.zeros((2, 4)))
    value, d_out = nnkit.CrossEntropy().value_and_grad(out, nnkit.CrossEntropy().prepare_target(y, 3, model.backend))
    grads = model.backward(d_out)
    for k in ref:
        np.testing.assert_array_equal(to_np(grads[k]), to_np(ref[k]))


def test_state_dict_round_trip_and_copies(make_backend):
    model = small(make_backend())
    state = model.state_dict()
    assert list(state) == ["0.W", "0.b", "2.W", "2.b"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["0.W"].shape == (4, 6) and state["0.b"].shape == (6,)
    np.testing.assert_array_equal(state["0.b"], 0.0)  # biases start at zero
    state["0.W"][...] = 7.0  # a copy: the model does not change
    assert not np.any(model.state_dict()["0.W"] == 7.0)
    other = small(make_backend(), seed=99).load_state_dict(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


def test_to_moves_between_backends(make_backend):
    model = small("numpy")
    X = np.random.default_rng(4).normal(size=(3, 4))
    ref = model.predict(X)
    be = make_backend()
    assert model.to(be) is model
    out = model.predict(X)
    assert_on_backend(out, be, shape=(3, 3))
    np.testing.assert_allclose(to_np(out), ref, rtol=1e-14)
    model.train_step(X, np.array([0, 1, 2]), "cross_entropy", SGD(0.1))
    assert model.to("numpy").backend.name == "numpy"


def test_float32_model_keeps_float32(make_backend):
    be = make_backend("float32")
    model = small(be, dtype="float32")
    X = np.random.default_rng(5).normal(size=(4, 4))  # float64 input is cast
    loss, grads = model.value_and_grad(X, np.array([0, 1, 2, 0]), "cross_entropy")
    assert_on_backend(loss, be, shape=())
    for g in grads.values():
        assert g.dtype == be.dtype
    assert model.state_dict()["0.W"].dtype == np.float32


def test_sgd_training_reduces_loss(make_backend):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(64, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    model = small(make_backend())
    opt = SGD(0.5)
    first = float(to_np(model.train_step(X, y, "cross_entropy", opt)))
    for _ in range(100):
        last = model.train_step(X, y, "cross_entropy", opt)
    assert float(to_np(last)) < 0.5 * first


def test_initializers():
    rng = np.random.default_rng(0)
    W = nnkit.init.glorot_uniform(rng, 300, 200)
    limit = np.sqrt(6 / 500)
    assert W.shape == (300, 200) and np.abs(W).max() <= limit and np.abs(W).max() > 0.95 * limit
    assert np.std(nnkit.init.he_normal(rng, 400, 400)) == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert np.std(nnkit.init.lecun_normal(rng, 400, 400)) == pytest.approx(np.sqrt(1 / 400), rel=0.02)
    assert np.std(nnkit.init.glorot_normal(rng, 400, 400)) == pytest.approx(np.sqrt(2 / 800), rel=0.02)
    assert np.abs(nnkit.init.he_uniform(rng, 100, 50)).max() <= np.sqrt(6 / 100)
    assert np.all(np.asarray(nnkit.init.zeros(rng, 3, 2)) == 0)
    m = nnkit.Sequential([nnkit.Dense(3, 2, init="zeros")])
    assert np.all(m.state_dict()["0.W"] == 0)


def test_repr_and_summary():
    model = nnkit.Sequential([nnkit.Dense(64, 128), nnkit.ReLU(), nnkit.Dense(128, 10)])
    s = model.summary()
    assert "Dense(64, 128)" in s and "(B, 128)" in s and "8,320" in s and "9,610" in s
    assert "total params: 9,610" in s and "backend: numpy" in s and "dtype: float32" in s
    assert "(1): ReLU()" in repr(model)
    assert "dW = Xᵀ·dZ" in nnkit.Dense.__doc__ and "db = Σ_batch dZ" in nnkit.Dense.__doc__


def test_mlp_builder():
    model = nnkit.Sequential.mlp([4, 8, 6, 3], "tanh", seed=0)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == ["Dense", "Tanh", "Dense", "Tanh", "Dense"]
    assert [l.init for l in model.layers if isinstance(l, nnkit.Dense)] == ["glorot_uniform"] * 3
    relu = nnkit.Sequential.mlp([4, 8, 3], nnkit.ReLU, dtype="float64", seed=0)
    assert [l.init for l in relu.layers if isinstance(l, nnkit.Dense)] == ["he_uniform", "glorot_uniform"]
    assert relu.dtype == "float64" and (relu.n_features_in, relu.n_outputs) == (4, 3)
    with pytest.raises(ValueError, match="at least an input and an output"):
        nnkit.Sequential.mlp([4])
