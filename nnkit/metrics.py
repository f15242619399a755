"""Metrics as per-batch sums that stay on the device.

Each metric returns a 0-d array: the *sum* over the batch's examples of a
per-example score, so the epoch value is (Σ over batches) / n — exact for a
partial last batch — and is read from the device once per epoch.
"""
from __future__ import annotations

from .functional import namespace_of

__all__ = ["METRICS", "get_metrics", "accuracy", "mse", "mae"]


def accuracy(out, T, loss):
    """Σ_n [prediction_n = target_n]: arg-max of the outputs for K > 1 (rows of T are one-hot or
    probabilities), otherwise the logit's sign (BinaryCrossEntropy) or the output ≥ 0.5 for one output
    (per example: the fraction of outputs right, for multi-label BinaryCrossEntropy)."""
    xp = namespace_of(out)
    if loss.name == "binary_cross_entropy" or out.shape[1] == 1:
        threshold = 0.0 if loss.name == "binary_cross_entropy" else 0.5
        right = (out > threshold) == (T > 0.5)
        return xp.sum(xp.astype(right, out.dtype)) / out.shape[1]
    right = xp.argmax(out, axis=1) == xp.argmax(T, axis=1)
    return xp.sum(xp.astype(right, out.dtype))


def mse(out, T, loss):
    """Σ_n mean_k (ŷ_nk − y_nk)², with ŷ the loss's prediction (probabilities for cross-entropies)."""
    diff = loss.predict(out) - T
    return namespace_of(out).sum(diff * diff) / out.shape[1]


def mae(out, T, loss):
    """Σ_n mean_k |ŷ_nk − y_nk|."""
    xp = namespace_of(out)
    return xp.sum(xp.abs(loss.predict(out) - T)) / out.shape[1]


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
