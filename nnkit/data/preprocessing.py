"""What a model needs to read raw table rows: feature names, missing-value fills, scaling, class names.

A :class:`Preprocessing` is fitted on the *training* rows only and saved with the model (in
``model.info``, as JSON), so ``nnkit predict``, :meth:`nnkit.Sequential.predict_labels` and a model
loaded in another process apply exactly what training applied:

1. columns are selected **by name** (a file with the same columns in another order gives the same
   predictions; missing or unknown columns are an error that lists them);
2. missing values (NaN) are filled with the training part's per-column ``mean``, ``median`` or
   ``most_frequent`` value — or, without imputation, refused with the column and the first row;
3. numeric features are standardised with the training part's mean and standard deviation;
4. a text column is encoded as categories, one-hot (the categories are the training part's values, sorted;
   after the numeric columns, one block of columns each, in the order of the text columns) — a category not
   seen in training is an error naming it and its row, or an all-zero block with ``handle_unknown="ignore"``,
   as scikit-learn's ``OneHotEncoder``;
5. the network's outputs map back to the class names it was trained on.
"""
from __future__ import annotations

import numpy as np

from ..backends.functional import namespace_of, sigmoid, softmax

__all__ = ["Preprocessing", "IMPUTE", "predict_labels"]

IMPUTE = ("mean", "median", "most_frequent")
HANDLE_UNKNOWN = ("error", "ignore")
MAX_CATEGORIES = 1000  # a text column with more distinct values is an identifier, not a category (fit's max_categories)


class MissingValueError(ValueError):
    """A missing value (NaN) where the preprocessing has no fill: ``row`` (0-based) and ``column`` (its name)
    say where; the message names the Python fix, and the command line words its own (``--impute``)."""

    def __init__(self, message, row, column):
        super().__init__(message)
        self.row, self.column = row, column


class UnknownCategoryError(ValueError):
    """A text cell whose category was not seen in training: ``row`` (0-based), ``column`` (its name), ``value``
    and ``known`` (the categories, as text) say what and where."""

    def __init__(self, message, row, column, value, known):
        super().__init__(message)
        self.row, self.column, self.value, self.known = row, column, value, known


class Preprocessing:
    """Column names, fills, scaling, categories and classes of a model trained on a table (see the module
    docstring).

    Build with :meth:`fit`; attach with ``model.preprocessing = pre``.  ``categories[j]`` is the sorted list of
    column j's categories when it is a text column, else None; ``n_columns`` counts the raw columns and
    ``n_features`` the network's inputs (the numeric columns and one per category).
    """

    def __init__(self, feature_names=None, mean=None, std=None, fill=None, impute=None, classes=None,
                 task="classification", label=None, categories=None, category_fill=None,
                 handle_unknown="error") -> None:
        self.feature_names = None if feature_names is None else [str(n) for n in feature_names]
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)
        self.fill = None if fill is None else np.asarray(fill, dtype=np.float64)
        self.impute, self.classes, self.task, self.label = impute, classes, task, label
        self.categories = None if categories is None or all(c is None for c in categories) else \
            [None if c is None else [str(v) for v in c] for c in categories]
        self.category_fill = None if category_fill is None or self.categories is None else \
            [None if v is None else str(v) for v in category_fill]
        self.handle_unknown = handle_unknown
        if impute is not None and impute not in IMPUTE:
            raise ValueError(f"impute must be one of {', '.join(IMPUTE)} or None, got {impute!r}")
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if handle_unknown not in HANDLE_UNKNOWN:
            raise ValueError(f"handle_unknown must be 'error' or 'ignore', got {handle_unknown!r}")
        widths = {len(a) for a in (self.feature_names, self.mean, self.std, self.fill, self.categories,
                                   self.category_fill) if a is not None}
        if len(widths) > 1:
            raise ValueError("feature names, means, deviations, fills and categories disagree on the number of "
                             f"columns: {sorted(widths)}")
        for j, cats in enumerate(self.categories or ()):
            if cats is not None and (not cats or len(set(cats)) != len(cats)):
                raise ValueError(f"the categories of column {self._name(j)} must be distinct and at least one")

    @property
    def n_columns(self):
        """The number of raw feature columns (None when unknown)."""
        for a in (self.feature_names, self.mean, self.fill, self.categories):
            if a is not None:
                return len(a)
        return None

    @property
    def n_features(self):
        """The number of the network's inputs: a numeric column gives one, a text column one per category."""
        if self.categories is None:
            return self.n_columns
        return sum(1 if c is None else len(c) for c in self.categories)

    @property
    def imputes(self):
        """Whether a missing value is filled (a numeric fill or a text column's most frequent category)."""
        return self.fill is not None or self.category_fill is not None

    @property
    def text_columns(self):
        """The indices of the text (categorical) columns, in order."""
        return [j for j, c in enumerate(self.categories or ()) if c is not None]

    def encoded_names(self):
        """The network's input names: the numeric columns, then ``column=category`` for each text column."""
        names = self.feature_names or [f"x{j}" for j in range(self.n_columns or 0)]
        cats = self.categories or [None] * len(names)
        return [n for n, c in zip(names, cats) if c is None] + \
            [f"{n}={v}" for n, c in zip(names, cats) if c is not None for v in c]

    @classmethod
    def fit(cls, X, feature_names=None, impute=None, scale=True, classes=None, task="classification", label=None,
            rows=None, chunk=None, categorical=None, handle_unknown="error", max_categories=MAX_CATEGORIES):
        """Fit on the training rows ``X`` (n, d) (NaN marks a missing value): an array, a Table (its column
        names, label column and class names are taken) or a pandas DataFrame (its column names are the feature
        names; a ``label`` column among them is left out).

        A column of text (every value a string, as :func:`nnkit.datasets.load_csv` reads a column holding no
        number) — or one named in ``categorical`` (names or indices: integer codes, say) — becomes categories,
        one-hot encoded; more than ``max_categories`` distinct values is refused (an identifier, not a category).
        ``handle_unknown="ignore"`` encodes a category not seen here as an all-zero block instead of an error.
        A missing text cell is imputed with the column's most frequent category when ``impute`` is given.

        ``rows`` (default: all) fits on the first ``rows`` rows only; ``chunk`` reads them ``chunk`` rows at a
        time (two passes in float64: the means, then the deviations), so a memory-mapped file far larger than
        memory is scaled without being loaded — then NaN and infinity are refused (imputing needs every
        value in memory)."""
        if classes is None and task == "classification" and getattr(X, "classes", None) is not None:
            classes = [c.item() if isinstance(c, np.generic) else c for c in X.classes]  # a Table's class names
        if label is None:
            label = getattr(X, "label_name", None)
        X, names = _table_parts(X, label)
        if feature_names is None:
            feature_names = names
        n = X.shape[0] if rows is None else int(rows)
        if chunk is not None:
            if impute is not None or categorical:
                raise ValueError("impute and text columns need the training rows in memory: fit without chunk=")
            return cls._fit_chunked(X, n, int(chunk), feature_names, scale, classes, task, label)
        X = np.asarray(X[:n])
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (rows, features), got shape {X.shape}")
        text = _text_columns(X, feature_names, categorical)
        pre = cls(feature_names, impute=impute, classes=classes, task=task, label=label,
                  handle_unknown=handle_unknown)
        if text:
            pre._fit_categories(X, text, impute, max_categories)
        X = pre._numbers(X)
        if np.isinf(X).any():
            row, col = (int(i) for i in np.argwhere(np.isinf(X))[0])
            raise ValueError(f"X contains infinity, first at row {row}, column {col}: only NaN marks a missing value")
        if impute is not None:
            pre.fill = np.array([0.0 if j in text else _fill_value(X[:, j], impute) for j in range(X.shape[1])])
            empty = [pre._name(j) for j in range(X.shape[1]) if np.isnan(pre.fill[j])]
            if empty:
                raise ValueError(f"column(s) {', '.join(empty)} hold no value at all in the training rows: "
                                 "nothing to impute from")
        X = pre._filled(X)
        if scale:
            pre.mean, pre.std = X.mean(axis=0), X.std(axis=0)
            pre.std[pre.std == 0] = 1.0
            if text:
                pre.mean[text], pre.std[text] = 0.0, 1.0
        return pre

    def _fit_categories(self, X, text, impute, max_categories):
        """The sorted categories of each text column of the training rows (and, with ``impute``, its most
        frequent category for a missing cell)."""
        d = X.shape[1]
        self.categories, self.category_fill = [None] * d, [None] * d
        for j in text:
            keys = [_key(v) for v in X[:, j]]
            present = [k for k in keys if k is not None]
            values, counts = np.unique(np.asarray(present, dtype=object).astype(str), return_counts=True) \
                if present else (np.array([]), np.array([]))
            if not present:
                raise ValueError(f"text column {self._name(j)} holds no value at all in the training rows")
            if len(values) > max_categories:
                raise ValueError(f"text column {self._name(j)} holds {len(values)} distinct values, more than "
                                 f"max_categories={max_categories}: an identifier rather than a category? Drop the "
                                 "column, or raise max_categories")
            self.categories[j] = [str(v) for v in values]
            if impute is not None:
                self.category_fill[j] = str(values[int(np.argmax(counts))])  # the first of the most frequent
        if impute is None:
            self.category_fill = None

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
        """The raw columns in training order, from a Table, a pandas DataFrame or an array: float64 (n, d), or,
        for a preprocessing with text columns, an object array of the raw cells."""
        X, names = _table_parts(data, self.label if self.feature_names is None or self.label not in
                                self.feature_names else None)
        X = np.asarray(X)
        if self.categories is None:
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
        if self.n_columns is not None and X.shape[1] != self.n_columns:
            raise ValueError(f"the data has {X.shape[1]} feature columns, but the model expects {self.n_columns}"
                             + (f" ({', '.join(self.feature_names)})" if self.feature_names else ""))
        return X

    def _not_numbers(self, X, names, exc):
        """The message for features that are not numbers: the first such column by name, and the fix."""
        arr = np.asarray(X, dtype=object)
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
                f"line --label {names[col]}); if it holds categories, fit the preprocessing on rows that hold them "
                "(it encodes a text column one-hot)") if col is not None and names is not None else \
            "; drop the label column, or name it with Preprocessing.fit(..., label=...)"
        return f"the features must be numbers:{where or ''} holds text ({exc}){hint}"

    def transform(self, data):
        """Rows ready for the network: selected by name, filled, standardised, text one-hot (float64 NumPy)."""
        raw = self.columns(data)
        X = self._filled(self._numbers(raw))
        if np.isinf(X).any():
            j = int(np.argwhere(np.isinf(X))[0][1])
            raise ValueError(f"column {self._name(j)} holds infinity")
        if self.mean is not None:
            X = (X - self.mean) / self.std
        if self.categories is None:
            return X
        text = self.text_columns
        numeric = [j for j in range(X.shape[1]) if j not in text]
        return np.concatenate([X[:, numeric]] + [self._one_hot(raw[:, j], j) for j in text], axis=1)

    def _numbers(self, X):
        """The numeric columns of raw rows as float64 (n, d); a text column's place holds 0.  A cell of a numeric
        column that is not a number is a ValueError naming its column and row."""
        if self.categories is None and X.dtype != object:
            return np.asarray(X, dtype=np.float64)
        out = np.zeros(X.shape, dtype=np.float64)
        text = set(self.text_columns)
        for j in range(X.shape[1]):
            if j in text:
                continue
            try:
                out[:, j] = X[:, j].astype(np.float64)
            except (TypeError, ValueError):
                for i, v in enumerate(X[:, j]):
                    try:
                        float(np.nan if v is None else v)
                    except (TypeError, ValueError):
                        raise ValueError(f"column {self._name(j)}, row {i + 1}: {str(v)[:40]!r} is not a number "
                                         "(a column of numbers; a column of categories holds only text, or is "
                                         "named in Preprocessing.fit(..., categorical=[...]))") from None
        return out

    def _one_hot(self, cells, j):
        """Column j's cells as its one-hot block (n, K) float64: a category not seen in training is an error naming
        it and its row, or all zeros (``handle_unknown="ignore"``); a missing cell takes the imputed category."""
        cats = self.categories[j]
        index = {c: k for k, c in enumerate(cats)}
        fill = self.category_fill[j] if self.category_fill is not None else None
        out = np.zeros((len(cells), len(cats)), dtype=np.float64)
        for i, v in enumerate(cells):
            key = _key(v)
            if key is None:
                if fill is None:
                    raise MissingValueError(f"column {self._name(j)} has a missing value in row {i + 1}: fill it in, "
                                            "or impute from the training rows: Preprocessing.fit(X_train, "
                                            "impute='most_frequent')", i, self._name(j))
                key = fill
            k = index.get(key)
            if k is not None:
                out[i, k] = 1.0
            elif self.handle_unknown == "error":
                shown = ", ".join(cats[:10]) + (f", … ({len(cats)} in all)" if len(cats) > 10 else "")
                raise UnknownCategoryError(f"column {self._name(j)}, row {i + 1}: {key[:40]!r} is not a category "
                                           f"seen in training ({shown}); encode unseen categories as zeros with "
                                           "Preprocessing.fit(..., handle_unknown='ignore')", i, self._name(j), key,
                                           shown)
        return out

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
                "fill": as_list(self.fill), "impute": self.impute, "categories": self.categories,
                "category_fill": self.category_fill,
                "handle_unknown": None if self.categories is None else self.handle_unknown}

    @classmethod
    def from_info(cls, info):
        """The preprocessing saved in ``model.info`` (None when there is none)."""
        if not isinstance(info, dict) or not any(info.get(k) is not None for k in INFO_MARKS):
            return None
        try:
            return cls(info.get("feature_names"), info.get("mean"), info.get("std"), info.get("fill"),
                       info.get("impute"), info.get("classes"), info.get("task", "classification"), info.get("label"),
                       _checked_categories(info.get("categories")), info.get("category_fill"),
                       info.get("handle_unknown") or "error")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the model's saved preprocessing is damaged ({exc})") from None

    def __repr__(self):
        text = f", {len(self.text_columns)} text columns" if self.categories else ""
        return (f"Preprocessing({self.n_features} features{text}, impute={self.impute!r}, "
                f"scaled={self.mean is not None}, classes={self.classes!r})")


INFO_KEYS = ("task", "classes", "feature_names", "label", "mean", "std", "fill", "impute", "categories",
             "category_fill", "handle_unknown")  # what to_info writes into model.info
INFO_MARKS = ("feature_names", "mean", "fill", "classes", "categories")  # any of them set: a preprocessing is saved


def _checked_categories(cats):
    """Saved categories as read from a file: a list of None or lists of strings (else ValueError)."""
    if cats is None:
        return None
    if not isinstance(cats, list) or not all(c is None or (isinstance(c, list) and all(isinstance(v, str) for v in c))
                                             for c in cats):
        raise ValueError("categories must be a list of None or lists of strings")
    return cats


def _table_parts(data, label=None):
    """(X, column names or None) of a Table, a pandas DataFrame or an array; a column named ``label`` left out."""
    names = getattr(data, "feature_names", None)
    X = getattr(data, "X", None)
    if X is None and hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a DataFrame
        names, X = [str(c) for c in data.columns], data.to_numpy()
    if X is None:
        X = data
    if names is not None and label is not None and label in names:
        keep = [j for j, n in enumerate(names) if n != label]  # the label column: not a feature
        names = [names[j] for j in keep]
        X = np.asarray(X)[:, keep]
    return X, names


def _key(v):
    """A cell of a text column as its category (a stripped string), or None for a missing cell (None, NaN, '')."""
    if v is None:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if v != v else str(v)
    v = str(v).strip()
    return v or None


def _text_columns(X, names, categorical):
    """The indices of the text columns of raw rows: every present cell a string, or named in ``categorical``."""
    d = X.shape[1]
    forced = set()
    for c in categorical or ():
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and -d <= c < d:
            forced.add(int(c) % d)
        elif names is not None and str(c) in names:
            forced.add(list(names).index(str(c)))
        else:
            raise ValueError(f"categorical: no column {c!r}; the columns are "
                             f"{', '.join(map(str, names)) if names is not None else f'0..{d - 1}'}")
    if X.dtype != object and X.dtype.kind not in "US":
        return sorted(forced)
    text = set(forced)
    for j in range(d):
        present = [v for v in X[:, j] if _key(v) is not None]
        if present and all(isinstance(v, (str, np.str_)) for v in present):
            text.add(j)
    return sorted(text)


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
