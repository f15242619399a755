"""nnkit.Perceptron: Rosenblatt's rule, exactly scikit-learn's Perceptron weights with the same settings."""
import warnings

import numpy as np
import pytest

import nnkit

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_iris, make_blobs  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import Perceptron as SkPerceptron  # noqa: E402


def _sk(X, y, epochs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return SkPerceptron(shuffle=False, eta0=1.0, penalty=None, max_iter=epochs, tol=None).fit(X, y)


CASES = {
    "binary separable": make_blobs(n_samples=60, centers=2, n_features=3, random_state=0, cluster_std=1.0),
    "iris setosa vs rest": (load_iris().data, (load_iris().target == 0).astype(int)),
    "iris 3 classes": (load_iris().data, load_iris().target),
    "blobs 4 classes, strings": (make_blobs(n_samples=80, centers=4, n_features=2, random_state=3)[0],
                                 np.array(list("abcd"))[make_blobs(n_samples=80, centers=4, n_features=2,
                                                                    random_state=3)[1]]),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("epochs", [1, 3, 12])
def test_same_weights_as_scikit_learn(name, epochs, make_backend):
    X, y = CASES[name]
    be = make_backend("float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nnkit.models.perceptron.NotSeparableWarning)
        ours = nnkit.Perceptron(max_iter=epochs, backend=be).fit(X, y)
    ref = _sk(X, y, ours.n_iter_)  # the epochs ours ran (fewer when an epoch had no mistake)
    np.testing.assert_array_equal(ours.classes_, ref.classes_)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    if ours.converged_:  # sklearn's further epochs change nothing either
        more = _sk(X, y, epochs + 5)
        np.testing.assert_allclose(ours.coef_, more.coef_, rtol=1e-12, atol=1e-12)


def test_stops_after_a_mistake_free_epoch_and_warns_when_not_separable():
    X, y = CASES["binary separable"]
    p = nnkit.Perceptron().fit(X, y)
    assert p.converged_ and p.n_iter_ < 1000 and p.score(X, y) == 1.0
    X = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    y = np.array([0, 0, 1, 1])  # XOR: no line separates it
    with pytest.warns(nnkit.models.perceptron.NotSeparableWarning, match="25 epochs tried.*not linearly separable"):
        p = nnkit.Perceptron(max_iter=25).fit(X, y)
    assert not p.converged_ and p.n_iter_ == 25


def test_rule_by_hand_and_estimator_api():
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = nnkit.Perceptron(max_iter=1).fit(X, np.array([1, 0]))
    # first example: p = 0 → mistake, y = +1: w = (1, 0), b = 1; second: p = 0·1 + 1 = 1, y = −1 → w = (1, −1), b = 0
    np.testing.assert_array_equal(p.coef_, [[1.0, -1.0]])
    np.testing.assert_array_equal(p.intercept_, [0.0])
    from sklearn.base import clone

    assert clone(nnkit.Perceptron(eta0=0.5)).get_params()["eta0"] == 0.5
    with pytest.raises(ValueError, match="2 features"):
        p.predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="eta0"):
        nnkit.Perceptron(eta0=0).fit(X, [0, 1])
