"""Train here, serve anywhere: ONNX export checked by ONNX Runtime, PyTorch modules both ways, and
scikit-learn's worked partial_fit example."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import nnkit

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")


def _ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _models(d=7, k=3, dtype="float32"):
    """One model per layer type (a Dense around it), and one with all of them."""
    A = nnkit
    singles = {
        "Dense": [A.Dense(d, k)],
        "ReLU": [A.Dense(d, 9), A.ReLU(), A.Dense(9, k)],
        "Sigmoid": [A.Dense(d, 9), A.Sigmoid(), A.Dense(9, k)],
        "Tanh": [A.Dense(d, 9), A.Tanh(), A.Dense(9, k)],
        "LeakyReLU": [A.Dense(d, 9), A.LeakyReLU(0.2), A.Dense(9, k)],
        "ELU": [A.Dense(d, 9), A.ELU(0.7), A.Dense(9, k)],
        "GELU": [A.Dense(d, 9), A.GELU(), A.Dense(9, k)],
        "SiLU": [A.Dense(d, 9), A.SiLU(), A.Dense(9, k)],
        "Softplus": [A.Dense(d, 9), A.Softplus(), A.Dense(9, k)],
        "Softmax": [A.Dense(d, 9), A.Softmax(), A.Dense(9, k)],
        "Identity": [A.Dense(d, 9), A.Identity(), A.Dense(9, k)],
        "Dropout": [A.Dense(d, 9), A.Dropout(0.3), A.Dense(9, k)],
        "BatchNorm": [A.Dense(d, 9), A.BatchNorm(9), A.Dense(9, k)],
        "LayerNorm": [A.Dense(d, 9), A.LayerNorm(9, eps=1e-3), A.Dense(9, k)],
        "Residual": [A.Dense(d, 9), A.Residual([A.Dense(9, 9), A.Tanh(), A.LayerNorm(9)]), A.Dense(9, k)],
    }
    return {name: nnkit.Sequential(layers, seed=1, dtype=dtype) for name, layers in singles.items()}


def _conv_models(dtype="float32"):
    """Conv models on signals and images: every conv, pooling and reshaping layer, starting from table rows:
    (B, 7) for the signals, (B, 12) for the images; grouped convolutions (a depthwise one), one without a bias and
    padded "same" (even kernels: one more zero, or entry, after); reflect, replicate and circular padding; transposed
    convolutions."""
    A = nnkit
    return {
        "Conv1D": [A.Reshape((1, 7)), A.Conv1D(1, 4, 3, stride=2, padding=1, dilation=1, padding_mode="reflect"),
                   A.BatchNorm(4), A.ReLU(), A.MaxPool1D(2, stride=1, padding=1),
                   A.Conv1D(4, 4, 2, padding="same", groups=2, bias=False, padding_mode="replicate"),  # 0 | 1 after
                   A.AvgPool1D(2, padding=1), A.ConvTranspose1D(4, 4, 3, stride=2, padding=1, output_padding=1),
                   A.Flatten(), A.Dense(24, 3)],
        "Conv2D": [A.Reshape((1, 3, -1)), A.Conv2D(1, 3, (2, 3), padding=(1, 1), padding_mode="circular"),
                   A.BatchNorm(3), A.Tanh(), A.Conv2D(3, 3, (2, 4), padding="same"),  # 0/1 before, 1/2 after
                   A.AvgPool2D(2, stride=1), A.Conv2D(3, 6, 2, stride=(1, 2), dilation=(1, 2), groups=3),
                   A.MaxPool2D((2, 1)), A.ConvTranspose2D(6, 4, 2, stride=2, groups=2, bias=False, dilation=(1, 2)),
                   A.GlobalAvgPool(), A.Dense(4, 3)],
    }


def _trained(model, d=7, k=3):
    """A few training steps, so BatchNorm's running statistics and the weights are not their starting values."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, d)) * 3
    y = rng.integers(0, k, size=64)
    model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=3, batch_size=16, verbose=0)
    return model


def _run_onnx(path, X):
    ort = _ort()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, {"input": X}))}


# -- ONNX -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(_models()))
def test_onnx_runtime_equals_predict_for_every_layer_type(name, tmp_path):
    import onnx

    _ort()
    model = _trained(_models()[name])
    path = tmp_path / f"{name}.onnx"
    proto = model.export(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.opset_import[0].version >= 17
    rng = np.random.default_rng(5)
    for rows in (1, 13, 200):  # a dynamic batch dimension
        X = (rng.normal(size=(rows, 7)) * 4).astype(np.float32)
        got = _run_onnx(path, X)["output"]
        np.testing.assert_allclose(got, model.predict(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["Conv1D", "Conv2D"])
def test_onnx_runtime_equals_predict_for_conv_models(name, tmp_path):
    import onnx

    _ort()
    d = 7 if name == "Conv1D" else 12
    model = _trained(nnkit.Sequential(_conv_models()[name], seed=1, input_shape=(d,)), d=d)
    model.export(tmp_path / "c.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "c.onnx")), full_check=True)
    X = (np.random.default_rng(6).normal(size=(11, d)) * 2).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(tmp_path / "c.onnx", X)["output"], model.predict(X), rtol=1e-5, atol=1e-5)
    signal = nnkit.Sequential([nnkit.Conv1D(2, 3, 3), nnkit.GlobalAvgPool(), nnkit.Dense(3, 2)], seed=0)
    signal.export(tmp_path / "s.onnx")  # the length is left open: a dynamic dimension
    for L in (5, 12):
        X = np.random.default_rng(L).normal(size=(4, 2, L)).astype(np.float32)
        np.testing.assert_allclose(_run_onnx(tmp_path / "s.onnx", X)["output"], signal.predict(X), rtol=1e-5,
                                   atol=1e-5)


def test_gelu_is_exported_in_nnkits_tanh_form_and_softplus_stays_finite(tmp_path):
    _ort()
    model = nnkit.Sequential([nnkit.Dense(2, 4), nnkit.GELU(), nnkit.Softplus(), nnkit.Dense(4, 2)], seed=0)
    model.load_state_dict({"0.W": np.array([[1.0, -1.0, 50.0, -50.0], [0.0, 0.0, 0.0, 0.0]]), "0.b": np.zeros(4),
                           "3.W": np.eye(4)[:, :2] + 0.5, "3.b": np.zeros(2)})
    X = np.array([[-3.0, 0.0], [0.5, 1.0], [2.0, 0.0], [100.0, 0.0]], dtype=np.float32)
    model.export(tmp_path / "g.onnx")
    np.testing.assert_allclose(_run_onnx(tmp_path / "g.onnx", X)["output"], model.predict(X), rtol=1e-5, atol=1e-5)


def test_trained_digits_model_with_preprocessing_and_probabilities(tmp_path):
    _ort()
    (X, y), (Xt, yt) = nnkit.datasets.load_digits()
    pre = nnkit.Preprocessing.fit(X, classes=list(range(10)))
    model = nnkit.Sequential.mlp([64, 64, 10], seed=0, norm="batch")
    model.fit(pre.transform(X), y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=5, verbose=0)
    model.preprocessing = pre
    model.save(tmp_path / "digits.npz")
    from nnkit.tools.cli import main

    assert main(["export", str(tmp_path / "digits.npz"), str(tmp_path / "digits.onnx")]) == 0
    raw = Xt.astype(np.float32)
    outs = _run_onnx(tmp_path / "digits.onnx", raw)  # raw features in: scaling runs in the graph
    np.testing.assert_allclose(outs["output"], model.predict(Xt), rtol=1e-5, atol=1e-5)
    labels, proba = model.predict_labels(Xt, proba=True)
    np.testing.assert_allclose(outs["probabilities"], proba, rtol=1e-5, atol=1e-6)
    assert np.array_equal(outs["probabilities"].argmax(axis=1), labels)


def test_fill_values_run_in_the_graph(tmp_path):
    _ort()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    X[::7, 1] = np.nan
    pre = nnkit.Preprocessing.fit(X, impute="median")
    model = nnkit.Sequential.mlp([3, 5, 1], seed=0)
    model.preprocessing = pre
    model.export(tmp_path / "f.onnx")
    got = _run_onnx(tmp_path / "f.onnx", X.astype(np.float32))["output"]
    np.testing.assert_allclose(got, model.predict(X), rtol=1e-5, atol=1e-5)


def test_float64_and_mixed_models_export(tmp_path):
    _ort()
    model = _trained(_models(dtype="float64")["Residual"])
    model.export(tmp_path / "d.onnx")
    X = np.random.default_rng(1).normal(size=(9, 7))
    np.testing.assert_allclose(_run_onnx(tmp_path / "d.onnx", X)["output"], model.predict(X), rtol=1e-10, atol=1e-10)
    if HAS_TORCH:  # a mixed-precision model exports its float32 master weights: the float32 model's numbers
        mixed = nnkit.Sequential.mlp([7, 16, 3], backend="torch", seed=0, precision="mixed_bfloat16")
        mixed.export(tmp_path / "m.onnx")
        X32 = X.astype(np.float32)
        want = nnkit.backends.host_copy(mixed.clone(precision=None).predict(X32))
        np.testing.assert_allclose(_run_onnx(tmp_path / "m.onnx", X32)["output"], want, rtol=1e-5, atol=1e-5)


def test_a_layer_without_onnx_form_is_named_and_nothing_is_written(tmp_path):
    pytest.importorskip("onnx")

    class Square(nnkit.Layer):
        def forward(self, X, train=True):
            return X * X

    model = nnkit.Sequential([nnkit.Dense(3, 4), Square()], seed=0)
    with pytest.raises(ValueError, match=r"layer 1 Square\(\) cannot be exported to ONNX"):
        model.export(tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_mistakes_are_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "nnkit", "export", str(tmp_path / "missing.npz"),
                          str(tmp_path / "m.onnx")], capture_output=True, text=True)
    assert res.returncode == 2 and "no such model file" in res.stderr and "Traceback" not in res.stderr


# -- PyTorch both ways --------------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("name", list(_models()))
def test_to_torch_equals_nnkit_in_float64_in_eval_and_train_mode(name):
    import torch

    model = _trained(_models(dtype="float64")[name])
    net = model.to_torch()
    assert all(type(m).__module__.startswith("torch.nn") or type(m).__name__ == "Residual" for m in net)
    X = np.random.default_rng(2).normal(size=(33, 7)) * 2
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(X)).numpy(), model.predict(X), rtol=1e-6, atol=1e-9)
    if name != "Dropout":  # training mode where nothing is random: BatchNorm on batch statistics
        net.train()
        with torch.no_grad():
            got = net(torch.from_numpy(X)).numpy()
        np.testing.assert_allclose(got, nnkit.backends.host_copy(model.forward(X)), rtol=1e-6, atol=1e-9)


@needs_torch
@pytest.mark.parametrize("name", ["Conv1D", "Conv2D"])
def test_conv_models_to_torch_and_back(name):
    import torch

    d = 7 if name == "Conv1D" else 12
    model = _trained(nnkit.Sequential(_conv_models("float64")[name], seed=1, dtype="float64", input_shape=(d,)), d=d)
    net = model.to_torch()
    assert any(type(m).__name__ in ("Conv1d", "Conv2d") for m in net)
    if name == "Conv2D":
        assert type(net[2]).__name__ == "BatchNorm2d"
    X = np.random.default_rng(2).normal(size=(9, d))
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(X)).numpy(), model.predict(X), rtol=1e-6, atol=1e-9)
        net.train()
        np.testing.assert_allclose(net(torch.from_numpy(X)).numpy(), nnkit.backends.host_copy(model.forward(X)),
                                   rtol=1e-6, atol=1e-9)
    back = nnkit.Sequential.from_torch(model.to_torch(), input_shape=(d,))  # (net's train pass moved its statistics)
    assert back.config() == model.config()
    a, b = model.state_dict(), back.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@needs_torch
def test_from_torch_takes_weights_and_running_statistics_and_one_sgd_step_matches():
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.GELU(approximate="tanh"), nn.Linear(8, 8),
                        nn.LayerNorm(8), nn.SiLU(), nn.Dropout(0.0), nn.Linear(8, 6), nn.LeakyReLU(0.1),
                        nn.Linear(6, 3)).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net.eval()
    X = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    model = nnkit.Sequential.from_torch(net)
    assert model.dtype == "float64" and [type(l).__name__ for l in model.layers][:3] == ["Dense", "BatchNorm", "GELU"]
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(X.numpy()), net(X).numpy(), rtol=1e-12, atol=1e-12)
    # one SGD step in train mode, in both libraries, from the same weights
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(X), y).backward()
    opt.step()
    model.train_step(X.numpy(), y.numpy(), "cross_entropy", nnkit.optim.SGD(0.1))
    back = nnkit.Sequential.from_torch(net).state_dict()
    ours = model.state_dict()
    for k in ours:
        np.testing.assert_allclose(ours[k], back[k], rtol=1e-10, atol=1e-12, err_msg=k)


@needs_torch
def test_from_torch_refuses_what_nnkit_cannot_express_by_name():
    import torch

    nn = torch.nn
    with pytest.raises(ValueError, match=r"module 1 .*LSTM.*nnkit has no layer for LSTM"):
        nnkit.Sequential.from_torch(nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)))
    with pytest.raises(ValueError, match="Linear without bias"):
        nnkit.Sequential.from_torch(nn.Sequential(nn.Linear(4, 4, bias=False)))
    with pytest.raises(ValueError, match="approximate='tanh'"):
        nnkit.Sequential.from_torch(nn.Sequential(nn.Linear(4, 4), nn.GELU()))
    with pytest.raises(TypeError, match="nn.Sequential"):
        nnkit.Sequential.from_torch(nn.Linear(4, 4))


@needs_torch
def test_round_trip_through_torch_keeps_every_weight():
    model = _trained(nnkit.Sequential(_models(dtype="float64")["Residual"].layers + [nnkit.ReLU(), nnkit.Dense(3, 2)],
                                      seed=0, dtype="float64"), k=2)
    back = nnkit.Sequential.from_torch(model.to_torch())
    assert back.config() == model.config()
    a, b = model.state_dict(), back.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# -- scikit-learn's worked example: weights set before the first partial_fit ---------------------------------
def test_weights_assigned_before_the_first_partial_fit_are_used():
    pytest.importorskip("sklearn")
    from nnkit.sklearn import MLPClassifier

    X, y = np.array([[0.6, 0.8, 0.7]]), np.array([0])
    mlp = MLPClassifier(solver="sgd", learning_rate_init=0.1, alpha=0.1, activation="logistic", random_state=1,
                        max_iter=1, hidden_layer_sizes=2, momentum=0)
    mlp.coefs_ = [np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0]]), np.array([[0.1], [0.2]])]
    mlp.intercepts_ = [np.array([0.1, 0.1]), np.array([1.0])]
    mlp.partial_fit(X, y, classes=[0, 1])
    # scikit-learn's test_fit, worked by hand: h = σ(X·W₁ + b₁), o = σ(h·W₂ + b₂), one SGD step with α = 0.1
    np.testing.assert_almost_equal(mlp.coefs_[0], np.array([[0.098, 0.195756], [0.2956664, 0.096008],
                                                            [0.4939998, -0.002244]]), decimal=3)
    np.testing.assert_almost_equal(mlp.coefs_[1], np.array([[0.04706], [0.154089]]), decimal=3)
    np.testing.assert_almost_equal(mlp.intercepts_[0], np.array([0.098333, 0.09626]), decimal=3)
    np.testing.assert_almost_equal(mlp.intercepts_[1], np.array(0.9235), decimal=3)
    np.testing.assert_almost_equal(mlp.predict_proba(X)[0, 1], 0.739, decimal=3)
    bad = MLPClassifier(solver="sgd", hidden_layer_sizes=2)
    bad.coefs_, bad.intercepts_ = [np.zeros((4, 2)), np.zeros((2, 1))], [np.zeros(2), np.zeros(1)]
    with pytest.raises(ValueError, match="coefs_"):
        bad.partial_fit(X, y, classes=[0, 1])
