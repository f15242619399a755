"""Learning-rate schedules: callbacks that set ``optimizer.lr`` once per epoch (or per step), reached at their one
public address ``nnkit.optim`` (``nnkit.optim.CosineLR``).

Each gives lr as a function of the epoch count (``lr_at``); ``fit`` calls it through the callback hooks, so a
schedule never runs inside a step and a compiled step reads the rate as a value, not a traced constant.
"""
from __future__ import annotations

import math

from ..data.checks import check_hyper, check_int
from .callbacks import Callback, Monitor

__all__ = ["StepLR", "ExponentialLR", "CosineLR", "ReduceLROnPlateau"]


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

    def __init__(self, step_size, gamma=0.1) -> None:
        self.step_size, self.gamma = check_int("step_size", step_size, 1), check_hyper("gamma", gamma, low_open=True)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(_Schedule):
    """lr = lr₀ · γ^epoch."""

    def __init__(self, gamma) -> None:
        self.gamma = check_hyper("gamma", gamma, low_open=True)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineLR(_Schedule):
    """Linear warm-up for ``warmup`` epochs, then cosine decay to ``min_lr`` at ``total`` epochs.

    lr = lr₀·(e+1)/warmup for e < warmup, else
    min_lr + ½(lr₀ − min_lr)(1 + cos(π·(e − warmup)/(total − warmup))).

    With ``steps_per_epoch=K`` (the fit's own) ``total`` and ``warmup`` count training steps and the rate is set
    before every step (step s = epoch·K + batch), as nanoGPT's schedule runs.  ``lr`` names lr₀ (default: the
    optimizer's rate when training begins); given, a run resumed from a checkpoint continues the schedule where
    it stopped.
    """

    def __init__(self, total, warmup=0, min_lr=0.0, steps_per_epoch=None, lr=None) -> None:
        total = check_int("total", total, 1)
        if check_int("warmup", warmup, 0) >= total:
            raise ValueError(f"warmup must be an integer in [0, total), got {warmup!r}")
        self.total, self.warmup, self.min_lr = total, warmup, check_hyper("min_lr", min_lr)
        self.steps_per_epoch = None if steps_per_epoch is None else check_int("steps_per_epoch", steps_per_epoch, 1)
        if lr is not None:
            self.base_lr = check_hyper("lr", lr, low_open=True)
        self._epoch = 0

    def on_train_begin(self):
        resumable = hasattr(self, "base_lr")
        super().on_train_begin()
        epoch = (getattr(self.model, "epoch", 0) or 0) if resumable else 0
        self._epoch = epoch
        self.optimizer.lr = self.lr_at(epoch if self.steps_per_epoch is None else epoch * self.steps_per_epoch)

    def on_epoch_begin(self, epoch):
        """Per step: remember the epoch, and set the rate of its first step."""
        self._epoch = epoch
        if self.steps_per_epoch is not None:
            self.optimizer.lr = self.lr_at(epoch * self.steps_per_epoch)

    def needs_every_batch(self):
        return self.steps_per_epoch is not None  # per step: the rate changes after every batch

    def on_batch_end(self, batch=None, logs=None):
        """Per step: the rate of the next step."""
        if self.steps_per_epoch is not None:
            self.optimizer.lr = self.lr_at(self._epoch * self.steps_per_epoch + (batch or 0) + 1)

    def on_epoch_end(self, epoch, logs):
        """Per epoch: the next epoch's rate (per step: set before each step already)."""
        if self.steps_per_epoch is None:
            self.optimizer.lr = self.lr_at(epoch + 1)

    def lr_at(self, epoch):
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / self.warmup
        frac = min(1.0, (epoch - self.warmup) / (self.total - self.warmup))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * frac))


class ReduceLROnPlateau(_Schedule):
    """Multiply lr by ``factor`` when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs, then
    wait ``cooldown`` epochs before watching again; never below ``min_lr``.  ``mode``: see :class:`Monitor`
    (``"auto"``: an accuracy must rise, a loss fall)."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=5, min_delta=0.0, min_lr=0.0, mode="auto",
                 cooldown=0) -> None:
        self.watch = Monitor("ReduceLROnPlateau", monitor, mode, min_delta)
        self.monitor = monitor
        self.factor = check_hyper("factor", factor, low_open=True, high=1.0)
        self.patience, self.min_delta = check_int("patience", patience, 0), check_hyper("min_delta", min_delta)
        self.cooldown = check_int("cooldown", cooldown, 0)
        self.min_lr = check_hyper("min_lr", min_lr)
        self.best, self.wait, self.cooling = math.inf, 0, 0

    def on_train_begin(self):
        super().on_train_begin()
        self.watch.check(getattr(self, "log_names", None))

    def on_epoch_end(self, epoch, logs):
        """PyTorch's rule: an epoch without improvement counts, except in the ``cooldown`` epochs after a cut."""
        value = self.watch.value(logs)
        if self.watch.improves(value, self.best):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.cooling:
            self.cooling -= 1
            self.wait = 0
        if self.wait > self.patience:
            self.optimizer.lr = max(self.min_lr, self.optimizer.lr * self.factor)
            self.wait, self.cooling = 0, self.cooldown
