"""What a model needs to read raw table rows: feature names, missing-value fills, scaling, class names.

A :class:`Preprocessing` is fitted on the *training* rows only and saved with the model (in
``model.info``, as JSON), so ``nnkit predict``, :meth:`nnkit.Sequential.predict_labels` and a model
loaded in another process apply exactly what training applied:

1. columns are selected **by name** (a file with the same columns in another order gives the same
   predictions; missing or unknown columns are an error that lists them);
2. missing values (NaN) are filled with the training part's per-column ``mean``, ``median`` or
   ``most_frequent`` value — or, without imputation, refused with the column and the first row;
3. features are standardised with the training part's mean and standard deviation;
4. the network's outputs map back to the class names it was trained on.
"""
from __future__ import annotations

import numpy as np

from ..backends.functional import namespace_of, sigmoid, softmax

__all__ = ["Preprocessing", "IMPUTE", "predict_labels"]

IMPUTE = ("mean", "median", "most_frequent")


class MissingValueError(ValueError):
    """A missing value (NaN) where the preprocessing has no fill: ``row`` (0-based) and ``column`` (its name)
    say where; the message names the Python fix, and the command line words its own (``--impute``)."""

    def __init__(self, message, row, column):
        super().__init__(message)
        self.row, self.column = row, column


class Preprocessing:
    """Column names, fills, scaling and classes of a model trained on a table (see the module docstring).

    Build with :meth:`fit`; attach with ``model.preprocessing = pre``.
    """

    def __init__(self, feature_names=None, mean=None, std=None, fill=None, impute=None, classes=None,
                 task="classification", label=None) -> None:
        self.feature_names = None if feature_names is None else [str(n) for n in feature_names]
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)
        self.fill = None if fill is None else np.asarray(fill, dtype=np.float64)
        self.impute, self.classes, self.task, self.label = impute, classes, task, label
        if impute is not None and impute not in IMPUTE:
            raise ValueError(f"impute must be one of {', '.join(IMPUTE)} or None, got {impute!r}")
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        widths = {len(a) for a in (self.feature_names, self.mean, self.std, self.fill) if a is not None}
        if len(widths) > 1:
            raise ValueError(f"feature names, means, deviations and fills disagree on the number of features: {widths}")

    @property
    def n_features(self):
        for a in (self.feature_names, self.mean, self.fill):
            if a is not None:
                return len(a)
        return None

    @classmethod
    def fit(cls, X, feature_names=None, impute=None, scale=True, classes=None, task="classification", label=None,
            rows=None, chunk=None):
        """Fit on the training rows ``X`` (n, d) (NaN marks a missing value).

        ``rows`` (default: all) fits on the first ``rows`` rows only; ``chunk`` reads them ``chunk`` rows at a
        time (two passes in float64: the means, then the deviations), so a memory-mapped file far larger than
        memory is scaled without being loaded — then NaN and infinity are refused (imputing needs every
        value in memory)."""
        n = X.shape[0] if rows is None else int(rows)
        if chunk is not None:
            if impute is not None:
                raise ValueError("impute needs the training rows in memory: fit without chunk=")
            return cls._fit_chunked(X, n, int(chunk), feature_names, scale, classes, task, label)
        X = np.asarray(X[:n], dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (rows, features), got shape {X.shape}")
        if np.isinf(X).any():
            row, col = (int(i) for i in np.argwhere(np.isinf(X))[0])
            raise ValueError(f"X contains infinity, first at row {row}, column {col}: only NaN marks a missing value")
        pre = cls(feature_names, impute=impute, classes=classes, task=task, label=label)
        if impute is not None:
            pre.fill = np.array([_fill_value(X[:, j], impute) for j in range(X.shape[1])])
            empty = [pre._name(j) for j in range(X.shape[1]) if np.isnan(pre.fill[j])]
            if empty:
                raise ValueError(f"column(s) {', '.join(empty)} hold no value at all in the training rows: "
                                 "nothing to impute from")
        X = pre._filled(X)
        if scale:
            pre.mean, pre.std = X.mean(axis=0), X.std(axis=0)
            pre.std[pre.std == 0] = 1.0
        return pre

    @classmethod
    def _fit_chunked(cls, X, n, chunk, feature_names, scale, classes, task, label):
        """:meth:`fit` on rows [0, n) of X read ``chunk`` rows at a time: Σx, then Σ(x − mean)² (float64)."""
        if len(X.shape) != 2 or n < 1 or chunk < 1:
            raise ValueError(f"X must be a non-empty 2-D array (rows, features), got shape {tuple(X.shape)}")
        pre = cls(feature_names, classes=classes, task=task, label=label)
        if not scale:
            return pre

        def blocks():
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                block = np.asarray(X[s:e], dtype=np.float64)
                if not np.all(np.isfinite(block)):
                    raise ValueError(f"rows {s} to {e - 1} of the data hold NaN or infinity")
                yield block

        mean = sum(block.sum(axis=0) for block in blocks()) / n
        std = np.sqrt(sum(((block - mean) ** 2).sum(axis=0) for block in blocks()) / n)
        std[std == 0] = 1.0
        pre.mean, pre.std = mean, std
        return pre

    # -- applying it ----------------------------------------------------------------------------------
    def columns(self, data):
        """(X as float64 (n, d) in training order, source) from a Table, a pandas DataFrame or an array."""
        names = getattr(data, "feature_names", None)
        X = getattr(data, "X", None)
        if X is None and hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a DataFrame
            names, X = [str(c) for c in data.columns], data
        if X is None:
            X = data
        if names is not None and self.label is not None and self.label in names \
                and (self.feature_names is None or self.label not in self.feature_names):
            keep = [j for j, n in enumerate(names) if n != self.label]  # the label column: not a feature
            names = [names[j] for j in keep]
            X = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X)[:, keep]
        try:
            X = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(self._not_numbers(X, names, exc)) from None
        if X.ndim != 2:
            raise ValueError(f"expected rows of features (2-D), got shape {X.shape}")
        if self.feature_names is not None and names is not None and list(names) != self.feature_names:
            names = [str(n) for n in names]
            missing = [n for n in self.feature_names if n not in names]
            unknown = [n for n in names if n not in self.feature_names]
            if missing or unknown:
                parts = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + \
                        ([f"unknown column(s) {', '.join(unknown)}"] if unknown else [])
                raise ValueError(f"the data's columns do not match the model's features: {'; '.join(parts)} "
                                 f"(the model expects {', '.join(self.feature_names)})")
            X = X[:, [names.index(n) for n in self.feature_names]]
        if self.n_features is not None and X.shape[1] != self.n_features:
            raise ValueError(f"the data has {X.shape[1]} feature columns, but the model expects {self.n_features}"
                             + (f" ({', '.join(self.feature_names)})" if self.feature_names else ""))
        return X

    def _not_numbers(self, X, names, exc):
        """The message for features that are not numbers: the first such column by name, and the fix."""
        arr = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X, dtype=object)
        col = None
        if arr.ndim == 2:
            for j in range(arr.shape[1]):
                try:
                    arr[:, j].astype(np.float64)
                except (TypeError, ValueError):
                    col = j
                    break
        where = "" if col is None else \
            f" column {names[col]!r}" if names is not None and col < len(names) else f" column {col}"
        hint = (f"; if{where} is the label, name it: Preprocessing.fit(..., label={names[col]!r}) (or on the command "
                f"line --label {names[col]})") if col is not None and names is not None else \
            "; drop the label column, or name it with Preprocessing.fit(..., label=...)"
        return f"the features must be numbers:{where or ''} holds text ({exc}){hint}"

    def transform(self, data):
        """Rows ready for the network: selected by name, filled, standardised (float64 NumPy)."""
        X = self._filled(self.columns(data))
        if np.isinf(X).any():
            j = int(np.argwhere(np.isinf(X))[0][1])
            raise ValueError(f"column {self._name(j)} holds infinity")
        if self.mean is not None:
            X = (X - self.mean) / self.std
        return X

    def labels(self, out):
        """Class names for network outputs (B, K): arg-max (or the 0.5 threshold of one output)."""
        out = np.asarray(out)
        k = (out[:, 0] > 0).astype(int) if out.shape[1] == 1 else out.argmax(axis=1)
        names = self.classes if self.classes is not None else list(range(max(out.shape[1], 2)))
        return np.asarray(names, dtype=object if any(isinstance(c, str) for c in names) else None)[k]

    def _filled(self, X):
        missing = np.isnan(X)
        if not missing.any():
            return X
        if self.fill is None:
            row, col = (int(i) for i in np.argwhere(missing)[0])
            where = (f"column {self._name(col)} has a missing value in row {row + 1} "
                     f"({int(missing[:, col].sum())} in that column, {int(missing.sum())} in all)")
            raise MissingValueError(f"{where}: fill them in, or impute from the training rows: "
                                    "Preprocessing.fit(X_train, impute='mean'|'median'|'most_frequent')",
                                    row, self._name(col))
        return np.where(missing, self.fill, X)

    def _name(self, j):
        return repr(self.feature_names[j]) if self.feature_names is not None else f"#{j}"

    # -- saving it ------------------------------------------------------------------------------------
    def to_info(self):
        """Plain JSON data for ``model.info``."""
        as_list = lambda a: None if a is None else [float(v) for v in a]  # noqa: E731
        return {"task": self.task, "classes": self.classes, "feature_names": self.feature_names,
                "label": self.label, "mean": as_list(self.mean), "std": as_list(self.std),
                "fill": as_list(self.fill), "impute": self.impute}

    @classmethod
    def from_info(cls, info):
        """The preprocessing saved in ``model.info`` (None when there is none)."""
        if not isinstance(info, dict) or not any(info.get(k) is not None for k in
                                                 ("feature_names", "mean", "fill", "classes")):
            return None
        try:
            return cls(info.get("feature_names"), info.get("mean"), info.get("std"), info.get("fill"),
                       info.get("impute"), info.get("classes"), info.get("task", "classification"), info.get("label"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the model's saved preprocessing is damaged ({exc})") from None

    def __repr__(self):
        return (f"Preprocessing({self.n_features} features, impute={self.impute!r}, "
                f"scaled={self.mean is not None}, classes={self.classes!r})")


def _fill_value(col, strategy):
    present = col[~np.isnan(col)]
    if present.size == 0:
        return np.nan
    if strategy == "mean":
        return float(present.mean())
    if strategy == "median":
        return float(np.median(present))
    values, counts = np.unique(present, return_counts=True)
    return float(values[np.argmax(counts)])  # the smallest of the most frequent values


def predict_labels(model, data, proba=False, batch_size=4096):
    """Predictions of ``model`` for raw rows in one call: a Table, a pandas DataFrame (columns matched by name)
    or an array of raw features, through the model's saved :class:`Preprocessing` (fills, scaling) to class
    names (NumPy), or to values for a regression model.  ``proba=True`` also returns the class
    probabilities (softmax of the outputs, or σ for one output; ``(values, None)`` for regression)."""
    pre = model.preprocessing
    # the raw columns, matched by name (the label column left out); predict fills and scales them as every door does
    X = pre.columns(data) if model.table_preprocessing() is not None else getattr(data, "X", data)
    out = model.backend.to_numpy(model.predict(X, batch_size=batch_size))
    out = np.asarray(out, dtype=np.float64)
    if pre is not None and pre.task == "regression":
        values = out[:, 0] if out.shape[1] == 1 else out
        return (values, None) if proba else values
    if pre is not None:
        labels = pre.labels(out)
    else:
        labels = (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)
    if not proba:
        return labels
    xp = namespace_of(out)
    P = sigmoid(xp, out) if out.shape[1] == 1 else softmax(xp, out, axis=1)
    return labels, (np.concatenate([1.0 - P, P], axis=1) if out.shape[1] == 1 else P)
