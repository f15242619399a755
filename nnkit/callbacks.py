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
:class:`EarlyStopping` (``early_stopping=``), :class:`LearningRateScheduler` and the schedules
:class:`StepLR`, :class:`ExponentialLR`, :class:`CosineLR`, :class:`ReduceLROnPlateau` (also reached as
``nnkit.optim.CosineLR`` ...).  Pass your own, or these with other settings, in
``callbacks=``.
"""
from __future__ import annotations

import math
import sys
import time

from .checks import check_hyper, check_int

__all__ = ["Callback", "History", "ProgbarLogger", "ModelCheckpoint", "EarlyStopping", "LearningRateScheduler",
           "StepLR", "ExponentialLR", "CosineLR", "ReduceLROnPlateau",
           "GradientStats"]


class Callback:
    """Hooks called by ``fit`` (all optional).  ``self.model``, ``self.optimizer`` and ``self.comm`` are
    set before training.  ``on_epoch_end(epoch, logs)`` returning True stops training."""

    model = optimizer = comm = history = None

    def on_train_begin(self):
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch):
        """Called before each epoch (0-based ``epoch``)."""

    def on_batch_end(self):
        """Called after each step (no logs: the step's values stay on the device)."""

    def on_epoch_end(self, epoch, logs):
        """Called after each epoch with its logs (Python floats); return True to stop training."""
        return False

    def on_train_end(self):
        """Called once after training (also after early stopping or Ctrl-C)."""


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
            self.model.assign(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (weights, optimizer state, epoch, RNG) to ``path`` after every epoch, atomically.

    In data-parallel training only rank 0 writes, and every rank waits until the file is complete.
    """

    def __init__(self, path):
        self.path = path

    def on_epoch_end(self, epoch, logs):
        if self.comm is None or self.comm.rank == 0:
            self.model.save(self.path)
        if self.comm is not None and self.comm.size > 1:
            self.comm.barrier()  # the file is complete before any rank may read it
        return False


class LearningRateScheduler(Callback):
    """Set the learning rate before each epoch: ``optimizer.lr = schedule(epoch, lr)`` (Keras's form).

    The rate reaches a compiled step as a value, so the schedule acts there too.
    """

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError(f"schedule must be a function (epoch, lr) -> lr, got {schedule!r}")
        self.schedule = schedule

    def on_epoch_begin(self, epoch):
        lr = self.schedule(epoch, self.optimizer.lr)
        self.optimizer.lr = check_hyper("the scheduled learning rate", lr, low=0.0, low_open=True)


class ProgbarLogger(Callback):
    """Progress of a ``fit`` (``verbose=1``: a bar on a terminal, else a line per epoch; ``verbose=2``:
    a line per epoch)."""

    def __init__(self, verbose=1):
        self.verbose = int(verbose)
        self.bar = None

    def setup(self, n_batches, epochs, first_epoch):
        """The shape of the run (``fit`` calls this before training)."""
        self.bar = _Progress(int(self.verbose), n_batches, epochs, first_epoch)

    def on_epoch_begin(self, epoch):
        self.t0 = time.perf_counter()
        self.bar.start(epoch)

    def on_batch_end(self):
        self.bar.step()

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
        from .layers import ReLU

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

    def on_batch_end(self):
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


# -- learning-rate schedules: callbacks that set optimizer.lr once per epoch ---------------------------
class _Schedule(Callback):
    """Base: remembers the optimizer's initial lr and sets ``optimizer.lr`` after each epoch."""

    model = optimizer = None

    def on_train_begin(self):
        """Remember the optimizer's learning rate as lr₀ (once, so a resumed run keeps it)."""
        if not hasattr(self, "base_lr"):
            self.base_lr = self.optimizer.lr

    def on_epoch_end(self, epoch, logs):
        """Set the learning rate for the next epoch."""
        self.optimizer.lr = self.lr_at(epoch + 1)

    def on_train_end(self):
        """Nothing to do."""

    def lr_at(self, epoch):
        """The learning rate for (0-based) ``epoch``."""
        raise NotImplementedError


class StepLR(_Schedule):
    """lr = lr₀ · γ^⌊epoch / step_size⌋."""

    def __init__(self, step_size, gamma=0.1):
        self.step_size, self.gamma = check_int("step_size", step_size, 1), check_hyper("gamma", gamma, low_open=True)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(_Schedule):
    """lr = lr₀ · γ^epoch."""

    def __init__(self, gamma):
        self.gamma = check_hyper("gamma", gamma, low_open=True)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineLR(_Schedule):
    """Linear warm-up for ``warmup`` epochs, then cosine decay to ``min_lr`` at ``total`` epochs.

    lr = lr₀·(e+1)/warmup for e < warmup, else
    min_lr + ½(lr₀ − min_lr)(1 + cos(π·(e − warmup)/(total − warmup))).
    """

    def __init__(self, total, warmup=0, min_lr=0.0):
        total = check_int("total (epochs)", total, 1)
        if check_int("warmup", warmup, 0) >= total:
            raise ValueError(f"warmup must be an integer in [0, total), got {warmup!r}")
        self.total, self.warmup, self.min_lr = total, warmup, check_hyper("min_lr", min_lr)

    def on_train_begin(self):
        super().on_train_begin()
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch):
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / self.warmup
        frac = min(1.0, (epoch - self.warmup) / (self.total - self.warmup))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * frac))


class ReduceLROnPlateau(_Schedule):
    """Multiply lr by ``factor`` when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=5, min_delta=0.0, min_lr=0.0):
        self.monitor = monitor
        self.factor = check_hyper("factor", factor, low_open=True, high=1.0)
        self.patience, self.min_delta = check_int("patience", patience, 0), check_hyper("min_delta", min_delta)
        self.min_lr = check_hyper("min_lr", min_lr)
        self.best, self.wait = math.inf, 0

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor, logs.get("loss"))
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait > self.patience:
                self.optimizer.lr = max(self.min_lr, self.optimizer.lr * self.factor)
                self.wait = 0
