"""The data path, one door for all data: checks and conversions (``as_input``, ``as_target``), in-memory and
streamed batches (:class:`FitData`), and data beyond memory — memory-mapped files, datasets and loaders.

``fit``, ``evaluate`` and ``predict`` take, besides in-memory arrays (validated once and sent to the device
once), three kinds of *streams*:

* a **memory-mapped array** (``np.load(path, mmap_mode="r")``, ``np.memmap``) as X (and y): each batch's
  rows are read from the file when the batch is needed — never the whole array into process memory or
  onto the device;
* a **dataset**: any object with ``__len__`` and ``__getitem__(indices)`` returning ``(X, y)`` or ``(X, y, w)``
  for an index array (``fit(dataset)``, no y); shuffled per epoch from the model's seed exactly as in-memory
  data is, so on NumPy a memory-mapped file or a dataset over the same rows trains to bit-identical weights;
* a **re-iterable of batches** ``(X, y)`` / ``(X, y, w)`` of any array library (a PyTorch ``DataLoader``, or a
  function returning a generator: it is called once per epoch).  A one-shot generator feeds one epoch
  only: more is refused with what to pass instead.

Each streamed batch is checked on the host the way in-memory data is checked once (shape, dtype, finite
values, labels) before it goes to the device, and a bad batch is a ``ValueError`` naming the batch;
``fit`` then restores the weights and optimizer state of the epoch's start.  The next batch is prepared
(read, checked and copied to the device) in a background thread while the current step runs: a bounded
prefetch of two batches, its copies on a side stream (``Backend.copy_stream``: pinned memory and
non-blocking copies on torch-CUDA, a stream of its own on CuPy; JAX's ``device_put`` is asynchronous).
"""
from __future__ import annotations

import inspect
import itertools
import mmap
import queue
import threading

import numpy as np
import array_api_compat

from .backend import host_copy, is_sparse
from .distributed import rank_slice
from .functional import namespace_of
from .layers import fmt_shape
from .metrics import add_sums

__all__ = ["FitData", "batch_ranges", "batch_sums", "check_weights", "slice_rows", "as_input", "as_target", "rows",
           "dense", "check_range", "host_or_native", "numeric_host",
           "host_if_foreign", "is_memmap", "is_stream", "Stream", "MappedRows", "DatasetRows", "BatchIterable", "make_stream", "prefetch",
           "BatchError", "predict", "class_weights"]


class BatchError(ValueError):
    """A streamed batch that cannot be used (wrong shape, dtype, values, or the user's loader raised); the
    message names the batch.  A ``ValueError``."""


def host_if_foreign(be, a):
    """A batch from a loader as backend ``be``'s array or a NumPy array: other libraries' arrays (a torch
    DataLoader's tensors for a NumPy model) are copied to the host."""
    if isinstance(a, np.ndarray) or be.owns(a) or not hasattr(a, "shape"):
        return a
    return host_copy(a)


def is_memmap(a):
    """True for a NumPy array backed by a memory-mapped file."""
    if isinstance(a, np.memmap):
        return True
    base = getattr(a, "base", None)
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def _batch_list(X):
    """A list or tuple of (X, y[, w]) batches (not a nested list of numbers)."""
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(
        isinstance(b, (tuple, list)) and len(b) in (2, 3) and hasattr(b[0], "shape") for b in X)


def is_stream(X, y=None):
    """True when (X, y) is streamed rather than held in memory: a memory-mapped X (with y), or — with y None
    — a dataset (``__len__`` and ``__getitem__``), an iterable of batches (a DataLoader, a list of batches), a
    generator, or a function returning one."""
    if isinstance(X, np.ndarray):
        return is_memmap(X)
    if y is not None:
        return False
    if _batch_list(X):
        return True
    if isinstance(X, (list, tuple)) or array_api_compat.is_array_api_obj(X) or hasattr(X, "tocsr") \
            or hasattr(X, "__array__") or hasattr(X, "__array_interface__"):
        return False
    return callable(X) or hasattr(X, "__iter__") or (hasattr(X, "__len__") and hasattr(X, "__getitem__"))


class Stream:
    """Batches of host rows, prepared for the model one at a time: ``n`` rows (None when unknown),
    ``batches(batch_size, order)`` yields ``(X, y, w)`` host batches with their ``(start, stop)``."""

    n = None
    one_shot = False

    def epoch_batches(self, batch_size, order=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def n_batches(self, batch_size):
        return None if self.n is None else -(-self.n // batch_size)


class _Rows(Stream):
    """n rows read by index (``rows(idx)``), a batch at a time, in order or in a given order."""

    def epoch_batches(self, batch_size, order=None):
        for s in range(0, self.n, batch_size):
            e = min(s + batch_size, self.n)
            yield (s, e), self.rows(slice(s, e) if order is None else order[s:e])


class MappedRows(_Rows):
    """Rows of (memory-mapped) host arrays: X (n, ...), y (n, ...) and optional weights, read per batch."""

    def __init__(self, X, y, w=None):
        if y is None:
            raise ValueError("a memory-mapped X needs y: pass the labels (an array, or a memory-mapped file)")
        n = X.shape[0]
        if np.shape(y)[0] != n:
            raise ValueError(f"X has {n} rows but y has {np.shape(y)[0]}: they must have the same length")
        if w is not None and np.shape(w)[0] != n:
            raise ValueError(f"sample_weight must have shape ({n},) (one weight per row), got {np.shape(w)}")
        self.X, self.y, self.w, self.n = X, y, w, n

    def rows(self, idx):
        """The rows ``idx`` (a slice or an index array) read from the files."""
        w = None if self.w is None else np.asarray(self.w[idx])
        return np.asarray(self.X[idx]), np.asarray(self.y[idx]), w

    def tail(self, start):
        """Rows [start, n) as another MappedRows — views of the files, nothing copied."""
        return MappedRows(self.X[start:], self.y[start:], None if self.w is None else self.w[start:])

    def head(self, stop):
        """Rows [0, stop) as another MappedRows (views)."""
        return MappedRows(self.X[:stop], self.y[:stop], None if self.w is None else self.w[:stop])


class DatasetRows(_Rows):
    """A dataset: ``len(ds)`` rows, ``ds[indices]`` → ``(X, y)`` or ``(X, y, w)`` for an index array."""

    def __init__(self, dataset):
        self.dataset, self.n = dataset, len(dataset)
        if self.n < 1:
            raise ValueError("the dataset is empty (len 0)")

    def rows(self, idx):
        if isinstance(idx, slice):
            idx = np.arange(idx.start, idx.stop)
        got = self.dataset[idx]
        if not isinstance(got, (tuple, list)) or len(got) not in (2, 3):
            raise ValueError(f"dataset[indices] must return (X, y) or (X, y, sample_weight), got "
                             f"{type(got).__name__}")
        return tuple(got) if len(got) == 3 else (got[0], got[1], None)


class BatchIterable(Stream):
    """A re-iterable of batches (iterated once per epoch), a function returning an iterator (called once per
    epoch), or a one-shot generator (one epoch only)."""

    def __init__(self, source):
        self.source = source
        self.one_shot = inspect.isgenerator(source) or (hasattr(source, "__next__") and iter(source) is source)
        self.n = None
        try:
            self._len = len(source)
        except TypeError:
            self._len = None
        self._used = False

    def n_batches(self, batch_size):
        return self._len

    def epoch_batches(self, batch_size, order=None):
        if self.one_shot:
            if self._used:
                raise ValueError("X is a one-shot generator and it has fed its one epoch: pass a function that "
                                 "returns a new generator (fit(lambda: make_batches(), ...)) or a re-iterable "
                                 "(a list of batches, a torch DataLoader) to train for more epochs")
            self._used = True
        it = self.source() if callable(self.source) and not hasattr(self.source, "__iter__") else iter(self.source)
        start = 0
        for batch in it:
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                raise ValueError(f"each batch must be (X, y) or (X, y, sample_weight), got {type(batch).__name__}")
            n = int(np.shape(batch[0])[0]) if hasattr(batch[0], "shape") else len(batch[0])
            yield (start, start + n), (batch[0], batch[1], batch[2] if len(batch) == 3 else None)
            start += n


def make_stream(X, y=None, sample_weight=None):
    """The :class:`Stream` for streamed data (see :func:`is_stream`): a memory-mapped array → rows read per
    batch; an object with ``__len__`` and ``__getitem__`` (not a list) → a dataset indexed with index arrays;
    anything else iterable or callable → batches as they come."""
    if isinstance(X, np.ndarray):
        return MappedRows(X, y, sample_weight)
    if sample_weight is not None:
        raise ValueError("with a dataset or batches, give the weights inside each batch: (X, y, sample_weight)")
    if hasattr(X, "__len__") and hasattr(X, "__getitem__") and not isinstance(X, (list, tuple)):
        return DatasetRows(X)
    return BatchIterable(X)


def prefetch(items, depth=2):
    """Iterate ``items`` with up to ``depth`` of them prepared ahead in a background thread (their host
    reads, checks and device copies overlap the consumer's work).  Exceptions reach the consumer in order."""
    q = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # the user's loader raised: hand it over
            q.put((None, exc))
            return
        q.put((done, None))

    thread = threading.Thread(target=work, name="nnkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)


# -- in-memory data: checked once, converted once (the model's _as_input/_as_target call these) -------------
def as_input(model, X, check_values=True):
    """Validate X and return it as a (B, *input_shape) array of the model's dtype and device.

    A SciPy sparse matrix (a table) is checked and kept on the host as CSR: it is densified one batch
    at a time on its way to the device (``_rows``), never whole."""
    if is_sparse(X):
        return _as_sparse_input(model, X, check_values)
    if not check_values and model.backend.ready(X) and X.ndim >= 2 and X.shape[0] \
            and tuple(X.shape[1:]) in model._batch_shapes:
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
    model._check_batch_shape(tuple(int(d) for d in arr.shape[1:]))
    if not xp.isdtype(arr.dtype, ("real floating", "integral", "bool")):
        raise TypeError(f"X must be numeric (float or int), got dtype {arr.dtype}")
    if check_values and xp.isdtype(arr.dtype, "real floating") and not bool(xp.all(xp.isfinite(arr))):
        raise ValueError("X contains NaN or infinity: clean or impute the data first")
    if getattr(model.layers[0], "takes_ids", False):  # token ids: integers, kept integers, in range
        return _as_ids(model, arr, xp, check_values)
    if check_values:
        check_range(model, arr, "X")
    return model.backend.asarray(arr, dtype=model.backend.dtype)


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
    model._check_batch_shape((int(X.shape[1]),))
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
    """Rows [start, stop) of a prepared input: a slice of a device array, or a densified sparse slice."""
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

def as_target(model, y, n_rows, loss, check_values=True):
    if model.n_outputs is None:
        out = "not known yet" if model._out_shape is None else fmt_shape(model._out_shape)
        raise ValueError(f"the losses compare (B, K) outputs with targets, but the model's output is {out}: "
                         "end the model in Flatten() and Dense(..., K), or GlobalAvgPool()")
    if not check_values and model.backend.ready(y) and tuple(y.shape) == (n_rows, model.n_outputs):
        return y  # a (B, K) float target of this backend fits every loss; values are not checked
    arr = host_or_native(model, y, "y")
    arr = loss.check_target(arr, model.n_outputs, n_rows, check_values)
    if check_values and arr.ndim == 2:
        check_range(model, arr, "y")
    return loss.prepare_target(arr, model.n_outputs, model.backend)

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
        raise TypeError(f"{name} must be numeric (float or int), got dtype {arr.dtype}")
    return arr


# -- one run's data: batches for the loop, sums for the logs ---------------------------------------------------
def batch_ranges(n, batch_size):
    """[(start, stop)] of the batches of n rows."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def batch_sums(model, X, T, loss, metric_fns, batch_size, W=None):
    """[Σ w·loss, Σ w·metric...] over (X, T) (weights W, or 1) as 0-d device arrays (inference, no host
    read).  A sparse X is densified one batch at a time."""
    sums = None
    for s, e in batch_ranges(X.shape[0], batch_size):
        out, tb = model._forward(rows(model, X, s, e), train=False), T[s:e, ...]
        if W is None:
            batch = [loss.value(out, tb) * tb.shape[0]] + [fn(out, tb, loss) for _, fn in metric_fns]
        else:
            wb = W[s:e]
            batch = [loss.value(out, tb, wb) * model.xp.sum(wb)] + [fn(out, tb, loss, wb) for _, fn in metric_fns]
        sums = add_sums(sums, batch, metric_fns)
    return sums


def _join_sums(a, b):
    """Two runs' sums together: arrays added, collected lists joined."""
    return [x + y for x, y in zip(a, b)]


def slice_rows(X, start, stop):
    """Rows [start, stop) of a device array or of a host sparse matrix (which takes no ``...``)."""
    return X[start:stop] if is_sparse(X) else X[start:stop, ...]


def check_weights(model, sample_weight, n):
    """(W on the device, the same on the host) — or (None, None): sample weights checked once, on the host."""
    if sample_weight is None:
        return None, None
    w = model.backend.to_numpy(sample_weight) if model.backend.owns(sample_weight) else sample_weight
    try:
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"sample_weight must be numbers, got {type(sample_weight).__name__}") from None
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"sample_weight must have shape ({n},) (one weight per row), got {w.shape}")
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
    """The class index of each row of prepared targets T (host), for class weights."""
    t = np.asarray(host_copy(T), dtype=np.float64)
    if t.ndim != 2 or loss.name not in ("cross_entropy", "binary_cross_entropy") or \
            (loss.name == "binary_cross_entropy" and t.shape[1] != 1):
        raise ValueError("class_weight needs one class label per example (a cross-entropy loss with one label, "
                         "not multi-label or regression targets)")
    return (t[:, 0] > 0.5).astype(np.int64) if t.shape[1] == 1 else t.argmax(axis=1), max(t.shape[1], 2)


class FitData:
    """One run's data: in memory (validated once, sent to the device once) or streamed (read, checked and
    copied a batch at a time, prefetched); its batches for this rank, and the validation sums.

    ``total`` / ``total_v`` are the rows (or Σ sample weights) of the training / validation data — counted
    on the host while a stream is read.
    """

    def __init__(self, model, loss, metric_fns, batch_size, shuffle=False, epochs=1, rank=0, size=1):
        self.model, self.be, self.xp, self.loss = model, model.backend, model.xp, loss
        self.metric_fns, self.batch_size, self.shuffle, self.epochs = metric_fns, batch_size, shuffle, epochs
        self.rank, self.size, self.parallel = rank, size, size > 1
        self.total = self.total_v = 0.0
        self.stream = self.val_stream = None
        self.X = self.T = self.W = self.Xv = self.Tv = self.Wv = None
        self.n = None

    def load(self, X, y, sample_weight=None, validation_data=None, validation_split=0.0, class_weight=None):
        """Take the data (arrays, or a stream: :func:`is_stream`) and the validation part; returns self.
        ``class_weight`` (arrays only) multiplies the training rows' weights (not the validation part's)."""
        if is_stream(X, y):
            if class_weight is not None:
                raise ValueError("class_weight takes arrays held in memory; for a stream, give each batch its "
                                 "weights (X, y, w)")
            self._setup_stream(X, y, sample_weight, validation_data, validation_split)
        else:
            self._setup_arrays(X, y, sample_weight, validation_data, validation_split, class_weight)
        return self

    @property
    def has_validation(self):
        return self.Xv is not None or self.val_stream is not None

    def n_batches(self):
        """Batches per epoch (0 when a stream does not say)."""
        if self.stream is None:
            return len(batch_ranges(self.n, self.batch_size))
        return self.stream.n_batches(self.batch_size) or 0

    def _prepared(self, stream, order, total, batch_size=None):
        """A stream's batches as checked device batches (this rank's slice), the rows (or Σ w) of the global
        batches added to ``self.<total>`` on the host; a batch that cannot be used is a BatchError naming it."""
        model, loss, be = self.model, self.loss, self.be
        it = stream.epoch_batches(batch_size or self.batch_size, order)
        with be.activate(), be.copy_stream() as copies:  # the device context is per thread (CUDA)
            for i in itertools.count():
                try:
                    (s, e), (xb, yb, wb) = next(it)
                except StopIteration:
                    return
                except BatchError:
                    raise
                except Exception as exc:  # the user's dataset or loader raised
                    raise BatchError(f"batch {i} of the stream could not be read: {type(exc).__name__}: "
                                          f"{exc}") from exc
                try:
                    xb, yb = host_if_foreign(be, xb), host_if_foreign(be, yb)
                    rows = int(xb.shape[0])
                    w_host = None
                    if wb is not None:
                        _, w_host = check_weights(model, host_if_foreign(be, wb), rows)
                    setattr(self, total, getattr(self, total) + (rows if w_host is None else float(w_host.sum())))
                    a, b = rank_slice(0, rows, self.rank, self.size) if self.parallel else (0, rows)
                    if b <= a:
                        yield None, None, None, 0.0, e
                        continue
                    X = as_input(model, xb[a:b] if (a, b) != (0, rows) else xb)
                    T = as_target(model, yb[a:b] if (a, b) != (0, rows) else yb, b - a, loss)
                    W = None if w_host is None else be.asarray(w_host[a:b], dtype=be.dtype)
                except (TypeError, ValueError) as exc:
                    raise BatchError(f"batch {i} (rows {s} to {e - 1}) of the stream: {exc}") from None
                copies.done()  # this batch's copies are complete before it is handed to the step
                yield X, T, W, (b - a) / rows, e

    def stream_sums(self, stream):
        """Validation sums over a stream (inference, in order), its rows (or Σ w) counted in ``total_v``."""
        self.total_v, sums = 0.0, None
        for X, T, W, _, _ in self._prepared(stream, None, "total_v", max(self.batch_size, 1024)):
            if X is None:
                continue
            part = batch_sums(self.model, X, T, self.loss, self.metric_fns, max(self.batch_size, 1024), W)
            sums = part if sums is None else _join_sums(sums, part)
        return sums

    def _setup_arrays(self, X, y, sample_weight, validation_data, validation_split, class_weight=None):
        """In-memory data: validated once, sent to the device once."""
        model, loss = self.model, self.loss
        X = as_input(model, X)
        T = as_target(model, y, X.shape[0], loss)
        W, w_host = check_weights(model, sample_weight, X.shape[0])
        self.Wv, wv_host = None, None
        if validation_split:
            split = int(X.shape[0] * (1.0 - validation_split))
            if split < 1:
                raise ValueError(f"validation_split={validation_split} leaves no training rows out of {X.shape[0]}")
            self.Xv, self.Tv, X, T = slice_rows(X, split, None), T[split:, ...], slice_rows(X, 0, split), T[:split, ...]
            if W is not None:
                self.Wv, W, wv_host, w_host = W[split:], W[:split], w_host[split:], w_host[:split]
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                 "sample_weight_val)")
            try:
                self.Xv = as_input(model, validation_data[0])
                self.Tv = as_target(model, validation_data[1], self.Xv.shape[0], loss)
                if len(validation_data) == 3 and validation_data[2] is not None:
                    self.Wv, wv_host = check_weights(model, validation_data[2], self.Xv.shape[0])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                 f"sample_weight_val) of arrays that fit the model: {exc}") from None
        else:
            self.Xv = self.Tv = None
        if class_weight is not None:  # the training rows' weights times their class's
            labels, k = _labels_of(model, T, loss)
            cw = class_weights(labels, class_weight, k)
            w_host = cw if w_host is None else w_host * cw
            if not w_host.sum() > 0:
                raise ValueError("class_weight leaves every training row with weight 0")
            W = model.backend.asarray(w_host, dtype=model.backend.dtype)
        self.X, self.T, self.W, self.n = X, T, W, X.shape[0]
        self.total = float(self.n) if W is None else float(w_host.sum())
        self.total_v = None if self.Xv is None else (float(self.Xv.shape[0]) if self.Wv is None
                                                      else float(wv_host.sum()))

    def _setup_stream(self, X, y, sample_weight, validation_data, validation_split):
        """Streamed data (:mod:`nnkit.data`): checked batch by batch on the host as it is read."""
        stream = make_stream(X, y, sample_weight)
        if validation_split:
            if not isinstance(stream, MappedRows):
                raise ValueError("validation_split needs rows it can count: with a dataset or batches pass "
                                 "validation_data=")
            split = int(stream.n * (1.0 - validation_split))
            if split < 1:
                raise ValueError(f"validation_split={validation_split} leaves no training rows out of {stream.n}")
            self.val_stream, stream = stream.tail(split), stream.head(split)  # views of the file: no copy
        elif validation_data is not None:
            if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3):
                vx, vy = validation_data[0], validation_data[1]
                vw = validation_data[2] if len(validation_data) == 3 else None
                self.val_stream = make_stream(np.asarray(vx) if not isinstance(vx, np.ndarray) else vx, vy, vw)
            else:
                self.val_stream = make_stream(validation_data)
        if stream.one_shot and self.epochs > 1:
            raise ValueError("X is a one-shot generator, which can feed one epoch only, and fit was asked for "
                             f"{self.epochs}: pass a function that returns a new generator (fit(lambda: "
                             "make_batches(), ...)) or a re-iterable (a list of batches, a torch DataLoader)")
        self.stream, self.n = stream, stream.n
        self.X = self.T = self.W = self.Xv = self.Tv = self.Wv = None
        self.total = self.total_v = None  # counted while the epoch runs

    def batches(self):
        """(X_b, T_b, W_b, share, end) for this rank's slice of every global batch of an epoch (X_b None
        when the slice is empty; W_b None without sample weights); one shuffle per epoch, drawn on the
        host from the model's generator.  A sparse X (host CSR) is densified one batch at a time; a
        stream's batches are read, checked and copied to the device ahead, in a background thread."""
        if self.stream is not None:
            self.total = 0.0
            order = self.model.rng.permutation(self.n) if self.shuffle and self.n is not None else None
            yield from prefetch(self._prepared(self.stream, order, "total"))
            return
        xp, model, W = self.xp, self.model, self.W
        sparse = is_sparse(self.X)
        order = None
        if self.shuffle:
            perm = model.rng.permutation(self.n)
            order = (perm, self.be.asarray(perm)) if sparse else (None, self.be.asarray(perm))
        for s, e in batch_ranges(self.n, self.batch_size):
            a, b = rank_slice(s, e, self.rank, self.size) if self.parallel else (s, e)
            if b <= a:  # a global batch smaller than the number of ranks: nothing here this step
                yield None, None, None, 0.0, e
            elif order is None:
                yield (rows(model, self.X, a, b), self.T[a:b, ...], None if W is None else W[a:b],
                       (b - a) / (e - s), e)
            else:
                idx = order[1][a:b]
                xb = dense(model, self.X[order[0][a:b]]) if sparse else xp.take(self.X, idx, axis=0)
                yield (xb, xp.take(self.T, idx, axis=0), None if W is None else xp.take(W, idx, axis=0),
                       (b - a) / (e - s), e)

    def validation_sums(self, nothing):
        """[Σ w·loss, Σ w·metric...] over this rank's share of the validation data (``nothing`` when it has no
        rows), as 0-d device arrays."""
        if self.val_stream is not None:
            vs = self.stream_sums(self.val_stream)
            return nothing if vs is None else vs
        va, vb = rank_slice(0, self.Xv.shape[0], self.rank, self.size) if self.parallel else (0, self.Xv.shape[0])
        if vb <= va:
            return nothing
        return batch_sums(self.model, slice_rows(self.Xv, va, vb), self.Tv[va:vb, ...], self.loss, self.metric_fns,
                          max(self.batch_size, 1024), None if self.Wv is None else self.Wv[va:vb])


# -- prediction: in memory, in batches, or streamed ----------------------------------------------------
def predict(model, X, batch_size=None):
    """``model``'s output for X (inference mode), as an array of its backend: in memory at once, or in
    batches of ``batch_size`` rows (sparse input: 4096 by default, densified a batch at a time), or — X
    streamed (a memory-mapped array, a dataset, batches) — a batch at a time (default 4096 rows), the
    outputs joined in order.  A bad streamed batch is a :class:`BatchError` naming it."""
    stream = is_stream(X)
    if stream and batch_size is None:
        batch_size = 4096
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if stream:
        return _predict_stream(model, X, batch_size)
    X = as_input(model, X)
    n = X.shape[0]
    sparse = is_sparse(X)
    if batch_size is None and sparse:
        batch_size = 4096  # sparse input: densified a batch at a time
    with model.policy.activate():
        if batch_size is None or batch_size >= n and not sparse:
            return model._forward(X, train=False)
        parts = [model._forward(rows(model, X, s, min(s + batch_size, n)), train=False)
                 for s in range(0, n, batch_size)]
        return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)


def _predict_stream(model, X, batch_size):
    """predict() of streamed data: each batch's rows (its X for a dataset or batches), in order."""
    stream = MappedRows(X, np.zeros(X.shape[0], dtype=np.int8)) if isinstance(X, np.ndarray) else make_stream(X)
    parts = []
    with model.policy.activate():
        for i, ((s, e), (xb, _, _)) in enumerate(stream.epoch_batches(batch_size)):
            try:
                xb = as_input(model, host_if_foreign(model.backend, xb))
            except (TypeError, ValueError) as exc:
                raise BatchError(f"batch {i} (rows {s} to {e - 1}): {exc}") from None
            parts.append(model._forward(xb, train=False))
    return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)
