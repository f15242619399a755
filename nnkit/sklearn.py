"""scikit-learn estimators that train with nnkit on any backend: ``MLPClassifier`` and ``MLPRegressor``.

They take scikit-learn's ``MLPClassifier``/``MLPRegressor`` parameters (same names, defaults and meaning)
plus ``backend=`` and ``dtype=``, and add what scikit-learn users asked for: GPU training
(``backend="cupy"``), a validation-loss curve (``validation_loss_curve_``), optimizer state kept across
``warm_start`` and ``partial_fit``, and ``callbacks=`` (nnkit callbacks, e.g. LR schedules).

Arrays in, arrays out: NumPy (or lists, DataFrames) in gives NumPy out — also with ``backend="cupy"``,
which trains on the GPU — and arrays of the backend's library in (CuPy, torch tensors) give arrays of
that library out, on their device (scikit-learn's array-API convention).

Needs scikit-learn (``pip install 'nnkit[sklearn]'``); ``import nnkit`` does not import it.

Differences from scikit-learn's MLP, on purpose: ``solver="lbfgs"`` is not offered (nnkit trains with
mini-batch first-order methods); the SGD momentum follows PyTorch's form v ← μv + g, θ ← θ − lr·v
(equal to scikit-learn's for a constant learning rate); Adam's ε is added to √v̂ rather than √v; the
squared-error loss of a multi-output regressor sums over the outputs (scikit-learn averages them).
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, column_or_1d
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "nnkit.sklearn needs scikit-learn >= 1.6: pip install 'nnkit[sklearn]'"
    ) from exc

import array_api_compat

from . import optim
from .activations import Identity, ReLU, Sigmoid, Tanh
from .backend import get_backend, host_copy
from .layers import Dense
from .losses import BinaryCrossEntropy, CrossEntropy, MSE
from .model import Sequential
from .training import Callback

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": Identity, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU}


def _glorot_logistic(rng, fan_in, fan_out):
    """U(−l, l) with l = √(2 / (fan_in + fan_out)): scikit-learn's MLP initialisation for logistic units."""
    limit = math.sqrt(2.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


class _SklearnSchedule(Callback):
    """scikit-learn's end-of-epoch logic: the learning-rate schedule and the stopping rule.

    * ``invscaling``: lr = learning_rate_init / (t + 1)^power_t, t = samples seen (``t_``).
    * Stopping: ``n_iter_no_change`` epochs without improving the training loss (or, with
      ``early_stopping``, the validation score) by ``tol``; with ``learning_rate="adaptive"`` (SGD) the
      learning rate is divided by 5 instead, and training stops once it falls below 1e-6.
    """

    def __init__(self, est, n_train, validation):
        self.est, self.n_train, self.validation = est, n_train, validation

    def on_epoch_end(self, epoch, logs):
        est = self.est
        est.n_iter_ += 1
        est.t_ += self.n_train
        est.loss_ = logs["loss"]
        est.loss_curve_.append(logs["loss"])
        if "val_loss" in logs:
            est.validation_loss_curve_.append(logs["val_loss"])
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            self.optimizer.lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if self.validation is not None:
            score = est._score_host(*self.validation)
            est.validation_scores_.append(score)
            improved = score > est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_state = est._model.state_dict()
        else:
            improved = est.loss_ < est.best_loss_ - est.tol
            est.best_loss_ = min(est.best_loss_, est.loss_)
        est._no_improvement_count = 0 if improved else est._no_improvement_count + 1
        if est._no_improvement_count > est.n_iter_no_change:
            if est.solver == "sgd" and est.learning_rate == "adaptive" and self.optimizer.lr > 1e-6:
                self.optimizer.lr /= 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"Setting learning rate to {self.optimizer.lr:f}")
                return False
            est._stopped = True
            if est.verbose:
                what = "Validation score" if self.validation is not None else "Training loss"
                print(f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} "
                      "consecutive epochs. Stopping.")
            return True
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        return False


class _BaseMLP(BaseEstimator):
    """Shared fitting machinery (see :class:`MLPClassifier` for the parameters)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, backend="numpy",
                 dtype="float64", callbacks=()):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.dtype = dtype
        self.callbacks = callbacks

    # -- parameters ---------------------------------------------------------------------------------
    def _check_params(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, _ACTIVATIONS))}, got {self.activation!r}")
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not offered by nnkit (mini-batch training only): use 'adam' or 'sgd'")
        if self.solver not in ("sgd", "adam"):
            raise ValueError(f"solver must be 'sgd' or 'adam', got {self.solver!r}")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(f"learning_rate must be 'constant', 'invscaling' or 'adaptive', got {self.learning_rate!r}")
        for name, low in (("alpha", 0.0), ("tol", 0.0), ("power_t", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= low:
                raise ValueError(f"{name} must be a real number >= {low}, got {value!r}")
        for name in ("learning_rate_init", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"{name} must be a real number > 0, got {value!r}")
        for name in ("momentum", "beta_1", "beta_2", "validation_fraction"):
            value = getattr(self, name)
            lo_ok = value > 0 if name == "validation_fraction" else value >= 0
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (lo_ok and value < 1):
                raise ValueError(f"{name} must be a real number in [0, 1), got {value!r}")
        for name, low in (("max_iter", 1), ("n_iter_no_change", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        bs = self.batch_size
        if bs != "auto" and (isinstance(bs, bool) or not isinstance(bs, numbers.Integral) or bs < 1):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {bs!r}")
        return sizes

    def _backend(self):
        return get_backend(self.backend, dtype=self.dtype)

    # -- arrays -------------------------------------------------------------------------------------
    def _is_native(self, X):
        """True for an array of a non-NumPy array library (CuPy, torch): handled without scikit-learn's
        NumPy validation and answered in the same library."""
        return (array_api_compat.is_array_api_obj(X) and not isinstance(X, np.ndarray)
                and not array_api_compat.is_numpy_array(X))

    def _validate_X(self, X, reset):
        if self._is_native(X):
            if X.ndim != 2:
                raise ValueError(f"Expected 2D array, got {X.ndim}D array instead")
            if reset:
                self.n_features_in_ = X.shape[1]
            elif X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                                 f"{self.n_features_in_} features as input.")
            return X
        return validate_data(self, X, reset=reset, dtype=(np.float64, np.float32))

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                          "clipped", UserWarning)
        return min(self.batch_size, n)

    # -- the network --------------------------------------------------------------------------------
    def _build(self, n_in, n_out, hidden, seed):
        # scikit-learn's initialisation: Glorot uniform, with √(2/(fan_in+fan_out)) for logistic units
        init = _glorot_logistic if self.activation == "logistic" else "glorot_uniform"
        return Sequential.mlp([n_in, *hidden, n_out], _ACTIVATIONS[self.activation], init=init, output_init=init,
                              backend=self._backend(), seed=seed)

    def _new_optimizer(self):
        if self.solver == "sgd":
            return optim.SGD(self.learning_rate_init, momentum=self.momentum,
                             nesterov=self.nesterovs_momentum and self.momentum > 0)
        return optim.Adam(self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)

    def _fit(self, X, y, incremental=False, classes=None):
        hidden = self._check_params()
        native = self._is_native(X)
        first = not (hasattr(self, "_model") and (incremental or self.warm_start))
        if native:
            X = self._validate_X(X, reset=first)
        else:
            X, y = validate_data(self, X, y, reset=first, dtype=(np.float64, np.float32), multi_output=True,
                                 y_numeric=isinstance(self, RegressorMixin))
        Y = self._encode_targets(y, X.shape[0], native, first, classes, incremental)
        n_out = Y.shape[1]
        if first:
            rng = check_random_state(self.random_state)
            self._model = self._build(X.shape[1], n_out, hidden, int(rng.randint(np.iinfo(np.int32).max)))
            self._optimizer = self._new_optimizer()
            self._reset_curves()
            self._split_seed = int(rng.randint(np.iinfo(np.int32).max))
        elif self._model.n_outputs != n_out:
            raise ValueError(f"y has {n_out} output column(s) but the fitted network has {self._model.n_outputs}")
        elif (self._optimizer.__class__ is optim.SGD) != (self.solver == "sgd"):
            self._optimizer = self._new_optimizer()  # the solver changed between warm starts
        if not incremental:  # a (warm-started) fit starts from learning_rate_init; the moments are kept
            self._optimizer.lr = float(self.learning_rate_init)
        validation = None
        early = self.early_stopping and not incremental
        if early:
            stratify = Y if self._stratify() else None
            idx = np.arange(X.shape[0])
            try:
                tr, va = train_test_split(idx, test_size=self.validation_fraction, random_state=self._split_seed,
                                          stratify=None if stratify is None else host_copy(stratify))
            except ValueError as exc:
                raise ValueError(f"early_stopping: cannot hold out validation_fraction={self.validation_fraction} "
                                 f"of {X.shape[0]} samples ({exc})") from None
            Xv, Yv = self._take(X, va), self._take(Y, va)
            X, Y = self._take(X, tr), self._take(Y, tr)
            validation = (Xv, Yv)
            if not hasattr(self, "_best_state"):
                self._best_state = None
        n = X.shape[0]
        batch = self._batch_size(n)
        alpha = float(self.alpha)
        reg = optim.L2(alpha / batch) if alpha > 0 else None  # scikit-learn: (α/2n_batch)‖W‖² per batch
        self._stopped = False
        schedule = _SklearnSchedule(self, n, validation)
        epochs = 1 if incremental else self.max_iter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # overflow in a diverging run → NaN loss
            self._model.fit(X, Y, loss=self._loss(), optimizer=self._optimizer, epochs=epochs, batch_size=batch,
                            shuffle=self.shuffle, validation_data=validation, metrics=[], verbose=0,
                            regularizer=reg, callbacks=[schedule, *self.callbacks])
        if early and self._best_state is not None:
            self._model.load_state_dict(self._best_state)
        if not incremental and not self._stopped and self.n_iter_ >= self.max_iter and self.max_iter > 0:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def _reset_curves(self):
        self.n_iter_, self.t_ = 0, 0
        self.loss_curve_, self.validation_loss_curve_ = [], []
        self.best_loss_ = math.inf
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_ = [], -math.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
        self._best_state = None

    def _take(self, A, idx):
        if isinstance(A, np.ndarray):
            return A[idx]
        xp = array_api_compat.array_namespace(A)
        return xp.take(A, xp.asarray(idx, device=array_api_compat.device(A)), axis=0)

    # -- prediction ---------------------------------------------------------------------------------
    def _raw(self, X):
        """The network's output for validated X, as an array of the model's backend."""
        check_is_fitted(self, "_model")
        native = self._is_native(X)
        X = self._validate_X(X, reset=False)
        return self._model.predict(X, batch_size=8192), native

    def _out(self, A, native):
        """Backend array → what the caller gets: the backend's array for native input, else NumPy."""
        return A if native else np.asarray(self._model.backend.to_numpy(A))

    # -- fitted attributes scikit-learn users know ---------------------------------------------------
    @property
    def coefs_(self):
        """Weight matrices W (in, out) per layer, as NumPy arrays (copies)."""
        check_is_fitted(self, "_model")
        s = self._model.state_dict()
        return [s[f"{i}.W"] for i, l in enumerate(self._model.layers) if isinstance(l, Dense)]

    @property
    def intercepts_(self):
        """Bias vectors b (out,) per layer, as NumPy arrays (copies)."""
        check_is_fitted(self, "_model")
        s = self._model.state_dict()
        return [s[f"{i}.b"] for i, l in enumerate(self._model.layers) if isinstance(l, Dense)]

    @property
    def n_layers_(self):
        """Number of layers including input and output (scikit-learn's count)."""
        check_is_fitted(self, "_model")
        return len(self.coefs_) + 1

    @property
    def n_outputs_(self):
        """Width of the output layer."""
        check_is_fitted(self, "_model")
        return self._model.n_outputs

    @property
    def model_(self):
        """The trained :class:`nnkit.Sequential` (save it with ``model_.save(path)``)."""
        check_is_fitted(self, "_model")
        return self._model

    def partial_fit(self, X, y, **kwargs):
        """One epoch over (X, y), keeping the weights and the optimizer state of earlier calls."""
        return self._fit(X, y, incremental=True, **kwargs)

    def fit(self, X, y):
        """Train on (X, y) for up to ``max_iter`` epochs (continuing from the last fit with ``warm_start``)."""
        return self._fit(X, y)


class _HostScore:
    """``score`` for inputs of any library: scikit-learn's metrics read their arguments with
    ``np.asarray``, which fails for CuPy arrays and CUDA tensors, so device inputs (and the
    predictions) are copied to the host first, once per call.  NumPy input takes scikit-learn's own
    ``score`` unchanged."""

    def score(self, X, y, sample_weight=None):
        """scikit-learn's score (accuracy for a classifier, R² for a regressor) of ``predict(X)``."""
        if not any(self._is_native(a) for a in (X, y, sample_weight)):
            return super().score(X, y, sample_weight=sample_weight)

        def host(a):
            return None if a is None else host_copy(a) if self._is_native(a) else np.asarray(a)

        return float(self._metric(host(y), host(self.predict(X)), sample_weight=host(sample_weight)))


class MLPClassifier(_HostScore, ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained with nnkit (scikit-learn's API; any nnkit backend).

    Parameters as :class:`sklearn.neural_network.MLPClassifier` — ``hidden_layer_sizes``, ``activation``
    ('identity', 'logistic', 'tanh', 'relu'), ``solver`` ('sgd', 'adam'), ``alpha`` (L2 strength),
    ``batch_size`` ('auto' = min(200, n)), ``learning_rate`` ('constant', 'invscaling', 'adaptive'; SGD),
    ``learning_rate_init``, ``power_t``, ``max_iter`` (epochs), ``shuffle``, ``random_state``, ``tol``,
    ``verbose``, ``warm_start``, ``momentum``, ``nesterovs_momentum``, ``early_stopping``,
    ``validation_fraction``, ``beta_1``, ``beta_2``, ``epsilon``, ``n_iter_no_change`` — plus

    * ``backend``: ``"numpy"`` (default), ``"cupy"``, ``"torch"``, ... (see :func:`nnkit.get_backend`);
    * ``dtype``: ``"float64"`` (default, as scikit-learn) or ``"float32"``;
    * ``callbacks``: nnkit callbacks run after every epoch.

    The output layer: one logit with sigmoid cross-entropy for two classes and for each label of a
    multilabel target (``out_activation_ = "logistic"``), softmax cross-entropy for more classes
    (``"softmax"``).  Fitted attributes: ``classes_``, ``loss_``, ``loss_curve_``, ``best_loss_``,
    ``validation_scores_``, ``best_validation_score_``, ``validation_loss_curve_``, ``n_iter_``, ``t_``,
    ``n_features_in_``, ``coefs_``, ``intercepts_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``.
    """

    _metric = staticmethod(accuracy_score)

    def _stratify(self):
        return self._label_binarizer.y_type_ != "multilabel-indicator"

    def _encode_targets(self, y, n_rows, native, first, classes, incremental):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        y_host = host_copy(y) if native else np.asarray(y)
        if y_host.ndim == 2 and y_host.shape[1] == 1:
            y_host = column_or_1d(y_host, warn=True)
        if y_host.shape[0] != n_rows:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: [{n_rows}, {y_host.shape[0]}]")
        if first:
            if incremental and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            lb = LabelBinarizer()
            if classes is not None:
                lb.fit(np.asarray(classes) if type_of_target(y_host) != "multilabel-indicator" else y_host)
            else:
                kind = type_of_target(y_host, input_name="y")
                if kind not in ("binary", "multiclass", "multilabel-indicator"):
                    raise ValueError(f"Unknown label type: {kind!r}: MLPClassifier needs class labels")
                lb.fit(y_host)
            if len(lb.classes_) < 2 and lb.y_type_ != "multilabel-indicator":
                raise ValueError(f"MLPClassifier needs samples of at least 2 classes in the data, but the data "
                                 f"contains only one class: {lb.classes_[0]!r}")
            self._label_binarizer = lb
            self.classes_ = lb.classes_
        else:
            unseen = np.setdiff1d(unique_labels(y_host), self.classes_) if y_host.ndim == 1 else []
            if len(unseen):
                raise ValueError(f"`y` has classes not in `self.classes_`: {unseen.tolist()}; "
                                 f"self.classes_ has {self.classes_.tolist()}")
        Y = self._label_binarizer.transform(y_host).astype(np.float64)
        multi = self._label_binarizer.y_type_ == "multilabel-indicator" or len(self.classes_) == 2
        self.out_activation_ = "logistic" if multi else "softmax"
        return self._backend().asarray(Y) if native else Y

    def _loss(self):
        return BinaryCrossEntropy() if self.out_activation_ == "logistic" else CrossEntropy()

    def _proba_backend(self, X):
        Z, native = self._raw(X)
        xp = self._model.xp
        P = self._loss().predict(Z)
        if self.out_activation_ == "logistic" and len(self.classes_) == 2 \
                and self._label_binarizer.y_type_ != "multilabel-indicator":
            P = xp.concat([1.0 - P, P], axis=1)
        return P, native

    def predict_proba(self, X):
        """Class probabilities (n, n_classes); for multilabel targets, each label's probability."""
        P, native = self._proba_backend(X)
        return self._out(P, native)

    def predict_log_proba(self, X):
        """log of ``predict_proba`` (computed from the probabilities, as scikit-learn does)."""
        P, native = self._proba_backend(X)
        xp = self._model.xp
        return self._out(xp.log(P), native)

    def predict(self, X):
        """Predicted class labels (n,) — or the 0/1 indicator matrix for a multilabel target."""
        P, native = self._proba_backend(X)
        xp = self._model.xp
        if self._label_binarizer.y_type_ == "multilabel-indicator":
            out = xp.astype(P > 0.5, xp.int64)
            return self._out(out, native)
        k = xp.argmax(P, axis=1)
        if native and self.classes_.dtype.kind in "biuf":
            classes = self._model.backend.asarray(self.classes_)
            return xp.take(classes, k, axis=0)
        # string (or object) class labels cannot live on a device: they come back as a NumPy array
        return self.classes_[np.asarray(self._model.backend.to_numpy(k))]

    def _score_host(self, X, Y):
        """Accuracy on a validation part (model-ready arrays), as a Python float (early stopping)."""
        P = self._loss().predict(self._model.predict(X, batch_size=8192))
        xp = self._model.xp
        if self.out_activation_ == "softmax":
            right = xp.argmax(P, axis=1) == xp.argmax(Y, axis=1)
        else:
            right = xp.all((P > 0.5) == (Y > 0.5), axis=1)
        return float(self._model.backend.to_numpy(xp.mean(xp.astype(right, self._model.backend.dtype))))

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), keeping weights and optimizer state; ``classes`` is needed on the first call."""
        return self._fit(X, y, incremental=True, classes=classes)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.allow_nan = False
        return tags


class MLPRegressor(_HostScore, RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained with nnkit (scikit-learn's API; any nnkit backend).

    The parameters and fitted attributes are :class:`MLPClassifier`'s (no ``classes_``); the output is
    linear (``out_activation_ = "identity"``) and the loss is the squared error ½‖y − ŷ‖² averaged over
    the batch.  ``validation_scores_`` hold R² on the held-out part when ``early_stopping``.
    """

    _metric = staticmethod(r2_score)

    def _stratify(self):
        return False

    def _encode_targets(self, y, n_rows, native, first, classes, incremental):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if native:
            xp = array_api_compat.array_namespace(y)
            Y = xp.reshape(y, (-1, 1)) if y.ndim == 1 else y
            self._y_1d = y.ndim == 1 if first else self._y_1d
            self.out_activation_ = "identity"
            be = self._backend()
            return be.asarray(Y, dtype=be.dtype)
        y = np.asarray(y, dtype=np.float64)  # validated with X by scikit-learn (numeric, finite, same length)
        if first:
            self._y_1d = y.ndim == 1
        self.out_activation_ = "identity"
        return (y.reshape(-1, 1) if y.ndim == 1 else y).astype(np.float64)

    def _loss(self):
        return MSE()

    def predict(self, X):
        """Predicted targets: (n,) for a 1-D training target, else (n, n_outputs)."""
        Z, native = self._raw(X)
        if self._y_1d:
            Z = self._model.xp.reshape(Z, (-1,))
        return self._out(Z, native)

    def _score_host(self, X, Y):
        """R² on a validation part (early stopping)."""
        xp = self._model.xp
        P = self._model.predict(X, batch_size=8192)
        ss_res = xp.sum((Y - P) ** 2, axis=0)
        ss_tot = xp.sum((Y - xp.mean(Y, axis=0)) ** 2, axis=0)
        r2 = 1.0 - ss_res / xp.where(ss_tot == 0, 1.0, ss_tot)
        return float(self._model.backend.to_numpy(xp.mean(r2)))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.input_tags.allow_nan = False
        return tags
