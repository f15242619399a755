"""nnkit.sklearn as a drop-in for sklearn.neural_network: each behaviour compared with scikit-learn's MLP
in the same run (the points of the drop-in issue, in order)."""
import math
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is the optional 'sklearn' extra")
import scipy.sparse as sp  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkC, MLPRegressor as SkR  # noqa: E402

import nnkit  # noqa: E402
from nnkit.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def blobs(n=150, seed=0):
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=n, centers=3, n_features=4, random_state=seed)
    return (X - X.mean(axis=0)) / X.std(axis=0), y


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*a, **k)


def log_loss_with_penalty(clf, X, y, alpha, w=None):
    """scikit-learn's MLP objective, written out: mean log loss + (α/2Σw)Σ‖W‖²."""
    P = clf.predict_proba(X)
    idx = np.searchsorted(clf.classes_, y)
    ell = -np.log(np.clip(P[np.arange(len(y)), idx], 1e-300, None))
    total = len(y) if w is None else w.sum()
    return np.average(ell, weights=w) + 0.5 * alpha * sum((W ** 2).sum() for W in clf.coefs_) / total


# -- 1. lbfgs ------------------------------------------------------------------------------------------------
def test_lbfgs_fits_like_scikit_learn():
    X, y = blobs()
    ours = quiet(MLPClassifier(solver="lbfgs", hidden_layer_sizes=(10,), alpha=1e-3, random_state=0).fit, X, y)
    theirs = quiet(SkC(solver="lbfgs", hidden_layer_sizes=(10,), alpha=1e-3, random_state=0).fit, X, y)
    assert ours.score(X, y) >= theirs.score(X, y) - 0.02 and ours.score(X, y) > 0.95
    assert ours.loss_ == pytest.approx(log_loss_with_penalty(ours, X, y, 1e-3), rel=1e-6)
    assert 0 < ours.n_iter_ <= 200 and len(ours.loss_curve_) == ours.n_iter_
    assert not hasattr(ours, "partial_fit") and not hasattr(theirs, "partial_fit")
    assert hasattr(MLPClassifier(solver="adam"), "partial_fit")


@pytest.mark.parametrize("limit", [dict(max_iter=3), dict(max_fun=5)])
def test_lbfgs_warns_when_it_stops_on_a_limit(limit):
    X, y = blobs()
    for est in (MLPClassifier(solver="lbfgs", random_state=0, **limit), SkC(solver="lbfgs", random_state=0, **limit)):
        with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
            est.fit(X, y)
    ours = MLPClassifier(solver="lbfgs", random_state=0, **limit)
    quiet(ours.fit, X, y)
    assert ours.n_iter_ <= limit.get("max_iter", 10**9)


def test_lbfgs_warm_start_goes_on_and_alpha_shrinks_the_weights():
    X, y = blobs()
    clf = MLPClassifier(solver="lbfgs", max_iter=5, warm_start=True, random_state=0)
    quiet(clf.fit, X, y)
    first = clf.loss_
    quiet(clf.fit, X, y)
    assert clf.loss_ < first
    norms = []
    for alpha in (1e-5, 10.0):
        m = quiet(MLPClassifier(solver="lbfgs", alpha=alpha, random_state=0).fit, X, y)
        norms.append(sum(float((W ** 2).sum()) for W in m.coefs_))
    assert norms[1] < 0.5 * norms[0]


# -- 2. sample_weight ----------------------------------------------------------------------------------------
def test_integer_weights_equal_repeated_rows():
    X, y = blobs(90)
    w = np.arange(90) % 3  # 0, 1, 2 copies
    weighted = quiet(MLPClassifier(solver="lbfgs", hidden_layer_sizes=(6,), random_state=0).fit, X, y, sample_weight=w)
    repeated = quiet(MLPClassifier(solver="lbfgs", hidden_layer_sizes=(6,), random_state=0).fit,
                     np.repeat(X, w, axis=0), np.repeat(y, w))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-6, atol=1e-8)
    assert weighted.loss_ == pytest.approx(log_loss_with_penalty(weighted, X, y, 1e-4, w.astype(float)), rel=1e-6)
    theirs = quiet(SkC(solver="lbfgs", hidden_layer_sizes=(6,), random_state=0).fit, X, y, sample_weight=w)
    assert abs(theirs.score(X, y, sample_weight=w) - weighted.score(X, y, sample_weight=w)) < 0.05


def test_sample_weight_in_partial_fit_and_early_stopping():
    X, y = blobs(200)
    w = np.where(y == 0, 0.0, 1.0)  # class 0 does not count
    clf = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    clf.partial_fit(X, y, classes=[0, 1, 2], sample_weight=w)
    es = quiet(MLPClassifier(hidden_layer_sizes=(8,), early_stopping=True, max_iter=5, random_state=0).fit,
               X, y, sample_weight=w)
    assert len(es.validation_scores_) == es.n_iter_ and all(0 <= s <= 1 for s in es.validation_scores_)
    with pytest.raises(ValueError):
        MLPClassifier().fit(X, y, sample_weight=np.ones(3))


def test_core_fit_and_evaluate_take_sample_weight():
    X, y = blobs(120)
    w = np.random.default_rng(0).uniform(0, 2, 120)
    model = nnkit.Sequential.mlp([4, 8, 3], dtype="float64", seed=0)
    history = model.fit(X, y, loss="cross_entropy", epochs=3, batch_size=120, verbose=0, sample_weight=w,
                        shuffle=False)
    assert np.isfinite(history["loss"]).all()
    ev = model.evaluate(X, y, "cross_entropy", sample_weight=w)
    logits = np.asarray(model.predict(X))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert ev["loss"] == pytest.approx(np.average(-np.log(p[np.arange(120), y]), weights=w), rel=1e-12)
    assert ev["accuracy"] == pytest.approx(np.average(p.argmax(axis=1) == y, weights=w), rel=1e-12)


# -- 3. Poisson ------------------------------------------------------------------------------------------------
def test_poisson_loss_core_values_gradient_and_large_logits():
    be = nnkit.get_backend("numpy", dtype="float64")
    loss = nnkit.Poisson()
    Z = np.array([[0.3, -1.0], [2.0, 0.5]])
    Y = np.array([[1.0, 0.0], [4.0, 2.0]])
    value, grad = loss.value_and_grad(Z, Y)
    assert float(value) == pytest.approx(np.sum(np.exp(Z) - Y * Z) / 2)
    np.testing.assert_allclose(grad, (np.exp(Z) - Y) / 2)
    big = np.array([[1000.0], [-1000.0]])
    v, g = loss.value_and_grad(big, np.array([[1.0], [0.0]]))
    assert np.isfinite(float(v)) and np.all(np.isfinite(g))
    model = nnkit.Sequential.mlp([2, 4, 1], backend=be, seed=0)
    Xs = np.random.default_rng(0).normal(size=(10, 2))
    assert nnkit.gradcheck(model, Xs, np.random.default_rng(1).poisson(2.0, (10, 1)).astype(float), "poisson") < 1e-6
    with pytest.raises(ValueError, match="non-negative"):
        model.fit(Xs, -np.ones((10, 1)), loss="poisson", epochs=1, verbose=0)


def test_poisson_regressor_matches_scikit_learns_objective():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = rng.poisson(np.exp(0.5 * X[:, 0] + 0.2)).astype(float)
    ours = quiet(MLPRegressor(loss="poisson", solver="lbfgs", hidden_layer_sizes=(8,), random_state=0).fit, X, y)
    theirs = quiet(SkR(loss="poisson", solver="lbfgs", hidden_layer_sizes=(8,), random_state=0).fit, X, y)
    assert ours.out_activation_ == theirs.out_activation_ == "exp"
    pred = ours.predict(X)
    assert pred.shape == (200,) and np.all(pred > 0)
    from sklearn.neural_network._base import poisson_loss

    expected = poisson_loss(y.reshape(-1, 1), pred.reshape(-1, 1)) + 0.5 * 1e-4 * sum(
        (W ** 2).sum() for W in ours.coefs_) / 200
    assert ours.loss_ == pytest.approx(expected, rel=1e-6)
    assert abs(ours.score(X, y) - theirs.score(X, y)) < 0.1
    with pytest.raises(ValueError, match="negative"):
        MLPRegressor(loss="poisson").fit(X, -y)
    adam = quiet(MLPRegressor(loss="poisson", max_iter=20, random_state=0).fit, X, y)
    assert np.isfinite(adam.loss_curve_).all()


# -- 4. sparse ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_input_gives_the_dense_answers(fmt):
    X, y = blobs(120)
    X[np.abs(X) < 0.7] = 0.0
    Xs = sp.csr_matrix(X) if fmt == "csr" else sp.csc_matrix(X)
    for solver in ("adam", "lbfgs"):
        dense = quiet(MLPClassifier(solver=solver, hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit, X, y)
        sparse = quiet(MLPClassifier(solver=solver, hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit, Xs, y)
        np.testing.assert_allclose(sparse.predict_proba(Xs), dense.predict_proba(X), rtol=1e-10, atol=1e-12)
    pf = MLPClassifier(hidden_layer_sizes=(6,), random_state=0)
    pf.partial_fit(Xs, y, classes=[0, 1, 2])
    assert pf.predict(Xs).shape == (120,)


def test_sparse_batches_are_densified_one_at_a_time(monkeypatch):
    X, y = blobs(400)
    Xs = sp.csr_matrix(X)
    shapes = []
    real = sp.csr_matrix.toarray

    def spy(self, *a, **k):
        shapes.append(self.shape)
        return real(self, *a, **k)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    quiet(MLPClassifier(hidden_layer_sizes=(6,), batch_size=50, max_iter=2, random_state=0).fit, Xs, y)
    assert shapes and max(s[0] for s in shapes) <= 50


# -- 5. dtype --------------------------------------------------------------------------------------------------
def test_float32_input_trains_and_predicts_float32():
    X, y = blobs()
    X32 = X.astype(np.float32)
    clf = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit, X32, y)
    sk = quiet(SkC(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit, X32, y)
    assert clf.coefs_[0].dtype == sk.coefs_[0].dtype == np.float32
    assert clf.predict_proba(X32).dtype == sk.predict_proba(X32).dtype == np.float32
    reg = quiet(MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit, X32, X32[:, 0])
    assert reg.predict(X32).dtype == np.float32
    assert quiet(MLPClassifier(max_iter=2, dtype="float64").fit, X32, y).coefs_[0].dtype == np.float64
    assert quiet(MLPClassifier(max_iter=2).fit, X, y).coefs_[0].dtype == np.float64


# -- 6. coefs_ and intercepts_ -----------------------------------------------------------------------------------
def test_coefs_are_writable_and_used_by_predict_and_partial_fit():
    X, y = blobs()
    sk = quiet(SkC(hidden_layer_sizes=(7,), max_iter=30, random_state=0).fit, X, y)
    ours = quiet(MLPClassifier(hidden_layer_sizes=(7,), max_iter=2, random_state=1).fit, X, y)
    ours.coefs_ = [c.copy() for c in sk.coefs_]  # assigning a new list
    ours.intercepts_ = [b.copy() for b in sk.intercepts_]
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), rtol=1e-12, atol=1e-14)
    ours.coefs_[1][:] = 0.0  # editing in place
    ours.intercepts_[1][:] = [0.0, 5.0, 0.0]
    assert np.all(ours.predict(X) == 1)
    assert all(c.flags.writeable for c in ours.coefs_ + ours.intercepts_)
    held = ours.coefs_[0]
    before = held.copy()
    ours.partial_fit(X, y)
    assert ours.coefs_[0] is held and not np.array_equal(held, before)  # updated where the user holds it


# -- 7. n_iter_, t_, n_iter_no_change=inf --------------------------------------------------------------------
def test_n_iter_counts_the_last_fit_and_inf_patience():
    X, y = blobs()
    counts = []
    for cls in (MLPClassifier, SkC):
        est = cls(hidden_layer_sizes=(5,), max_iter=4, warm_start=True, random_state=0)
        quiet(est.fit, X, y)
        quiet(est.fit, X, y)
        counts.append((est.n_iter_, est.t_))
    assert counts[0] == counts[1] == (4, 8 * len(y))
    for cls in (MLPClassifier, SkC):
        est = quiet(cls(max_iter=15, n_iter_no_change=np.inf, tol=10.0, random_state=0).fit, X, y)
        assert est.n_iter_ == 15


# -- 8. partial_fit with early stopping -------------------------------------------------------------------------
def test_partial_fit_with_early_stopping_raises_like_scikit_learn():
    X, y = blobs()
    for cls in (MLPClassifier, SkC):
        with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
            cls(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])


# -- 9. divergence ---------------------------------------------------------------------------------------------
def test_divergence_behaves_like_scikit_learn():
    X, y = blobs()
    X = X * 1e4
    assert issubclass(nnkit.TrainingDivergedError, ValueError)
    for cls in (MLPRegressor, SkR):
        with pytest.raises(ValueError, match="non-finite parameter weights"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cls(solver="sgd", learning_rate_init=10.0, max_iter=20, random_state=0).fit(X, y.astype(float) * 1e4)
    es = MLPRegressor(solver="sgd", learning_rate_init=10.0, max_iter=20, early_stopping=True, random_state=0,
                      n_iter_no_change=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        es.fit(X, y.astype(float) * 1e4)
    assert not np.isfinite(es.validation_scores_[-1])
    assert all(np.isfinite(c).all() for c in es.coefs_) and np.isfinite(es.predict(X)).all()


# -- 10. input checks ------------------------------------------------------------------------------------------
def test_input_checks_match_scikit_learn():
    X, y = blobs(12)
    for cls in (MLPClassifier, SkC):
        with pytest.raises(ValueError, match="validation set is too small"):
            quiet(cls(early_stopping=True, validation_fraction=0.05).fit, X, y)
        est = cls(random_state=0)
        est.partial_fit(X, y, classes=[0, 1, 2])
        with pytest.raises(ValueError, match="is not the same as on last call to partial_fit"):
            est.partial_fit(X, y, classes=[0, 1])
        warm = cls(warm_start=True, max_iter=2, random_state=0)
        quiet(warm.fit, X, y)
        with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same classes"):
            quiet(warm.fit, X[y < 2], y[y < 2])


# -- 11. the regressor's early-stopping score is R² ----------------------------------------------------------
def test_regressor_early_stopping_scores_r2_and_a_constant_target_scores_zero():
    X, _ = blobs(100)
    y = np.full(100, 3.0)
    scores = []
    for cls in (MLPRegressor, SkR):
        est = quiet(cls(early_stopping=True, max_iter=3, random_state=0).fit, X, y)
        scores.append(est.validation_scores_[0])
    assert scores[0] == scores[1] == 0.0
    X, y = blobs(200)
    target = X[:, 0] * 2 + 1
    est = quiet(MLPRegressor(early_stopping=True, max_iter=3, random_state=0).fit, X, target)
    assert all(s <= 1.0 for s in est.validation_scores_)
    assert est.score(X, target) == pytest.approx(r2_score(target, est.predict(X)))
