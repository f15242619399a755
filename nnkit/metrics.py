"""Metrics: per-batch statistics that stay on the device, turned into a value once per epoch.

A metric is a :class:`Metric`: called on a batch's rows — ``metric(out, T, loss, w)``, the model's outputs
(N, K), the prepared targets (one-hot rows, or integer labels (N,), for cross-entropy), the loss and the rows'
weights (N,) or None, where a row is an example of a (B, K) output or a position of a per-position output
(B, T, K), N = B·T, padded and zero-weight positions counting for nothing — it returns
a device array of a fixed shape whose sum over the epoch's batches is all it needs (a weighted count, a
confusion matrix, the moments of the targets); ``metric.value(total, n)`` turns that sum, read from the device
once per epoch with the loss, into the reported number.  Nothing is read inside an epoch.

* ``"accuracy"``, ``"mse"``, ``"mae"``, ``"top_k_accuracy"`` (:class:`TopKAccuracy`, ``k=5``; ``"top_3_accuracy"``
  names k): weighted sums of a per-example score, divided by Σw;
* ``"precision"``, ``"recall"``, ``"f1"`` — binary (the positive class 1) for two classes, else the macro
  average; ``"precision_macro"``, ``"f1_micro"``, ``"recall_weighted"``, ... name the average
  (:class:`Precision`, :class:`Recall`, :class:`F1` with ``average=``): all from one weighted K×K confusion
  matrix summed on the device, with scikit-learn's conventions (a class never predicted has precision 0);
* ``"r2"`` (:class:`R2`): from Σw, Σw·y, Σw·y² and Σw·(y − ŷ)² per output (float64 on the host at the end),
  the outputs' R² averaged (scikit-learn's ``uniform_average``; a constant target scores 1 if predicted
  exactly, else 0);
* ``"auc"`` (:class:`AUC`): ROC AUC — binary, or one-vs-rest macro (``"auc_weighted"``: weighted by the class
  frequencies) for more classes.  AUC needs every score: each batch's scores, targets and weights are kept on
  the device, in a list, and joined and read in the epoch's one read (memory O(n) on the device), then
  ranked on the host — the trapezoid under the ROC curve, ties counted half, as scikit-learn computes it;
* a function of yours, ``fn(out, T, w) -> value`` (device arrays; ``w`` may be None): the batch's mean,
  weighted over the epoch by each batch's Σw (exact for any per-example mean).

Every value equals scikit-learn's on the same predictions, with sample weights (``tests/test_metrics.py``).
:func:`confusion_matrix` gives the matrix itself.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from .backends.functional import device_of, namespace_of

__all__ = ["Metric", "Mean", "TopKAccuracy", "Precision", "Recall", "F1", "R2", "AUC", "UserMetric", "METRICS",
           "get_metrics", "accuracy", "mse", "mae", "confusion_matrix", "batch_weight", "BatchStats", "read_stats"]


def _total(xp, per_example, w):
    return xp.sum(per_example * w)


def _rows(out, T):
    """T as (N, K) rows: per-position integer labels T (N,) (a sequence model's targets) as their one-hot rows,
    made for this batch only (the stored targets stay labels)."""
    if T.ndim != 1 or out.shape[1] == 1:
        return T
    xp = namespace_of(out)
    return _one_hot(xp, T, out.shape[1], out.dtype, device_of(out))


def _index(xp, T):
    """The class index of each target row: the label itself, or the arg-max of a one-hot/probability row."""
    return T if T.ndim == 1 else xp.argmax(T, axis=1)


# -- the per-example means --------------------------------------------------------------------------------
def accuracy(out, T, loss, w=None):
    """Σ_n [prediction_n = target_n]: arg-max of the outputs for K > 1 (rows of T are one-hot or
    probabilities), otherwise the logit's sign (BinaryCrossEntropy) or the output ≥ 0.5 for one output
    (per example: the fraction of outputs right, for multi-label BinaryCrossEntropy)."""
    xp = namespace_of(out)
    if loss.name == "binary_cross_entropy" or out.shape[1] == 1:
        threshold = 0.0 if loss.name == "binary_cross_entropy" else 0.5
        T = T if T.ndim == 2 else xp.reshape(T, (-1, 1))
        right = xp.astype((out > threshold) == (T > 0.5), out.dtype)
        if w is None:
            return xp.sum(right) / out.shape[1]
        return _total(xp, xp.sum(right, axis=1), w) / out.shape[1]
    right = xp.astype(xp.argmax(out, axis=1) == _index(xp, T), out.dtype)
    return xp.sum(right) if w is None else _total(xp, right, w)


def mse(out, T, loss, w=None):
    """Σ_n mean_k (ŷ_nk − y_nk)², with ŷ the loss's prediction (probabilities for cross-entropies)."""
    xp = namespace_of(out)
    diff = loss.predict(out) - _rows(out, T)
    if w is None:
        return xp.sum(diff * diff) / out.shape[1]
    return _total(xp, xp.sum(diff * diff, axis=1), w) / out.shape[1]


def mae(out, T, loss, w=None):
    """Σ_n mean_k |ŷ_nk − y_nk|."""
    xp = namespace_of(out)
    T = _rows(out, T)
    if w is None:
        return xp.sum(xp.abs(loss.predict(out) - T)) / out.shape[1]
    return _total(xp, xp.sum(xp.abs(loss.predict(out) - T), axis=1), w) / out.shape[1]


class Metric:
    """A metric: ``metric(out, T, loss, w)`` gives a batch's device statistics (summed over the epoch's batches,
    or with ``collect = True`` kept and joined), ``value(total, n)`` the reported number from their host sum
    (float64) and the epoch's Σw ``n``."""

    name = "metric"
    collect = False  # True: the batches' arrays are joined (along axis 0), not summed

    def __call__(self, out, T, loss, w=None):
        raise NotImplementedError

    def shape(self, k):
        """The shape of a batch's statistics for a model of ``k`` outputs (zeros of it: a part with no rows)."""
        return ()

    def value(self, total, n):
        """The reported number from the epoch's host sum ``total`` (float64, of :meth:`shape`) and its Σw ``n``:
        by default the weighted mean total / n (a metric whose batch statistic is Σ w·score)."""
        return float(total) / n

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class Mean(Metric):
    """The weighted mean of a per-example score ``fn(out, T, loss, w) -> Σ_n w_n·score_n``."""

    def __init__(self, name, fn) -> None:
        self.name, self.fn = name, fn

    def __call__(self, out, T, loss, w=None):
        return self.fn(out, T, loss, w)


class TopKAccuracy(Metric):
    """Σ_n w_n·[the target class is among the k highest outputs] / Σw, scikit-learn's ``top_k_accuracy_score``
    to the tie: the classes ranked above the target are those scored higher, and those scored the same with a
    higher index (its stable sort, reversed)."""

    def __init__(self, k=5) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"top_k_accuracy needs k >= 1, got {k!r}")
        self.k, self.name = k, "top_k_accuracy" if k == 5 else f"top_{k}_accuracy"

    def __call__(self, out, T, loss, w=None):
        xp = namespace_of(out)
        if out.shape[1] < 2:
            raise ValueError("top_k_accuracy needs one output per class (K >= 2)")
        T = _rows(out, T)
        target = xp.sum(out * T, axis=1, keepdims=True) if T.shape == out.shape else None
        if target is None:
            raise ValueError("top_k_accuracy needs class targets (labels or one-hot rows)")
        dev = device_of(out)
        label = xp.argmax(T, axis=1)
        later = xp.arange(out.shape[1], device=dev)[None, :] > label[:, None]
        above = (out > target) | ((out == target) & later)  # ranked above the target, as scikit-learn ranks
        hit = xp.astype(xp.sum(xp.astype(above, out.dtype), axis=1) < self.k, out.dtype)
        return xp.sum(hit) if w is None else _total(xp, hit, w)


# -- from the confusion matrix ----------------------------------------------------------------------------
def _labels(out, T, loss):
    """(true, predicted) class indices of a batch and the number of classes K."""
    xp = namespace_of(out)
    if out.shape[1] == 1:
        threshold = 0.0 if loss.name == "binary_cross_entropy" else 0.5
        T = T if T.ndim == 2 else xp.reshape(T, (-1, 1))
        return (xp.astype(T[:, 0] > 0.5, xp.int64), xp.astype(out[:, 0] > threshold, xp.int64), 2)
    if loss.name == "binary_cross_entropy":
        raise ValueError("precision, recall, F1 and AUC take one label per example: a multi-label "
                         "BinaryCrossEntropy model has several")
    return xp.astype(_index(xp, T), xp.int64), xp.argmax(out, axis=1), out.shape[1]


def _one_hot(xp, idx, k, dtype, device):
    return xp.astype(idx[:, None] == xp.arange(k, device=device)[None, :], dtype)


def _confusion(out, T, loss, w):
    """C (K×K) with C[i, j] = Σ w·[true = i][predicted = j]: one small matrix product on the device."""
    xp = namespace_of(out)
    true, pred, k = _labels(out, T, loss)
    dev = device_of(out)
    A, B = _one_hot(xp, true, k, out.dtype, dev), _one_hot(xp, pred, k, out.dtype, dev)
    if w is not None:
        A = A * w[:, None]
    return A.T @ B


class _FromConfusion(Metric):
    """Precision, recall or F1 from the epoch's confusion matrix, averaged as scikit-learn averages them."""

    AVERAGES = ("binary", "macro", "micro", "weighted")
    kind: str = ""

    def __init__(self, average=None) -> None:
        if average is not None and average not in self.AVERAGES:
            raise ValueError(f"{self.kind}: average must be one of {', '.join(self.AVERAGES)} or None (binary for "
                             f"two classes, else macro), got {average!r}")
        self.average = average
        self.name = self.kind if average is None else f"{self.kind}_{average}"

    def __call__(self, out, T, loss, w=None):
        return _confusion(out, T, loss, w)

    def shape(self, k):
        return (max(k, 2), max(k, 2))

    def value(self, total, n):
        """See :meth:`Metric.value`."""
        C = np.asarray(total, dtype=np.float64)
        k = C.shape[0]
        average = self.average or ("binary" if k == 2 else "macro")
        if average == "binary":
            if k != 2:
                raise ValueError(f"{self.name}: average='binary' needs two classes, the outputs have {k}")
            tp, fp, fn = C[1, 1], C[0, 1], C[1, 0]
            return _score(self.kind, tp, fp, fn)
        tp, fp, fn = np.diag(C), C.sum(axis=0) - np.diag(C), C.sum(axis=1) - np.diag(C)
        if average == "micro":
            return _score(self.kind, tp.sum(), fp.sum(), fn.sum())
        scores = np.array([_score(self.kind, a, b, c) for a, b, c in zip(tp, fp, fn)])
        support = C.sum(axis=1)
        present = (tp + fp + fn) > 0  # scikit-learn averages over the labels seen in targets or predictions
        if average == "macro":
            return float(scores[present].mean()) if present.any() else 0.0
        return float((scores * support).sum() / support.sum()) if support.sum() > 0 else 0.0


def _score(kind, tp, fp, fn):
    """Precision tp/(tp+fp), recall tp/(tp+fn), F1 2tp/(2tp+fp+fn); 0 where the denominator is 0 (scikit-learn's
    zero_division default, with its warning left out)."""
    num, den = {"precision": (tp, tp + fp), "recall": (tp, tp + fn), "f1": (2 * tp, 2 * tp + fp + fn)}[kind]
    return float(num / den) if den > 0 else 0.0


class Precision(_FromConfusion):
    """tp / (tp + fp) from the epoch's weighted confusion matrix; ``average`` as in scikit-learn."""

    kind = "precision"


class Recall(_FromConfusion):
    """tp / (tp + fn) from the epoch's weighted confusion matrix; ``average`` as in scikit-learn."""

    kind = "recall"


class F1(_FromConfusion):
    """2tp / (2tp + fp + fn) from the epoch's weighted confusion matrix; ``average`` as in scikit-learn."""

    kind = "f1"


# -- R² ------------------------------------------------------------------------------------------------
class R2(Metric):
    """The coefficient of determination per output, averaged: 1 − Σw(y − ŷ)² / Σw(y − ȳ)², ȳ the weighted mean;
    from the per-output sums [Σw, Σw·y, Σw·y², Σw·(y − ŷ)²] (4×K on the device)."""

    name = "r2"

    def shape(self, k):
        return (4, k)

    def __call__(self, out, T, loss, w=None):
        xp = namespace_of(out)
        pred, T = loss.predict(out), _rows(out, T)
        wc = xp.ones((out.shape[0], 1), dtype=out.dtype, device=device_of(out)) if w is None else w[:, None]
        ones = xp.ones_like(T)
        return xp.stack([xp.sum(wc * ones, axis=0), xp.sum(wc * T, axis=0), xp.sum(wc * T * T, axis=0),
                         xp.sum(wc * (T - pred) ** 2, axis=0)])

    def value(self, total, n):
        """See :meth:`Metric.value`."""
        sw, swy, swy2, sse = np.asarray(total, dtype=np.float64)
        sst = swy2 - swy * swy / np.where(sw > 0, sw, 1.0)
        scale = np.maximum(np.abs(swy2), 1.0)
        constant = sst <= 1e-12 * scale  # no spread in the targets (round-off of the moments aside)
        r2 = np.where(constant, np.where(sse <= 1e-12 * scale, 1.0, 0.0), 1.0 - sse / np.where(constant, 1.0, sst))
        return float(r2.mean())


# -- ROC AUC ------------------------------------------------------------------------------------------------
class AUC(Metric):
    """ROC AUC: binary (the score of class 1: the logit of a one-output model, or the positive class's
    probability), or one-vs-rest over K classes' probabilities averaged (``average="macro"``, or ``"weighted"`` by the weighted class counts).  Each batch
    keeps [scores, one-hot targets, w] on the device; the epoch joins them and computes on the host."""

    collect = True

    def __init__(self, average="macro") -> None:
        if average not in ("macro", "weighted"):
            raise ValueError(f"auc: average must be 'macro' or 'weighted', got {average!r}")
        self.average = average
        self.name = "auc" if average == "macro" else "auc_weighted"

    def shape(self, k):
        return (0, 2 * max(k, 2) + 1)

    def __call__(self, out, T, loss, w=None):
        xp = namespace_of(out)
        true, _, k = _labels(out, T, loss)
        dev = device_of(out)
        # K classes: the probabilities (one-vs-rest ranks each column of softmax, not of the logits); one output:
        # the logit itself (σ is monotone, and ranks are all AUC sees)
        scores = loss.predict(out) if out.shape[1] > 1 else xp.concat([-out, out], axis=1)
        onehot = _one_hot(xp, true, k, out.dtype, dev)
        wc = xp.ones((out.shape[0], 1), dtype=out.dtype, device=dev) if w is None else w[:, None]
        return xp.concat([scores, onehot, wc], axis=1)

    def value(self, total, n):
        """See :meth:`Metric.value`."""
        rows = np.asarray(total, dtype=np.float64)
        k = (rows.shape[1] - 1) // 2
        scores, onehot, w = rows[:, :k], rows[:, k:2 * k], rows[:, -1]
        if k == 2:
            return _binary_auc(onehot[:, 1], scores[:, 1], w)
        aucs = np.array([_binary_auc(onehot[:, c], scores[:, c], w) for c in range(k)])
        if self.average == "macro":
            return float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")
        support = (onehot * w[:, None]).sum(axis=0)
        ok = ~np.isnan(aucs)
        return float((aucs[ok] * support[ok]).sum() / support[ok].sum()) if ok.any() else float("nan")


def _binary_auc(y, s, w):
    """The area under the weighted ROC curve of scores ``s`` for labels ``y`` ∈ {0, 1} (trapezoids; tied scores
    form one step, i.e. count half), NaN when one class is absent."""
    order = np.argsort(-s, kind="mergesort")
    y, s, w = y[order], s[order], w[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]  # the last index of each run of equal scores
    tps = np.cumsum(y * w)[distinct]
    fps = np.cumsum((1.0 - y) * w)[distinct]
    if tps.size == 0 or tps[-1] <= 0 or fps[-1] <= 0:
        return float("nan")
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


# -- a user's function -------------------------------------------------------------------------------------
class UserMetric(Metric):
    """``fn(out, T, w) -> value`` of yours: the batch's (weighted) mean on the device; the epoch's value is the
    batches' values weighted by their Σw (B without weights) — exact for any per-example mean."""

    def __init__(self, fn, name=None) -> None:
        self.fn, self.name = fn, name or getattr(fn, "__name__", "metric")

    def __call__(self, out, T, loss, w=None):
        xp = namespace_of(out)
        value = xp.asarray(self.fn(out, T, w))
        if value.ndim != 0:
            raise ValueError(f"metric {self.name!r} must return one number for the batch (a 0-d array), "
                             f"got shape {tuple(value.shape)}")
        return value * batch_weight(out, w)


METRICS = {"accuracy": lambda: Mean("accuracy", accuracy), "mse": lambda: Mean("mse", mse),
           "mae": lambda: Mean("mae", mae), "top_k_accuracy": TopKAccuracy, "precision": Precision,
           "recall": Recall, "f1": F1, "r2": R2, "auc": AUC, "auc_weighted": lambda: AUC("weighted")}
_ALIASES = {"acc": "accuracy"}


def _metric(spec):
    if isinstance(spec, Metric):
        return spec
    if callable(spec) and not isinstance(spec, str):
        return UserMetric(spec)
    key = spec.lower() if isinstance(spec, str) else spec
    key = _ALIASES.get(key, key)
    if key in METRICS:
        return METRICS[key]()
    m = re.fullmatch(r"top_(\d+)_accuracy", key) if isinstance(key, str) else None
    if m:
        return TopKAccuracy(int(m.group(1)))
    m = re.fullmatch(r"(precision|recall|f1)_(binary|macro|micro|weighted)", key) if isinstance(key, str) else None
    if m:
        return {"precision": Precision, "recall": Recall, "f1": F1}[m.group(1)](m.group(2))
    raise ValueError(f"unknown metric {spec!r}: expected one of {', '.join(repr(k) for k in METRICS)}, "
                     "'top_3_accuracy', 'f1_macro' (precision/recall/f1 with _binary, _macro, _micro, _weighted), "
                     "a Metric, or a function (out, T, w) -> value")


class OutputMetric(Metric):
    """A metric of one output of a model of several (its rows, targets, loss and weights picked from the lists the
    model gives): logged as ``"{output}_{metric}"``."""

    def __init__(self, k, output, metric, width=None) -> None:
        self.k, self.metric, self.width = k, metric, width
        self.name, self.collect = f"{output}_{metric.name}", metric.collect

    def __call__(self, outs, Ts, loss, w=None):
        from .losses import as_rows

        k = self.k
        wk = w[k] if isinstance(w, list) else w
        rows, T, wr = as_rows(outs[k], Ts[k], wk, getattr(loss.losses[k], "keeps_labels", True))
        return self.metric(rows, T, loss.losses[k]) if wr is None else self.metric(rows, T, loss.losses[k], wr)

    def shape(self, k):
        return self.metric.shape(self.width if self.width is not None else k)

    def value(self, total, n):
        return self.metric.value(total, n)


class OutputLoss(Metric):
    """One output's loss L_k as a metric of a model of several outputs (logged as ``"{output}_loss"``): the batch's
    mean L_k times its weight, summed, over the epoch's weight."""

    def __init__(self, k, output) -> None:
        self.k, self.name = k, f"{output}_loss"

    def __call__(self, outs, Ts, loss, w=None):
        k = self.k
        wk = w[k] if isinstance(w, list) else w
        parts = loss.parts_of(outs)  # the step scored these outputs already
        value = parts[k] if parts is not None else \
            loss.losses[k].value(outs[k], Ts[k]) if wk is None else loss.losses[k].value(outs[k], Ts[k], wk)
        return value * batch_weight(outs[k], wk)


def get_metrics(metrics: Any, loss: Any) -> list[tuple[str, Metric]]:
    """``[(name, metric)]`` for a list of names, :class:`Metric` objects or functions; ``None`` means accuracy
    for classification losses, else none.  For a model of several outputs (``loss`` an
    :class:`nnkit.losses.OutputsLoss`): each output's loss, then its metrics — ``metrics`` a dict by output name,
    or one list for every output; None: accuracy for each classification output."""
    if hasattr(loss, "losses"):
        return _output_metrics(metrics, loss)
    if metrics is None:
        metrics = ["accuracy"] if loss.name in ("cross_entropy", "binary_cross_entropy") else []
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    out: list[tuple[str, Metric]] = []
    for spec in metrics:
        metric = _metric(spec)
        if metric.name not in dict(out):
            out.append((metric.name, metric))
    return out


def _output_metrics(metrics, loss):
    names = loss.names
    if isinstance(metrics, dict):
        unknown = [k for k in metrics if k not in names]
        if unknown:
            raise ValueError(f"metrics for unknown output(s) {', '.join(map(repr, unknown))}: the model's are "
                             f"{', '.join(map(repr, names))}")
    out: list[tuple[str, Metric]] = [(f"{n}_loss", OutputLoss(k, n)) for k, n in enumerate(names)]
    for k, (name, lk) in enumerate(zip(names, loss.losses)):
        spec = metrics.get(name) if isinstance(metrics, dict) else metrics
        width = None if loss.widths is None else loss.widths[k]
        for _, metric in get_metrics(spec, lk):
            m = OutputMetric(k, name, metric, width)
            out.append((m.name, m))
    return out


# -- the epoch's sums: added on the device, read once ----------------------------------------------------------
def batch_weight(out, w=None):
    """The weight of a batch's mean — the one place it is computed: the N rows of ``out`` (N, K) (examples, or
    the positions of a per-position output), a Python number, or Σ w of the rows' weights ``w`` (N,) (a padding
    mask's zeros leave its positions out), a 0-d device array.  No host read, no tensor made inside a step."""
    if isinstance(out, list):  # several outputs: their rows (examples) are the first output's
        out, w = out[0], (w[0] if isinstance(w, list) else w)
    return float(out.shape[0]) if w is None else namespace_of(w).sum(w)


class BatchStats:
    """The sums an epoch's logs are made of, kept on the device and read once: ``weight`` Σw (:func:`batch_weight`
    summed over the batches), ``loss`` Σ w·L (each batch's mean loss times its weight) and, per metric, its
    statistics (summed; a ``collect`` metric's kept in a list and joined at the read).  Built from a batch
    (:meth:`of_batch`) or empty (:meth:`zeros`), added with ``+``, read with :func:`read_stats`; the logs are
    then ``loss / weight`` and each ``metric.value(total, weight)`` (:meth:`logs`)."""

    __slots__ = ("weight", "loss", "metrics", "collect")

    def __init__(self, weight, loss, metrics, collect):
        self.weight, self.loss, self.metrics, self.collect = weight, loss, list(metrics), tuple(collect)

    @classmethod
    def of_batch(cls, out, T, value, loss, metric_fns, w=None):
        """A batch's statistics: rows ``out`` (N, K), targets ``T``, its 0-d mean loss ``value`` and the rows'
        weights ``w`` (N,) or None (:func:`nnkit.losses.as_rows` gives all four)."""
        weight = batch_weight(out, w)
        stats = [fn(out, T, loss) if w is None else fn(out, T, loss, w) for _, fn in metric_fns]
        collect = [m.collect for _, m in metric_fns]
        return cls(weight, value * weight, [[a] if c else a for a, c in zip(stats, collect)], collect)

    @classmethod
    def zeros(cls, be, metric_fns, k):
        """No rows yet (a rank or a validation part without any), for a model of ``k`` outputs."""
        def zero(shape):
            return be.xp.zeros(shape, dtype=be.dtype, device=be.device)

        collect = [m.collect for _, m in metric_fns]
        return cls(0.0, zero(()), [[zero(m.shape(k))] if m.collect else zero(m.shape(k)) for _, m in metric_fns],
                   collect)

    def __add__(self, other):
        """Two parts' sums together: numbers and arrays added, collected lists joined."""
        if other is None:
            return self
        return BatchStats(self.weight + other.weight, self.loss + other.loss,
                          [a + b for a, b in zip(self.metrics, other.metrics)], self.collect)

    __radd__ = __add__  # None + stats

    def as_tuple(self):
        """(weight, loss, metrics): the arrays alone (what a compiled step returns); :meth:`from_tuple` undoes it."""
        return self.weight, self.loss, self.metrics

    @classmethod
    def from_tuple(cls, parts, metric_fns):
        weight, loss, metrics = parts
        return cls(weight, loss, metrics, [m.collect for _, m in metric_fns])

    def logs(self, metric_fns, prefix=""):
        """``{"loss": Σw·L / Σw, metric: value}`` of host sums (:func:`read_stats`) as Python floats."""
        total = float(self.weight)
        logs = {f"{prefix}loss": float(self.loss) / total}
        for (name, metric), value in zip(metric_fns, self.metrics):
            logs[prefix + name] = metric.value(value, total)
        return logs


def read_stats(be, stats, extra=(), reduce=None):
    """One device → host read of several :class:`BatchStats` and ``extra`` 0-d arrays: ``(host stats, host
    extras)``, float64.  ``reduce`` (a communicator's all-reduce) sums the joined vector across ranks first.
    A weight that is still a Python number (rows counted, no weights) stays on the host, exact, unless it must
    be summed across ranks."""
    xp = be.xp
    arrays, on_host = [], []
    for st in stats:
        host_weight = isinstance(st.weight, float) and reduce is None
        on_host.append(host_weight)
        weight = [] if host_weight else [xp.asarray(st.weight, dtype=be.dtype, device=be.device)
                                         if isinstance(st.weight, float) else st.weight]
        arrays += weight + [st.loss] + list(st.metrics)
    arrays += list(extra)
    joined = [xp.concat(a, axis=0) if isinstance(a, list) else a for a in arrays]
    shapes = [tuple(a.shape) for a in joined]
    flat = xp.concat([xp.reshape(xp.astype(a, be.dtype), (-1,)) for a in joined])
    if reduce is not None:
        flat = reduce(flat)
    flat = np.asarray(be.to_numpy(flat), dtype=np.float64)
    host, at = [], 0
    for shape in shapes:
        size = int(np.prod(shape)) if shape else 1
        host.append(flat[at:at + size].reshape(shape))
        at += size
    out, at = [], 0
    for st, host_weight in zip(stats, on_host):
        n = 1 + len(st.metrics) + (0 if host_weight else 1)
        parts = host[at:at + n]
        weight = st.weight if host_weight else parts.pop(0)
        out.append(BatchStats(weight, parts[0], parts[1:], st.collect))
        at += n
    return out, host[at:]


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None,
                     sample_weight: Any = None, labels: Any = None) -> np.ndarray:
    """The K×K confusion matrix ``C[i, j] = Σ w·[true = i]·[predicted = j]`` (arrays of any library, copied to the host
    once; a NumPy array), as scikit-learn's ``confusion_matrix``: integer counts (int64) without weights, weighted
    sums (float64) with them.  Labels are integers 0..K−1 (K = ``num_classes``, default the largest label + 1), or
    class names — ``labels`` the names in row order (default: the model's classes when you pass them, else the
    sorted names seen), a name not among them an error.  For a model's predictions of (X, y):
    ``confusion_matrix(y, model.predict_labels(X), labels=model.preprocessing.classes)``; ``fit`` and
    ``evaluate`` sum the same matrix on the device for precision, recall and F1."""
    from .backends import host_copy

    true, pred = np.asarray(host_copy(y_true)).ravel(), np.asarray(host_copy(y_pred)).ravel()
    if labels is not None or true.dtype.kind in "OUS" or pred.dtype.kind in "OUS":
        names = [str(c) for c in (labels if labels is not None else sorted({str(v) for v in true.tolist() + pred.tolist()}))]
        index = {n: i for i, n in enumerate(names)}
        for what, a in (("y_true", true), ("y_pred", pred)):
            unknown = next((v for v in a.tolist() if str(v) not in index), None)
            if unknown is not None:
                raise ValueError(f"{what} holds {unknown!r}, which is not among the labels {names}")
        true = np.array([index[str(v)] for v in true.tolist()], dtype=np.int64)
        pred = np.array([index[str(v)] for v in pred.tolist()], dtype=np.int64)
        num_classes = len(names) if num_classes is None else num_classes
    true, pred = true.astype(np.int64), pred.astype(np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {true.size} and {pred.size}")
    if true.size and (true.min() < 0 or pred.min() < 0):
        raise ValueError("labels must be non-negative integers")
    k = int(num_classes) if num_classes is not None else (int(max(true.max(), pred.max())) + 1 if true.size else 0)
    if true.size and max(true.max(), pred.max()) >= k:
        raise ValueError(f"a label is >= num_classes={k}")
    if sample_weight is None:
        C = np.zeros((k, k), dtype=np.int64)
        np.add.at(C, (true, pred), 1)
        return C
    w = np.asarray(host_copy(sample_weight), dtype=np.float64).ravel()
    if w.shape != true.shape:
        raise ValueError(f"sample_weight must have one weight per label ({true.size}), got {w.size}")
    Cw = np.zeros((k, k))
    np.add.at(Cw, (true, pred), w)
    return Cw
