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
from .functional import device_of, namespace_of
from .layers import fmt_shape
from .layers.core import reads_padding
from .losses import check_rows
from .metrics import BatchStats

__all__ = ["FitData", "batch_ranges", "batch_sums", "check_weights", "slice_rows", "as_input", "as_target", "rows",
           "dense", "check_range", "host_or_native", "numeric_host",
           "host_if_foreign", "is_memmap", "is_stream", "Stream", "MappedRows", "DatasetRows", "BatchIterable", "make_stream", "prefetch",
           "BatchError", "predict", "class_weights", "pad_sequences", "is_ragged", "Sequences", "sequences"]


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
    """A list or tuple of (X, y[, w]) batches (not a nested list of numbers); a batch's X may be a list of
    variable-length sequences (arrays)."""
    def _inputs(x):
        return hasattr(x, "shape") or (isinstance(x, (list, tuple)) and len(x) > 0
                                       and all(hasattr(s, "shape") for s in x))
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(
        isinstance(b, (tuple, list)) and len(b) in (2, 3) and _inputs(b[0]) for b in X)


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
        total = self.n if order is None else len(order)  # an order may draw rows more than once (steps_per_epoch)
        for s in range(0, total, batch_size):
            e = min(s + batch_size, total)
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


# -- sequences of different lengths: padded, with their lengths -------------------------------------------
MAX_PADDING = 16  # a padded array may hold at most this many times the sequences' own elements (or 2**24)


def is_ragged(X):
    """True for sequences of different lengths: a list or tuple of arrays (or nested lists) of shapes (T_i, ...)
    whose lengths differ (see :func:`pad_sequences`; equal lengths stack into one array and need no padding)."""
    if not isinstance(X, (list, tuple)) or len(X) == 0 or _batch_list(X):
        return False
    lengths = set()
    for x in X:
        shape = getattr(x, "shape", None)
        if shape is None:
            if not isinstance(x, (list, tuple)):
                return False
            shape = np.shape(x) if x and not isinstance(x[0], (list, tuple)) else (len(x),)
        if len(shape) == 0:
            return False
        lengths.add(int(shape[0]))
    return len(lengths) > 1


def pad_sequences(sequences, maxlen=None, value=0, dtype=None):
    """``(padded, lengths)``: sequences of shapes (T_i, ...) — the same trailing shape and kind — as one array
    (N, T, ...) padded at the end with ``value`` (T the longest, or ``maxlen``: longer ones are refused, not
    cut), and their lengths (N,) int64.  As PyTorch's ``pad_sequence(batch_first=True)``; give ``lengths`` to
    ``fit``/``evaluate``/``predict`` with the padded array (a list of sequences is padded for you).

    A sequence must have at least one step.  A padded array larger than 16× the sequences' elements
    (one very long sequence among short ones) is refused before it is allocated: sort and batch by length."""
    if not isinstance(sequences, (list, tuple)) or len(sequences) == 0:
        raise TypeError(f"pad_sequences takes a non-empty list of arrays of shape (T_i, ...), got "
                        f"{type(sequences).__name__}")
    arrays = []
    for i, x in enumerate(sequences):
        a = numeric_host(x, f"sequence {i}")
        if a.ndim == 0:
            raise ValueError(f"sequence {i} is a single number: each sequence is an array (T_i,) or (T_i, F)")
        if a.shape[0] == 0:
            raise ValueError(f"sequence {i} is empty: every sequence needs at least one step")
        if arrays and a.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"sequence {i} has steps of shape {a.shape[1:]} but sequence 0 has "
                             f"{arrays[0].shape[1:]}: every step of every sequence must have the same shape")
        arrays.append(a)
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    longest = int(lengths.max())
    if maxlen is not None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer or None, got {maxlen!r}")
        if longest > maxlen:
            raise ValueError(f"sequence {int(np.argmax(lengths))} has {longest} steps, more than maxlen={maxlen}")
        longest = int(maxlen)
    step = int(np.prod(arrays[0].shape[1:], dtype=np.int64))
    own, padded_size = int(lengths.sum()) * step, len(arrays) * longest * step
    if padded_size > max(MAX_PADDING * own, 2 ** 24):
        raise ValueError(f"padding {len(arrays)} sequences to {longest} steps would hold {padded_size:,} numbers for "
                         f"{own:,} of data: sort the sequences by length and pass them in batches of similar lengths "
                         "(or cut them to a maxlen)")
    kinds = {a.dtype.kind for a in arrays}
    if dtype is None:
        dtype = np.result_type(*[a.dtype for a in arrays]) if len(kinds) == 1 or "f" in kinds else np.int64
    out = np.full((len(arrays), longest) + arrays[0].shape[1:], value, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, :a.shape[0]] = a
    return out, lengths


class Sequences:
    """A batch of padded sequences on the model's device: ``X`` (N, T, ...), the mask ``M`` (N, T) (1 at a real
    step, 0 at padding) and the host ``lengths``; ``M`` None when every sequence is T long."""

    __slots__ = ("X", "M", "lengths")

    def __init__(self, X, M, lengths):
        self.X, self.M, self.lengths = X, M, lengths


def check_lengths(lengths, n, T):
    """The host lengths (n,) int64: integers in [1, T], one per sequence."""
    try:
        arr = np.asarray(lengths)
    except (TypeError, ValueError):
        raise TypeError(f"lengths must be integers, got {type(lengths).__name__}") from None
    if arr.dtype.kind not in "iu" or arr.shape != (n,):
        raise ValueError(f"lengths must be {n} integers (one per sequence, each in [1, {T}]), got "
                         f"{arr.dtype} of shape {arr.shape}")
    if n and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must lie in [1, {T}] (the padded length), got {int(arr.min())} to {int(arr.max())}")
    return arr.astype(np.int64)


def mask_of(model, lengths, T):
    """The (n, T) mask of ``lengths`` in the model's dtype on its device (1 at t < length), or None when no
    sequence is shorter than T."""
    if lengths is None or bool(np.all(lengths == T)):
        return None
    return model.backend.asarray(host_mask(lengths, T), dtype=model.backend.dtype)


def sequences(model, X, lengths=None, check_values=True):
    """X as the model's input and its padding: a :class:`Sequences` (``X`` checked by :func:`as_input`, the
    mask ``M``, the host ``lengths``).  X may be a list of (T_i, ...) sequences (padded here), or a padded array
    with ``lengths`` (n,); else ``M`` and ``lengths`` are None."""
    lengths_given = lengths
    if is_ragged(X):
        if lengths is not None:
            raise ValueError("lengths= is for a padded array; a list of sequences brings its own lengths")
        X, lengths = pad_sequences(X)
    elif lengths is not None:
        shape = np.shape(X) if not hasattr(X, "shape") else tuple(X.shape)
        if len(shape) < 2:
            raise ValueError(f"lengths= needs padded sequences X of shape (n, T, ...), got shape {tuple(shape)}")
        lengths = check_lengths(lengths, int(shape[0]), int(shape[1]))
    ragged = lengths is not None and lengths_given is None
    if lengths is not None:
        shape = tuple(int(d) for d in (np.shape(X) if not hasattr(X, "shape") else X.shape)[1:])
        if not bool(np.all(lengths == shape[0])):  # padding: a layer that would read it refused before any other check
            try:
                bad = reads_padding(model.layers, shape)
            except ValueError:  # a shape the model cannot take: as_input below says so in its own words
                bad = None
            if bad is not None:
                what = "X is a list of sequences of different lengths" if ragged else \
                    "X holds padded sequences (lengths=)"
                msg = (f"{what}, padded to {(len(lengths),) + shape}, but {bad!r} would read the padding "
                       "as data: " + (bad.padding_refusal or
                                      "sequences go through layers that keep their positions (B, T, F) into one "
                                      "that takes the padding mask (a recurrent layer, SequencePool) or a "
                                      "per-position output; token ids (B, T) start with an Embedding"))
                raise (TypeError if ragged else ValueError)(msg)
    Xd = as_input(model, X, check_values)
    if lengths is None:
        return Sequences(Xd, None, None)
    M = mask_of(model, lengths, int(Xd.shape[1]))
    if M is not None:
        model.check_batch_shape(tuple(int(d) for d in Xd.shape[1:]))
    return Sequences(Xd, M, lengths)


def target_sequences(y, lengths, maxlen=None):
    """Targets for sequences of ``lengths`` (host, or None): a list of per-position targets (T_i,) / (T_i, K),
    one per sequence and of its length, padded (with 0, a valid label that the mask leaves out); anything else
    (one target per sequence) is returned as it is.  ``maxlen``: pad to that many steps (X's padded length)."""
    if lengths is None or not isinstance(y, (list, tuple)) or len(y) != len(lengths) or not y \
            or np.ndim(y[0]) == 0:
        return y
    ylen = np.array([np.shape(t)[0] if np.ndim(t) else -1 for t in y])
    if np.array_equal(ylen, lengths):
        Y, _ = pad_sequences(y, maxlen)
        return Y
    if len(set(ylen.tolist())) == 1:  # one row per sequence (e.g. one-hot rows)
        return y
    raise ValueError("y is a list of per-position targets whose lengths are not those of the input sequences: "
                     "target i must have X[i]'s length")


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


def host_mask(lengths, T):
    """The host padding mask (n, T) float64 of ``lengths`` (None for None)."""
    return None if lengths is None else (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)


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
        raise TypeError(f"X must be numeric (float or int), got dtype {arr.dtype}")
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
        raise TypeError(f"{name} must be numeric (float or int), got dtype {arr.dtype}")
    return arr


# -- one run's data: batches for the loop, sums for the logs ---------------------------------------------------
def batch_ranges(n, batch_size):
    """[(start, stop)] of the batches of n rows."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def batch_sums(model, X, T, loss, metric_fns, batch_size, W=None, M=None):
    """The :class:`nnkit.metrics.BatchStats` of (X, T) (weights W, or 1; the padding mask M of sequences) on the
    device (inference, no host read); a per-position output is summed over its valid positions.  A sparse X is
    densified one batch at a time."""
    sums = None
    for s, e in batch_ranges(X.shape[0], batch_size):
        mb = None if M is None else M[s:e]
        out = model.forward_batch(rows(model, X, s, e), train=False, mask=mb)
        out, tb, wb = model.score_rows(out, T[s:e, ...], None if W is None else W[s:e, ...], mb)
        sums = sums + BatchStats.of_batch(out, tb, loss.value(out, tb, wb), loss, metric_fns, wb)
    return sums


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


def _trims(model, T, steps):
    """Whether batches of padded sequences (``steps`` long) may be cut to their own longest sequence: the model's
    output either keeps the input's positions one to one ((B, steps, K), scored per position; the targets then
    hold those positions) or has none (a pooled or final state) — a model that changes the number of positions
    (a strided convolution) keeps the data set's padding."""
    P = positions_of(model)
    return P == () or (P == (steps,) and T.ndim >= 2 and int(T.shape[1]) == steps)


def _trimmed(batch, longest, steps):
    """A batch (X, T, W, M) of sequences padded to ``steps``, cut to its ``longest`` sequence: what lies beyond is
    padding in every row (the recurrent layers carry their state unchanged over it and output zeros there, the
    losses and metrics give it weight 0), so the result is the same and the recurrence runs ``longest`` steps."""
    X, T, W, M = batch
    if longest >= steps:
        return batch
    per_position = T.ndim >= 2 and int(T.shape[1]) == steps
    return (X[:, :longest, ...], T[:, :longest, ...] if per_position else T,
            None if W is None else (W[:, :longest] if W.ndim == 2 else W), M[:, :longest])


COMPILED_LENGTHS = 8  # a compiled fit pads each batch to one of at most this many lengths (compiled_length)


def compiled_length(longest, steps=None):
    """The length a batch whose longest sequence has ``longest`` steps is padded to under ``fit(compile=True)``,
    so that a compiled step is traced once per length bucket, not once per length: the next multiple of
    ⌈steps/8⌉ (at most ``COMPILED_LENGTHS`` = 8 buckets; ``steps`` the data set's padded length), or for a stream,
    whose longest sequence is not known in advance, the next power of two (⌈log₂ T⌉ + 1 buckets)."""
    longest = max(int(longest), 1)
    if steps is None:
        return 1 << (longest - 1).bit_length()
    q = -(-int(steps) // COMPILED_LENGTHS)
    return min(-(-longest // q) * q, int(steps))


def bucketed(perm, lengths, batch_size, rng, batches_per_bucket=50):
    """A shuffled order whose batches hold sequences of similar lengths: ``perm`` cut into buckets of
    ``batches_per_bucket`` batches, each bucket sorted by length and cut into batches, the batches shuffled
    (``rng``: the model's generator, so resume replays it).  Each batch is then padded to its own longest
    sequence only (``fit(..., bucket=True)``)."""
    chunk = batch_size * batches_per_bucket
    parts = []
    for s in range(0, len(perm), chunk):
        part = perm[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        parts += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    full = [p for p in parts if len(p) == batch_size]
    short = [p for p in parts if len(p) < batch_size]  # at most one (the last bucket's rest): last, as batch_ranges cuts
    order = [full[i] for i in rng.permutation(len(full))] + short
    return np.concatenate(order) if order else perm


class FitData:
    """One run's data: in memory (validated once, sent to the device once) or streamed (read, checked and
    copied a batch at a time, prefetched); its batches for this rank, and the validation sums (each batch's
    weight travels in its :class:`nnkit.metrics.BatchStats`).
    """

    def __init__(self, model, loss, metric_fns, batch_size, shuffle=False, epochs=1, rank=0, size=1, bucket=False,
                 steps_per_epoch=None):
        self.model, self.be, self.xp, self.loss = model, model.backend, model.xp, loss
        self.metric_fns, self.batch_size, self.shuffle, self.epochs = metric_fns, batch_size, shuffle, epochs
        self.rank, self.size, self.parallel = rank, size, size > 1
        self.stream = self.val_stream = None
        self.lengths, self.trim, self.bucket = None, False, bool(bucket)
        self.compiled = False  # a compiled step: batches padded to one of a few lengths (compiled_length)
        self.steps_per_epoch = steps_per_epoch  # K random batches an epoch (with replacement), or None: every row
        self.X = self.T = self.W = self.M = self.Xv = self.Tv = self.Wv = self.Mv = None
        self.n = self.row_w = None

    def load(self, X, y, sample_weight=None, validation_data=None, validation_split=0.0, class_weight=None,
             lengths=None):
        """Take the data (arrays, or a stream: :func:`is_stream`) and the validation part; returns self.
        ``class_weight`` (arrays only) multiplies the training rows' weights (not the validation part's).
        ``lengths`` (n,): the lengths of padded sequences X (a list of sequences brings its own)."""
        if is_stream(X, y):
            if class_weight is not None:
                raise ValueError("class_weight takes arrays held in memory; for a stream, give each batch its "
                                 "weights (X, y, w)")
            if lengths is not None:
                raise ValueError("lengths= is for padded arrays in memory; a stream's batches bring their sequences "
                                 "as lists of arrays of their own lengths")
            if self.bucket:
                raise ValueError("bucket=True orders sequences held in memory; a stream's batches are padded to "
                                 "their own longest sequence already — group similar lengths in your batches")
            self._setup_stream(X, y, sample_weight, validation_data, validation_split)
        else:
            self._setup_arrays(X, y, sample_weight, validation_data, validation_split, class_weight, lengths)
        if self.steps_per_epoch is not None and not isinstance(self.stream, _Rows):
            raise ValueError("steps_per_epoch draws each epoch's rows at random: it needs rows it can index — a "
                             "dataset (len(ds), ds[indices], e.g. nnkit.text.TokenWindows) or a memory-mapped "
                             "array; for arrays in memory, an epoch is one pass over every row")
        return self

    @property
    def has_validation(self):
        return self.Xv is not None or self.val_stream is not None

    def n_batches(self):
        """Batches per epoch (0 when a stream does not say)."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if self.stream is None:
            return len(batch_ranges(self.n, self.batch_size))
        return self.stream.n_batches(self.batch_size) or 0

    def _prepared(self, stream, order, batch_size=None):
        """A stream's batches as checked device batches (this rank's slice) with this rank's share of each global
        batch's weight (its rows, Σ w, or its valid positions); a batch that cannot be used is a
        BatchError naming it.  A batch's X may be a list of sequences of different lengths: padded here, with its
        mask."""
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
                    lengths = None
                    if is_ragged(xb):
                        steps = None
                        if self.compiled:  # a few padded lengths, each traced once
                            steps = compiled_length(max(int(np.shape(x)[0]) for x in xb))
                        xb, lengths = pad_sequences(xb, steps)
                        yb = target_sequences(yb, lengths, steps)
                        wb = None if wb is None else target_sequences(wb, lengths, steps)
                    xb, yb = host_if_foreign(be, xb), host_if_foreign(be, yb)
                    rows = int(xb.shape[0])
                    model.check_batch_shape(tuple(int(d) for d in xb.shape[1:]))
                    w_host = None
                    if wb is not None:
                        _, w_host = check_weights(model, host_if_foreign(be, wb), rows)
                    row_w = row_weights(model, rows, w_host, host_mask(lengths, int(xb.shape[1])
                                                                       if lengths is not None else 0))
                    a, b = rank_slice(0, rows, self.rank, self.size) if self.parallel else (0, rows)
                    if b <= a:
                        yield None, None, None, None, 0.0, e
                        continue
                    whole = (a, b) == (0, rows)
                    S = sequences(model, xb if whole else xb[a:b], None if lengths is None else lengths[a:b])
                    T = as_target(model, yb if whole else yb[a:b], b - a, loss)
                    W = None if w_host is None else be.asarray(w_host[a:b], dtype=be.dtype)
                    share = float(row_w[a:b].sum() / row_w.sum())
                except (TypeError, ValueError) as exc:
                    raise BatchError(f"batch {i} (rows {s} to {e - 1}) of the stream: {exc}") from None
                copies.done()  # this batch's copies are complete before it is handed to the step
                yield S.X, T, W, S.M, share, e

    def stream_sums(self, stream):
        """Validation sums over a stream (inference, in order): a :class:`nnkit.metrics.BatchStats` or None."""
        sums = None
        for X, T, W, M, _, _ in self._prepared(stream, None, max(self.batch_size, 1024)):
            if X is None:
                continue
            part = batch_sums(self.model, X, T, self.loss, self.metric_fns, max(self.batch_size, 1024), W, M)
            sums = part if sums is None else sums + part
        return sums

    def _inputs(self, X, y, sample_weight, lengths, what):
        """(X, T, W, M, w_host, row weights) of in-memory data: a list of sequences padded (and its per-position
        targets and weights with it), checked once, on the device once."""
        model = self.model
        S = sequences(model, X, lengths)
        y = target_sequences(y, S.lengths)
        sample_weight = target_sequences(sample_weight, S.lengths)
        T = as_target(model, y, S.X.shape[0], self.loss)
        W, w_host = check_weights(model, sample_weight, S.X.shape[0])
        m_host = host_mask(S.lengths, int(S.X.shape[1]) if S.lengths is not None else 0)
        return S.X, T, W, S.M, w_host, row_weights(model, S.X.shape[0], w_host, m_host), m_host

    def _setup_arrays(self, X, y, sample_weight, validation_data, validation_split, class_weight=None, lengths=None):
        """In-memory data: validated once, sent to the device once."""
        model, loss = self.model, self.loss
        X, T, W, M, w_host, row_w, m_host = self._inputs(X, y, sample_weight, lengths, "X")
        self.Wv = self.Mv = None
        if validation_split:
            split = int(X.shape[0] * (1.0 - validation_split))
            if split < 1:
                raise ValueError(f"validation_split={validation_split} leaves no training rows out of {X.shape[0]}")
            self.Xv, self.Tv, X, T = slice_rows(X, split, None), T[split:, ...], slice_rows(X, 0, split), T[:split, ...]
            row_w = row_w[:split]
            if W is not None:
                self.Wv, W, w_host = W[split:], W[:split], w_host[:split]
            if M is not None:
                self.Mv, M, m_host = M[split:], M[:split], m_host[:split]
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                 "sample_weight_val)")
            try:
                wv = validation_data[2] if len(validation_data) == 3 else None
                self.Xv, self.Tv, self.Wv, self.Mv, _, _, _ = self._inputs(validation_data[0],
                                                                                validation_data[1], wv, None, "X_val")
            except (TypeError, ValueError) as exc:
                raise ValueError(f"validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                 f"sample_weight_val) of arrays that fit the model: {exc}") from None
            model.check_batch_shape(tuple(int(d) for d in X.shape[1:]))  # the training data's shape again
        else:
            self.Xv = self.Tv = None
        if class_weight is not None:  # the training rows' weights times their class's
            labels, k = _labels_of(model, T, loss)
            if isinstance(class_weight, dict):  # keys may be class names
                pre = model.preprocessing
                names = {str(c): i for i, c in enumerate(pre.classes)} if pre is not None and pre.classes else {}
                class_weight = {names.get(c, c) if isinstance(c, str) else c: w for c, w in class_weight.items()}
            cw = np.reshape(class_weights(labels, class_weight, k), tuple(T.shape[:1 + len(positions_of(model))]))
            w_host = cw if w_host is None else (w_host[:, None] if w_host.ndim < cw.ndim else w_host) * cw
            row_w = row_weights(model, X.shape[0], w_host, m_host)
            if not row_w.sum() > 0:
                raise ValueError("class_weight leaves every training row with weight 0")
            W = model.backend.asarray(w_host, dtype=model.backend.dtype)
        self.X, self.T, self.W, self.M, self.n = X, T, W, M, X.shape[0]
        self.row_w = row_w
        self.lengths = None if m_host is None else m_host.sum(axis=1).astype(np.int64)
        self.trim = self.lengths is not None and _trims(model, T, int(X.shape[1]))
        if self.bucket and (self.lengths is None or not self.shuffle):
            raise ValueError("bucket=True shuffles sequences of variable lengths within length buckets: it needs X as "
                             "a list of sequences (or padded with lengths=) and shuffle=True" if self.lengths is None
                             else "bucket=True shuffles within length buckets: it needs shuffle=True")

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
        self.X = self.T = self.W = self.M = self.Xv = self.Tv = self.Wv = self.Mv = None

    def batches(self):
        """(X_b, T_b, W_b, M_b, share, end) for this rank's slice of every global batch of an epoch (X_b None
        when the slice is empty; W_b None without sample weights; M_b the padding mask of variable-length
        sequences, or None); one shuffle per epoch, drawn on the host from the model's generator.  ``share`` is
        the slice's part of the global batch's weight (its rows, or its valid positions).  A sparse X (host CSR)
        is densified one batch at a time; a stream's batches are read, checked and copied to the device ahead,
        in a background thread."""
        if self.stream is not None:
            order = self.model.rng.permutation(self.n) if self.shuffle and self.n is not None else None
            if self.steps_per_epoch is not None:  # K batches of rows drawn at random, with replacement
                order = self.model.rng.integers(0, self.n, size=self.steps_per_epoch * self.batch_size)
            yield from prefetch(self._prepared(self.stream, order))
            return
        xp, model, W, M, row_w = self.xp, self.model, self.W, self.M, self.row_w
        sparse = is_sparse(self.X)
        order = None
        if self.shuffle:
            perm = model.rng.permutation(self.n)
            if self.bucket and self.lengths is not None:
                perm = bucketed(perm, self.lengths, self.batch_size, model.rng)
            order = (perm, self.be.asarray(perm))
        for s, e in batch_ranges(self.n, self.batch_size):
            a, b = rank_slice(s, e, self.rank, self.size) if self.parallel else (s, e)
            if b <= a:  # a global batch smaller than the number of ranks: nothing here this step
                yield None, None, None, None, 0.0, e
                continue
            if self.parallel:
                host = np.arange(self.n) if order is None else order[0]
                share = float(row_w[host[a:b]].sum() / row_w[host[s:e]].sum())
            else:
                share = 1.0
            if order is None:
                batch = (rows(model, self.X, a, b), self.T[a:b, ...], None if W is None else W[a:b, ...],
                         None if M is None else M[a:b])
            else:
                idx = order[1][a:b]
                xb = dense(model, self.X[order[0][a:b]]) if sparse else xp.take(self.X, idx, axis=0)
                batch = (xb, xp.take(self.T, idx, axis=0), None if W is None else xp.take(W, idx, axis=0),
                         None if M is None else xp.take(M, idx, axis=0))
            if self.trim:  # padded to the batch's own longest sequence, not the data set's
                longest = int((self.lengths[a:b] if order is None else self.lengths[order[0][a:b]]).max())
                if self.compiled:  # to its length bucket's: a compiled step traces each length once
                    longest = compiled_length(longest, int(self.X.shape[1]))
                batch = _trimmed(batch, longest, int(self.X.shape[1]))
            yield batch + (share, e)

    def whole_epochs(self):
        """True when an epoch's batches can be made on the device at once, for a step that runs the epoch
        whole: dense arrays in memory on one process, rows of one length (no sequences of varying length)."""
        return (self.stream is None and self.X is not None and not is_sparse(self.X) and not self.parallel
                and self.lengths is None and self.M is None and self.steps_per_epoch is None)

    def epoch_plan(self):
        """One epoch for a step that runs it whole (:meth:`whole_epochs`): ``(idx, last)`` — the full batches' row
        indices (batches, B) sent to the device at once (None when no batch is full) and the last, shorter batch
        (X_b, T_b, W_b) or None.  The order is :meth:`batches`' own, drawn the same way from the model's
        generator, so a compiled epoch sees the batches an eager one does."""
        xp, n, B = self.xp, self.n, self.batch_size
        perm = self.model.rng.permutation(n) if self.shuffle else np.arange(n)
        full = n // B * B
        idx = self.be.asarray(perm[:full].reshape(-1, B)) if full else None
        last = None
        if full < n:
            rows = self.be.asarray(perm[full:])
            last = tuple(None if A is None else xp.take(A, rows, axis=0) for A in (self.X, self.T, self.W))
        return idx, last

    def validation_sums(self, nothing):
        """The :class:`nnkit.metrics.BatchStats` of this rank's share of the validation data (``nothing`` when it
        has no rows), on the device."""
        if self.val_stream is not None:
            vs = self.stream_sums(self.val_stream)
            return nothing if vs is None else vs
        va, vb = rank_slice(0, self.Xv.shape[0], self.rank, self.size) if self.parallel else (0, self.Xv.shape[0])
        if vb <= va:
            return nothing
        return batch_sums(self.model, slice_rows(self.Xv, va, vb), self.Tv[va:vb, ...], self.loss, self.metric_fns,
                          max(self.batch_size, 1024), None if self.Wv is None else self.Wv[va:vb, ...],
                          None if self.Mv is None else self.Mv[va:vb])


# -- prediction: in memory, in batches, or streamed ----------------------------------------------------
def predict(model, X, batch_size=None, lengths=None):
    """``model``'s output for X (inference mode), as an array of its backend: in memory at once, or in
    batches of ``batch_size`` rows (sparse input: 4096 by default, densified a batch at a time), or — X
    streamed (a memory-mapped array, a dataset, batches) — a batch at a time (default 4096 rows), the
    outputs joined in order.  A bad streamed batch is a :class:`BatchError` naming it.

    Sequences of different lengths — a list of (T_i, ...) arrays, or a padded array with ``lengths`` — are
    padded to the longest; a per-position output (n, T, K) is zero at the padded positions."""
    stream = is_stream(X) and not is_ragged(X)
    if stream and batch_size is None:
        batch_size = 4096
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if stream:
        if lengths is not None:
            raise ValueError("lengths= is for padded arrays in memory; a stream's batches bring their sequences as "
                             "lists of arrays of their own lengths")
        return _predict_stream(model, X, batch_size)
    S = sequences(model, X, lengths)
    X, M = S.X, S.M
    n = X.shape[0]
    sparse = is_sparse(X)
    if batch_size is None and sparse:
        batch_size = 4096  # sparse input: densified a batch at a time
    with model.policy.activate():
        if batch_size is None or batch_size >= n and not sparse:
            return _masked_output(model, model.forward_batch(X, train=False, mask=M), M)
        parts = [_masked_output(model, model.forward_batch(rows(model, X, s, min(s + batch_size, n)), train=False,
                                                      mask=None if M is None else M[s:s + batch_size]),
                                None if M is None else M[s:s + batch_size])
                 for s in range(0, n, batch_size)]
        return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)


def _masked_output(model, out, M):
    """A per-position output with its padded positions set to zero (as ``pad_packed_sequence`` gives them)."""
    if M is None or out.ndim < 3:
        return out
    om = model.output_mask(M)
    if om is None:
        return out
    return out * model.xp.reshape(model.xp.astype(om, out.dtype), tuple(om.shape) + (1,) * (out.ndim - om.ndim))


def _predict_stream(model, X, batch_size):
    """predict() of streamed data: each batch's rows (its X for a dataset or batches), in order."""
    stream = MappedRows(X, np.zeros(X.shape[0], dtype=np.int8)) if isinstance(X, np.ndarray) else make_stream(X)
    parts = []
    with model.policy.activate():
        for i, ((s, e), (xb, _, _)) in enumerate(stream.epoch_batches(batch_size)):
            try:
                S = sequences(model, host_if_foreign(model.backend, xb) if not is_ragged(xb) else xb)
            except (TypeError, ValueError) as exc:
                raise BatchError(f"batch {i} (rows {s} to {e - 1}): {exc}") from None
            parts.append(_masked_output(model, model.forward_batch(S.X, train=False, mask=S.M), S.M))
    if len({tuple(p.shape[1:]) for p in parts}) > 1 and all(p.ndim >= 3 for p in parts):
        longest = max(int(p.shape[1]) for p in parts)  # batches of sequences padded to their own longest: to one
        xp = model.xp
        parts = [p if p.shape[1] == longest else
                 xp.concat([p, xp.zeros((p.shape[0], longest - p.shape[1]) + tuple(p.shape[2:]), dtype=p.dtype,
                                        device=device_of(p))], axis=1) for p in parts]
    return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)
