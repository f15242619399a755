"""The learning-rate range test (Smith, 2017; fastai's ``lr_find``): train a copy of the model for a few steps
with the learning rate rising exponentially, and watch where the loss falls fastest and where it blows up.

``nnkit.lr_find(model, X, y, loss)`` leaves the model as it was (the steps run on a clone), reads the device
once at the end (every step's loss is kept on the device), and returns an :class:`LRFindResult`: the rates,
the losses, their exponentially smoothed curve (bias-corrected, as fastai smooths it), and a suggested rate
from the longest stretch over which the smoothed loss falls (fastai's "valley"), before it rises past
``diverge`` times its minimum.
``nnkit.plots.lr_curve(result, path)`` draws it; ``nnkit train --lr-find --plot lr.png`` runs it from the
command line.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from .. import data
from ..data.checks import check_hyper, check_int
from ..losses import get_loss
from ..training.optim import get_optimizer

__all__ = ["lr_find", "LRFindResult"]


class LRFindResult:
    """``lrs``, ``losses`` (per step, NumPy), ``smoothed`` and ``suggestion`` (a learning rate, or None when the
    loss never fell) of a range test; ``plot(path=None)`` draws it."""

    def __init__(self, lrs, losses, smoothed, suggestion) -> None:
        self.lrs, self.losses, self.smoothed, self.suggestion = lrs, losses, smoothed, suggestion

    def plot(self, path=None, title=""):
        """The curve as a matplotlib Figure (written to ``path`` when given): :func:`nnkit.plots.lr_curve`."""
        from .plots import lr_curve

        return lr_curve(self, path, title)

    def __repr__(self):
        s = "None" if self.suggestion is None else f"{self.suggestion:.3g}"
        return f"LRFindResult({len(self.lrs)} steps from {self.lrs[0]:.2g} to {self.lrs[-1]:.2g}, suggestion={s})"


def lr_find(model: Any, X: Any, y: Any, loss: Any, optimizer: Any = "sgd", start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 100, batch_size: int = 32, smooth: float = 0.98,
            diverge: float = 4.0) -> LRFindResult:
    """The range test on (X, y) in memory: ``steps`` training steps of ``batch_size`` rows (shuffled from the
    model's seed, cycling through the data) with lr_i = start·(end/start)^(i/(steps − 1)), on a clone of
    ``model`` with a fresh ``optimizer`` (a name or an instance, whose state is left alone).  See the module
    docstring for what it returns."""
    loss = get_loss(loss)
    steps = check_int("steps", steps, 2)
    batch_size = check_int("batch_size", batch_size, 1)
    start = check_hyper("start_lr", start_lr, low_open=True)
    end = check_hyper("end_lr", end_lr, low_open=True)
    if end <= start:
        raise ValueError(f"end_lr must be larger than start_lr, got {start_lr!r} and {end_lr!r}")
    smooth = check_hyper("smooth", smooth, high=1.0)
    diverge = check_hyper("diverge", diverge, low=1.0, low_open=True)
    opt = get_optimizer(optimizer)
    opt = type(opt)(**{**opt.hyperparameters(), "lr": start})  # fresh moments, the given settings
    twin = model.clone()
    twin.rng = copy.deepcopy(model.rng)  # the model's shuffles, from a copy: its own generator is not drawn
    Xd = data.as_input(twin, X)
    Td = data.as_target(twin, y, Xd.shape[0], loss)
    n, xp, be = Xd.shape[0], twin.xp, twin.backend
    lrs = start * (end / start) ** (np.arange(steps) / (steps - 1))
    values, order, at = [], twin.rng.permutation(n), 0
    with twin.policy.activate():
        for lr in lrs:
            if at + min(batch_size, n) > n:
                order, at = twin.rng.permutation(n), 0
            idx = be.asarray(order[at:at + batch_size])
            at += batch_size
            opt.lr = float(lr)
            values.append(twin.train_step(xp.take(Xd, idx, axis=0), xp.take(Td, idx, axis=0), loss, opt,
                                          check_input=False))
        losses = np.asarray(be.to_numpy(xp.stack(values)), dtype=np.float64)  # the one read
    smoothed, avg = np.empty(steps), 0.0
    for i, v in enumerate(losses):
        avg = smooth * avg + (1.0 - smooth) * v
        smoothed[i] = avg / (1.0 - smooth ** (i + 1))
    return LRFindResult(lrs, losses, smoothed, _suggest(lrs, smoothed, diverge))


def _suggest(lrs, smoothed, diverge):
    """The "valley" rule: the longest stretch over which the smoothed loss keeps falling (a longest decreasing
    subsequence, before the loss passes ``diverge``× its running minimum), and the rate a little past its first
    third — robust to the noise of the first steps, where the steepest point alone often lies.  None when the
    loss never fell."""
    stop, best = len(smoothed), math.inf
    for i, v in enumerate(smoothed):
        if not math.isfinite(v) or v > diverge * best:
            stop = i
            break
        best = min(best, v)
    y = smoothed[:stop]
    if len(y) < 3:
        return None
    run = np.ones(len(y), dtype=np.int64)  # run[i]: the longest decreasing subsequence ending at i
    for i in range(1, len(y)):
        falls = y[:i] > y[i]
        if falls.any():
            run[i] = run[:i][falls].max() + 1
    end = int(np.argmax(run))
    if run[end] < 3:
        return None
    start = end - int(run[end]) + 1
    third = (end - start) / 3.0
    return float(lrs[min(start + int(third + third / 2), end)])
