"""nnkit.sklearn: scikit-learn's own estimator checks, warm starts, array namespaces, digits vs sklearn."""
import pickle
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is the optional 'sklearn' extra")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nnkit.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Expected failures, with the reason (scikit-learn lists its own MLP's the same way).
EXPECTED_FAILED = {}


def expected_failed(estimator):
    return EXPECTED_FAILED.get(type(estimator).__name__, {})


# max_iter=100 as scikit-learn sets for its own MLPs in these checks (they fit many times)
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)],
                         expected_failed_checks=expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_expected_failures_are_few():
    assert sum(len(v) for v in EXPECTED_FAILED.values()) <= 3


def _blobs(n=300, seed=0):
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=n, centers=3, n_features=5, random_state=seed)
    return (X - X.mean(axis=0)) / X.std(axis=0), y


def test_fitted_attributes_and_curves():
    X, y = _blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, early_stopping=True, random_state=0,
                        learning_rate_init=0.02, n_iter_no_change=50)
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    assert clf.classes_.tolist() == [0, 1, 2] and clf.n_features_in_ == 5
    assert clf.n_iter_ == 30 == len(clf.loss_curve_) == len(clf.validation_loss_curve_) == len(clf.validation_scores_)
    assert clf.t_ == 30 * 270  # samples seen (the 10% validation part is held out)
    assert clf.best_validation_score_ == max(clf.validation_scores_) and clf.best_loss_ is None
    assert [w.shape for w in clf.coefs_] == [(5, 16), (16, 3)] and [b.shape for b in clf.intercepts_] == [(16,), (3,)]
    assert clf.n_layers_ == 3 and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"
    assert clf.loss_ == clf.loss_curve_[-1]
    assert clf.score(X, y) > 0.95


def test_binary_multilabel_and_multioutput():
    X, y = _blobs()
    yb = (y == 1).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=200, learning_rate_init=0.01, random_state=0).fit(X, yb)
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 1
    P = clf.predict_proba(X)
    assert P.shape == (300, 2) and np.allclose(P.sum(axis=1), 1.0)
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(P))
    Y = np.stack([y == 0, y == 2], axis=1).astype(int)
    ml = MLPClassifier(hidden_layer_sizes=(8,), max_iter=200, learning_rate_init=0.01, random_state=0).fit(X, Y)
    assert ml.predict(X).shape == (300, 2) and ml.score(X, Y) > 0.9
    R = np.stack([X[:, 0] + X[:, 1], X[:, 2] - X[:, 3]], axis=1)
    reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(X, R)
    assert reg.predict(X).shape == (300, 2) and reg.score(X, R) > 0.9


def test_warm_start_and_partial_fit_keep_the_optimizer_state():
    X, y = _blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, warm_start=True, random_state=0, tol=0)
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    opt = clf._optimizer
    t_before = {k: s["t"] for k, s in opt.state.items()}
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    assert clf._optimizer is opt and all(opt.state[k]["t"] == 2 * t for k, t in t_before.items())
    assert clf.n_iter_ == 3 and clf.t_ == 6 * len(y)  # scikit-learn: n_iter_ counts the last fit's epochs
    # partial_fit: one epoch per call, moments carried on
    pf = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    pf.partial_fit(X[:150], y[:150], classes=[0, 1, 2])
    steps = pf._optimizer.state["0.W"]["t"]
    pf.partial_fit(X[150:], y[150:])
    assert pf._optimizer.state["0.W"]["t"] == 2 * steps and pf.n_iter_ == 1 and pf.t_ == len(y)
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier().partial_fit(X, y)


def test_same_updates_as_an_nnkit_model():
    """One epoch of the estimator is exactly nnkit's fit with the same seed (no hidden differences)."""
    import nnkit

    X, y = _blobs(n=64)
    Xs = (X - X.mean(0)) / X.std(0)
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=1, alpha=0.0, batch_size=16, shuffle=False,
                       random_state=0, solver="sgd", momentum=0.0, learning_rate_init=0.1)
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        est.fit(Xs, y.astype(float))
    ref = nnkit.Sequential([nnkit.Dense(5, 4), nnkit.ReLU(), nnkit.Dense(4, 1)], dtype="float64",
                           seed=int(np.random.RandomState(0).randint(np.iinfo(np.int32).max)))
    ref.fit(Xs, y.astype(float), loss="mse", optimizer=nnkit.optim.SGD(0.1), epochs=1, batch_size=16, shuffle=False,
            verbose=0)
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(est.model_.state_dict()[k], v, rtol=1e-12, atol=1e-14)


def test_pickle_round_trip():
    X, y = _blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


def test_torch_tensors_in_torch_tensors_out():
    torch = pytest.importorskip("torch")
    X, y = _blobs()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, learning_rate_init=0.01, random_state=0, backend="torch").fit(Xt, yt)
    pred = clf.predict(Xt)
    assert isinstance(pred, torch.Tensor) and float((pred == yt).double().mean()) > 0.95
    assert isinstance(clf.predict_proba(Xt), torch.Tensor)
    # NumPy in with the torch backend: trains there, answers in NumPy
    clf2 = MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, learning_rate_init=0.01, random_state=0, backend="torch").fit(X, y)
    assert isinstance(clf2.predict(X), np.ndarray)
    np.testing.assert_allclose(clf2.predict_proba(X), clf.predict_proba(Xt).numpy(), atol=1e-12)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0, backend="torch")
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        reg.fit(Xt, Xt[:, 0])
    assert isinstance(reg.predict(Xt), torch.Tensor) and reg.predict(Xt).shape == (300,)


def test_cupy_numpy_in_numpy_out():
    import nnkit.tools.bench

    why = nnkit.tools.bench.why_unavailable("cupy")
    if why:
        pytest.skip(why)
    X, y = _blobs()
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, learning_rate_init=0.01, random_state=0, backend="cupy").fit(X, y)
    assert clf.model_.backend.name == "cupy" and isinstance(clf.predict(X), np.ndarray)


def test_bad_parameters_are_named():
    X, y = _blobs(n=30)
    with pytest.raises(ValueError, match="solver must be 'lbfgs', 'sgd' or 'adam'"):
        MLPClassifier(solver="newton").fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        MLPClassifier(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="activation"):
        MLPClassifier(activation="gelu").fit(X, y)


def test_import_nnkit_does_not_import_sklearn():
    code = "import sys, nnkit; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
