"""Streams and datasets: data that does not fit in memory, read one batch at a time — memory-mapped arrays,
datasets (``__len__`` and ``__getitem__(indices)``), re-iterables of batches such as a PyTorch ``DataLoader`` —
and the bounded background prefetch that prepares the next batch while the step runs."""
from __future__ import annotations

import inspect
import mmap
import queue
import threading

import numpy as np
import array_api_compat


__all__ = ["is_memmap", "is_stream", "Stream", "MappedRows", "DatasetRows", "BatchIterable", "make_stream", "prefetch"]


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
            x = next(iter(batch[0].values()), ()) if isinstance(batch[0], dict) else batch[0]  # inputs by name
            n = int(np.shape(x)[0]) if hasattr(x, "shape") else len(x)
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
