"""Rosenblatt's perceptron (1958), the learning rule before backprop, as a scikit-learn estimator.

For labels y ∈ {−1, +1} and one example x at a time:

    ŷ = step(w·x + b);   on a mistake, y·(w·x + b) ≤ 0:   w ← w + η·y·x,   b ← b + η·y.

With several classes, one perceptron per class is trained against the rest (one-vs-rest, y = +1 for the
class, −1 otherwise), all of them on the same sequence of examples; ``predict`` takes the class with the
largest w·x + b.  Training stops after the first epoch without a mistake (on data that is linearly
separable, the perceptron convergence theorem says this happens); on data that is not, it stops after
``max_iter`` epochs with a warning that says so.

With ``shuffle=False``, η = ``eta0`` = 1 and no penalty this is exactly scikit-learn's ``Perceptron`` (its SGD
with the perceptron loss updates on y·p ≤ 0 in the same order): after the same number of epochs the weights
— ``coef_`` (classes or 1, features), ``intercept_`` and ``classes_`` as scikit-learn names them — are equal.
``shuffle=True`` draws each epoch's order from ``random_state`` with NumPy's generator (other orders than
scikit-learn's).  The examples are visited one at a time on the model's backend; the mistakes of an epoch
are counted on the device and read once per epoch.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

from ..backends import get_backend, host_copy

__all__ = ["Perceptron", "NotSeparableWarning"]

_PARAMS = ("eta0", "max_iter", "shuffle", "fit_intercept", "random_state", "backend", "dtype")


class NotSeparableWarning(UserWarning):
    """The perceptron made mistakes in every epoch it was given: the data is probably not linearly separable."""


class Perceptron:
    """Rosenblatt's perceptron, binary and one-vs-rest multiclass, on any nnkit backend (see the module
    docstring for the rule and how it matches scikit-learn's ``Perceptron``).

    Parameters: ``eta0`` (η, default 1), ``max_iter`` (epochs at most, default 1000), ``shuffle`` (default
    False: the examples in their order), ``fit_intercept``, ``random_state`` (the shuffles), ``backend`` and
    ``dtype`` (default float64).  Fitted: ``coef_``, ``intercept_``, ``classes_``, ``n_iter_`` (epochs run),
    ``n_features_in_``, ``converged_`` (a mistake-free epoch was reached).
    """

    def __init__(self, eta0=1.0, max_iter=1000, shuffle=False, fit_intercept=True, random_state=None,
                 backend="numpy", dtype="float64"):
        self.eta0 = eta0
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.fit_intercept = fit_intercept
        self.random_state = random_state
        self.backend = backend
        self.dtype = dtype

    # -- scikit-learn's estimator protocol (duck-typed: importing nnkit does not import scikit-learn) ----------
    _estimator_type = "classifier"

    def get_params(self, deep=True):
        """The constructor arguments (scikit-learn's ``clone``, grid searches)."""
        return {k: getattr(self, k) for k in _PARAMS}

    def set_params(self, **params):
        """Set constructor arguments; returns self."""
        for k, v in params.items():
            if k not in _PARAMS:
                raise ValueError(f"invalid parameter {k!r} for Perceptron: expected one of {', '.join(_PARAMS)}")
            setattr(self, k, v)
        return self

    def __sklearn_tags__(self):
        """scikit-learn's tags: a classifier that needs y."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(), input_tags=InputTags())

    def __repr__(self):
        changed = {k: v for k, v in self.get_params().items() if v != Perceptron.__init__.__defaults__[_PARAMS.index(k)]}
        return "Perceptron(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    def score(self, X, y):
        """The mean accuracy of ``predict(X)`` against y."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def _check(self, X, fit=True):
        X = np.asarray(host_copy(X) if not isinstance(X, (np.ndarray, list, tuple)) else X)
        if X.dtype.kind not in "biuf":
            raise TypeError(f"X must be numeric, got dtype {X.dtype}")
        X = X.astype(np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (samples, features), got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains NaN or infinity")
        if not fit and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but Perceptron is expecting {self.n_features_in_} "
                             "features as input")
        return X

    def fit(self, X, y):
        """Train from zero weights until an epoch without a mistake, or for ``max_iter`` epochs."""
        if isinstance(self.eta0, bool) or not isinstance(self.eta0, numbers.Real) or not self.eta0 > 0:
            raise ValueError(f"eta0 must be a positive number, got {self.eta0!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        X = self._check(X)
        y = np.asarray(host_copy(y) if not isinstance(y, (np.ndarray, list, tuple)) else y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y must be 1-D with one label per row of X ({X.shape[0]}), got shape {y.shape}")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"Perceptron needs samples of at least 2 classes, got only {self.classes_.tolist()}")
        K = 1 if len(self.classes_) == 2 else len(self.classes_)
        # y = +1 for the class, −1 for the rest; two classes: one perceptron, +1 for classes_[1]
        Y = np.where(codes[:, None] == (np.arange(K) if K > 1 else np.array([1])), 1.0, -1.0)
        be = get_backend(self.backend, dtype=self.dtype)
        xp = be.xp
        Xd, Yd = be.asarray(X, dtype=be.dtype), be.asarray(Y, dtype=be.dtype)
        W = xp.zeros((X.shape[1], K), dtype=be.dtype, device=be.device)  # column k: class k's w
        b = xp.zeros((K,), dtype=be.dtype, device=be.device)
        eta = float(self.eta0)
        rng = np.random.default_rng(self.random_state)
        self.converged_ = False
        mistakes = None
        with be.activate():
            for epoch in range(self.max_iter):
                order = rng.permutation(X.shape[0]) if self.shuffle else range(X.shape[0])
                count = xp.zeros((), dtype=be.dtype, device=be.device)
                for i in order:
                    x, t = Xd[i:i + 1, ...], Yd[i, ...]  # (1, n), (K,)
                    p = xp.reshape(x @ W, (K,)) + b
                    wrong = xp.astype(t * p <= 0.0, be.dtype)  # a mistake: y·(w·x + b) ≤ 0
                    step = (eta * wrong) * t  # η·y where wrong, 0 elsewhere
                    W = W + xp.reshape(x, (-1, 1)) * xp.reshape(step, (1, K))
                    if self.fit_intercept:
                        b = b + step
                    count = count + xp.sum(wrong)
                mistakes = float(be.to_numpy(count))  # one read per epoch
                if mistakes == 0:
                    self.converged_ = True
                    break
        self.n_iter_ = epoch + 1
        self.n_features_in_ = X.shape[1]
        self.coef_ = np.ascontiguousarray(np.asarray(be.to_numpy(W), dtype=np.float64).T)
        self.intercept_ = np.asarray(be.to_numpy(b), dtype=np.float64).copy()
        if not self.converged_:
            warnings.warn(f"Perceptron: {self.max_iter} epochs tried and every one had mistakes ({mistakes:g} in "
                          f"the last): the data is probably not linearly separable (or needs more epochs: "
                          f"max_iter)", NotSeparableWarning, stacklevel=2)
        return self

    def decision_function(self, X):
        """w·x + b for every class (for two classes: the positive class's, shape (n,))."""
        if not hasattr(self, "coef_"):
            raise ValueError("this Perceptron is not fitted yet: call fit(X, y) first")
        X = self._check(X, fit=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X):
        """The class with the largest w·x + b (two classes: classes_[1] where w·x + b > 0)."""
        scores = self.decision_function(X)
        k = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[k]
