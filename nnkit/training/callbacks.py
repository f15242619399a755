"""Callbacks: what ``fit`` does around the step — progress, checkpoints, early stopping, schedules.

``fit`` only feeds batches, runs the step, reads the epoch once and calls these hooks (Keras's names):

* ``on_train_begin()``, ``on_epoch_begin(epoch)``, ``on_batch_end()`` (no data: nothing may be read
  inside an epoch), ``on_epoch_end(epoch, logs)`` — returning True stops training — and
  ``on_train_end()``;
* before training ``fit`` sets ``self.model``, ``self.optimizer``, ``self.comm`` (None, or the
  data-parallel communicator) and ``self.history`` (the :class:`History` being filled);
* a callback with ``on_gradients(grads, params)`` is called inside every step with the gradients (float32,
  after the all-reduce) and the parameters before the update — device arrays: compute on them, read
  nothing (:class:`GradientStats` does).

Built in: :class:`ProgbarLogger` (``verbose=``), :class:`ModelCheckpoint` (``checkpoint=``),
:class:`EarlyStopping` (``early_stopping=``), :class:`LearningRateScheduler` (the ready-made schedules,
``nnkit.optim.CosineLR`` and the others, are callbacks too: :mod:`nnkit.training.schedules`).  Pass your own, or
these with other settings, in ``callbacks=``.
"""
from __future__ import annotations

import math
import sys
import time

from ..data.checks import check_hyper, check_int

__all__ = ["Callback", "History", "Monitor", "ProgbarLogger", "ModelCheckpoint", "EarlyStopping", "LearningRateScheduler",
           "CSVLogger", "TensorBoard",
           "GradientStats"]


def overrides_on_batch_end(cb):
    """True when a callback has an ``on_batch_end`` of its own (not :class:`Callback`'s, which does nothing)."""
    return getattr(cb.on_batch_end, "__func__", None) is not Callback.on_batch_end


class Callback:
    """Hooks called by ``fit`` (all optional).  ``self.model``, ``self.optimizer`` and ``self.comm`` are
    set before training.  ``on_epoch_end(epoch, logs)`` returning True stops training."""

    model = optimizer = comm = history = None

    def on_train_begin(self):
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch):
        """Called before each epoch (0-based ``epoch``)."""

    def on_batch_end(self, batch=None, logs=None):
        """Called after each step: ``batch`` its index in the epoch, ``logs`` the step's loss and metrics (Python
        floats) on every ``log_every_n_steps``-th step and None in between (read from the device only on those
        steps).  A callback written for ``on_batch_end(self)`` is still called without arguments."""

    def on_epoch_end(self, epoch, logs):
        """Called after each epoch with its logs (Python floats); return True to stop training."""
        return False

    def on_train_end(self):
        """Called once after training (also after early stopping or Ctrl-C)."""

    def needs_every_batch(self):
        """Whether ``on_batch_end`` must run after every batch: True when the callback overrides it.  ``fit(...,
        compile=True)`` runs an epoch whole, as one compiled loop, only when no callback needs every batch;
        a callback answering False is then called once, after the epoch's last batch (``batch`` its index)."""
        return overrides_on_batch_end(self)


class History(dict):
    """``history["loss"]``, ``history["val_loss"]``, one list per metric, and ``history["time"]``
    (seconds per epoch).  ``interrupted`` is True when Ctrl-C ended training, ``stopped_epoch`` is
    the epoch a callback or early stopping ended it at (else None)."""

    def __init__(self) -> None:
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

    def to_dataframe(self):
        """The history as a pandas DataFrame, one row per epoch (index ``epoch`` from 1), one column per log."""
        try:
            import pandas as pd
        except ImportError:
            raise RuntimeError("History.to_dataframe needs pandas: pip install pandas") from None
        n = self.epochs
        columns = {k: v for k, v in self.items() if len(v) == n}
        return pd.DataFrame(columns, index=pd.RangeIndex(1, n + 1, name="epoch"))


class Monitor:
    """A watched log value (``"val_loss"``, ``"val_accuracy"``, ...) and which way is better.

    ``mode="auto"`` takes the direction from the name: larger is better for accuracies, AUC, F1, precision,
    recall and R² (names containing ``acc``, ``auc``, ``f1``, ``precision``, ``recall``, ``r2``), smaller for
    everything else (losses, errors).  A name the logs do not hold is a ValueError naming the logs that exist
    — at the start of training where ``fit`` says which logs it will report, else at the first epoch's end."""

    LARGER_IS_BETTER = ("acc", "auc", "f1", "precision", "recall", "r2")

    def __init__(self, who, monitor, mode="auto", min_delta=0.0) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"{who}: monitor must be the name of a log such as 'val_loss', got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.who, self.monitor, self.min_delta = who, monitor, check_hyper("min_delta", min_delta)
        larger = mode == "max" or (mode == "auto" and any(w in monitor for w in self.LARGER_IS_BETTER))
        self.mode = "max" if larger else "min"
        self.sign = -1.0 if larger else 1.0

    def check(self, names):
        """Refuse a monitor that is not among the log ``names`` fit will report."""
        if names is not None and self.monitor not in names:
            hint = "; pass validation data (validation_data= or validation_split=)" \
                if self.monitor.startswith("val_") and not any(n.startswith("val_") for n in names) else ""
            raise ValueError(f"{self.who} monitors {self.monitor!r}, which fit does not report (it reports "
                             f"{', '.join(sorted(names))}){hint}")

    def value(self, logs):
        """The monitored value of this epoch's logs, signed so that smaller is better."""
        self.check(logs)
        return self.sign * logs[self.monitor]

    def improves(self, value, best):
        """True when the signed ``value`` beats ``best`` by more than ``min_delta``."""
        return value < best - self.min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs,
    and (``restore_best``) put back the weights of the best epoch.  ``mode``: see :class:`Monitor`."""

    def __init__(self, monitor="val_loss", patience=10, min_delta=0.0, restore_best=True, mode="auto") -> None:
        self.watch = Monitor("EarlyStopping", monitor, mode, min_delta)
        self.monitor, self.patience, self.min_delta = monitor, check_int("patience", patience, 0), float(min_delta)
        self.restore_best = bool(restore_best)
        self.sign = self.watch.sign

    def on_train_begin(self):
        self.watch.check(getattr(self, "log_names", None))
        self.best, self.best_epoch, self.wait, self.best_weights = math.inf, None, 0, None

    def on_epoch_end(self, epoch, logs):
        value = self.watch.value(logs)
        if self.watch.improves(value, self.best):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_weights = self.model.snapshot()
            return False
        self.wait += 1
        return self.wait > self.patience

    def on_train_end(self):
        if self.restore_best and self.best_weights is not None:
            self.model.assign(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (weights, optimizer state, epoch, RNG) to ``path``, atomically.

    * ``save_best_only=False`` (the default, what ``fit(checkpoint=path)`` uses): after every epoch, so a run
      can be resumed where it stopped; and when a callback ends the run early (``EarlyStopping`` restoring the
      best weights), once more at the end, so that the file holds the model ``fit`` leaves in memory.
    * ``save_best_only=True``: only after an epoch whose ``monitor`` (default ``"val_loss"``; ``mode``: see
      :class:`Monitor`) beats every earlier one, so the file holds the best model of the run.

    In data-parallel training only rank 0 writes, and every rank waits until the file is complete.
    """

    def __init__(self, path, monitor="val_loss", mode="auto", save_best_only=False) -> None:
        self.path = path
        self.save_best_only = bool(save_best_only)
        self.watch = Monitor("ModelCheckpoint", monitor, mode) if self.save_best_only else None
        self.best = math.inf

    def on_train_begin(self):
        if self.watch is not None:
            self.watch.check(getattr(self, "log_names", None))
        self.best = math.inf

    def _save(self):
        if self.comm is None or self.comm.rank == 0:
            self.model.save(self.path)
        if self.comm is not None and self.comm.size > 1:
            self.comm.barrier()  # the file is complete before any rank may read it

    def on_epoch_end(self, epoch, logs):
        if self.watch is None:
            self._save()
        else:
            value = self.watch.value(logs)
            if self.watch.improves(value, self.best):
                self.best = value
                self._save()
        return False

    def on_train_end(self):
        history = self.history
        if self.watch is None and history is not None and history.stopped_epoch is not None \
                and not history.interrupted:
            self._save()  # after EarlyStopping put the best weights back: the file holds what fit leaves


class LearningRateScheduler(Callback):
    """Set the learning rate before each epoch: ``optimizer.lr = schedule(epoch, lr)`` (Keras's form).

    The rate reaches a compiled step as a value, so the schedule acts there too.
    """

    def __init__(self, schedule) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be a function (epoch, lr) -> lr, got {schedule!r}")
        self.schedule = schedule

    def on_epoch_begin(self, epoch):
        lr = self.schedule(epoch, self.optimizer.lr)
        self.optimizer.lr = check_hyper("the scheduled learning rate", lr, low=0.0, low_open=True)


class ProgbarLogger(Callback):
    """Progress of a ``fit`` (``verbose=1``: a bar on a terminal, else a line per epoch; ``verbose=2``:
    a line per epoch)."""

    def __init__(self, verbose=1) -> None:
        self.verbose = int(verbose)
        self.bar = None

    def setup(self, n_batches, epochs, first_epoch):
        """The shape of the run (``fit`` calls this before training)."""
        self.bar = _Progress(int(self.verbose), n_batches, epochs, first_epoch)

    def on_epoch_begin(self, epoch):
        self.t0, self._done = time.perf_counter(), 0
        self.bar.start(epoch)

    def on_batch_end(self, batch=None, logs=None):
        self.bar.step(1 if batch is None else batch + 1 - self._done)  # to the batch's end: once per epoch is enough
        self._done = self._done + 1 if batch is None else batch + 1

    def needs_every_batch(self):
        return False  # a compiled epoch moves the bar once, to its end

    def on_epoch_end(self, epoch, logs):
        self.bar.end(epoch, {**logs, "time": time.perf_counter() - self.t0})
        return False

    def on_train_end(self):
        self.bar.close()


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _in_notebook():
    """True inside a Jupyter kernel (IPython's ZMQ shell; a terminal IPython is a terminal)."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # an IPython without a running shell
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _tqdm(notebook):
    """tqdm's bar class — the notebook widget in a notebook when ipywidgets is there — or None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    if notebook:
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook draws with it)
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm
        except ImportError:
            return tqdm
    return tqdm


class _Progress:
    """Progress of a ``fit``: with ``verbose=1`` on a terminal one bar over all of training — tqdm's
    when tqdm is installed, else nnkit's own one-line bar — showing the epoch and the last epoch's
    logs; in a Jupyter notebook tqdm's notebook bar (a widget, where ipywidgets is installed; tqdm's text bar
    in the cell otherwise); with ``verbose=2``, or ``verbose=1`` when standard error is not a terminal (a log
    file), one line per epoch; nothing when quiet."""

    def __init__(self, verbose, n_batches, epochs, first_epoch=0) -> None:
        self.verbose, self.epochs, self.bar = verbose, epochs, None
        self.total = n_batches * max(epochs - first_epoch, 0)
        notebook = _in_notebook()
        tqdm = _tqdm(notebook) if verbose == 1 else None
        tty = _isatty(sys.stderr)  # a bar in a redirected log is a wall of carriage returns: lines instead
        self.tqdm = tqdm if verbose == 1 and (tty or notebook) else None
        self.text_bar = verbose == 1 and tqdm is None and tty
        self.done, self.last_draw, self.epoch, self.logs = 0, 0.0, 0, ""

    def start(self, epoch):
        self.epoch = epoch
        if self.tqdm is not None:
            if self.bar is None:
                self.bar = self.tqdm(total=self.total, unit="batch", leave=True, dynamic_ncols=True)
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}")

    def step(self, count=1):
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
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


class GradientStats(Callback):
    """Gradients you can watch: per layer and epoch, into ``history`` (one list per key):

    * ``grad_norm/{key}``    — ‖∂L/∂W‖, the mean over the epoch's steps;
    * ``weight_norm/{key}``  — ‖W‖ at the end of the epoch;
    * ``update_ratio/{key}`` — ‖ΔW‖/‖W‖ of a step (the update's size against the weights'), mean over steps;
    * ``relu_inactive/{i}``  — for every ReLU layer i, the fraction of its units at 0 (Z ≤ 0), mean over steps;

    ``key`` is the weight's state-dict key (``"0.W"``, ``"3.0.W"`` inside a Residual).  Everything is summed on
    the device inside the epoch and read once at its end, with the loss (no host read per step).  Vanishing
    gradients show as ``grad_norm`` falling layer by layer towards the input; dead ReLUs as
    ``relu_inactive`` near 1.  ``nnkit.plots.gradient_diagnostics(history, path)`` draws them
    (``nnkit train --plot-diagnostics FILE.png``).  Needs ``fit(compile=False)``: a compiled step has no
    gradients to show.
    """

    def on_train_begin(self):
        from ..layers import ReLU

        self._weights = [k for k in self.model.params() if k.endswith(".W")]
        self._relus = [(str(i), layer) for i, layer in enumerate(self.model.layers) if isinstance(layer, ReLU)]
        self._sums = None

    def on_epoch_begin(self, epoch):
        self._sums, self._steps, self._before = None, 0, None

    def on_gradients(self, grads, params):
        """Inside the step: ‖g‖ and the active ReLU fractions added up on the device; θ kept for ‖Δθ‖."""
        xp = self.model.xp
        row = [xp.sqrt(xp.sum(grads[k] * grads[k])) for k in self._weights]
        row += [1.0 - xp.mean(layer.active()) for _, layer in self._relus]
        self._before = {k: xp.asarray(params[k], copy=True) for k in self._weights}
        self._add(row)

    def on_batch_end(self, batch=None, logs=None):
        if self._before is None:
            return
        xp, params = self.model.xp, self.model.params()
        ratios = []
        for k in self._weights:
            d = params[k] - self._before[k]
            ratios.append(xp.sqrt(xp.sum(d * d)) / (xp.sqrt(xp.sum(params[k] * params[k])) + 1e-30))
        self._add(ratios, offset=len(self._weights) + len(self._relus))
        self._before = None
        self._steps += 1

    def _add(self, values, offset=0):
        xp = self.model.xp
        n = 2 * len(self._weights) + len(self._relus)
        if self._sums is None:
            self._sums = [xp.zeros((), dtype=self.model.backend.dtype, device=self.model.backend.device)] * n
        for j, v in enumerate(values):
            self._sums[offset + j] = self._sums[offset + j] + v

    def on_epoch_end(self, epoch, logs):
        if self._sums is None:
            return False
        xp, be = self.model.xp, self.model.backend
        params = self.model.params()
        norms = [xp.sqrt(xp.sum(params[k] * params[k])) for k in self._weights]
        host = be.to_numpy(xp.stack(self._sums + norms))  # the epoch's one read of these numbers
        steps, nw, nr = max(self._steps, 1), len(self._weights), len(self._relus)
        out = {}
        for j, k in enumerate(self._weights):
            out[f"grad_norm/{k}"] = float(host[j]) / steps
            out[f"update_ratio/{k}"] = float(host[nw + nr + j]) / steps
            out[f"weight_norm/{k}"] = float(host[2 * nw + nr + j])
        for j, (i, _) in enumerate(self._relus):
            out[f"relu_inactive/{i}"] = float(host[nw + j]) / steps
        if self.history is not None:
            self.history.append(out)
        return False


# -- run records: a CSV file, TensorBoard event files ----------------------------------------------------------
class CSVLogger(Callback):
    """One row per epoch — ``epoch`` and every log (loss, metrics, validation, learning rate) — in a CSV file,
    flushed at every epoch so an interrupted run keeps its rows.  ``append=True`` adds to an existing file
    (a resumed run), whose header must name the same columns."""

    def __init__(self, path, append=False, separator=",") -> None:
        import os

        self.path, self.append, self.sep = os.fspath(path), bool(append), str(separator)
        self.file, self.columns = None, None

    def on_train_begin(self):
        import os

        from ..data.files import check_writable

        check_writable(self.path, "CSVLogger")
        self.columns = None
        if self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, encoding="utf-8") as f:
                header = f.readline().rstrip("\n")
            self.columns = header.split(self.sep)[1:]
            self.file = open(self.path, "a", encoding="utf-8")
        else:
            self.file = open(self.path, "w", encoding="utf-8")

    def on_epoch_end(self, epoch, logs):
        row = {**logs, "lr": float(self.optimizer.lr)} if self.optimizer is not None else dict(logs)
        if self.columns is None:
            self.columns = list(row)
            self.file.write(self.sep.join(["epoch", *self.columns]) + "\n")
        elif set(row) != set(self.columns):
            raise ValueError(f"CSVLogger: {self.path!r} has the columns {', '.join(self.columns)}, but this run logs "
                             f"{', '.join(row)}: append to a file of the same run, or use another path")
        self.file.write(self.sep.join([str(epoch + 1)] + [repr(float(row[c])) for c in self.columns]) + "\n")
        self.file.flush()
        return False

    def on_train_end(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class TensorBoard(Callback):
    """TensorBoard event files in ``log_dir``, written by tensorboardX (``pip install tensorboardX``;
    ``tensorboard --logdir DIR`` shows them):

    * every epoch's logs as scalars (``epoch/loss``, ``epoch/val_accuracy``, ...) and the learning rate, and
      what a :class:`GradientStats` before this callback recorded (``grad_norm/0.W``, ...);
    * with ``every_n_steps=N``, the step's loss and metrics every N steps (``step/loss``; ``fit`` reads them
      from the device on those steps only);
    * with ``histograms=True``, each weight's values at every epoch's end and the gradient of the epoch's
      last step (kept on the device, read at the epoch's end; needs ``compile=False``).
    """

    def __init__(self, log_dir, every_n_steps=None, histograms=False) -> None:
        import os

        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise RuntimeError("TensorBoard logging needs tensorboardX: pip install tensorboardX") from None
        if every_n_steps is not None:
            every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.log_dir, self.log_every_n_steps, self.histograms = os.fspath(log_dir), every_n_steps, bool(histograms)
        self.writer, self.step, self._grads = None, 0, None
        if self.histograms:
            self.on_gradients = self._keep_gradients

    def on_train_begin(self):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(self.log_dir)
        self.step = 0

    def _keep_gradients(self, grads, params):
        """Inside the step: the gradients of the weights, kept (device arrays: nothing is read)."""
        self._grads = {k: g for k, g in grads.items() if k.endswith(".W")}

    def on_batch_end(self, batch=None, logs=None):
        self.step += 1
        if logs:
            for k, v in logs.items():
                self.writer.add_scalar(f"step/{k}", v, self.step)

    def on_epoch_end(self, epoch, logs):
        step = epoch + 1
        for k, v in logs.items():
            self.writer.add_scalar(f"epoch/{k}", v, step)
        if self.optimizer is not None:
            self.writer.add_scalar("epoch/lr", float(self.optimizer.lr), step)
        if self.history is not None:
            for k, values in self.history.items():
                if "/" in k and values:  # GradientStats' keys, this epoch's value
                    self.writer.add_scalar(k, values[-1], step)
        if self.histograms:
            from ..backends import host_copy

            for k, p in self.model.params().items():
                self.writer.add_histogram(f"weights/{k}", host_copy(p), step)
            for k, g in (self._grads or {}).items():
                self.writer.add_histogram(f"gradients/{k}", host_copy(g), step)
            self._grads = None
        self.writer.flush()
        return False

    def on_train_end(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
