"""Arrays and tables: the checks and conversions every in-memory input passes once — ``as_input`` (features:
dense, sparse, token ids, the model's preprocessing), ``as_target`` (labels, targets, per-position targets),
sample and class weights — each a ``ValueError`` naming the problem and the expected form."""
from __future__ import annotations

import numpy as np
import array_api_compat

from ..backends import host_copy, is_sparse
from ..backends.functional import namespace_of
from ..layers import fmt_shape
from ..losses import check_rows
from ..metrics import BatchStats

__all__ = ["BatchError", "host_if_foreign", "positions_of", "row_weights", "as_input", "dense", "rows", "check_range", "named_labels", "as_target", "host_or_native", "numeric_host", "batch_ranges", "batch_sums", "slice_rows", "check_weights", "class_weights"]


class BatchError(ValueError):
    """A streamed batch that cannot be used (wrong shape, dtype, values, or the user's loader raised); the
    message names the batch.  A ``ValueError``."""


def host_if_foreign(be, a):
    """A batch from a loader as backend ``be``'s array or a NumPy array: other libraries' arrays (a torch
    DataLoader's tensors for a NumPy model) are copied to the host."""
    if isinstance(a, np.ndarray) or be.owns(a) or not hasattr(a, "shape"):
        return a
    return host_copy(a)


def positions_of(model):
    """The positions P each example's output holds — () for a (K,) output, (T,) for a sequence model's (T, K)."""
    out = model.last_output_shape
    return tuple(out[:-1]) if out is not None and len(out) >= 2 else ()


def row_weights(model, n, w_host=None, m_host=None):
    """Host float64 (n,): what each example adds to the sums a mean divides by — 1 (or its weight w) for a (B, K)
    output; for a per-position output the weights of its valid positions (the padding mask ``m_host`` (n, T)
    times w (n,) or (n, T)).  Call after the batch's shape was checked (``model.last_output_shape``)."""
    P = positions_of(model)
    k = int(np.prod(P)) if P else 1
    w = np.ones((n, 1)) if w_host is None else np.reshape(w_host, (n, -1))
    if k == 1:
        return w[:, 0] if w.shape[1] == 1 else w.sum(axis=1)
    m = np.ones((n, k)) if m_host is None else np.reshape(m_host, (n, -1))
    return (m * w).sum(axis=1)


# -- in-memory data: checked once, converted once (the model's _as_input/_as_target call these) -------------
def as_input(model, X, check_values=True):
    """Validate X and return it as a (B, *input_shape) array of the model's dtype and device.

    A model that carries a :class:`nnkit.Preprocessing` (``model.preprocessing``) takes raw rows here, by every
    door (``fit``, ``evaluate``, ``predict``, ``train_step``, ``explain``, ...): a table, a DataFrame (columns
    matched by name, the label column left out) or an array of raw features, filled and scaled on the way in.
    A SciPy sparse matrix (a table) is checked and kept on the host as CSR: it is densified one batch
    at a time on its way to the device (``_rows``), never whole."""
    pre = model.table_preprocessing()
    if pre is not None and not is_sparse(X):
        X = _preprocessed(model, pre, X)
    if is_sparse(X):
        return _as_sparse_input(model, X, check_values)
    if not check_values and model.backend.ready(X) and X.ndim >= 2 and X.shape[0] \
            and model.shape_checked(tuple(X.shape[1:])):
        return X  # the hot path: already a batch of this backend, of a checked shape: nothing to convert
    arr = host_or_native(model, X, "X")
    xp = namespace_of(arr)
    want = "(batch, features)" if model.input_shape is None else fmt_shape(model.input_shape)
    if arr.ndim < 2:
        hint = " (use X.reshape(1, -1) for a single example)" if arr.ndim == 1 else ""
        if model.n_features_in is not None:
            want = f"2-D (batch, features) with {model.n_features_in} features"
        raise ValueError(f"X must be {want}, got shape {tuple(arr.shape)}{hint}")
    if arr.shape[0] == 0:
        what = f"row of {model.n_features_in} features" if model.n_features_in is not None else f"example {want}"
        raise ValueError(f"X is empty: expected at least one {what}")
    model.check_batch_shape(tuple(int(d) for d in arr.shape[1:]))
    if not xp.isdtype(arr.dtype, ("real floating", "integral", "bool")):
        raise TypeError(not_numeric("X", arr.dtype))
    if check_values and xp.isdtype(arr.dtype, "real floating") and not bool(xp.all(xp.isfinite(arr))):
        raise ValueError(f"X contains NaN or infinity, first at {_first_bad(arr, xp)}: clean the data, or attach a "
                         "preprocessing that imputes it (model.preprocessing = nnkit.Preprocessing.fit(X_train, "
                         "impute='mean'))")
    if getattr(model.layers[0], "takes_ids", False):  # token ids: integers, kept integers, in range
        return _as_ids(model, arr, xp, check_values)
    if check_values:
        check_range(model, arr, "X")
    return model.backend.asarray(arr, dtype=model.backend.dtype)


def _first_bad(arr, xp):
    """Where the first NaN or infinity of ``arr`` is, as "row i, column j" (or its index); read only on the error
    path."""
    bad = np.argwhere(~np.isfinite(_host(arr)))
    if not len(bad):
        return "an unknown place"
    idx = tuple(int(i) for i in bad[0])
    return f"row {idx[0]}, column {idx[1]}" if len(idx) == 2 else f"index {idx}"


def _host(arr):
    return arr if isinstance(arr, np.ndarray) else np.asarray(host_copy(arr))


def _preprocessed(model, pre, X):
    """X through the model's preprocessing: host data (a Table, a DataFrame, an array) by
    :meth:`Preprocessing.transform`; an array already on the model's device by the same fill and scaling there."""
    be = model.backend
    if be.owns(X) and not isinstance(X, np.ndarray):
        if pre.categories is not None:
            raise TypeError("the model encodes text columns (its preprocessing): give it the raw rows on the host "
                            "(a NumPy array, a Table or a DataFrame), not an array of the backend")
        xp = be.xp
        X = xp.astype(X, be.dtype)
        if pre.fill is not None:
            X = xp.where(xp.isnan(X), be.asarray(pre.fill, dtype=be.dtype), X)
        if pre.mean is not None:
            X = (X - be.asarray(pre.mean, dtype=be.dtype)) / be.asarray(pre.std, dtype=be.dtype)
        return X
    return pre.transform(X)


def _as_ids(model, arr, xp, check_values):
    """Integer token ids for a model whose first layer takes them (``Embedding``): never cast to a float, every id
    in [0, num_embeddings) — an id outside is a ValueError naming the example and the position."""
    first = model.layers[0]
    if not xp.isdtype(arr.dtype, "integral"):
        raise TypeError(f"{first!r} takes integer token ids, got X of dtype {arr.dtype}: pass the ids as integers "
                        "(e.g. X.astype(np.int64))")
    if check_values and arr.shape[0]:
        host = np.asarray(host_copy(arr))
        bad = np.argwhere((host < 0) | (host >= first.num_embeddings))
        if bad.size:
            where = tuple(int(i) for i in bad[0])
            raise ValueError(f"X[{', '.join(map(str, where))}] = {int(host[where])} is not a token id of {first!r}: "
                             f"ids must lie in [0, {first.num_embeddings}) (example {where[0]}, position "
                             f"{where[1:] if len(where) > 2 else where[1] if len(where) > 1 else 0})")
    be = model.backend
    return be.asarray(arr, dtype=be.xp.int64)


def _as_sparse_input(model, X, check_values):
    if len(X.shape) != 2 or X.shape[0] == 0 or model.input_shape is not None and X.shape[1] != model.n_features_in:
        raise ValueError(f"X has shape {tuple(X.shape)} but the model expects (rows, {model.n_features_in})")
    model.check_batch_shape((int(X.shape[1]),))
    X = X.tocsr()
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must be numeric (float or int), got dtype {X.dtype}")
    if check_values and X.dtype.kind == "f":
        if not np.all(np.isfinite(X.data)):
            raise ValueError("X contains NaN or infinity: clean or impute the data first")
        check_range(model, X.data.reshape(-1, 1), "X")
    return X


def dense(model, rows):
    """Host sparse rows as a dense device batch of the model's dtype."""
    return model.backend.asarray(rows.toarray(), dtype=model.backend.dtype)


def rows(model, X, start, stop):
    """Rows [start, stop) of a prepared input: a slice of a device array, or a densified sparse slice (of each,
    for a model's several inputs)."""
    if isinstance(X, list):
        return [rows(model, x, start, stop) for x in X]
    if is_sparse(X):
        return dense(model, X[start:stop])
    return X[start:stop, ...]


def check_range(model, arr, name):
    """Values that would overflow the model's dtype (float64 data for a float32 model) are refused."""
    xp = namespace_of(arr)
    if model.dtype == "float64" or arr.dtype != xp.float64 or arr.shape[0] == 0:
        return
    limit = float(np.finfo(model.dtype).max)
    big = float(xp.max(xp.abs(arr)))
    if big > limit:
        raise ValueError(
            f"{name} holds values up to {big:.3g}, beyond the range of the model's {model.dtype} "
            f"(±{limit:.3g}): rescale the data or use dtype='float64'"
        )


def named_labels(model, y):
    """Class names in ``y`` (strings, or objects) as the indices of the model's classes (its preprocessing's
    ``classes``); a name the model never saw is a ValueError naming it and its row.  Anything else unchanged."""
    if not isinstance(y, (list, tuple, np.ndarray)) or isinstance(y, np.ndarray) and y.dtype.kind not in "OUS":
        return y
    arr = np.asarray(y, dtype=object)
    if arr.ndim != 1 or not arr.size or not any(isinstance(v, str) for v in arr.tolist()):
        return y
    pre = model.preprocessing
    classes = None if pre is None else pre.classes
    if not classes:
        raise ValueError(f"y holds class names ({arr[0]!r}, ...) but the model knows no class names: give integer "
                         "labels 0..K−1, or attach nnkit.Preprocessing.fit(X, classes=[...]) as model.preprocessing")
    index = {str(c): i for i, c in enumerate(classes)}
    out = np.empty(arr.shape[0], dtype=np.int64)
    for i, v in enumerate(arr.tolist()):
        k = index.get(str(v))
        if k is None:
            raise ValueError(f"label {v!r} in row {i} is not one of the model's classes "
                             f"({', '.join(map(repr, classes))}): a class never seen in training")
        out[i] = k
    return out


def as_target(model, y, n_rows, loss, check_values=True):
    y = named_labels(model, y)
    out = model.last_output_shape
    if model.n_outputs is None and out is not None and len(out) >= 2 and None not in out:
        return _as_position_target(model, y, n_rows, loss, out, check_values)
    if model.n_outputs is None:
        out = "not known yet" if model.example_output_shape is None else fmt_shape(model.example_output_shape)
        raise ValueError(f"the losses compare (B, K) outputs with targets, but the model's output is {out}: "
                         "end the model in Flatten() and Dense(..., K), or GlobalAvgPool()")
    if not check_values and model.backend.ready(y) and tuple(y.shape) == (n_rows, model.n_outputs):
        return y  # a (B, K) float target of this backend fits every loss; values are not checked
    arr = host_or_native(model, y, "y")
    arr = loss.check_target(arr, model.n_outputs, n_rows, check_values)
    if check_values and arr.ndim == 2:
        check_range(model, arr, "y")
    return loss.prepare_target(arr, model.n_outputs, model.backend)


def _as_position_target(model, y, n_rows, loss, out, check_values):
    """Per-position targets for outputs (B, *P, K) — a sequence model's (B, T, K): (B, *P) class labels (kept
    integer labels for a loss that ``keeps_labels``, never a one-hot), or (B, *P, K) values (for K = 1 also
    (B, *P)); checked as the N = B·prod(P) rows they are scored as (:func:`nnkit.losses.as_rows`)."""
    P, K = tuple(out[:-1]), out[-1]
    arr = host_or_native(model, y, "y")
    xp = namespace_of(arr)
    shape = tuple(int(d) for d in arr.shape)
    labels_ok = getattr(loss, "keeps_labels", False) or K == 1
    if shape[1:1 + len(P)] != P or len(shape) not in (1 + len(P) + (0 if labels_ok else 1), 2 + len(P)) \
            or (len(shape) == 2 + len(P) and shape[-1] != K):
        per = f"{fmt_shape(P)} class labels or {fmt_shape(P + (K,))} values" if labels_ok else fmt_shape(P + (K,))
        raise ValueError(f"y has shape {shape} but the model's outputs are {fmt_shape(out)}, one per position: "
                         f"per-position targets are {per}, for ({n_rows}, ...) rows")
    check_rows(arr, n_rows)
    if check_values and len(shape) == 1 + len(P) and getattr(loss, "keeps_labels", False) and K > 1 \
            and xp.isdtype(arr.dtype, "integral") and arr.shape[0]:
        bad = xp.reshape((arr < 0) | (arr >= K), (-1,))
        if bool(xp.any(bad)):  # name the first label out of range by its position (one read, as the check's)
            at = np.unravel_index(int(xp.argmax(xp.astype(bad, xp.int8))), shape)
            raise ValueError(f"y[{', '.join(map(str, at))}] = {int(arr[at])} is not a class of a model with {K} "
                             f"outputs: per-position class labels must lie in [0, {K - 1}]")
    rows_n = n_rows * int(np.prod(P))
    flat = xp.reshape(arr, (rows_n,) + tuple(shape[1 + len(P):]))
    flat = loss.check_target(flat, K, rows_n, check_values)
    be = model.backend
    if flat.ndim == 1 and getattr(loss, "keeps_labels", False):
        if be.owns(flat):
            flat = namespace_of(flat).astype(flat, be.xp.int64)
        return be.xp.reshape(be.asarray(flat, dtype=be.xp.int64), (n_rows,) + P)
    if check_values:
        check_range(model, flat, "y")
    T = loss.prepare_target(flat, K, be)
    return be.xp.reshape(T, (n_rows,) + P + (K,))


def host_or_native(model, a, name):
    """``a`` as this backend's array, or as a NumPy array on the host; other libraries are refused."""
    be = model.backend
    if be.owns(a):
        return a
    if not isinstance(a, np.ndarray) and array_api_compat.is_array_api_obj(a):
        raise TypeError(
            f"{name} is a {type(a).__module__}.{type(a).__name__} but the model runs on backend "
            f"'{be.name}': pass a NumPy array or a {be.name} array, or move the model with "
            f"model.to(...)"
        )
    return numeric_host(a, name)


def numeric_host(a, name):
    """``a`` as a numeric (bool, int or float) NumPy array, else a TypeError naming ``name``."""
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(a).__name__} ({exc})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(not_numeric(name, arr.dtype))
    return arr


def not_numeric(name, dtype):
    """The message for an array that is not numbers; for text, how a table's text columns get in."""
    text = "" if getattr(dtype, "kind", None) not in ("O", "U", "S") else (
        ": a table with text columns goes through a preprocessing that encodes them one-hot — "
        "model.preprocessing = nnkit.Preprocessing.fit(X_train) (or the Table)")
    return f"{name} must be numeric (float or int), got dtype {dtype}{text}"


def batch_ranges(n, batch_size):
    """[(start, stop)] of the batches of n rows."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def batch_sums(model, X, T, loss, metric_fns, batch_size, W=None, M=None):
    """The :class:`nnkit.metrics.BatchStats` of (X, T) (weights W, or 1; the padding mask M of sequences) on the
    device (inference, no host read); a per-position output is summed over its valid positions.  A sparse X is
    densified one batch at a time."""
    sums = None
    for s, e in batch_ranges(n_rows(X), batch_size):
        mb = None if M is None else M[s:e]
        out = model.forward_batch(rows(model, X, s, e), train=False, mask=mb)
        out, tb, wb = model.score_rows(out, slice_rows(T, s, e), None if W is None else W[s:e, ...], mb)
        sums = sums + BatchStats.of_batch(out, tb, loss.value(out, tb, wb), loss, metric_fns, wb)
    return sums


def slice_rows(X, start, stop):
    """Rows [start, stop) of a device array or of a host sparse matrix (which takes no ``...``) — of each, for a list
    (a model's several inputs or targets)."""
    if isinstance(X, list):
        return [slice_rows(x, start, stop) for x in X]
    return X[start:stop] if is_sparse(X) else X[start:stop, ...]


def take_rows(xp, X, idx):
    """The rows ``idx`` (a device index array) of a device array, or of each of a list of them."""
    if isinstance(X, list):
        return [take_rows(xp, x, idx) for x in X]
    return xp.take(X, idx, axis=0)


def n_rows(X):
    """The rows of a prepared input (the first's, for a model's several)."""
    return (X[0] if isinstance(X, list) else X).shape[0]


def check_weights(model, sample_weight, n):
    """(W on the device, the same on the host) — or (None, None): sample weights checked once, on the host."""
    if sample_weight is None:
        return None, None
    w = model.backend.to_numpy(sample_weight) if model.backend.owns(sample_weight) else sample_weight
    try:
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"sample_weight must be numbers, got {type(sample_weight).__name__}") from None
    P = positions_of(model)
    if w.shape != (n,) and (not P or w.shape != (n,) + P):
        per = f" or ({n}, {', '.join(map(str, P))}) (one per position)" if P else ""
        raise ValueError(f"sample_weight must have shape ({n},) (one weight per row){per}, got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("sample_weight must be finite, non-negative and not all zero")
    return model.backend.asarray(w, dtype=model.backend.dtype), w


def class_weights(labels, class_weight, n_classes=None):
    """Per-example weights (host float64) from the class ``labels`` (integers 0..K−1): ``class_weight`` a dict
    {class: weight} (classes not in it weigh 1) or ``"balanced"`` — n / (K·count(class)) over the K classes
    present, scikit-learn's ``compute_class_weight``."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict {{class: weight}} or 'balanced', got {class_weight!r}")
        present, counts = np.unique(labels, return_counts=True)
        table = np.zeros(int(labels.max()) + 1 if labels.size else 0)
        table[present] = labels.size / (len(present) * counts)
        return table[labels]
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict {{class: weight}} or 'balanced', got {class_weight!r}")
    k = int(n_classes) if n_classes is not None else int(labels.max()) + 1
    table = np.ones(max(k, int(labels.max()) + 1 if labels.size else 0))
    for c, wc in class_weight.items():
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(table):
            raise ValueError(f"class_weight names class {c!r}, but the classes are 0..{len(table) - 1}")
        if isinstance(wc, bool) or not isinstance(wc, (int, float, np.floating, np.integer)) or not np.isfinite(wc) \
                or wc < 0:
            raise ValueError(f"class_weight[{c!r}] must be a finite non-negative number, got {wc!r}")
        table[int(c)] = float(wc)
    return table[labels]


def _labels_of(model, T, loss):
    """The class index of each row (or position, flattened) of prepared targets T (host), for class weights."""
    t = np.asarray(host_copy(T))
    P = positions_of(model)
    if P and t.dtype.kind in "iu" and t.ndim == 1 + len(P):  # per-position integer labels
        return t.ravel().astype(np.int64), max(int(model.last_output_shape[-1]), 2)
    t = t.astype(np.float64)
    if P and t.ndim == 2 + len(P):
        t = t.reshape(-1, t.shape[-1])
    if t.ndim != 2 or loss.name not in ("cross_entropy", "binary_cross_entropy") or \
            (loss.name == "binary_cross_entropy" and t.shape[1] != 1):
        raise ValueError("class_weight needs one class label per example (a cross-entropy loss with one label, "
                         "not multi-label or regression targets)")
    return (t[:, 0] > 0.5).astype(np.int64) if t.shape[1] == 1 else t.argmax(axis=1), max(t.shape[1], 2)
