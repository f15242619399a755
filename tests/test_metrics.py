"""Every metric equals scikit-learn's on the same predictions — float64, every backend, with sample weights —
computed from sums kept on the device and read once."""
import numpy as np
import pytest

import nnkit
from nnkit import metrics as M

sk = pytest.importorskip("sklearn.metrics")

rng = np.random.default_rng(0)


def _classifier(make_backend, k, n=157):
    X = rng.standard_normal((n, 5))
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)  # every class present
    out = k if k > 2 else 1
    loss = "cross_entropy" if k > 2 else "binary_cross_entropy"
    model = nnkit.Sequential.mlp([5, 7, out], backend=make_backend("float64"), seed=1)
    return model, X, y, loss


def _host_outputs(model, X):
    return np.asarray(nnkit.backends.host_copy(model.predict(X)), dtype=np.float64)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_classification_metrics_equal_sklearn(make_backend, k, weighted):
    model, X, y, loss = _classifier(make_backend, k)
    w = rng.uniform(0.1, 2.0, size=len(y)) if weighted else None
    names = ["accuracy", "precision", "recall", "f1", "f1_macro", "f1_micro", "f1_weighted", "precision_macro",
             "recall_weighted", "auc"] + (["top_2_accuracy", "auc_weighted"] if k > 2 else [])
    got = model.evaluate(X, y, loss, metrics=names, batch_size=40, sample_weight=w)  # several batches
    out = _host_outputs(model, X)
    if k == 2:
        pred, score = (out[:, 0] > 0).astype(int), out[:, 0]
    else:
        pred, score = out.argmax(axis=1), np.exp(out - out.max(axis=1, keepdims=True))
        score = score / score.sum(axis=1, keepdims=True)
    avg = "binary" if k == 2 else "macro"
    want = {
        "accuracy": sk.accuracy_score(y, pred, sample_weight=w),
        "precision": sk.precision_score(y, pred, average=avg, sample_weight=w, zero_division=0),
        "recall": sk.recall_score(y, pred, average=avg, sample_weight=w, zero_division=0),
        "f1": sk.f1_score(y, pred, average=avg, sample_weight=w, zero_division=0),
        "f1_macro": sk.f1_score(y, pred, average="macro", sample_weight=w, zero_division=0),
        "f1_micro": sk.f1_score(y, pred, average="micro", sample_weight=w, zero_division=0),
        "f1_weighted": sk.f1_score(y, pred, average="weighted", sample_weight=w, zero_division=0),
        "precision_macro": sk.precision_score(y, pred, average="macro", sample_weight=w, zero_division=0),
        "recall_weighted": sk.recall_score(y, pred, average="weighted", sample_weight=w, zero_division=0),
        "auc": sk.roc_auc_score(y, score, sample_weight=w, multi_class="ovr") if k > 2
        else sk.roc_auc_score(y, score, sample_weight=w),
    }
    if k > 2:
        want["top_2_accuracy"] = sk.top_k_accuracy_score(y, score, k=2, sample_weight=w, labels=range(k))
        want["auc_weighted"] = sk.roc_auc_score(y, score, sample_weight=w, multi_class="ovr", average="weighted")
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_auc_counts_ties_half_as_sklearn():
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.4, 0.4, 0.4, 0.9, 0.2, 0.2, 0.8])
    w = np.array([1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0, 1.0])
    assert M._binary_auc(y.astype(float), s, w) == pytest.approx(sk.roc_auc_score(y, s, sample_weight=w), rel=1e-12)
    assert np.isnan(M._binary_auc(np.ones(4), np.arange(4.0), np.ones(4)))  # one class only


@pytest.mark.parametrize("weighted", [False, True])
def test_regression_metrics_equal_sklearn(make_backend, weighted):
    X = rng.standard_normal((90, 4))
    Y = np.c_[X[:, 0] + 0.1 * rng.standard_normal(90), X[:, 1] * X[:, 2]]
    w = rng.uniform(0.1, 2.0, size=90) if weighted else None
    model = nnkit.Sequential.mlp([4, 6, 2], backend=make_backend("float64"), seed=0)
    model.fit(X, Y, loss="mse", epochs=3, verbose=0)
    got = model.evaluate(X, Y, "mse", metrics=["r2", "mse", "mae"], batch_size=25, sample_weight=w)
    pred = _host_outputs(model, X)
    assert got["r2"] == pytest.approx(sk.r2_score(Y, pred, sample_weight=w), rel=1e-9)
    assert got["mse"] == pytest.approx(sk.mean_squared_error(Y, pred, sample_weight=w), rel=1e-9)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(Y, pred, sample_weight=w), rel=1e-9)


def test_r2_of_a_constant_target_follows_sklearn():
    r2 = M.R2()
    total = np.array([[4.0], [8.0], [16.0], [0.0]])  # Σw, Σwy, Σwy², Σw(y − ŷ)²: y ≡ 2 predicted exactly
    assert r2.value(total, 4.0) == sk.r2_score([2, 2, 2, 2], [2, 2, 2, 2]) == 1.0
    total[3, 0] = 1.0
    assert r2.value(total, 4.0) == sk.r2_score([2, 2, 2, 2], [2, 2, 2, 3]) == 0.0


def test_metrics_in_fit_are_read_once_per_epoch_and_match_evaluate():
    model, X, y, loss = _classifier(lambda dt="float64": nnkit.get_backend("numpy", dtype=dt), 3)
    be = model.backend
    before = be.host_transfers
    hist = model.fit(X, y, loss=loss, epochs=2, batch_size=16, verbose=0, metrics=["f1_macro", "auc"],
                     validation_data=(X, y))
    reads = be.host_transfers - before
    assert reads <= 2 * 1 + 2  # one read an epoch (plus the data path's checks)
    final = model.evaluate(X, y, loss, metrics=["f1_macro", "auc"])
    assert hist["val_f1_macro"][-1] == pytest.approx(final["f1_macro"], rel=1e-12)
    assert hist["val_auc"][-1] == pytest.approx(final["auc"], rel=1e-12)


def test_a_users_metric_function():
    model, X, y, loss = _classifier(lambda dt="float64": nnkit.get_backend("numpy", dtype=dt), 3)

    def mean_top_logit(out, T, w):
        xp = nnkit.functional.namespace_of(out)
        top = xp.max(out, axis=1)
        return xp.mean(top) if w is None else xp.sum(top * w) / xp.sum(w)

    w = rng.uniform(0.5, 1.5, size=len(y))
    got = model.evaluate(X, y, loss, metrics=[mean_top_logit], batch_size=30, sample_weight=w)
    out = _host_outputs(model, X)
    assert got["mean_top_logit"] == pytest.approx(np.average(out.max(axis=1), weights=w), rel=1e-12)
    with pytest.raises(ValueError, match="must return one number"):
        model.evaluate(X, y, loss, metrics=[lambda out, T, w: out])


def test_confusion_matrix_equals_sklearn():
    y = rng.integers(0, 4, 50)
    p = rng.integers(0, 4, 50)
    w = rng.uniform(0, 1, 50)
    np.testing.assert_allclose(M.confusion_matrix(y, p, sample_weight=w),
                               sk.confusion_matrix(y, p, sample_weight=w, labels=range(4)))
    assert M.confusion_matrix(y, p, num_classes=6).shape == (6, 6)
    counts = M.confusion_matrix(y, p)
    assert counts.dtype == np.int64 and np.array_equal(counts, sk.confusion_matrix(y, p, labels=range(4)))
    names = np.array(["ant", "bee", "cat", "dog"])
    by_name = M.confusion_matrix(names[y], names[p], labels=["ant", "bee", "cat", "dog"])
    assert np.array_equal(by_name, counts)
    with pytest.raises(ValueError, match="'eel', which is not among the labels"):
        M.confusion_matrix(names[y], np.where(p == 0, "eel", names[p]), labels=list(names))
    with pytest.raises(ValueError, match="same length"):
        M.confusion_matrix(y, p[:3])


def test_unknown_metrics_and_bad_k_are_refused():
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        M.get_metrics(["f2"], nnkit.get_loss("cross_entropy"))
    with pytest.raises(ValueError, match="k >= 1"):
        M.TopKAccuracy(0)
    with pytest.raises(ValueError, match="average must be"):
        M.F1(average="samples")
