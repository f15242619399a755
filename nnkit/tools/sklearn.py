"""scikit-learn estimators that train with nnkit on any backend: ``MLPClassifier`` and ``MLPRegressor``.

A drop-in for ``sklearn.neural_network``: the same parameters (names, defaults, meaning), solvers
(``"adam"``, ``"sgd"``, ``"lbfgs"``), fitted attributes and behaviours — ``sample_weight``, sparse input,
``loss="poisson"``, warm starts, ``partial_fit`` (stochastic solvers only), early stopping on the
validation score, ``ConvergenceWarning`` — plus ``backend=``, ``dtype=`` and ``callbacks=``, and what
nnkit adds: GPU training (``backend="cupy"``), a validation-loss curve (``validation_loss_curve_``) and
the optimizer state kept across ``warm_start`` fits.

Arrays in, arrays out: NumPy (or lists, DataFrames, SciPy sparse matrices) in gives NumPy out — also with
``backend="cupy"``, which trains on the GPU — and arrays of the backend's library in (CuPy, torch tensors)
give arrays of that library out, on their device.  The input's float dtype is kept (float32 X trains
float32 weights and predicts float32); ``dtype=`` overrides it.  ``coefs_`` and ``intercepts_`` are lists
of writable NumPy arrays that the next ``predict``, ``partial_fit`` or warm start uses (on the NumPy
backend they *are* the network's weights).

Needs scikit-learn (``pip install 'nnkit[sklearn]'``); ``import nnkit`` does not import it.

Differences from scikit-learn's MLP that remain, on purpose:

* SGD momentum follows PyTorch's form v ← μv + g, θ ← θ − lr·v (equal to scikit-learn's for a constant
  learning rate); Adam's ε is added to √v̂ rather than to √v.
* Initial weights and shuffles come from nnkit's generator: the same ``random_state`` gives other (equally
  distributed) numbers than scikit-learn's, so curves agree statistically, not digit by digit.
* With ``sample_weight``, an epoch's loss (``loss_curve_``) is the weighted mean over the epoch; scikit-learn
  weighs each batch's weighted mean by the batch's row count.  The gradients are the same.
* ``solver="lbfgs"`` also records ``loss_curve_`` (one entry per L-BFGS iteration; scikit-learn has none).
* A stochastic fit whose loss turns non-finite stops at that epoch (scikit-learn trains on to
  ``max_iter``): with early stopping the best-validation weights are restored and the non-finite score
  is recorded in ``validation_scores_``; without it scikit-learn's ``ValueError`` is raised.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

try:
    import scipy.optimize
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, column_or_1d
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "nnkit.sklearn needs scikit-learn >= 1.6: pip install 'nnkit[sklearn]'"
    ) from exc

import array_api_compat

from ..training import optim
from .. import data
from ..layers import Identity, ReLU, Sigmoid, Tanh
from ..backends import get_backend, host_copy, is_sparse
from ..training.callbacks import Callback
from ..layers import Dense
from ..losses import BinaryCrossEntropy, CrossEntropy, MSE, Poisson
from ..models.sequential import Sequential
from ..training.precision import PRECISIONS
from ..training.loop import TrainingDivergedError

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": Identity, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU}
_NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large values and "
               "need to be preprocessed.")
_CHUNK = 4096  # rows per chunk of a full-batch (L-BFGS) evaluation


def _glorot_logistic(rng, fan_in, fan_out):
    """U(−l, l) with l = √(2 / (fan_in + fan_out)): scikit-learn's MLP initialisation for logistic units."""
    limit = math.sqrt(2.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def _stochastic(est):
    if est.solver not in ("sgd", "adam"):
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. {est.solver} is not "
                             "stochastic.")
    return True


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
        est.loss_ = est._reported_loss(logs["loss"])
        est.loss_curve_.append(est.loss_)
        if "val_loss" in logs:
            est.validation_loss_curve_.append(est._reported_loss(logs["val_loss"], validation=True))
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        if self.validation is not None:
            score = est._score_host(*self.validation)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            improved = not score < est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_state = est._model.state_dict()
        else:
            improved = not est.loss_ > est.best_loss_ - est.tol
            est.best_loss_ = min(est.best_loss_, est.loss_)
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            self.optimizer.lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        est._no_improvement_count = 0 if improved else est._no_improvement_count + 1
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            msg = (f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} consecutive "
                   "epochs.")
            if est.solver == "sgd" and est.learning_rate == "adaptive" and self.optimizer.lr > 1e-6:
                self.optimizer.lr /= 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(msg + f" Setting learning rate to {self.optimizer.lr:f}")
                return False
            est._stopped = True
            if est.verbose:
                print(msg + " Stopping.")
            return True
        return False


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


class _BaseMLP(BaseEstimator):
    """Shared fitting machinery (see :class:`MLPClassifier` for the parameters)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, backend="numpy",
                 dtype=None, callbacks=(), precision=None):
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
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype
        self.callbacks = callbacks
        self.precision = precision

    # -- parameters ---------------------------------------------------------------------------------
    def _check_params(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, _ACTIVATIONS))}, got {self.activation!r}")
        if self.solver not in ("sgd", "adam", "lbfgs"):
            raise ValueError(f"solver must be 'lbfgs', 'sgd' or 'adam', got {self.solver!r}")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(f"learning_rate must be 'constant', 'invscaling' or 'adaptive', got {self.learning_rate!r}")
        for name, low in (("alpha", 0.0), ("tol", 0.0), ("power_t", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or not value >= low:
                raise ValueError(f"{name} must be a finite real number >= {low}, got {value!r}")
        for name in ("learning_rate_init", "epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or not value > 0:
                raise ValueError(f"{name} must be a finite real number > 0, got {value!r}")
        for name in ("momentum", "beta_1", "beta_2", "validation_fraction"):
            value = getattr(self, name)
            lo_ok = value > 0 if name == "validation_fraction" else value >= 0
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (lo_ok and value < 1):
                raise ValueError(f"{name} must be a real number in [0, 1), got {value!r}")
        for name in ("max_iter", "max_fun"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        patience = self.n_iter_no_change
        if isinstance(patience, bool) or not (isinstance(patience, numbers.Integral) and patience >= 1
                                              or isinstance(patience, numbers.Real) and patience == math.inf):
            raise ValueError(f"n_iter_no_change must be an integer >= 1 or np.inf, got {patience!r}")
        bs = self.batch_size
        if bs != "auto" and (isinstance(bs, bool) or not isinstance(bs, numbers.Integral) or bs < 1):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {bs!r}")
        if self.dtype not in (None, "float32", "float64"):
            raise ValueError(f"dtype must be None (follow X), 'float32' or 'float64', got {self.dtype!r}")
        if self.precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be None, {', '.join(map(repr, PRECISIONS))}, got {self.precision!r}")
        return sizes

    def _dtype_for(self, X):
        """The model's dtype: ``dtype=`` if given, else float32 under a precision policy (its master
        weights), else X's float dtype (float64 for anything else)."""
        if self.dtype is not None:
            return self.dtype
        if self.precision is not None:
            return "float32"
        name = getattr(X.dtype, "name", str(X.dtype)).replace("torch.", "")
        return "float32" if name == "float32" else "float64"

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
        return validate_data(self, X, reset=reset, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32))

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                          "clipped", UserWarning)
        return min(self.batch_size, n)

    def _take(self, A, idx):
        if A is None:
            return None
        if isinstance(A, np.ndarray) or is_sparse(A):
            return A[idx]
        xp = array_api_compat.array_namespace(A)
        return xp.take(A, xp.asarray(idx, device=array_api_compat.device(A)), axis=0)

    # -- the network --------------------------------------------------------------------------------
    def _build(self, n_in, n_out, hidden, seed, dtype):
        # scikit-learn's initialisation: Glorot uniform, with √(2/(fan_in+fan_out)) for logistic units
        init = _glorot_logistic if self.activation == "logistic" else "glorot_uniform"
        return Sequential.mlp([n_in, *hidden, n_out], _ACTIVATIONS[self.activation], init=init, output_init=init,
                              backend=get_backend(self.backend, dtype=dtype), seed=seed, precision=self.precision)

    def _new_optimizer(self):
        if self.solver == "sgd":
            return optim.SGD(self.learning_rate_init, momentum=self.momentum,
                             nesterov=self.nesterovs_momentum and self.momentum > 0)
        return optim.Adam(self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)

    def _dense_keys(self):
        return [i for i, layer in enumerate(self._model.layers) if isinstance(layer, Dense)]

    def _pull(self):
        """The network's weights into ``coefs_``/``intercepts_`` (in place where the arrays allow), and back
        (on the NumPy backend the network then trains these very arrays)."""
        state = self._model.state_dict()
        for name, kind in (("coefs_", "W"), ("intercepts_", "b")):
            new = [state[f"{i}.{kind}"] for i in self._dense_keys()]
            old = getattr(self, name, None)
            if isinstance(old, list) and len(old) == len(new) and all(
                    isinstance(o, np.ndarray) and o.shape == n.shape and o.dtype == n.dtype and o.flags.writeable
                    for o, n in zip(old, new)):
                for o, n in zip(old, new):
                    np.copyto(o, n)
            else:
                setattr(self, name, new)
        self._push()

    def _push(self):
        """``coefs_``/``intercepts_`` (perhaps assigned or edited by the user) into the network."""
        model, be = self._model, self._model.backend
        keys = self._dense_keys()
        coefs, intercepts = list(self.coefs_), list(self.intercepts_)
        if len(coefs) != len(keys) or len(intercepts) != len(keys):
            raise ValueError(f"coefs_ and intercepts_ must hold {len(keys)} arrays each (one per layer)")
        new = {}
        for j, i in enumerate(keys):
            for kind, value in (("W", coefs[j]), ("b", intercepts[j])):
                value = np.asarray(value)
                want = tuple(model.params()[f"{i}.{kind}"].shape)
                if value.shape != want:
                    raise ValueError(f"{'coefs_' if kind == 'W' else 'intercepts_'}[{j}] has shape {value.shape}, "
                                     f"expected {want}")
                new[f"{i}.{kind}"] = be.asarray(value, dtype=be.dtype)
        model.assign(new)

    # -- fitting --------------------------------------------------------------------------------------
    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        native = self._is_native(X)
        first = not hasattr(self, "_model") or (not self.warm_start and not incremental)
        if native:
            X = self._validate_X(X, reset=first)
        else:
            X, y = validate_data(self, X, y, reset=first, accept_sparse=["csr", "csc"],
                                 dtype=(np.float64, np.float32), multi_output=True,
                                 y_numeric=isinstance(self, RegressorMixin))
        Y = self._encode_targets(y, X.shape[0], native, first, incremental)
        if sample_weight is not None:
            w = host_copy(sample_weight) if self._is_native(sample_weight) else sample_weight
            sample_weight = _check_sample_weight(w, np.empty((X.shape[0], 0)), dtype=np.float64)
        if hasattr(self, "_class_sample_weight"):
            sample_weight = self._class_sample_weight(y, sample_weight)
        n_out = Y.shape[1]
        # weights assigned to coefs_/intercepts_ before the first partial_fit start it (scikit-learn's worked
        # example sets them by hand): kept and pushed into the new network instead of drawn ones
        preset = first and incremental and not hasattr(self, "_model") and \
            isinstance(getattr(self, "coefs_", None), list) and isinstance(getattr(self, "intercepts_", None), list)
        if first:
            rng = check_random_state(self.random_state)
            self._model = self._build(X.shape[1], n_out, hidden, int(rng.randint(np.iinfo(np.int32).max)),
                                      self._dtype_for(X))
            self._optimizer = self._new_optimizer()
            self._reset_curves()
            self._split_seed = int(rng.randint(np.iinfo(np.int32).max))
            self.n_outputs_, self.n_layers_ = n_out, len(hidden) + 2
            if preset:
                self._push()  # checks every shape against the network; a mismatch is a ValueError naming it
            self._pull()
        else:
            if self._model.n_outputs != n_out:
                raise ValueError(f"y has {n_out} output column(s) but the fitted network has {self._model.n_outputs}")
            self._push()  # coefs_ / intercepts_ as the user left them
        try:
            if self.solver == "lbfgs":
                self._fit_lbfgs(X, Y, sample_weight)
            else:
                self._fit_stochastic(X, Y, sample_weight, incremental)
        finally:
            self._pull()
        if not all(np.all(np.isfinite(a)) for a in (*self.coefs_, *self.intercepts_)):
            raise ValueError(_NON_FINITE)
        return self

    def _reset_curves(self):
        self.n_iter_, self.t_ = 0, 0
        self.loss_curve_, self.validation_loss_curve_ = [], []
        self.best_loss_ = math.inf
        self._no_improvement_count = 0
        if self.early_stopping and self.solver != "lbfgs":
            self.validation_scores_, self.best_validation_score_ = [], -math.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
        self._best_state = None

    def _reported_loss(self, value, validation=False):
        """nnkit's epoch loss in scikit-learn's units (see the subclasses)."""
        return value

    def _constant_loss(self, Y, sample_weight):
        return 0.0

    def _fit_stochastic(self, X, Y, sample_weight, incremental):
        if (self._optimizer.__class__ is optim.SGD) != (self.solver == "sgd"):
            self._optimizer = self._new_optimizer()  # the solver changed between warm starts
        if not incremental:  # a (warm-started) fit starts from learning_rate_init; the moments are kept
            self._optimizer.lr = float(self.learning_rate_init)
        validation = None
        if self.early_stopping:
            stratify = Y if isinstance(self, ClassifierMixin) and Y.shape[1] == 1 else None
            idx = np.arange(X.shape[0])
            tr, va = train_test_split(idx, test_size=self.validation_fraction, random_state=self._split_seed,
                                      stratify=None if stratify is None else host_copy(stratify))
            if va.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                                 "your dataset.")
            validation = (self._take(X, va), self._take(Y, va), self._take(sample_weight, va))
            X, Y, sample_weight = self._take(X, tr), self._take(Y, tr), self._take(sample_weight, tr)
        self._loss_offset = self._constant_loss(Y, sample_weight)
        self._loss_offset_val = None if validation is None else self._constant_loss(validation[1], validation[2])
        n = X.shape[0]
        batch = self._batch_size(n)
        reg = optim.L2(float(self.alpha), per_batch=True) if self.alpha > 0 else None  # (α/2Σw_b)‖W‖² per batch
        self._stopped = False
        self.n_iter_ = 0  # scikit-learn's meaning: the epochs of this call; t_ goes on counting samples
        schedule = _SklearnSchedule(self, n, validation)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=RuntimeWarning)  # overflow in a diverging run → NaN loss
                self._model.fit(X, Y, loss=self._loss(), optimizer=self._optimizer, epochs=1 if incremental else self.max_iter,
                                batch_size=batch, shuffle=self.shuffle, validation_data=validation, metrics=[],
                                verbose=0, regularizer=reg, callbacks=[schedule, *self.callbacks],
                                sample_weight=sample_weight)
        except TrainingDivergedError:
            if validation is None:
                raise ValueError(_NON_FINITE) from None
            self.n_iter_ += 1
            self.loss_curve_.append(math.nan)
            self.validation_scores_.append(math.nan)  # scikit-learn records the non-finite score too
            self._stopped = True
        if self.early_stopping and self._best_state is not None:
            self._model.load_state_dict(self._best_state)
        if not incremental and not self._stopped and self.n_iter_ >= self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning)

    def _fit_lbfgs(self, X, Y, sample_weight):
        """Full-batch L-BFGS-B (``scipy.optimize.minimize``) on nnkit's loss and gradient: one device → host
        transfer per function evaluation; the rows are taken in chunks (a sparse X densified chunk by chunk)."""
        model, be, xp = self._model, self._model.backend, self._model.xp
        loss = self._loss()
        keys = list(model.params())
        shapes = {k: tuple(p.shape) for k, p in model.params().items()}
        Xd, Td = data.as_input(model, X), data.as_target(model, Y, X.shape[0], loss)
        total = float(X.shape[0]) if sample_weight is None else float(np.sum(sample_weight))
        W = None if sample_weight is None else be.asarray(sample_weight, dtype=be.dtype)
        alpha = float(self.alpha)
        self._loss_offset = self._constant_loss(Y, sample_weight)

        def assign(theta):
            new, offset = {}, 0
            for k in keys:
                size = math.prod(shapes[k])
                new[k] = be.asarray(theta[offset:offset + size].reshape(shapes[k]), dtype=be.dtype)
                offset += size
            model.assign(new)

        def fun(theta):
            assign(theta)
            value, grads = None, None
            for s in range(0, X.shape[0], _CHUNK):
                e = min(s + _CHUNK, X.shape[0])
                wc = None if W is None else W[s:e]
                share = (e - s) / total if W is None else xp.sum(wc) / total
                v, _, g = model.loss_and_grads(data.rows(model, Xd, s, e), Td[s:e, ...], loss, w=wc)
                value = v * share if value is None else value + v * share
                grads = {k: g[k] * share for k in keys} if grads is None else {k: grads[k] + g[k] * share for k in keys}
            if alpha > 0:  # scikit-learn: (α/2Σw)Σ‖W‖² and (α/Σw)W
                penalty = optim.L2(alpha / total)
                value, grads = penalty.add_to(model.params(), value, grads)
            flat = xp.concat([xp.reshape(value, (1,))] + [xp.reshape(grads[k], (-1,)) for k in keys])
            host = be.to_numpy(flat).astype(np.float64)  # the evaluation's one device -> host transfer
            return float(host[0]), host[1:]

        theta0 = np.concatenate([np.asarray(model.state_dict()[k], dtype=np.float64).ravel() for k in keys])
        curve = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            res = scipy.optimize.minimize(fun, theta0, method="L-BFGS-B", jac=True,
                                          callback=lambda intermediate_result: curve.append(
                                              self._reported_loss(float(intermediate_result.fun))),
                                          options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        n_iter = min(res.nit, self.max_iter)
        if res.status != 0:
            warnings.warn(f"lbfgs failed to converge after {n_iter} iteration(s) (status={res.status}):\n"
                          f"{res.message}\n\nIncrease the number of iterations to improve the convergence "
                          f"(max_iter={self.max_iter}).", ConvergenceWarning)
        self.n_iter_ = n_iter
        self.loss_ = self._reported_loss(float(res.fun))
        self.loss_curve_ = curve
        assign(res.x)

    # -- prediction ---------------------------------------------------------------------------------
    def _raw(self, X):
        """The network's output for validated X, as an array of the model's backend."""
        check_is_fitted(self, "_model")
        native = self._is_native(X)
        X = self._validate_X(X, reset=False)
        self._push()
        return self._model.predict(X, batch_size=8192), native

    def _out(self, A, native):
        """Backend array → what the caller gets: the backend's array for native input, else NumPy."""
        return A if native else np.asarray(self._model.backend.to_numpy(A))

    def _predict_host(self, X):
        """``predict`` of prepared (validation) rows, as NumPy."""
        P = self._model.predict(X, batch_size=8192)
        return np.asarray(self._model.backend.to_numpy(self._loss().predict(P)))

    @property
    def model_(self):
        """The trained :class:`nnkit.Sequential` (save it with ``model_.save(path)``)."""
        check_is_fitted(self, "_model")
        return self._model

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), keeping the weights and the optimizer state of earlier calls (stochastic
        solvers only, as in scikit-learn; ``early_stopping=True`` raises scikit-learn's ValueError)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) (weighted by ``sample_weight``) for up to ``max_iter`` epochs — or L-BFGS
        iterations — continuing from the last fit with ``warm_start``."""
        return self._fit(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = False
        return tags


class MLPClassifier(_HostScore, ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained with nnkit (scikit-learn's API; any nnkit backend).

    Parameters as :class:`sklearn.neural_network.MLPClassifier` — ``hidden_layer_sizes``, ``activation``
    ('identity', 'logistic', 'tanh', 'relu'), ``solver`` ('lbfgs', 'sgd', 'adam'), ``alpha`` (L2
    strength), ``batch_size`` ('auto' = min(200, n)), ``learning_rate`` ('constant', 'invscaling',
    'adaptive'; SGD), ``learning_rate_init``, ``power_t``, ``max_iter`` (epochs, or L-BFGS iterations),
    ``shuffle``, ``random_state``, ``tol``, ``verbose``, ``warm_start``, ``momentum``,
    ``nesterovs_momentum``, ``early_stopping``, ``validation_fraction``, ``beta_1``, ``beta_2``,
    ``epsilon``, ``n_iter_no_change`` (an int, or ``np.inf``: never stop for lack of improvement),
    ``max_fun`` (L-BFGS function evaluations) — plus

    * ``backend``: ``"numpy"`` (default), ``"cupy"``, ``"torch"``, ``"jax"``, ... (see :func:`nnkit.get_backend`);
    * ``dtype``: None (default: X's float dtype, float64 for anything else), ``"float32"`` or ``"float64"``;
    * ``precision``: None (default), ``"mixed_bfloat16"``, ``"mixed_float16"`` or ``"tf32"`` — float32
      weights, matmuls in the compute dtype (see :mod:`nnkit.precision`; torch, JAX or CuPy);
    * ``callbacks``: nnkit callbacks run after every epoch.

    The output layer: one logit with sigmoid cross-entropy for two classes and for each label of a
    multilabel target (``out_activation_ = "logistic"``), softmax cross-entropy for more classes
    (``"softmax"``).  Fitted attributes: ``classes_``, ``loss_``, ``loss_curve_``, ``best_loss_``,
    ``validation_scores_``, ``best_validation_score_``, ``validation_loss_curve_``, ``n_iter_`` (epochs of
    the last fit), ``t_`` (samples seen), ``n_features_in_``, ``coefs_``, ``intercepts_``, ``n_layers_``,
    ``n_outputs_``, ``out_activation_``.  See the module docstring for the remaining differences.
    """

    _metric = staticmethod(accuracy_score)
    class_weight = None  # estimators pickled before class_weight existed unpickle with none

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, backend="numpy",
                 dtype=None, callbacks=(), precision=None, class_weight=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
                         backend=backend, dtype=dtype, callbacks=callbacks, precision=precision)
        self.class_weight = class_weight

    def _class_sample_weight(self, y, sample_weight):
        """``sample_weight`` times each row's class weight (``class_weight``: a dict {class label: weight} or
        ``"balanced"``, as scikit-learn's estimators take it)."""
        cw = self.class_weight
        if cw is None:
            return sample_weight
        if getattr(self, "_label_binarizer", None) is not None and self._label_binarizer.y_type_ == "multilabel-indicator":
            raise ValueError("class_weight takes one class label per example, not multilabel targets")
        labels = np.searchsorted(self.classes_, np.asarray(host_copy(y) if self._is_native(y) else y).ravel())
        if isinstance(cw, dict):
            unknown = [c for c in cw if c not in set(self.classes_.tolist())]
            if unknown:
                raise ValueError(f"class_weight names {unknown!r}, which are not among the classes {list(self.classes_)}")
            cw = {int(np.searchsorted(self.classes_, c)): v for c, v in cw.items()}
        w = data.class_weights(labels, cw, len(self.classes_))
        return w if sample_weight is None else np.asarray(sample_weight, dtype=np.float64) * w


    def _encode_targets(self, y, n_rows, native, first, incremental):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        y_host = host_copy(y) if native else np.asarray(y)
        if y_host.ndim == 2 and y_host.shape[1] == 1:
            y_host = column_or_1d(y_host, warn=True)
        if y_host.shape[0] != n_rows:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: [{n_rows}, {y_host.shape[0]}]")
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            kind = type_of_target(y_host, input_name="y")
            if kind not in ("binary", "multiclass", "multilabel-indicator"):
                raise ValueError(f"Unknown label type: {kind!r}: MLPClassifier needs class labels")
            lb = LabelBinarizer().fit(y_host)
            if len(lb.classes_) < 2 and lb.y_type_ != "multilabel-indicator":
                raise ValueError(f"MLPClassifier needs samples of at least 2 classes in the data, but the data "
                                 f"contains only one class: {lb.classes_[0]!r}")
            self._label_binarizer, self.classes_ = lb, lb.classes_
        else:
            classes = unique_labels(y_host)
            if self.warm_start and not incremental:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the previous "
                                     f"call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        Y = self._label_binarizer.transform(y_host).astype(np.float64)
        multi = self._label_binarizer.y_type_ == "multilabel-indicator" or len(self.classes_) == 2
        self.out_activation_ = "logistic" if multi else "softmax"
        return self._model_backend().asarray(Y) if native else Y

    def _model_backend(self):
        return self._model.backend if hasattr(self, "_model") else get_backend(self.backend)

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

    def _score_host(self, X, Y, sample_weight=None):
        """scikit-learn's accuracy on a validation part (model-ready rows, binarized targets), NaN for
        non-finite predictions (early stopping)."""
        P = self._predict_host(X)
        if not np.all(np.isfinite(P)):
            return math.nan
        Yh = np.asarray(host_copy(Y)) if not isinstance(Y, np.ndarray) else Y
        if self._label_binarizer.y_type_ == "multilabel-indicator":
            y_true, y_pred = Yh > 0.5, P > 0.5
        elif P.shape[1] == 1:
            y_true, y_pred = Yh[:, 0] > 0.5, P[:, 0] > 0.5
        else:
            y_true, y_pred = Yh.argmax(axis=1), P.argmax(axis=1)
        w = None if sample_weight is None else np.asarray(host_copy(sample_weight))
        return float(accuracy_score(y_true, y_pred, sample_weight=w))

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), keeping weights and optimizer state (stochastic solvers only).

        ``classes`` is needed on the first call; passing other classes later raises, as in scikit-learn;
        so does ``early_stopping=True``."""
        if _check_partial_fit_first_call(self, classes):
            y_host = host_copy(y) if self._is_native(y) else np.asarray(y)
            lb = LabelBinarizer()
            lb.fit(y_host if type_of_target(y_host).startswith("multilabel") else self.classes_)
            self._label_binarizer = lb
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(_HostScore, RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained with nnkit (scikit-learn's API; any nnkit backend).

    ``loss``: ``"squared_error"`` (linear output, ``out_activation_ = "identity"``) or ``"poisson"``
    (exponential output, ``"exp"``; targets must be non-negative), reported in scikit-learn's units
    (half the squared error averaged over the outputs; the half Poisson deviance).  The other parameters
    and fitted attributes are :class:`MLPClassifier`'s (no ``classes_``).  ``validation_scores_`` hold
    scikit-learn's R² on the held-out part when ``early_stopping`` (a constant target scores 0).
    """

    _metric = staticmethod(r2_score)

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, backend="numpy",
                 dtype=None, callbacks=(), precision=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
                         backend=backend, dtype=dtype, callbacks=callbacks, precision=precision)
        self.loss = loss

    def _check_params(self):
        if self.loss not in ("squared_error", "poisson"):
            raise ValueError(f"loss must be 'squared_error' or 'poisson', got {self.loss!r}")
        return super()._check_params()

    def _encode_targets(self, y, n_rows, native, first, incremental):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if native:
            xp = array_api_compat.array_namespace(y)
            Y = xp.reshape(y, (-1, 1)) if y.ndim == 1 else y
            self._y_1d = y.ndim == 1 if first else self._y_1d
            y_check = host_copy(Y)
        else:
            y = np.asarray(y)  # validated with X by scikit-learn (numeric, finite, same length)
            if y.ndim == 2 and y.shape[1] == 1:
                y = column_or_1d(y, warn=True)
            if first:
                self._y_1d = y.ndim == 1
            Y = y.reshape(-1, 1) if y.ndim == 1 else y
            y_check = Y
        if self.loss == "poisson" and np.any(np.asarray(y_check) < 0):
            raise ValueError("Some value(s) of y are negative which is not allowed for Poisson regression.")
        self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        return Y

    def _loss(self):
        return Poisson() if self.loss == "poisson" else MSE()

    def _reported_loss(self, value, validation=False):
        """scikit-learn's units: squared error ½·mean over outputs (nnkit sums them); Poisson the half
        deviance (nnkit leaves out the y-only term Σ y log y − y, added back here)."""
        if self.loss == "squared_error":
            return value / self.n_outputs_
        return value + (self._loss_offset_val if validation else self._loss_offset)

    def _constant_loss(self, Y, sample_weight):
        if self.loss != "poisson":
            return 0.0
        Yh = np.asarray(host_copy(Y), dtype=np.float64)
        term = np.where(Yh > 0, Yh * np.log(np.where(Yh > 0, Yh, 1.0)), 0.0) - Yh
        return float(np.average(term, weights=sample_weight, axis=0).sum())

    def predict(self, X):
        """Predicted targets: (n,) for a 1-D training target, else (n, n_outputs)."""
        Z, native = self._raw(X)
        Z = self._loss().predict(Z)
        if self._y_1d:
            Z = self._model.xp.reshape(Z, (-1,))
        return self._out(Z, native)

    def _score_host(self, X, Y, sample_weight=None):
        """scikit-learn's R² on a validation part (early stopping); NaN for non-finite predictions."""
        P = self._predict_host(X)
        if not np.all(np.isfinite(P)):
            return math.nan
        Yh = np.asarray(host_copy(Y)) if not isinstance(Y, np.ndarray) else Y
        w = None if sample_weight is None else np.asarray(host_copy(sample_weight))
        return float(r2_score(Yh, P, sample_weight=w))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
