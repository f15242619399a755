"""Per-position targets: the per-example case (B, K) unchanged bit for bit, losses over positions with weights
that mask equal to PyTorch's, metrics over the valid positions equal to scikit-learn's, a character model's
step equal to PyTorch's."""
import importlib.util
import os
import sys

import numpy as np
import pytest

import nnkit
from tests.helpers import to_np

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
DATA = os.path.join(os.path.dirname(__file__), "data")


def _pinned():
    sys.path.insert(0, DATA)
    try:
        import make_pinned_fits
    finally:
        sys.path.remove(DATA)
    return make_pinned_fits


def test_per_example_fits_are_bit_identical_to_before_per_position_targets():
    """The fits pinned by the code before this change (``tests/data/make_pinned_fits.py``): the same weights bit
    for bit, and the same logs — but for the weighted fits' logs, whose Σw is now summed on the device batch by
    batch with the loss (one path for a batch's statistics) instead of on the host over the whole array: those
    agree to the rounding of that sum.  Bit for bit where this machine's BLAS runs the pinning machine's kernel and
    gives its matmul bit for bit, else to 1e-12."""
    mk = _pinned()
    want = np.load(os.path.join(DATA, "pinned_fits.npz"))
    same_blas = np.array_equal(mk.fingerprint(), want["blas"]) and mk.blas_kernel() == str(want["blas_kernel"])
    fits = mk.fits()
    checked = 0
    for name, (model, hist) in fits.items():
        got = {f"{name}/param/{k}": to_np(p) for k, p in model.params().items()}
        got.update({f"{name}/log/{k}": np.asarray(v, dtype=np.float64) for k, v in hist.items() if k != "time"})
        assert sorted(got) == sorted(k for k in want.files if k.startswith(name + "/"))
        for key, value in got.items():
            weighted_log = "_w/log/" in key
            if same_blas and not weighted_log:
                np.testing.assert_array_equal(value, want[key], err_msg=key)
            elif same_blas:
                np.testing.assert_allclose(value, want[key], rtol=1e-6 if "float32" in key else 1e-15, err_msg=key)
            else:  # pragma: no cover - another machine's BLAS sums in another order
                np.testing.assert_allclose(value, want[key], rtol=1e-5 if "float32" in key else 1e-12, err_msg=key)
            checked += 1
    assert checked == len(want.files) - 2  # all but the two BLAS keys


# -- losses over positions: the weighted mean Σ w·ℓ / Σ w over every position --------------------------------
def _position_batch(kind, B=4, T=5, K=3, seed=0):
    """Outputs (B, T, K), targets ((B, T) labels for cross-entropy, else (B, T, K) values) and weights (B, T) that
    mask sequences of lengths 5, 1, 3, 4 and weigh the rest unequally."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((B, T, K)) * 2
    if kind == "cross_entropy":
        y = rng.integers(0, K, size=(B, T))
    elif kind == "cross_entropy_soft":
        y = rng.dirichlet(np.ones(K), size=(B, T))
    elif kind == "binary_cross_entropy":
        y = rng.uniform(0, 1, size=(B, T, K))
    elif kind == "poisson":
        y = rng.poisson(2.0, size=(B, T, K)).astype(np.float64)
    else:
        y = rng.standard_normal((B, T, K))
    lengths = np.array([5, 1, 3, 4])
    w = (np.arange(T)[None, :] < lengths[:, None]) * rng.uniform(0.5, 2.0, size=(B, T))
    return out, y, w


def _torch_per_position(kind, out, y):
    """PyTorch's loss at each position (B, T), nnkit's definition: summed over the K outputs of a position."""
    import torch
    import torch.nn.functional as tF

    z = out
    K = z.shape[-1]
    if kind == "cross_entropy":
        return tF.cross_entropy(z.reshape(-1, K), y.reshape(-1), reduction="none").reshape(y.shape)
    if kind == "cross_entropy_soft":
        return tF.cross_entropy(z.reshape(-1, K), y.reshape(-1, K), reduction="none").reshape(y.shape[:-1])
    if kind == "binary_cross_entropy":
        return tF.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)
    if kind == "poisson":
        return tF.poisson_nll_loss(z, y, log_input=True, full=False, reduction="none").sum(-1)
    return 0.5 * ((z - y) ** 2).sum(-1)


LOSS_NAME = {"cross_entropy": "cross_entropy", "cross_entropy_soft": "cross_entropy", "mse": "mse",
             "binary_cross_entropy": "binary_cross_entropy", "poisson": "poisson"}


@needs_torch
@pytest.mark.parametrize("per", ["position", "sequence", "none"])
@pytest.mark.parametrize("kind", list(LOSS_NAME))
def test_every_loss_over_positions_is_the_weighted_mean_over_tokens_as_pytorch(kind, per):
    """L = Σ w·ℓ / Σ w over the B·T positions and ∂L/∂out (B, T, K), equal to PyTorch's in float64 to 1e-12;
    a per-sequence mean (each sequence's own mean, then the mean over sequences) differs, so it would fail."""
    import torch

    out, y, w = _position_batch(kind)
    if per == "sequence":
        w = w[:, 0] * np.array([1.0, 3.0, 0.5, 2.0])
    loss = nnkit.get_loss(LOSS_NAME[kind])
    W = None if per == "none" else w
    value, grad = loss.value_and_grad(out, y, W)
    zt = torch.from_numpy(out).requires_grad_(True)
    ell = _torch_per_position(kind, zt, torch.from_numpy(y))
    wt = torch.ones_like(ell) if W is None else torch.from_numpy(np.broadcast_to(
        W if W.ndim == 2 else W[:, None], ell.shape).copy())
    ref = (ell * wt).sum() / wt.sum()
    ref.backward()
    assert tuple(grad.shape) == out.shape
    assert abs(float(value) - ref.item()) <= 1e-12 * abs(ref.item())
    np.testing.assert_allclose(to_np(grad), zt.grad.numpy(), rtol=1e-12, atol=1e-15)
    if per == "position":  # the wrong normalisation — per sequence, then over sequences — gives another number
        per_seq = ((ell * wt).sum(1) / wt.sum(1)).mean().item()
        assert abs(per_seq - ref.item()) > 1e-3


@needs_torch
def test_masked_tokens_are_pytorchs_ignore_index():
    """Zero weights at the padding: the mean over the counted tokens, PyTorch's ``ignore_index``."""
    import torch
    import torch.nn.functional as tF

    out, y, w = _position_batch("cross_entropy")
    mask = (w > 0).astype(np.float64)
    value, grad = nnkit.CrossEntropy().value_and_grad(out, y, mask)
    zt = torch.from_numpy(out).requires_grad_(True)
    target = torch.from_numpy(np.where(mask > 0, y, -100))
    ref = tF.cross_entropy(zt.reshape(-1, 3), target.reshape(-1), ignore_index=-100)
    ref.backward()
    assert abs(float(value) - ref.item()) <= 1e-12 * ref.item()
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert np.all(grad[mask == 0] == 0.0)


def test_integer_targets_are_never_one_hot(make_backend):
    """Per-position class targets stay (B, T) integers on the device: the data path keeps labels, and the loss's
    gradient softmax − onehot is formed at the target index (equal to the one-hot form)."""
    be = make_backend("float64")
    out, y, w = _position_batch("cross_entropy")
    loss = nnkit.CrossEntropy()
    Z = be.asarray(out, dtype=be.dtype)
    labels = be.asarray(y)
    value, grad = loss.value_and_grad(Z, labels, be.asarray(w, dtype=be.dtype))
    onehot = be.asarray(np.eye(3)[y], dtype=be.dtype)
    v1, g1 = loss.value_and_grad(Z, onehot, be.asarray(w, dtype=be.dtype))
    tol = 1e-12 if be.dtype_name == "float64" else 1e-5
    np.testing.assert_allclose(to_np(value), to_np(v1), rtol=tol)
    np.testing.assert_allclose(to_np(grad), to_np(g1), rtol=tol, atol=tol)
    model = nnkit.Sequential([nnkit.Embedding(6, 4), nnkit.GRU(4, 5), nnkit.Dense(5, 3)], backend=be,
                             dtype=be.dtype_name, seed=0)
    X = np.random.default_rng(0).integers(0, 6, size=(4, 5))
    nnkit.data.as_input(model, X)  # the batch's shape checked: the model's outputs are (4, 5, 3)
    T = nnkit.data.as_target(model, y, 4, loss)
    assert tuple(T.shape) == (4, 5)
    assert be.xp.isdtype(T.dtype, "integral")


# -- metrics over the valid positions ------------------------------------------------------------------------
def _tagger(make_backend, K, n=23, T=6, F=4, seed=0):
    """A per-position classifier: Dense over (n, T, F) → logits (n, T, K), with (n, T) labels and (n, T) weights
    whose zeros mask a suffix of each sequence."""
    rng = np.random.default_rng(seed)
    model = nnkit.Sequential([nnkit.Dense(F, 8), nnkit.Tanh(), nnkit.Dense(8, K)], backend=make_backend("float64"),
                             input_shape=(None, F), seed=1)
    X = rng.standard_normal((n, T, F))
    y = rng.integers(0, K, size=(n, T))
    lengths = rng.integers(1, T + 1, size=n)
    w = (np.arange(T)[None, :] < lengths[:, None]) * rng.uniform(0.5, 2.0, size=(n, T))
    return model, X, y, w


@pytest.mark.parametrize("K", [2, 4])  # 2: binary (the positive class 1); 4: macro, one-vs-rest
def test_metrics_over_positions_equal_sklearn_on_the_flattened_valid_positions(make_backend, K):
    """Every metric of a per-position model equals scikit-learn's on the flattened positions whose weight is not
    zero, with the flattened weights — through evaluate, in batches, and as fit's logs."""
    sk = pytest.importorskip("sklearn.metrics")
    model, X, y, w = _tagger(make_backend, K)
    names = ["accuracy", "top_2_accuracy", "precision_macro", "recall_weighted", "f1_micro", "f1", "auc"]
    logs = model.evaluate(X, y, "cross_entropy", metrics=names, sample_weight=w, batch_size=7)
    Z = to_np(model.predict(X)).reshape(-1, K)
    keep = w.ravel() > 0
    Z, t, ww = Z[keep], y.ravel()[keep], w.ravel()[keep]
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    pred = Z.argmax(1)
    avg = "binary" if K == 2 else "macro"
    want = {
        "loss": float(np.sum(ww * -np.log(P[np.arange(len(t)), t])) / ww.sum()),
        "accuracy": sk.accuracy_score(t, pred, sample_weight=ww),
        "top_2_accuracy": 1.0 if K == 2 else sk.top_k_accuracy_score(t, Z, k=2, sample_weight=ww),
        "precision_macro": sk.precision_score(t, pred, average="macro", sample_weight=ww, zero_division=0),
        "recall_weighted": sk.recall_score(t, pred, average="weighted", sample_weight=ww, zero_division=0),
        "f1_micro": sk.f1_score(t, pred, average="micro", sample_weight=ww, zero_division=0),
        "f1": sk.f1_score(t, pred, average=avg, sample_weight=ww, zero_division=0),
        "auc": sk.roc_auc_score(t, P[:, 1] if K == 2 else P, sample_weight=ww, multi_class="ovr"),
    }
    for name, value in want.items():
        assert logs[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    np.testing.assert_allclose(nnkit.metrics.confusion_matrix(t, pred, K, ww),
                               sk.confusion_matrix(t, pred, labels=np.arange(K), sample_weight=ww), rtol=1e-12)


def test_regression_metrics_over_positions_equal_sklearn(make_backend):
    """R², MSE and MAE of a (n, T, K) regression over the valid positions."""
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    model = nnkit.Sequential([nnkit.Dense(3, 2)], backend=make_backend("float64"), input_shape=(None, 3), seed=0)
    X = rng.standard_normal((17, 5, 3))
    y = rng.standard_normal((17, 5, 2))
    w = (rng.uniform(size=(17, 5)) > 0.3) * rng.uniform(0.5, 2.0, size=(17, 5))
    logs = model.evaluate(X, y, "mse", metrics=["r2", "mse", "mae"], sample_weight=w, batch_size=6)
    out = to_np(model.predict(X)).reshape(-1, 2)
    keep = w.ravel() > 0
    out, t, ww = out[keep], y.reshape(-1, 2)[keep], w.ravel()[keep]
    assert logs["r2"] == pytest.approx(sk.r2_score(t, out, sample_weight=ww), rel=1e-9)
    assert logs["mse"] == pytest.approx(sk.mean_squared_error(t, out, sample_weight=ww), rel=1e-9)
    assert logs["mae"] == pytest.approx(sk.mean_absolute_error(t, out, sample_weight=ww), rel=1e-9)
    assert logs["loss"] == pytest.approx(0.5 * 2 * sk.mean_squared_error(t, out, sample_weight=ww), rel=1e-9)


def test_fit_logs_and_monitors_see_the_per_position_means(tmp_path):
    """fit's logs are the means over the valid positions (evaluate's numbers at the epoch's end); EarlyStopping
    and ModelCheckpoint watch them and CSVLogger writes them."""
    model, X, y, w = _tagger(lambda dtype: nnkit.get_backend("numpy", dtype=dtype), 3, n=40)
    Xv, yv, wv = X[30:], y[30:], w[30:]
    csv = tmp_path / "log.csv"
    ckpt = tmp_path / "best.npz"
    hist = model.fit(X[:30], y[:30], loss="cross_entropy", optimizer=nnkit.optim.SGD(1e-30), epochs=2, batch_size=8,
                     sample_weight=w[:30], validation_data=(Xv, yv, wv), metrics=["accuracy", "f1"], verbose=0,
                     callbacks=[nnkit.callbacks.CSVLogger(str(csv)),
                                nnkit.ModelCheckpoint(str(ckpt), monitor="val_f1", mode="max", save_best_only=True),
                                nnkit.EarlyStopping(monitor="val_accuracy", mode="max", patience=5)])
    ref = model.evaluate(Xv, yv, "cross_entropy", metrics=["accuracy", "f1"], sample_weight=wv)
    train = model.evaluate(X[:30], y[:30], "cross_entropy", metrics=["accuracy", "f1"], sample_weight=w[:30])
    for k in ("loss", "accuracy", "f1"):  # lr 1e-30: the weights do not move, so the epoch's logs are evaluate's
        assert hist["val_" + k][-1] == pytest.approx(ref[k], rel=1e-12)
        assert hist[k][-1] == pytest.approx(train[k], rel=1e-12)
    assert ckpt.exists()
    rows = csv.read_text().strip().splitlines()
    assert "val_f1" in rows[0] and len(rows) == 3


# -- end to end: a character model trained per position, beside PyTorch ---------------------------------------
def _char_model(V=11, d=6, H=8):
    return nnkit.Sequential([nnkit.Embedding(V, d), nnkit.GRU(d, H), nnkit.Dense(H, V)], dtype="float64", seed=4)


def _torch_twin(torch, model):
    """The same network in PyTorch (Embedding, GRU(batch_first), Linear), the same weights."""
    emb, gru, dense = model.layers
    V, d = emb.params["weight"].shape
    H = gru.hidden_size
    net = torch.nn.ModuleDict({"emb": torch.nn.Embedding(V, d), "gru": torch.nn.GRU(d, H, batch_first=True),
                               "out": torch.nn.Linear(H, V)}).double()
    with torch.no_grad():
        net["emb"].weight.copy_(torch.from_numpy(to_np(emb.params["weight"])))
        for name in gru.param_names:
            getattr(net["gru"], name + "_l0").copy_(torch.from_numpy(to_np(gru.params[name])))
        net["out"].weight.copy_(torch.from_numpy(to_np(dense.params["W"]).T))
        net["out"].bias.copy_(torch.from_numpy(to_np(dense.params["b"])))
    return net


@needs_torch
@pytest.mark.parametrize("door", ["train_step", "fit"])
def test_char_model_sgd_step_equals_pytorchs_over_the_flattened_tokens(door):
    """(N, T) character ids in, (N, T) next characters as targets: one SGD step from the same weights equals
    PyTorch's step on ``F.cross_entropy`` over the flattened tokens, to 1e-9 in float64."""
    import torch
    import torch.nn.functional as tF

    rng = np.random.default_rng(5)
    text = rng.integers(0, 11, size=6 * 9 + 1)
    X = np.stack([text[i * 9:i * 9 + 9] for i in range(6)])
    y = np.stack([text[i * 9 + 1:i * 9 + 10] for i in range(6)])
    model = _char_model()
    net = _torch_twin(torch, model)
    if door == "train_step":
        model.train_step(X, y, "cross_entropy", nnkit.optim.SGD(0.5))
    else:
        model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.5), epochs=1, batch_size=6, shuffle=False,
                  verbose=0)
    h, _ = net["gru"](net["emb"](torch.from_numpy(X)))
    logits = net["out"](h)
    tF.cross_entropy(logits.reshape(-1, 11), torch.from_numpy(y).reshape(-1)).backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 0.5 * p.grad
    emb, gru, dense = model.layers
    np.testing.assert_allclose(to_np(emb.params["weight"]), net["emb"].weight.detach().numpy(), rtol=1e-9, atol=1e-12)
    for name in gru.param_names:
        np.testing.assert_allclose(to_np(gru.params[name]), getattr(net["gru"], name + "_l0").detach().numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(to_np(dense.params["W"]), net["out"].weight.detach().numpy().T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(to_np(dense.params["b"]), net["out"].bias.detach().numpy(), rtol=1e-9, atol=1e-12)


# -- bad input: a clear error naming the batch and what was expected, the model unchanged ---------------------
BAD = {  # what is wrong -> (the data, the words of the error; {n}: the rows of the batch that holds it)
    "targets one position short": (lambda X, y: (X, y[:, :5], None), "per-position targets are (B, 6) class labels"),
    "a label out of range": (lambda X, y: (X, np.where(np.arange(6) == 2, 7, y), None), "y[0, 2] = 7 is not a class"),
    "a negative label": (lambda X, y: (X, np.where(np.arange(6) == 4, -1, y), None), "y[0, 4] = -1 is not a class"),
    "weights of the wrong shape": (lambda X, y: (X, y, np.ones((10, 5))), "({n},) (one weight per row) or ({n}, 6)"),
    "negative weights": (lambda X, y: (X, y, -np.ones((10, 6))), "non-negative"),
    "all-zero weights": (lambda X, y: (X, y, np.zeros((10, 6))), "not all zero"),
    "values of the wrong width": (lambda X, y: (X, np.ones((10, 6, 3)), None), "(B, 6, 7) values"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("stream", [False, True])
def test_bad_per_position_input_is_refused_and_the_model_unchanged(case, stream):
    make, words = BAD[case]
    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 7, size=(10, 6)), rng.integers(0, 7, size=(10, 6))
    Xb, yb, wb = make(X, y)
    model = nnkit.Sequential([nnkit.Embedding(7, 4), nnkit.GRU(4, 5), nnkit.Dense(5, 7)], dtype="float64", seed=0)
    before = {k: to_np(p).copy() for k, p in model.params().items()}
    if stream:  # the bad data in the second batch of a list of batches
        good = (X[:5], y[:5]) if wb is None else (X[:5], y[:5], np.ones((5, 6)))
        bad = (Xb[5:], yb[5:]) if wb is None else (Xb[5:], yb[5:], wb[5:])
        with pytest.raises(nnkit.data.BatchError, match="batch 1") as err:
            model.fit([good, bad], loss="cross_entropy", epochs=1, verbose=0)
    else:
        with pytest.raises(ValueError) as err:
            model.fit(Xb, yb, loss="cross_entropy", epochs=1, verbose=0, sample_weight=wb)
    assert words.format(n=5 if stream else 10) in str(err.value)
    for k, p in model.params().items():
        np.testing.assert_array_equal(to_np(p), before[k], err_msg=k)


# -- through every door ------------------------------------------------------------------------------------------
def _seq_data(n=24, T=6, V=7, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, V, size=(n, T))
    y = rng.integers(0, V, size=(n, T))
    w = (np.arange(T)[None, :] < rng.integers(2, T + 1, size=n)[:, None]) * rng.uniform(0.5, 2.0, size=(n, T))
    return X, y, w


def _seq_model(backend="numpy"):
    return nnkit.Sequential([nnkit.Embedding(7, 4), nnkit.GRU(4, 5), nnkit.Dense(5, 7)], backend=backend,
                            dtype="float64", seed=0)


def _fit(model, *args, **kw):
    kw = {"loss": "cross_entropy", "optimizer": nnkit.optim.SGD(0.3, momentum=0.5), "epochs": 2, "batch_size": 8,
          "shuffle": False, "verbose": 0, "metrics": ["accuracy"], **kw}
    return model.fit(*args, **kw)


def _same(a, b, rtol=1e-12):
    for k, p in a.params().items():
        np.testing.assert_allclose(to_np(p), to_np(b.params()[k]), rtol=rtol, atol=1e-14, err_msg=k)


def test_streams_memmaps_and_datasets_equal_arrays_with_per_position_weights(tmp_path):
    """The same fit from arrays, a list of (X, y, w) batches, memory-mapped files and a dataset."""
    X, y, w = _seq_data()
    ref = _seq_model()
    h0 = _fit(ref, X, y, sample_weight=w, validation_data=(X[:8], y[:8], w[:8]))
    batches = [(X[s:s + 8], y[s:s + 8], w[s:s + 8]) for s in range(0, 24, 8)]
    m1 = _seq_model()
    h1 = _fit(m1, batches, validation_data=(X[:8], y[:8], w[:8]))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    m2 = _seq_model()
    h2 = _fit(m2, np.load(tmp_path / "X.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r"),
              sample_weight=w, validation_data=(X[:8], y[:8], w[:8]))

    class Windows:
        def __len__(self):
            return 24

        def __getitem__(self, idx):
            return X[idx], y[idx], w[idx]

    m3 = _seq_model()
    h3 = _fit(m3, Windows(), validation_data=(X[:8], y[:8], w[:8]))
    for m, h in ((m1, h1), (m2, h2), (m3, h3)):
        _same(ref, m)
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert h[k] == pytest.approx(h0[k], rel=1e-12), k


def test_validation_split_class_weight_and_accumulate_per_position():
    """validation_split holds out whole sequences; class_weight weighs each position by its target's class (equal
    to those weights given as per-position sample weights); accumulate=2 equals a batch twice as large."""
    X, y, w = _seq_data()
    a, b = _seq_model(), _seq_model()
    ha = _fit(a, X, y, validation_split=0.25)
    hb = _fit(b, X[:18], y[:18], validation_data=(X[18:], y[18:]))
    _same(a, b)
    assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-12)
    cw = {k: 1.0 + k for k in range(7)}
    c, d = _seq_model(), _seq_model()
    _fit(c, X, y, class_weight=cw)
    _fit(d, X, y, sample_weight=1.0 + y.astype(np.float64))
    _same(c, d)
    e, f = _seq_model(), _seq_model()
    _fit(e, X, y, sample_weight=w, batch_size=4, accumulate=2, optimizer=nnkit.optim.SGD(0.3))
    _fit(f, X, y, sample_weight=w, batch_size=8, optimizer=nnkit.optim.SGD(0.3))
    _same(e, f, rtol=1e-10)


@pytest.mark.slow
def test_compiled_jax_fit_equals_the_eager_one_per_position():
    pytest.importorskip("jax")
    X, y, w = _seq_data()
    a, b = _seq_model("jax"), _seq_model("jax")
    ha = _fit(a, X, y, sample_weight=w, compile=True, epochs=1)
    hb = _fit(b, X, y, sample_weight=w, epochs=1)
    _same(a, b, rtol=1e-9)
    assert ha["loss"] == pytest.approx(hb["loss"], rel=1e-9)


class _Threads(nnkit.training.distributed.Communicator):
    """Ranks as threads of this process: collectives through a shared list and a barrier (NumPy backend)."""

    def __init__(self, rank, size, shared, barrier):
        self.rank, self.size, self.shared, self.barrier_ = rank, size, shared, barrier

    def _exchange(self, x):
        self.shared[self.rank] = np.array(x, copy=True)
        self.barrier_.wait()
        parts = list(self.shared)
        self.barrier_.wait()
        return parts

    def allreduce(self, x):
        return np.sum(self._exchange(x), axis=0).astype(x.dtype)

    def broadcast(self, x, root=0):
        return self._exchange(x)[root].astype(x.dtype)

    def barrier(self):
        self.barrier_.wait()


def test_data_parallel_fit_equals_one_process_per_position():
    """Two ranks (threads), each on its half of every batch, the gradients and the epoch's sums all-reduced:
    the same weights and logs as one process, per-position weights included."""
    import threading

    X, y, w = _seq_data()
    ref = _seq_model()
    h0 = _fit(ref, X, y, sample_weight=w, validation_data=(X[:8], y[:8], w[:8]))
    shared, barrier = [None, None], threading.Barrier(2)
    models, hists, errors = [_seq_model(), _seq_model()], [None, None], []

    def rank(r):
        try:
            hists[r] = _fit(models[r], X, y, sample_weight=w, validation_data=(X[:8], y[:8], w[:8]),
                            comm=_Threads(r, 2, shared, barrier))
        except BaseException as exc:  # pragma: no cover - shown below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for m, h in zip(models, hists):
        _same(ref, m, rtol=1e-10)
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert h[k] == pytest.approx(h0[k], rel=1e-10), k
