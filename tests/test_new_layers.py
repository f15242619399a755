"""Dropout, BatchNorm, LayerNorm, Residual, GELU, SiLU, ELU, Softplus: values and gradients against float64
references written here, gradchecks on every backend, modes, state, checkpoints, resume, moves."""
import math
import pickle

import numpy as np
import pytest

import nnkit

from helpers import to_np

RNG = np.random.default_rng(3)
X = RNG.normal(size=(7, 5)) * 1.5
DY = RNG.normal(size=(7, 5))


# -- independent float64 references --------------------------------------------------------------------
def ref_gelu(z):
    c = math.sqrt(2 / math.pi)
    return 0.5 * z * (1 + np.tanh(c * (z + 0.044715 * z ** 3)))


def ref_silu(z):
    return z / (1 + np.exp(-z))


def ref_elu(z, a=0.7):
    return np.where(z > 0, z, a * (np.exp(z) - 1))


def ref_softplus(z):
    return np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0)


def ref_batchnorm(x, g, b, eps=1e-5):
    mu, var = x.mean(axis=0), x.var(axis=0)
    return (x - mu) / np.sqrt(var + eps) * g + b


def ref_layernorm(x, g, b, eps=1e-5):
    mu, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def numeric_vjp(f, x, dy, eps=1e-6):
    """Σ dy ⊙ ∂f/∂x by central differences (the reference backward)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = np.sum(dy * (f(xp) - f(xm))) / (2 * eps)
    return g


ACTS = [
    ("GELU", lambda: nnkit.GELU(), ref_gelu),
    ("SiLU", lambda: nnkit.SiLU(), ref_silu),
    ("ELU", lambda: nnkit.ELU(0.7), ref_elu),
    ("Softplus", lambda: nnkit.Softplus(), ref_softplus),
]


@pytest.mark.parametrize("name, make, ref", ACTS, ids=[a[0] for a in ACTS])
def test_activation_values_and_backward_match_references(name, make, ref, make_backend):
    be = make_backend()
    layer = make()
    layer.build(be, None)
    out = layer.forward(be.asarray(X, dtype=be.dtype), train=True)
    np.testing.assert_allclose(to_np(out), ref(X), rtol=1e-13, atol=1e-15)
    dX = to_np(layer.backward(be.asarray(DY, dtype=be.dtype)))
    np.testing.assert_allclose(dX, numeric_vjp(ref, X, DY), rtol=1e-7, atol=1e-9)


def test_activations_are_stable_for_large_inputs():
    be = nnkit.get_backend("numpy", dtype="float64")
    z = np.array([[-1000.0, -40.0, 0.0, 40.0, 1000.0]])
    for make, _ in [(a[1], a[2]) for a in ACTS]:
        layer = make()
        layer.build(be, None)
        out = layer.forward(z, train=True)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(layer.backward(np.ones_like(z))))


def test_gelu_exact_form_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="erf"):
        nnkit.GELU(approximate="none")


@pytest.mark.parametrize("kind", ["batch", "layer"])
def test_norm_values_and_backward_match_references(kind, make_backend):
    be = make_backend()
    layer = nnkit.BatchNorm(5) if kind == "batch" else nnkit.LayerNorm(5)
    layer.build(be, None)
    g, b = RNG.normal(size=5), RNG.normal(size=5)
    layer.params = {"gamma": be.asarray(g, dtype=be.dtype), "beta": be.asarray(b, dtype=be.dtype)}
    ref = ref_batchnorm if kind == "batch" else ref_layernorm
    out = layer.forward(be.asarray(X, dtype=be.dtype), train=True)
    np.testing.assert_allclose(to_np(out), ref(X, g, b), rtol=1e-12, atol=1e-12)
    dX = to_np(layer.backward(be.asarray(DY, dtype=be.dtype)))
    np.testing.assert_allclose(dX, numeric_vjp(lambda x: ref(x, g, b), X, DY), rtol=1e-6, atol=1e-8)
    x_hat = ref(X, np.ones(5), np.zeros(5))
    np.testing.assert_allclose(to_np(layer.grads["gamma"]), (DY * x_hat).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(to_np(layer.grads["beta"]), DY.sum(axis=0), rtol=1e-12)


def _nets():
    return {
        "dropout": lambda: [nnkit.Dense(5, 8), nnkit.ReLU(), nnkit.Dropout(0.3), nnkit.Dense(8, 3)],
        "batchnorm": lambda: [nnkit.Dense(5, 8), nnkit.BatchNorm(8), nnkit.Tanh(), nnkit.Dense(8, 3)],
        "layernorm": lambda: [nnkit.Dense(5, 8), nnkit.LayerNorm(8), nnkit.GELU(), nnkit.Dense(8, 3)],
        "residual": lambda: [nnkit.Dense(5, 8), nnkit.SiLU(),
                             nnkit.Residual([nnkit.Dense(8, 8), nnkit.ELU(), nnkit.Dense(8, 8)]),
                             nnkit.Softplus(), nnkit.Dense(8, 3)],
        "everything": lambda: [nnkit.Dense(5, 8), nnkit.BatchNorm(8), nnkit.GELU(), nnkit.Dropout(0.2),
                               nnkit.Residual([nnkit.Dense(8, 8), nnkit.LayerNorm(8), nnkit.SiLU(),
                                               nnkit.Dropout(0.1)]), nnkit.Dense(8, 3)],
    }


@pytest.mark.parametrize("net", list(_nets()))
def test_gradcheck_every_new_layer_on_every_backend(net, make_backend):
    model = nnkit.Sequential(_nets()[net](), backend=make_backend(), dtype="float64", seed=0)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    assert nnkit.gradcheck(model, X, y, "cross_entropy") < 1e-6


def test_a_wrong_norm_derivation_is_caught(monkeypatch):
    from nnkit.layers import normalization

    model = nnkit.Sequential(_nets()["batchnorm"](), dtype="float64", seed=0)
    y = (X[:, 0] > 0).astype(int)
    real = normalization.BatchNorm.backward

    def forgets_the_batch_statistics(self, dY, need_dX=True):
        real(self, dY, need_dX)
        x_hat, s, gamma = self._cache
        return dY * gamma * s  # as if μ and σ² did not depend on X

    monkeypatch.setattr(normalization.BatchNorm, "backward", forgets_the_batch_statistics)
    assert nnkit.gradcheck(model, X, y, "cross_entropy") > 1e-3


# -- modes ------------------------------------------------------------------------------------------------
def test_dropout_modes_and_scale():
    be = nnkit.get_backend("numpy", dtype="float64")
    d = nnkit.Dropout(0.25)
    d.build(be, None)
    d.random = lambda shape, dtype: np.random.default_rng(0).random(shape, dtype=dtype)
    ones = np.ones((2000, 4))
    out = d.forward(ones, train=True)
    assert set(np.unique(out)) <= {0.0, 1 / 0.75} and abs(out.mean() - 1.0) < 0.03
    np.testing.assert_array_equal(d.backward(np.ones_like(out)), out)  # same mask, same scale
    np.testing.assert_array_equal(d.forward(ones, train=False), ones)
    with pytest.raises(ValueError, match="probability"):
        nnkit.Dropout(1.0)


def test_predict_evaluate_and_validation_run_in_inference_mode():
    model = nnkit.Sequential(_nets()["everything"](), dtype="float64", seed=0)
    before = model.state_dict()
    p1, p2 = to_np(model.predict(X)), to_np(model.predict(X))
    np.testing.assert_array_equal(p1, p2)  # no dropout, running statistics: deterministic
    after = model.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)  # predict leaves the running stats alone
    y = (X[:, 0] > 0).astype(int)
    model.evaluate(X, y, "cross_entropy")
    assert all(np.array_equal(model.state_dict()[k], before[k]) for k in before)


def test_batchnorm_inference_equals_the_hand_computation_from_running_statistics(tmp_path):
    rng = np.random.default_rng(1)
    Xtr = rng.normal(loc=2.0, scale=3.0, size=(120, 5))
    y = (Xtr[:, 0] > 2).astype(int)
    model = nnkit.Sequential([nnkit.Dense(5, 6), nnkit.BatchNorm(6, momentum=0.2), nnkit.ReLU(), nnkit.Dense(6, 2)],
                             dtype="float64", seed=0)
    model.fit(Xtr, y, loss="cross_entropy", optimizer="adam", epochs=3, batch_size=16, verbose=0)
    model.save(tmp_path / "bn.npz")
    with np.load(tmp_path / "bn.npz") as f:
        s = {k: f[k] for k in f.files}
    assert "buffer/1.running_mean" in s and "buffer/1.running_var" in s
    rm, rv = s["buffer/1.running_mean"], s["buffer/1.running_var"]
    assert not np.allclose(rm, 0) and not np.allclose(rv, 1)  # they moved in training
    z = Xtr @ s["param/0.W"] + s["param/0.b"]
    h = np.maximum((z - rm) / np.sqrt(rv + 1e-5) * s["param/1.gamma"] + s["param/1.beta"], 0)
    expected = h @ s["param/3.W"] + s["param/3.b"]
    np.testing.assert_allclose(to_np(model.predict(Xtr)), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_np(nnkit.load(tmp_path / "bn.npz").predict(Xtr)), expected, rtol=1e-12, atol=1e-12)


def test_running_statistics_follow_pytorchs_rule():
    be = nnkit.get_backend("numpy", dtype="float64")
    bn = nnkit.BatchNorm(5, momentum=0.1)
    bn.build(be, None)
    bn.forward(X, train=True)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.1 * X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.9 + 0.1 * X.var(axis=0, ddof=1), rtol=1e-12)
    torch = pytest.importorskip("torch")
    ref = torch.nn.BatchNorm1d(5, momentum=0.1, dtype=torch.float64)
    ref.train()
    ref(torch.as_tensor(X))
    np.testing.assert_allclose(bn.buffers["running_var"], ref.running_var.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_mean"], ref.running_mean.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        bn.forward(X[:1], train=True)


# -- state: keys, checkpoints, clone, to, pickle, summary ---------------------------------------------------
def test_residual_keys_nest_and_state_travels(tmp_path):
    model = nnkit.Sequential(_nets()["everything"](), dtype="float64", seed=0)
    keys = list(model.state_dict())
    assert "4.0.W" in keys and "4.1.gamma" in keys and "1.running_mean" in keys
    assert "1.running_mean" not in model.params() and "1.running_mean" in model.buffers()
    y = (X[:, 0] > 0).astype(int)
    model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=4, verbose=0)
    ref = to_np(model.predict(X))
    for twin in (model.clone(), pickle.loads(pickle.dumps(model)), nnkit.Sequential(_nets()["everything"](),
                                                                                  dtype="float64").load_state_dict(model.state_dict())):
        np.testing.assert_array_equal(to_np(twin.predict(X)), ref)
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(to_np(nnkit.load(tmp_path / "m.npz").predict(X)), ref)
    assert "Residual(" in model.summary() and f"{model.n_params:,}" in model.summary()
    assert model.n_params == sum(v.size for k, v in model.state_dict().items() if "running" not in k)
    pytest.importorskip("torch")
    moved = model.clone().to("torch")
    np.testing.assert_allclose(to_np(moved.predict(X)), ref, rtol=1e-12)
    moved.fit(X, y, loss="cross_entropy", epochs=1, batch_size=4, verbose=0)


def test_residual_refuses_a_changed_width():
    with pytest.raises(ValueError, match="keep the width"):
        nnkit.Sequential([nnkit.Dense(5, 8), nnkit.Residual([nnkit.Dense(8, 4)]), nnkit.Dense(4, 2)])


def test_mlp_builder_shapes():
    m = nnkit.Sequential.mlp([40, 100, 100, 10], residual=True)
    assert [type(l).__name__ for l in m.layers] == ["Dense", "ReLU", "Residual", "Dense"]
    m = nnkit.Sequential.mlp([4, 8, 8, 2], activation="gelu", dropout=0.1, norm="layer")
    assert [type(l).__name__ for l in m.layers] == ["Dense", "LayerNorm", "GELU", "Dropout", "Dense", "LayerNorm",
                                                    "GELU", "Dropout", "Dense"]
    with pytest.raises(ValueError, match="norm"):
        nnkit.Sequential.mlp([4, 2], norm="group")


# -- randomness: reproducible, resumable, on the device ----------------------------------------------------
def test_dropout_is_reproducible_and_resume_is_bit_identical(tmp_path):
    rng = np.random.default_rng(2)
    Xs, y = rng.normal(size=(90, 5)), rng.integers(0, 3, 90)

    def make():
        return nnkit.Sequential(_nets()["everything"](), dtype="float64", seed=7)

    kw = dict(loss="cross_entropy", optimizer="adam", batch_size=16, verbose=0)
    a, b = make(), make()
    a.fit(Xs, y, epochs=4, **kw)
    b.fit(Xs, y, epochs=4, **kw)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    first = make()
    first.fit(Xs, y, epochs=2, checkpoint=tmp_path / "r.npz", **kw)
    resumed = nnkit.load(tmp_path / "r.npz")
    resumed.fit(Xs, y, epochs=4, checkpoint=tmp_path / "r.npz", resume=True, **kw)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)


def test_numpy_and_array_api_strict_draw_the_same_masks():
    rng = np.random.default_rng(2)
    Xs, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    out = {}
    for name in ("numpy", "array_api_strict"):
        m = nnkit.Sequential(_nets()["dropout"](), backend=name, dtype="float64", seed=3)
        m.fit(Xs, y, loss="cross_entropy", epochs=2, batch_size=8, verbose=0)
        out[name] = m.state_dict()
    for k in out["numpy"]:
        np.testing.assert_allclose(out["array_api_strict"][k], out["numpy"][k], rtol=1e-12, atol=1e-14)


def test_new_layers_train_on_every_backend_and_draw_no_host_data(make_backend):
    be = make_backend("float32")
    model = nnkit.Sequential(_nets()["everything"](), backend=be, seed=0)
    y = (X[:, 0] > 0).astype(int)
    transfers = be.host_transfers
    h = model.fit(np.concatenate([X] * 4), np.concatenate([y] * 4), loss="cross_entropy", epochs=3, batch_size=7,
                  verbose=0)
    assert be.host_transfers - transfers == 3 and all(np.isfinite(h["loss"]))


def test_jax_compiled_step_carries_buffers_and_the_random_key():
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(2)
    Xs, y = rng.normal(size=(64, 5)).astype(np.float32), rng.integers(0, 3, 64)
    m = nnkit.Sequential(_nets()["everything"](), backend="jax", seed=1)
    h = m.fit(Xs, y, loss="cross_entropy", epochs=3, batch_size=16, verbose=0, compile=True)
    assert all(np.isfinite(h["loss"]))
    assert not np.allclose(to_np(m.buffers()["1.running_mean"]), 0)
    assert isinstance(m.random_key, jax.Array)


def test_distributed_fit_with_norm_and_dropout():
    from test_gpu_paths import RecordingComm

    model = nnkit.Sequential(_nets()["everything"](), dtype="float64", seed=0)
    y = (X[:, 0] > 0).astype(int)
    comm = RecordingComm(model.backend)
    model.fit(np.concatenate([X] * 4), np.concatenate([y] * 4), loss="cross_entropy", epochs=2, batch_size=8,
              verbose=0, comm=comm)
    assert any(w == "broadcast" for w, _ in comm.seen)


def test_cli_builds_the_modern_mlp(capsys):
    from nnkit.tools.cli import main

    assert main(["train", "-q", "--hidden", "64", "64", "--epochs", "5", "--dropout", "0.1", "--norm", "layer",
                 "--residual", "--activation", "gelu"]) == 0
    assert "test accuracy" in capsys.readouterr().out
