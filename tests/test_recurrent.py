"""RNN, GRU and LSTM: outputs and every gradient equal PyTorch autograd (float64) over a grid; gradcheck on every
backend; a wrong derivation fails; they save, move, pickle, train and go to PyTorch and back."""
import importlib.util
import pickle

import numpy as np
import pytest

import nnkit
from tests.helpers import to_np

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
rng = np.random.default_rng(0)


def _torch_name(name):
    return name.replace("_reverse", "") + "_l0" + ("_reverse" if name.endswith("_reverse") else "")


GRID = [(kind, bi, rs, shape) for kind in ("RNN", "RNN-relu", "GRU", "LSTM") for bi in (False, True)
        for rs in (True, False) for shape in ((3, 5, 4, 6), (1, 1, 2, 1), (2, 7, 1, 3))]


@needs_torch
@pytest.mark.parametrize("kind,bi,rs,shape", GRID, ids=[f"{k}-bi{int(b)}-seq{int(r)}-{'x'.join(map(str, s))}"
                                                       for k, b, r, s in GRID])
def test_outputs_and_gradients_equal_pytorch(kind, bi, rs, shape):
    import torch

    B, T, Fi, H = shape
    extra = {"nonlinearity": "relu"} if kind == "RNN-relu" else {}
    layer = getattr(nnkit, kind.split("-")[0])(Fi, H, bidirectional=bi, return_sequences=rs, **extra)
    model = nnkit.Sequential([layer], dtype="float64", seed=1)
    net = model.to_torch()
    X = rng.standard_normal((B, T, Fi))
    xt = torch.from_numpy(X).requires_grad_(True)
    yt = net(xt)
    G = rng.standard_normal(tuple(yt.shape))
    (yt * torch.from_numpy(G)).sum().backward()
    Y = model.forward(X)
    dX = layer.backward(G, need_dX=True)
    np.testing.assert_allclose(Y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dX, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    rnn = net[0].rnn
    for name in layer.param_names:
        np.testing.assert_allclose(layer.grads[name], getattr(rnn, _torch_name(name)).grad.numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_gradcheck_on_every_backend(make_backend, kind):
    layer = getattr(nnkit, kind)(3, 4, bidirectional=True)
    model = nnkit.Sequential([layer, nnkit.Flatten(), nnkit.Dense(4 * 2 * 4, 3)], backend=make_backend("float64"),
                             seed=0)
    X = rng.standard_normal((2, 4, 3))
    y = np.array([0, 2])
    report = nnkit.gradcheck(model, X, y, "cross_entropy")
    assert report < 1e-6, str(report)
    assert {"0.weight_ih", "0.weight_hh_reverse", "0.bias_hh"} <= set(report.errors)


def test_a_wrong_derivation_fails(monkeypatch):
    from nnkit.layers import recurrent

    def wrong(self, xp, dstate, keep, p):  # forgets the direct path dh ⊙ z of the GRU
        dgi, dgh, direct, h_prev = right(self, xp, dstate, keep, p)
        return dgi, dgh, (direct[0] * 0.0,), h_prev

    right = recurrent.GRU._step_back
    monkeypatch.setattr(recurrent.GRU, "_step_back", wrong)
    model = nnkit.Sequential([nnkit.GRU(2, 3), nnkit.Flatten(), nnkit.Dense(12, 2)], dtype="float64", seed=0)
    report = nnkit.gradcheck(model, rng.standard_normal((2, 4, 2)), np.array([0, 1]), "cross_entropy")
    assert report > 1e-3 and report.failing()


def test_gru_base_of_mnist1d_trains_saves_and_moves(tmp_path):
    """MNIST-1D's GRUBase shape: a signal of 40 samples as 40 steps of one feature, a bidirectional GRU of
    hidden size 6, all 40 outputs flattened into Dense(480, 10)."""
    X = rng.standard_normal((64, 40)).astype(np.float32)
    y = (X[:, :20].sum(axis=1) > 0).astype(int) + 2 * (X[:, 20:].sum(axis=1) > 0)
    model = nnkit.Sequential([nnkit.Reshape((40, 1)), nnkit.GRU(1, 6, bidirectional=True), nnkit.Flatten(),
                              nnkit.Dense(480, 10)], seed=0)
    assert model.n_params == 2 * (3 * 6 * 1 + 3 * 6 * 6 + 2 * 18) + 480 * 10 + 10
    hist = model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=8, batch_size=16, verbose=0)
    assert hist["loss"][-1] < hist["loss"][0]
    model.save(tmp_path / "gru.npz")
    loaded = nnkit.load(tmp_path / "gru.npz")
    np.testing.assert_allclose(to_np(loaded.predict(X)), to_np(model.predict(X)), rtol=1e-6)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(to_np(again.predict(X)), to_np(model.predict(X)), rtol=1e-6)
    strict = model.clone(backend="array_api_strict")
    np.testing.assert_allclose(to_np(strict.predict(X)), to_np(model.predict(X)), rtol=1e-5, atol=1e-6)
    assert "GRU(1, 6, bidirectional=True)" in model.summary()


@needs_torch
def test_to_pytorch_and_back_with_every_setting():
    for layer in (nnkit.RNN(3, 2, nonlinearity="relu"), nnkit.GRU(3, 2, bidirectional=True, return_sequences=False),
                  nnkit.LSTM(3, 2, bidirectional=True)):
        model = nnkit.Sequential([layer], dtype="float64", seed=0)
        back = nnkit.Sequential.from_torch(model.to_torch(), dtype="float64")
        assert back.layers[0].config() == layer.config()
        X = rng.standard_normal((2, 5, 3))
        np.testing.assert_allclose(to_np(back.predict(X)), to_np(model.predict(X)), rtol=1e-12)


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        nnkit.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"X has shape \(B, 5, 2\) but the model expects \(B, \?, 3\)"):
        nnkit.Sequential([nnkit.GRU(3, 4)]).predict(np.zeros((2, 5, 2)))
    with pytest.raises(ValueError, match=r"expects \(B, T, 3\) sequences"):
        nnkit.Sequential([nnkit.Dense(4, 3), nnkit.GRU(3, 4)])


@pytest.mark.parametrize("kind,bi,rs", [(k, b, r) for k in ("RNN", "RNN-relu", "GRU", "LSTM") for b in (False, True)
                                        for r in (True, False)])
def test_onnx_runtime_equals_predict(kind, bi, rs):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    extra = {"nonlinearity": "relu"} if kind == "RNN-relu" else {}
    layer = getattr(nnkit, kind.split("-")[0])(3, 4, bidirectional=bi, return_sequences=rs, **extra)
    model = nnkit.Sequential([layer], seed=0, input_shape=(None, 3))
    X = rng.standard_normal((2, 6, 3)).astype(np.float32)
    sess = ort.InferenceSession(model.export(None).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": X})[0], to_np(model.predict(X)), rtol=1e-5, atol=1e-6)


def test_dense_layernorm_and_activations_act_on_the_last_axis_of_sequences(make_backend):
    model = nnkit.Sequential([nnkit.LSTM(3, 4), nnkit.Dense(4, 5), nnkit.GELU(), nnkit.LayerNorm(5), nnkit.Dropout(0.2),
                              nnkit.Flatten(), nnkit.Dense(6 * 5, 2)], backend=make_backend("float64"), seed=0)
    assert model.output_shape((6, 3)) == (2,)
    X = rng.standard_normal((3, 6, 3))
    assert nnkit.gradcheck(model, X, np.array([0, 1, 1]), "cross_entropy") < 1e-6
    with pytest.raises(ValueError, match=r"expects 7 input features on its last axis, \(B, \.\.\., 7\)"):
        nnkit.Sequential([nnkit.GRU(3, 4), nnkit.Dense(7, 2)])


@needs_torch
def test_dense_on_sequences_equals_torch_linear():
    import torch

    model = nnkit.Sequential([nnkit.Dense(4, 3)], dtype="float64", seed=0, input_shape=(None, 4))
    X = rng.standard_normal((2, 5, 4))
    lin = model.to_torch()
    np.testing.assert_allclose(to_np(model.predict(X)), lin(torch.from_numpy(X)).detach().numpy(), rtol=1e-12)


def test_cli_trains_a_recurrent_network_on_signals(tmp_path, capsys):
    from nnkit.tools.cli import main

    assert main(["train", "--data", "xor", "--rnn", "gru", "--hidden", "8", "--bidirectional", "--epochs", "3",
                 "--quiet", "--save", str(tmp_path / "gru.npz")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    model = nnkit.load(tmp_path / "gru.npz")
    assert [type(l).__name__ for l in model.layers] == ["Reshape", "GRU", "Dense"]
    assert model.layers[1].bidirectional and not model.layers[1].return_sequences
    assert main(["train", "--data", "xor", "--rnn", "lstm", "--conv", "4", "--quiet"]) == 2


def test_stacked_rnn_factory():
    model = nnkit.Sequential.rnn((7, 3), "lstm", (5, 4), n_outputs=2, seed=0)
    assert [l.return_sequences for l in model.layers[:2]] == [True, False]
    assert model.output_shape() == (2,)
    with pytest.raises(ValueError, match="kind must be"):
        nnkit.Sequential.rnn(7, "transformer")


@pytest.mark.slow
def test_compiled_and_mixed_precision_recurrent_fits():
    pytest.importorskip("jax")
    X = rng.standard_normal((32, 6, 2)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    eager = nnkit.Sequential.rnn((6, 2), "gru", (4,), n_outputs=2, backend="jax", seed=0)
    jit = nnkit.Sequential.rnn((6, 2), "gru", (4,), n_outputs=2, backend="jax", seed=0)
    he = eager.fit(X, y, loss="cross_entropy", epochs=2, batch_size=8, verbose=0)
    hj = jit.fit(X, y, loss="cross_entropy", epochs=2, batch_size=8, verbose=0, compile=True)
    np.testing.assert_allclose(hj["loss"], he["loss"], rtol=1e-4)
    if HAS_TORCH:
        mixed = nnkit.Sequential.rnn((6, 2), "lstm", (4,), n_outputs=2, backend="torch", seed=0,
                                     precision="mixed_bfloat16")
        hist = mixed.fit(X, y, loss="cross_entropy", epochs=2, batch_size=8, verbose=0)
        assert np.all(np.isfinite(hist["loss"]))


def test_scan_is_lax_scan_in_python():
    """``nnkit.functional.scan``'s loop (every backend's eager form) has ``lax.scan``'s semantics: outputs at
    their step's index, ``reverse`` from the last step, None entries passed through, tuples nested."""
    from nnkit.functional import python_scan

    xs = (np.arange(12.0).reshape(4, 3), None, (np.arange(4.0),))

    def body(c, x):
        a, none, (b,) = x
        assert none is None
        return c * 2 + b, (a * c, (b + c,))

    for reverse in (False, True):
        carry, (ys, (zs,)) = python_scan(np, body, 1.0, xs, reverse=reverse)
        c, want_y, want_z = 1.0, [None] * 4, [None] * 4
        for t in (range(3, -1, -1) if reverse else range(4)):
            want_y[t], want_z[t] = xs[0][t] * c, xs[2][0][t] + c
            c = c * 2 + xs[2][0][t]
        assert carry == c
        np.testing.assert_array_equal(ys, np.stack(want_y))
        np.testing.assert_array_equal(zs, np.stack(want_z))
        if importlib.util.find_spec("jax") is not None:
            import jax

            jc, (jy, (jz,)) = jax.jit(lambda xs: jax.lax.scan(body, 1.0, xs, reverse=reverse))(xs)
            np.testing.assert_allclose(np.asarray(jy), ys)
            np.testing.assert_allclose(np.asarray(jz), zs)
            assert float(jc) == carry


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_compiled_recurrence_is_one_loop_not_t_unrolled_copies(monkeypatch, kind):
    """compile=True on JAX: the time loop is ``lax.scan`` — each cell's step and step back are traced a fixed
    number of times whatever T (unrolled, they would be traced T times per direction) — and the compiled fit,
    variable lengths included, equals the eager one to float32 round-off."""
    pytest.importorskip("jax")
    cls = getattr(nnkit, kind)
    calls = {"step": 0, "back": 0}
    step, back = cls._step, cls._step_back
    monkeypatch.setattr(cls, "_step", lambda self, *a: calls.__setitem__("step", calls["step"] + 1) or step(self, *a))
    monkeypatch.setattr(cls, "_step_back",
                        lambda self, *a: calls.__setitem__("back", calls["back"] + 1) or back(self, *a))
    counts = {}
    for T in (5, 40):
        seqs = [rng.standard_normal((t, 2)).astype(np.float32) for t in [T, T - 3, 2, T - 1] * 4]
        y = rng.integers(0, 2, size=16)
        runs = []
        for compile_ in (False, True):
            model = nnkit.Sequential([cls(2, 3, bidirectional=True, return_sequences=False), nnkit.Dense(6, 2)],
                                     backend="jax", seed=0)
            for k in calls:
                calls[k] = 0
            hist = model.fit(seqs, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(0.01), epochs=2,
                             batch_size=16, verbose=0, compile=compile_, shuffle=False)
            runs.append((hist["loss"], {k: to_np(v) for k, v in model.params().items()}))
        counts[T] = dict(calls)
        np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=2e-5)
        for k, v in runs[0][1].items():
            np.testing.assert_allclose(runs[1][1][k], v, rtol=1e-4, atol=1e-5, err_msg=k)
    assert counts[5] == counts[40], counts  # the same traces at T = 5 and T = 40: one loop, compiled once
    assert 0 < counts[40]["step"] <= 8 and 0 < counts[40]["back"] <= 8, counts


def test_a_checkpoint_claiming_a_huge_hidden_size_is_refused_before_any_allocation(tmp_path):
    import tracemalloc
    import zipfile

    model = nnkit.Sequential([nnkit.GRU(2, 3), nnkit.Flatten(), nnkit.Dense(12, 2)], input_shape=(4, 2), seed=0)
    model.save(tmp_path / "ok.npz")
    with zipfile.ZipFile(tmp_path / "ok.npz") as zin, zipfile.ZipFile(tmp_path / "huge.npz", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "__nnkit__.npy":
                data = data.decode("latin-1").replace('"hidden_size": 3', '"hidden_size": 3000000000').encode("latin-1")
            zout.writestr(item, data)
    tracemalloc.start()
    with pytest.raises(nnkit.CheckpointError):
        nnkit.load(tmp_path / "huge.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 30 * 2**20


def test_explain_goes_through_a_recurrent_layer():
    model = nnkit.Sequential([nnkit.GRU(2, 3, return_sequences=False), nnkit.Dense(3, 2)], dtype="float64", seed=0)
    report = model.explain(rng.standard_normal((2, 4, 2)), np.array([0, 1]), "cross_entropy")
    assert "dweight_ih of layer 0" in str(report) and report.values["dweight_hh0"].shape == (9, 3)
