"""The fit loop: mini-batches on the device, one host read per epoch.

Data is validated once and sent to the device once.  Inside an epoch nothing is
read back: per-step losses and metric sums are added up as 0-d device arrays
and read together, in one transfer, when the epoch ends.  Shuffles are drawn
on the host from the model's generator (the same order on every backend) and
sent once per epoch as an index array.
"""
from __future__ import annotations

import math
import numbers
import signal
import sys
import threading
import time

from .files import check_writable
from .losses import get_loss
from .metrics import get_metrics
from .optim import check_hyper, check_int, get_optimizer

__all__ = ["fit", "evaluate", "History", "Callback", "EarlyStopping", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The epoch loss became NaN or infinite; the model keeps its last finite weights."""


class History(dict):
    """``history["loss"]``, ``history["val_loss"]``, one list per metric, and ``history["time"]``
    (seconds per epoch).  ``interrupted`` is True when Ctrl-C ended training, ``stopped_epoch`` is
    the epoch a callback or early stopping ended it at (else None)."""

    def __init__(self):
        super().__init__()
        self.interrupted = False
        self.stopped_epoch = None

    @property
    def epochs(self):
        return len(self.get("loss", []))

    def append(self, logs):
        """Add one epoch's logs (a dict of floats) to the per-key lists."""
        for k, v in logs.items():
            self.setdefault(k, []).append(v)


class Callback:
    """Hooks called by ``fit``.  ``self.model`` and ``self.optimizer`` are set before training.

    ``on_epoch_end(epoch, logs)`` returning True stops training.
    """

    model = optimizer = None

    def on_train_begin(self):
        """Called once before the first epoch."""

    def on_epoch_end(self, epoch, logs):
        """Called after each epoch with its logs (Python floats); return True to stop training."""
        return False

    def on_train_end(self):
        """Called once after training (also after early stopping or Ctrl-C)."""


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs,
    and (``restore_best``) put back the weights of the best epoch."""

    def __init__(self, monitor="val_loss", patience=10, min_delta=0.0, restore_best=True, mode="auto"):
        patience, min_delta = check_int("patience", patience, 0), check_hyper("min_delta", min_delta)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.restore_best = bool(restore_best)
        self.sign = -1.0 if mode == "max" or (mode == "auto" and "acc" in monitor) else 1.0

    def on_train_begin(self):
        self.best, self.best_epoch, self.wait, self.best_weights = math.inf, None, 0, None

    def on_epoch_end(self, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, which fit does not report "
                f"(it reports {', '.join(sorted(logs))}); pass validation data or monitor 'loss'"
            )
        value = self.sign * logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_weights = self.model.snapshot()
            return False
        self.wait += 1
        return self.wait > self.patience

    def on_train_end(self):
        if self.restore_best and self.best_weights is not None:
            self.model._assign(self.best_weights)


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


class _Progress:
    """Progress of a ``fit``: with ``verbose=1`` on a terminal one bar over all of training — tqdm's
    when tqdm is installed, else nnkit's own one-line bar — showing the epoch and the last epoch's
    logs; with ``verbose=2``, or ``verbose=1`` when standard error is not a terminal (a log file),
    one line per epoch; nothing when quiet."""

    def __init__(self, verbose, n_batches, epochs, first_epoch=0):
        self.verbose, self.epochs, self.bar = verbose, epochs, None
        self.total = n_batches * max(epochs - first_epoch, 0)
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        tty = _isatty(sys.stderr)  # a bar in a redirected log is a wall of carriage returns: lines instead
        self.tqdm = tqdm if verbose == 1 and tty else None
        self.text_bar = verbose == 1 and tqdm is None and tty
        self.done, self.last_draw, self.epoch, self.logs = 0, 0.0, 0, ""

    def start(self, epoch):
        self.epoch = epoch
        if self.tqdm is not None:
            if self.bar is None:
                self.bar = self.tqdm(total=self.total, unit="batch", leave=True, dynamic_ncols=True)
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}")

    def step(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.text_bar:
            now = time.perf_counter()
            if now - self.last_draw > 0.1 or self.done == self.total:
                self.last_draw = now
                self._draw()

    def _draw(self):
        filled = 30 * self.done // max(self.total, 1)
        sys.stderr.write(f"\r\033[Kepoch {self.epoch + 1}/{self.epochs} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{self.done}/{self.total}  {self.logs}")
        sys.stderr.flush()

    def end(self, epoch, logs):
        self.logs = "  ".join(f"{k}={v:.4g}" for k, v in logs.items() if k != "time")
        if self.bar is not None:
            self.bar.set_postfix_str(self.logs)
        elif self.text_bar:
            self._draw()
        elif self.verbose:
            sys.stderr.write(f"epoch {epoch + 1}/{self.epochs}  {self.logs}  ({logs['time']:.2f}s)\n")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.text_bar and self.done:
            sys.stderr.write("\n")
            self.done = 0


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _batches(n, batch_size):
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _add_batch(sums, value, out, T, loss, metric_fns):
    """Running [Σ loss, Σ metric...] on the device: the batch's mean loss weighted by its size."""
    batch = [value * T.shape[0]] + [fn(out, T, loss) for _, fn in metric_fns]
    return batch if sums is None else [a + b for a, b in zip(sums, batch)]


def _sums(model, X, T, loss, metric_fns, batch_size):
    """[Σ loss, Σ metric...] over (X, T) as 0-d device arrays (inference, no host read)."""
    sums = None
    for s, e in _batches(X.shape[0], batch_size):
        out, tb = model._forward(X[s:e, ...], train=False), T[s:e, ...]
        sums = _add_batch(sums, loss.value(out, tb), out, tb, loss, metric_fns)
    return sums


def evaluate(model, X, y, loss, metrics=None, batch_size=None):
    """``{"loss": float, metric: float}`` of ``model`` on (X, y): one host read."""
    loss = get_loss(loss)
    metric_fns = get_metrics(metrics, loss)
    X = model._as_input(X)
    T = model._as_target(y, X.shape[0], loss)
    bs = X.shape[0] if batch_size is None else check_int("batch_size", batch_size, 1)
    with model.backend.activate():
        host = model.backend.to_numpy(model.xp.stack(_sums(model, X, T, loss, metric_fns, bs)))
    n = X.shape[0]
    return {name: float(v) / n for name, v in zip(["loss"] + [m for m, _ in metric_fns], host)}


def fit(model, X, y, *, loss, optimizer="adam", epochs=10, batch_size=32, shuffle=True,
        validation_data=None, validation_split=0.0, early_stopping=None, callbacks=(), metrics=None,
        verbose=1, checkpoint=None, resume=False, regularizer=None, comm=None):
    """See :meth:`nnkit.Sequential.fit`."""
    from . import checkpoint as ckpt
    from . import distributed as dist

    # -- everything is checked before anything changes -------------------------------------
    loss = get_loss(loss)
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
            or not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if validation_split and validation_data is not None:
        raise ValueError("pass either validation_data or validation_split, not both")
    metric_fns = get_metrics(metrics, loss)
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
    comm = dist.check_comm(comm)
    parallel = comm is not None and comm.size > 1
    rank, size = (comm.rank, comm.size) if parallel else (0, 1)
    lead = rank == 0  # the rank that prints and writes checkpoints
    if not lead:
        verbose = 0
    if checkpoint is not None and lead:
        check_writable(checkpoint, "checkpoint")  # now, not after the first epoch

    X = model._as_input(X)
    T = model._as_target(y, X.shape[0], loss)
    n_all = X.shape[0]
    if validation_split:
        split = int(n_all * (1.0 - validation_split))
        if split < 1:
            raise ValueError(f"validation_split={validation_split} leaves no training rows out of {n_all}")
        Xv, Tv, X, T = X[split:, ...], T[split:, ...], X[:split, ...], T[:split, ...]
    elif validation_data is not None:
        try:
            vx, vy = validation_data
        except (TypeError, ValueError):
            raise ValueError("validation_data must be a pair (X_val, y_val)") from None
        Xv = model._as_input(vx)
        Tv = model._as_target(vy, Xv.shape[0], loss)
    else:
        Xv = Tv = None

    start = 0
    if resume and _exists(checkpoint):
        # by name: the checkpoint's optimizer, hyperparameters and all; an instance keeps its own
        # hyperparameters and takes the saved moments and step counts
        ckpt.restore(model, checkpoint, optimizer, keep_hyperparameters=not by_name)
        optimizer = model.optimizer
        start = model.epoch
        end = epochs
    else:
        end = model.epoch + epochs if not resume else epochs
        start = model.epoch
    model.optimizer = optimizer
    if parallel:
        dist.sync_model(comm, model)  # rank 0's weights and shuffle generator everywhere

    # -- the loop --------------------------------------------------------------------------
    be, xp = model.backend, model.xp
    n = X.shape[0]
    batches = _batches(n, batch_size)
    hooks = callbacks + ([early_stopping] if early_stopping is not None else [])
    history = History()
    progress = _Progress(int(verbose), len(batches), end, start)
    for cb in hooks:
        cb.model, cb.optimizer = model, optimizer
        if hasattr(cb, "on_train_begin"):
            cb.on_train_begin()
    try:
        with _StopFlag() as stop, be.activate():
            for epoch in range(start, end):
                t0 = time.perf_counter()
                safe_params = model.snapshot()
                safe_opt = optimizer.snapshot_state()
                order = be.asarray(model.rng.permutation(n)) if shuffle else None
                progress.start(epoch)
                sums, seen = None, 0
                for s, e in batches:
                    a, b = dist.rank_slice(s, e, rank, size) if parallel else (s, e)
                    if b > a:
                        if order is None:
                            xb, tb = X[a:b, ...], T[a:b, ...]
                        else:
                            idx = order[a:b]
                            xb, tb = xp.take(X, idx, axis=0), xp.take(T, idx, axis=0)
                        out = model._forward(xb, train=True)
                        value, d_out = loss.value_and_grad(out, tb)
                        grads = model.backward(d_out)
                        if regularizer is not None:
                            value, grads = model._add_penalty(value, grads, regularizer)
                        sums = _add_batch(sums, value, out, tb, loss, metric_fns)
                    else:  # a global batch smaller than the number of ranks: nothing here this step
                        grads = {k: xp.zeros_like(p) for k, p in model.params().items()}
                    if parallel:  # Σ_r (B_r/B)·∇L_r: the global batch's mean gradient, one all-reduce
                        grads = dist.allreduce_grads(comm, grads, (b - a) / (e - s))
                    model._assign(optimizer.step(model.params(), grads, scratch_grads=True))
                    seen = e
                    progress.step()
                    if stop.raised and not parallel:  # ranks agree on stopping at the epoch's end
                        break
                if stop.raised and seen < n:
                    history.interrupted = True
                    break
                nothing = [xp.zeros((), dtype=be.dtype, device=be.device)] * (1 + len(metric_fns))
                sums = nothing if sums is None else sums  # None: this rank had no rows all epoch
                if Xv is not None:
                    va, vb = dist.rank_slice(0, Xv.shape[0], rank, size) if parallel else (0, Xv.shape[0])
                    sums = sums + (_sums(model, Xv[va:vb, ...], Tv[va:vb, ...], loss, metric_fns,
                                         max(batch_size, 1024)) if vb > va else nothing)
                if parallel:  # the epoch's sums and whether any rank was interrupted: one all-reduce
                    flag = xp.asarray(1.0 if stop.raised else 0.0, dtype=be.dtype, device=be.device)
                    host = be.to_numpy(comm.allreduce(xp.stack(sums + [flag])))  # the epoch's one read
                    stop.raised = stop.raised or bool(host[-1] > 0)
                else:
                    host = be.to_numpy(xp.stack(sums))  # the epoch's one device -> host read
                names = ["loss"] + [m for m, _ in metric_fns]
                logs = {k: float(v) / n for k, v in zip(names, host[:len(names)])}
                if Xv is not None:
                    logs.update({f"val_{k}": float(v) / Xv.shape[0] for k, v in zip(names, host[len(names):])})
                if not all(math.isfinite(v) for v in logs.values()):
                    model._assign(safe_params)
                    optimizer.state = safe_opt
                    raise TrainingDivergedError(
                        f"training diverged in epoch {epoch + 1}: the loss became {logs['loss']} "
                        f"(logs: {logs}); the model keeps the weights of epoch {epoch}. "
                        f"Try a lower learning rate (now {optimizer.lr:g}), gradient clipping (clip_norm=) "
                        "or standardised inputs"
                    )
                logs["time"] = time.perf_counter() - t0
                model.epoch = epoch + 1
                history.append(logs)
                progress.end(epoch, logs)
                if checkpoint is not None:
                    if lead:
                        ckpt.save(model, checkpoint)
                    if parallel:
                        comm.barrier()  # the file is complete before any rank may read it
                cb_logs = {k: v for k, v in logs.items() if k != "time"}
                wants_stop = [bool(cb.on_epoch_end(epoch, cb_logs)) for cb in hooks]
                if any(wants_stop):
                    history.stopped_epoch = epoch
                    break
                if stop.raised:
                    history.interrupted = True
                    break
    finally:
        progress.close()
    for cb in hooks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end()
    return history


def _exists(path):
    import os

    return os.path.exists(os.fspath(path))
