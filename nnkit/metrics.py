"""Metrics as per-batch sums that stay on the device.

Each metric returns a 0-d array: the *sum* over the batch's examples of a
per-example score (weighted by the sample weights ``w`` when given), so the epoch value is (Σ over batches) / n — exact for a
partial last batch — and is read from the device once per epoch.
"""
from __future__ import annotations

from .functional import namespace_of

__all__ = ["METRICS", "get_metrics", "accuracy", "mse", "mae"]


def _total(xp, per_example, w):
    return xp.sum(per_example * w)


def accuracy(out, T, loss, w=None):
    """Σ_n [prediction_n = target_n]: arg-max of the outputs for K > 1 (rows of T are one-hot or
    probabilities), otherwise the logit's sign (BinaryCrossEntropy) or the output ≥ 0.5 for one output
    (per example: the fraction of outputs right, for multi-label BinaryCrossEntropy)."""
    xp = namespace_of(out)
    if loss.name == "binary_cross_entropy" or out.shape[1] == 1:
        threshold = 0.0 if loss.name == "binary_cross_entropy" else 0.5
        right = xp.astype((out > threshold) == (T > 0.5), out.dtype)
        if w is None:
            return xp.sum(right) / out.shape[1]
        return _total(xp, xp.sum(right, axis=1), w) / out.shape[1]
    right = xp.astype(xp.argmax(out, axis=1) == xp.argmax(T, axis=1), out.dtype)
    return xp.sum(right) if w is None else _total(xp, right, w)


def mse(out, T, loss, w=None):
    """Σ_n mean_k (ŷ_nk − y_nk)², with ŷ the loss's prediction (probabilities for cross-entropies)."""
    xp = namespace_of(out)
    diff = loss.predict(out) - T
    if w is None:
        return xp.sum(diff * diff) / out.shape[1]
    return _total(xp, xp.sum(diff * diff, axis=1), w) / out.shape[1]


def mae(out, T, loss, w=None):
    """Σ_n mean_k |ŷ_nk − y_nk|."""
    xp = namespace_of(out)
    if w is None:
        return xp.sum(xp.abs(loss.predict(out) - T)) / out.shape[1]
    return _total(xp, xp.sum(xp.abs(loss.predict(out) - T), axis=1), w) / out.shape[1]


METRICS = {"accuracy": accuracy, "acc": accuracy, "mse": mse, "mae": mae}


def get_metrics(metrics, loss):
    """``[(name, fn)]`` for a list of names; ``None`` means accuracy for classification losses, else none."""
    if metrics is None:
        metrics = ["accuracy"] if loss.name in ("cross_entropy", "binary_cross_entropy") else []
    if isinstance(metrics, str):
        metrics = [metrics]
    out = []
    for name in metrics:
        key = name.lower() if isinstance(name, str) else name
        if key not in METRICS:
            raise ValueError(f"unknown metric {name!r}: expected one of 'accuracy', 'mse', 'mae'")
        key = "accuracy" if key == "acc" else key
        if key not in dict(out):
            out.append((key, METRICS[key]))
    return out
