"""The fit loop: feed batches, run the step, read the epoch once, call the hooks.

Data is validated once and sent to the device once.  Inside an epoch nothing is read back: the
step (:mod:`nnkit.step`) returns per-batch loss and metric sums as 0-d device arrays, added up there
and read together, in one transfer, when the epoch ends.  Shuffles are drawn on the host from the
model's generator (the same order on every backend) and sent once per epoch as an index array.
Progress, checkpoints, early stopping and schedules are callbacks (:mod:`nnkit.callbacks`).
"""
from __future__ import annotations

import itertools
import math
import numbers
import os
import signal
import threading
import time

import numpy as np

from . import checkpoint as ckpt
from . import data
from . import distributed as dist
from .callbacks import Callback, EarlyStopping, History, ModelCheckpoint, ProgbarLogger, _Progress  # noqa: F401
from .backend import is_sparse
from .files import check_writable
from .losses import get_loss
from .metrics import get_metrics
from .optim import check_int, get_optimizer
from .step import make_step

__all__ = ["fit", "evaluate", "History", "Callback", "EarlyStopping", "TrainingDivergedError"]


class TrainingDivergedError(ValueError):
    """The epoch loss became NaN or infinite; the model keeps its last finite weights (a ``ValueError``)."""


class _StopFlag:
    """Ctrl-C during fit sets a flag; the loop stops after the current step (a second Ctrl-C aborts)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _batches(n, batch_size):
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _sums(model, X, T, loss, metric_fns, batch_size, W=None):
    """[Σ w·loss, Σ w·metric...] over (X, T) (weights W, or 1) as 0-d device arrays (inference, no host
    read).  A sparse X is densified one batch at a time."""
    sums = None
    for s, e in _batches(X.shape[0], batch_size):
        out, tb = model._forward(model._rows(X, s, e), train=False), T[s:e, ...]
        if W is None:
            batch = [loss.value(out, tb) * tb.shape[0]] + [fn(out, tb, loss) for _, fn in metric_fns]
        else:
            wb = W[s:e]
            batch = [loss.value(out, tb, wb) * model.xp.sum(wb)] + [fn(out, tb, loss, wb) for _, fn in metric_fns]
        sums = batch if sums is None else [a + b for a, b in zip(sums, batch)]
    return sums


def evaluate(model, X, y, loss, metrics=None, batch_size=None, sample_weight=None):
    """``{"loss": float, metric: float}`` of ``model`` on (X, y) — means weighted by ``sample_weight``
    when given: one host read."""
    loss = get_loss(loss)
    metric_fns = get_metrics(metrics, loss)
    if data.is_stream(X, y):  # read a batch at a time, in order
        bs = 4096 if batch_size is None else check_int("batch_size", batch_size, 1)
        run = _Reader(model, loss, metric_fns, bs)
        with model.policy.activate():
            sums = run._stream_sums(data.make_stream(X, y, sample_weight))
            host = model.backend.to_numpy(model.xp.stack(sums))
        return {name: float(v) / run.total_v for name, v in zip(["loss"] + [m for m, _ in metric_fns], host)}
    X = model._as_input(X)
    T = model._as_target(y, X.shape[0], loss)
    W, w_host = _weights(model, sample_weight, X.shape[0])
    total = float(X.shape[0]) if W is None else float(w_host.sum())
    default = X.shape[0] if not is_sparse(X) else 4096
    bs = default if batch_size is None else check_int("batch_size", batch_size, 1)
    with model.policy.activate():
        host = model.backend.to_numpy(model.xp.stack(_sums(model, X, T, loss, metric_fns, bs, W)))
    return {name: float(v) / total for name, v in zip(["loss"] + [m for m, _ in metric_fns], host)}


def _slice(X, start, stop):
    """Rows [start, stop) of a device array or of a host sparse matrix (which takes no ``...``)."""
    return X[start:stop] if is_sparse(X) else X[start:stop, ...]


def _weights(model, sample_weight, n):
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


def fit(model, X, y, *, loss, optimizer="adam", epochs=10, batch_size=32, shuffle=True,
        validation_data=None, validation_split=0.0, early_stopping=None, callbacks=(), metrics=None,
        verbose=1, checkpoint=None, resume=False, regularizer=None, comm=None, compile=False, sample_weight=None):
    """See :meth:`nnkit.Sequential.fit`."""
    run = _Run(model, X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data, validation_split,
               early_stopping, callbacks, metrics, verbose, checkpoint, resume, regularizer, comm, compile,
               sample_weight)
    model, be, xp, hooks, history = run.model, run.be, run.xp, run.hooks, History()
    per_batch = [cb for cb in hooks if getattr(cb.on_batch_end, "__func__", None) is not Callback.on_batch_end]
    for cb in hooks:
        cb.history = history
    for cb in hooks:
        cb.on_train_begin()
    with _StopFlag() as stop, model.policy.activate():
        for epoch in range(run.start, run.end):
            t0, safe = time.perf_counter(), (model.snapshot(), run.optimizer.snapshot_state(), model._scaler)
            model.reseed()  # random layers: this epoch's device generator, from the model's seed
            for cb in hooks:
                cb.on_epoch_begin(epoch)
            sums, seen = None, 0
            try:
                for xb, tb, wb, share, seen in run.batches():
                    batch = run.step(xb, tb, share, wb)
                    sums = batch if sums is None else sums if batch is None else [a + b for a, b in zip(sums, batch)]
                    for cb in per_batch:
                        cb.on_batch_end()
                    if stop.raised and not run.parallel:  # ranks agree on stopping at the epoch's end
                        break
            except data.BatchError:  # a bad streamed batch: back to the epoch's start, then say which batch
                model._assign(safe[0])
                run.optimizer.state, model._scaler = safe[1], safe[2]
                raise
            if stop.raised and (run.n is None or seen < run.n):
                history.interrupted = True
                break
            logs = run.epoch_logs(sums, stop)  # the epoch's one device -> host read
            if not all(math.isfinite(v) for v in logs.values()):
                model._assign(safe[0])
                run.optimizer.state, model._scaler = safe[1], safe[2]
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch + 1}: the loss became {logs['loss']} (logs: {logs}); "
                    f"the model keeps the weights of epoch {epoch}. Try a lower learning rate (now "
                    f"{run.optimizer.lr:g}), gradient clipping (clip_norm=) or standardised inputs")
            model.epoch = epoch + 1
            history.append({**logs, "time": time.perf_counter() - t0})
            if any([bool(cb.on_epoch_end(epoch, dict(logs))) for cb in hooks]):
                history.stopped_epoch = epoch
                break
            if stop.raised:
                history.interrupted = True
                break
    for cb in hooks:
        cb.on_train_end()
    return history


class _Reader:
    """The part of a run that reads streams: for ``evaluate`` and ``predict`` on streamed data."""

    parallel, rank, size, shuffle = False, 0, 1, False

    def __init__(self, model, loss, metric_fns, batch_size):
        self.model, self.be, self.xp, self.loss = model, model.backend, model.xp, loss
        self.metric_fns, self.batch_size = metric_fns, batch_size
        self.total = self.total_v = 0.0

    def _prepared(self, stream, order, total, batch_size=None):
        """A stream's batches as checked device batches (this rank's slice), the rows (or Σ w) of the global
        batches added to ``self.<total>`` on the host; a batch that cannot be used is a BatchError naming it."""
        model, loss, be = self.model, self.loss, self.be
        it = stream.epoch_batches(batch_size or self.batch_size, order)
        with be.activate():  # device context is per thread (CUDA)
            for i in itertools.count():
                try:
                    (s, e), (xb, yb, wb) = next(it)
                except StopIteration:
                    return
                except data.BatchError:
                    raise
                except Exception as exc:  # the user's dataset or loader raised
                    raise data.BatchError(f"batch {i} of the stream could not be read: {type(exc).__name__}: "
                                          f"{exc}") from exc
                try:
                    xb, yb = data.host_if_foreign(be, xb), data.host_if_foreign(be, yb)
                    rows = int(xb.shape[0])
                    w_host = None
                    if wb is not None:
                        _, w_host = _weights(model, data.host_if_foreign(be, wb), rows)
                    setattr(self, total, getattr(self, total) + (rows if w_host is None else float(w_host.sum())))
                    a, b = dist.rank_slice(0, rows, self.rank, self.size) if self.parallel else (0, rows)
                    if b <= a:
                        yield None, None, None, 0.0, e
                        continue
                    X = model._as_input(xb[a:b] if (a, b) != (0, rows) else xb)
                    T = model._as_target(yb[a:b] if (a, b) != (0, rows) else yb, b - a, loss)
                    W = None if w_host is None else be.asarray(w_host[a:b], dtype=be.dtype)
                except (TypeError, ValueError) as exc:
                    raise data.BatchError(f"batch {i} (rows {s} to {e - 1}) of the stream: {exc}") from None
                yield X, T, W, (b - a) / rows, e

    def _stream_sums(self, stream):
        """Validation sums over a stream (inference, in order), its rows (or Σ w) counted in ``total_v``."""
        self.total_v, sums = 0.0, None
        for X, T, W, _, _ in self._prepared(stream, None, "total_v", max(self.batch_size, 1024)):
            if X is None:
                continue
            part = _sums(self.model, X, T, self.loss, self.metric_fns, max(self.batch_size, 1024), W)
            sums = part if sums is None else [a + b for a, b in zip(sums, part)]
        return sums


class _Run(_Reader):
    """One ``fit`` call's settings, checked before anything changes, and its data on the device."""

    def __init__(self, model, X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data,
                 validation_split, early_stopping, callbacks, metrics, verbose, checkpoint, resume,
                 regularizer, comm, compile, sample_weight=None):
        self.model, self.be, self.xp = model, model.backend, model.xp
        self.loss = loss = get_loss(loss)
        epochs = check_int("epochs", epochs, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        if validation_split and validation_data is not None:
            raise ValueError("pass either validation_data or validation_split, not both")
        self.metric_fns = get_metrics(metrics, loss)
        by_name = isinstance(optimizer, str)
        if by_name and model.optimizer is not None and type(model.optimizer) is type(get_optimizer(optimizer)):
            optimizer = model.optimizer  # a second fit goes on with the same optimizer state
        optimizer = get_optimizer(optimizer)
        if early_stopping is True:
            early_stopping = EarlyStopping()
        elif early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be an EarlyStopping, True or None, got {early_stopping!r}")
        callbacks = list(callbacks)
        for cb in callbacks:
            if not callable(getattr(cb, "on_epoch_end", None)):
                raise TypeError(f"callback {cb!r} has no on_epoch_end(epoch, logs) method")
        if verbose not in (0, 1, 2, True, False):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if resume and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=path")
        if regularizer is not None and not callable(getattr(regularizer, "value_and_grad", None)):
            raise TypeError(f"regularizer must be a penalty such as nnkit.optim.L2(1e-4) or nnkit.optim.L1(1e-5), "
                            f"got {regularizer!r}")
        self.comm = comm = dist.check_comm(comm)
        self.parallel = comm is not None and comm.size > 1
        self.rank, self.size = (comm.rank, comm.size) if self.parallel else (0, 1)
        lead = self.rank == 0  # the rank that prints and writes checkpoints
        if checkpoint is not None and lead:
            check_writable(checkpoint, "checkpoint")  # now, not after the first epoch
        self.shuffle, self.epochs = shuffle, epochs
        self.stream = self.val_stream = None
        if data.is_stream(X, y):
            self._setup_stream(X, y, sample_weight, validation_data, validation_split)
        else:
            self._setup_arrays(X, y, sample_weight, validation_data, validation_split)
        self._setup_rest(model, optimizer, by_name, early_stopping, callbacks, verbose, checkpoint, resume,
                         regularizer, comm, compile, lead, epochs)

    def _setup_arrays(self, X, y, sample_weight, validation_data, validation_split):
        """In-memory data: validated once, sent to the device once."""
        model, loss = self.model, self.loss
        X = model._as_input(X)
        T = model._as_target(y, X.shape[0], loss)
        W, w_host = _weights(model, sample_weight, X.shape[0])
        self.Wv, wv_host = None, None
        if validation_split:
            split = int(X.shape[0] * (1.0 - validation_split))
            if split < 1:
                raise ValueError(f"validation_split={validation_split} leaves no training rows out of {X.shape[0]}")
            self.Xv, self.Tv, X, T = _slice(X, split, None), T[split:, ...], _slice(X, 0, split), T[:split, ...]
            if W is not None:
                self.Wv, W, wv_host, w_host = W[split:], W[:split], w_host[split:], w_host[:split]
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                 "sample_weight_val)")
            try:
                self.Xv = model._as_input(validation_data[0])
                self.Tv = model._as_target(validation_data[1], self.Xv.shape[0], loss)
                if len(validation_data) == 3 and validation_data[2] is not None:
                    self.Wv, wv_host = _weights(model, validation_data[2], self.Xv.shape[0])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                 f"sample_weight_val) of arrays that fit the model: {exc}") from None
        else:
            self.Xv = self.Tv = None
        self.X, self.T, self.W, self.n = X, T, W, X.shape[0]
        self.total = float(self.n) if W is None else float(w_host.sum())
        self.total_v = None if self.Xv is None else (float(self.Xv.shape[0]) if self.Wv is None
                                                      else float(wv_host.sum()))

    def _setup_stream(self, X, y, sample_weight, validation_data, validation_split):
        """Streamed data (:mod:`nnkit.data`): checked batch by batch on the host as it is read."""
        stream = data.make_stream(X, y, sample_weight)
        if validation_split:
            if not isinstance(stream, data.MappedRows) or isinstance(stream, data.DatasetRows):
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
                self.val_stream = data.make_stream(np.asarray(vx) if not isinstance(vx, np.ndarray) else vx, vy, vw)
            else:
                self.val_stream = data.make_stream(validation_data)
        if stream.one_shot and self.epochs > 1:
            raise ValueError("X is a one-shot generator, which can feed one epoch only, and fit was asked for "
                             f"{self.epochs}: pass a function that returns a new generator (fit(lambda: "
                             "make_batches(), ...)) or a re-iterable (a list of batches, a torch DataLoader)")
        self.stream, self.n = stream, stream.n
        self.X = self.T = self.W = self.Xv = self.Tv = self.Wv = None
        self.total = self.total_v = None  # counted while the epoch runs

    def _setup_rest(self, model, optimizer, by_name, early_stopping, callbacks, verbose, checkpoint, resume,
                    regularizer, comm, compile, lead, epochs):
        loss = self.loss
        if resume and os.path.exists(os.fspath(checkpoint)):
            # by name: the checkpoint's optimizer, hyperparameters and all; an instance keeps its own
            # hyperparameters and takes the saved moments and step counts
            ckpt.restore(model, checkpoint, optimizer, keep_hyperparameters=not by_name)
            optimizer = model.optimizer
            self.start, self.end = model.epoch, epochs
        else:
            self.start, self.end = model.epoch, (model.epoch + epochs if not resume else epochs)
        model.optimizer = self.optimizer = optimizer
        if self.parallel:
            dist.sync_model(comm, model)  # rank 0's weights and shuffle generator everywhere
        watchers = [cb.on_gradients for cb in callbacks if callable(getattr(cb, "on_gradients", None))]
        self.step = make_step(model, loss, optimizer, regularizer=regularizer, metric_fns=self.metric_fns,
                              comm=comm if self.parallel else None, compile=compile, grad_hooks=watchers)

        own = [cb for cb in callbacks if isinstance(cb, ProgbarLogger)]  # a user's bar replaces fit's
        progress = own[0] if own else ProgbarLogger(int(verbose) if lead else 0)
        if not lead:
            progress.verbose = 0
        n_batches = len(_batches(self.n, self.batch_size)) if self.stream is None else \
            (self.stream.n_batches(self.batch_size) or 0)
        progress.setup(n_batches, self.end, self.start)
        self.hooks = ([] if own else [progress]) + ([ModelCheckpoint(checkpoint)] if checkpoint is not None else []) \
            + callbacks + ([early_stopping] if early_stopping is not None else [])
        for cb in self.hooks:
            cb.model, cb.optimizer, cb.comm = model, optimizer, comm if self.parallel else None
            for hook in ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_train_end"):
                if not callable(getattr(cb, hook, None)):  # a duck-typed callback may define only some hooks
                    setattr(cb, hook, getattr(Callback(), hook))

    def batches(self):
        """(X_b, T_b, W_b, share, end) for this rank's slice of every global batch of an epoch (X_b None
        when the slice is empty; W_b None without sample weights); one shuffle per epoch, drawn on the
        host from the model's generator.  A sparse X (host CSR) is densified one batch at a time; a
        stream's batches are read, checked and copied to the device ahead, in a background thread."""
        if self.stream is not None:
            self.total = 0.0
            order = self.model.rng.permutation(self.n) if self.shuffle and self.n is not None else None
            yield from data.prefetch(self._prepared(self.stream, order, "total"))
            return
        xp, model, W = self.xp, self.model, self.W
        sparse = is_sparse(self.X)
        order = None
        if self.shuffle:
            perm = model.rng.permutation(self.n)
            order = (perm, self.be.asarray(perm)) if sparse else (None, self.be.asarray(perm))
        for s, e in _batches(self.n, self.batch_size):
            a, b = dist.rank_slice(s, e, self.rank, self.size) if self.parallel else (s, e)
            if b <= a:  # a global batch smaller than the number of ranks: nothing here this step
                yield None, None, None, 0.0, e
            elif order is None:
                yield (model._rows(self.X, a, b), self.T[a:b, ...], None if W is None else W[a:b],
                       (b - a) / (e - s), e)
            else:
                idx = order[1][a:b]
                xb = model._dense(self.X[order[0][a:b]]) if sparse else xp.take(self.X, idx, axis=0)
                yield (xb, xp.take(self.T, idx, axis=0), None if W is None else xp.take(W, idx, axis=0),
                       (b - a) / (e - s), e)

    def epoch_logs(self, sums, stop):
        """The epoch's logs as Python floats: its training sums (and the validation sums), in one read."""
        xp, be, names = self.xp, self.be, ["loss"] + [m for m, _ in self.metric_fns]
        nothing = [xp.zeros((), dtype=be.dtype, device=be.device)] * len(names)
        sums = nothing if sums is None else sums  # None: this rank had no rows all epoch
        if self.val_stream is not None:
            vs = self._stream_sums(self.val_stream)
            sums = sums + (nothing if vs is None else vs)
        if self.Xv is not None:
            va, vb = dist.rank_slice(0, self.Xv.shape[0], self.rank, self.size) if self.parallel \
                else (0, self.Xv.shape[0])
            sums = sums + (_sums(self.model, _slice(self.Xv, va, vb), self.Tv[va:vb, ...], self.loss, self.metric_fns,
                                 max(self.batch_size, 1024), None if self.Wv is None else self.Wv[va:vb])
                           if vb > va else nothing)
        if self.parallel:  # the epoch's sums and whether any rank was interrupted: one all-reduce
            flag = xp.asarray(1.0 if stop.raised else 0.0, dtype=be.dtype, device=be.device)
            host = be.to_numpy(self.comm.allreduce(xp.stack(sums + [flag])))
            stop.raised = stop.raised or bool(host[-1] > 0)
        else:
            host = be.to_numpy(xp.stack(sums))
        logs = {k: float(v) / self.total for k, v in zip(names, host[:len(names)])}
        if self.Xv is not None or self.val_stream is not None:
            logs.update({f"val_{k}": float(v) / self.total_v for k, v in zip(names, host[len(names):])})
        return logs
