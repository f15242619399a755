"""Data beyond memory: batches streamed from memory-mapped files, datasets and loaders, one door for all.

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
prefetch of two batches (``Backend.to_device`` copies without blocking where the library can).
"""
from __future__ import annotations

import inspect
import mmap
import queue
import threading

import numpy as np
import array_api_compat

from .backend import host_copy, is_sparse
from .functional import namespace_of
from .layers import fmt_shape

__all__ = ["as_input", "as_target", "rows", "dense", "check_range", "host_or_native", "numeric_host",
           "host_if_foreign", "is_memmap", "is_stream", "Stream", "MappedRows", "DatasetRows", "BatchIterable", "make_stream", "prefetch",
           "BatchError"]


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


class MappedRows(Stream):
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
        return MappedRows(self.X[:stop], self.y[:stop], None if self.w is None else self.w[:stop])

    def epoch_batches(self, batch_size, order=None):
        for s in range(0, self.n, batch_size):
            e = min(s + batch_size, self.n)
            yield (s, e), self.rows(slice(s, e) if order is None else order[s:e])


class DatasetRows(MappedRows):
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

    def tail(self, start):
        raise ValueError("validation_split needs arrays; with a dataset pass validation_data=another dataset")


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
    if check_values:
        check_range(model, arr, "X")
    return model.backend.asarray(arr, dtype=model.backend.dtype)

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
