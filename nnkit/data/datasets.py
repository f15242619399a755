"""Data to train on: the bundled 8×8 digits, small synthetic problems, and loaders for your own files.

Everything returns NumPy arrays on the host (features float32, class labels int64); a model moves
them to its backend once, in ``fit``.

* :func:`load_digits` — 1,797 handwritten digits (UCI, CC BY 4.0), stored inside nnkit (45 kB).
* :func:`make_spirals`, :func:`make_moons`, :func:`make_xor` — 2-D classification problems that a
  linear model cannot solve, generated from a seed.
* :func:`load_csv`, :func:`load_npz` — your own table with a label column; string labels become
  class indices (the class names are returned too).
* :func:`train_test_split` — a seeded, stratified split.
"""
from __future__ import annotations

import csv
import math
import os
from importlib import resources

import numpy as np

from .files import read_npz
from .checks import check_hyper, check_int

__all__ = ["load_digits", "make_spirals", "make_moons", "make_xor", "load_csv", "load_npz",
           "train_test_split", "Table"]


def train_test_split(X, y, test_size=0.2, seed=0, stratify=True):
    """``(X_train, y_train), (X_test, y_test)``: a seeded split, per class when ``stratify``.

    ⌈test_size · n⌉ rows go to the test part, shared among the classes in proportion to their
    counts (largest remainder; at least one row stays on each side of a class with two or more), so
    class proportions are kept.
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}: they must have the same length")
    test_size = check_hyper("test_size", test_size, low=0.0, high=1.0, low_open=True)
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    if stratify and y.ndim == 1:
        classes, counts = np.unique(y, return_counts=True)
        # ⌈test_size·n⌉ test rows in all (as scikit-learn), shared by largest remainder so each class keeps its share
        quota = test_size * counts
        k = np.floor(quota).astype(int)
        extra = math.ceil(test_size * n) - int(k.sum())
        k[np.argsort(-(quota - k), kind="stable")[:max(extra, 0)]] += 1
        k = np.where(counts >= 2, np.clip(k, 1, counts - 1), k)
        test = []
        for c, kc in zip(classes, k):
            rows = np.flatnonzero(y == c)
            rng.shuffle(rows)
            test.append(rows[:kc])
        test = np.sort(np.concatenate(test))
    else:
        k = min(max(math.ceil(test_size * n), 1), n - 1)
        test = np.sort(rng.permutation(n)[:k])
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    return (X[~mask], y[~mask]), (X[mask], y[mask])


def load_digits(test_size=0.2, seed=0, scale=True, images=False):
    """The 8×8 handwritten digits bundled with nnkit: ``(X_train, y_train), (X_test, y_test)``.

    1,797 images of the digits 0–9 (about 180 each), pixel values 0–16 — the UCI "Optical
    Recognition of Handwritten Digits" test set (Alpaydin & Kaynak, 1998; CC BY 4.0; see
    ``nnkit/data/DIGITS_LICENSE.md``), as scikit-learn ships it.

    * ``X``: float32 (n, 64) — or (n, 8, 8) with ``images=True`` — divided by 16 when ``scale``
      (values in [0, 1]), else the raw 0–16 counts.
    * ``y``: int64 labels 0–9.
    * The split is stratified and fixed by ``seed`` (default 20% test: 1,437 / 360 rows).
    """
    with resources.files("nnkit").joinpath("data/digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as data:
            pixels, labels = data["images"], data["labels"]
    X = pixels.astype(np.float32)
    if scale:
        X /= 16.0
    if not images:
        X = X.reshape(X.shape[0], -1)
    return train_test_split(X, labels.astype(np.int64), test_size=test_size, seed=seed)


# -- synthetic problems --------------------------------------------------------------------------
def make_spirals(n_samples=600, n_classes=3, noise=0.2, turns=1.0, seed=0):
    """Interleaved spiral arms in 2-D, one per class: ``(X (n, 2) float32, y (n,) int64)``.

    Arm k is r·(sin θ, cos θ) with r from 0 to 1 and θ = 2π·turns·r + 2πk/n_classes, plus
    Gaussian noise of ``noise`` radians on θ.  Rows are shuffled.
    """
    n_samples = check_int("n_samples", n_samples, 2)
    n_classes = check_int("n_classes", n_classes, 2)
    rng = np.random.default_rng(seed)
    y = np.arange(n_samples) % n_classes
    r = rng.uniform(0.05, 1.0, n_samples)
    theta = 2 * math.pi * turns * r + 2 * math.pi * y / n_classes + rng.normal(0.0, noise, n_samples)
    X = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    order = rng.permutation(n_samples)
    return X[order].astype(np.float32), y[order].astype(np.int64)


def make_moons(n_samples=500, noise=0.1, seed=0):
    """Two interleaving half circles: ``(X (n, 2) float32, y (n,) int64)`` with labels 0 and 1."""
    n_samples = check_int("n_samples", n_samples, 2)
    rng = np.random.default_rng(seed)
    y = np.arange(n_samples) % 2
    t = rng.uniform(0.0, math.pi, n_samples)
    X = np.where(y[:, None] == 0,
                 np.stack([np.cos(t), np.sin(t)], axis=1),
                 np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1))
    X = X + rng.normal(0.0, noise, X.shape)
    order = rng.permutation(n_samples)
    return X[order].astype(np.float32), y[order].astype(np.int64)


def make_xor(n_samples=400, noise=0.1, seed=0):
    """Four Gaussian blobs at (±1, ±1); the label is 1 where the signs differ (XOR)."""
    n_samples = check_int("n_samples", n_samples, 4)
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_samples, 2))
    X = signs + rng.normal(0.0, noise * 2, (n_samples, 2))
    y = (signs[:, 0] != signs[:, 1]).astype(np.int64)
    return X.astype(np.float32), y


# -- your own files --------------------------------------------------------------------------------
class Table:
    """A loaded data file: features ``X`` (float32; float64 where values exceed float32's range or
    missing values are kept as NaN; an object array when a column holds text), labels ``y``, ``classes`` and
    column names.

    ``y`` holds class indices 0..K−1 (int64) with ``classes[i]`` the original label of class i —
    or float32 targets for regression (``classes`` is None) — or None when the file has no label
    column (for prediction).  Unpacks as ``X, y = table``.
    """

    def __init__(self, X, y, classes, feature_names, label_name, path):
        self.X, self.y, self.classes = X, y, classes
        self.feature_names, self.label_name, self.path = feature_names, label_name, path
        self.header = True  # False for a CSV without a header row: its columns are matched by position

    def __iter__(self):
        return iter((self.X, self.y))

    def __repr__(self):
        kind = ("no labels" if self.y is None else
                f"{len(self.classes)} classes" if self.classes is not None else "regression targets")
        return f"Table({self.path!r}: {self.X.shape[0]} rows × {self.X.shape[1]} features, {kind})"


def _labels(raw, regression, min_classes=2):
    """(y, classes) from a label column: class indices and names, or float targets."""
    raw = np.asarray(raw)
    if regression:
        try:
            return raw.astype(np.float32), None
        except ValueError:
            raise ValueError("regression targets must be numbers") from None
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise ValueError(
                "the label column holds non-integer numbers: for class labels use integers or "
                "names, for regression targets pass regression=True (CLI: --task regression)"
            )
        raw = raw.astype(np.int64)
    classes, y = np.unique(raw, return_inverse=True)
    if classes.size < min_classes:
        raise ValueError(f"the label column holds a single class ({classes[0]!r}): need at least two")
    return y.astype(np.int64).reshape(-1), classes.tolist()


def _column_index(names, label, path):
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not -len(names) <= label < len(names):
            raise ValueError(f"{path}: label column {label} is out of range: the file has {len(names)} columns")
        return int(label) % len(names)
    if label in names:
        return names.index(label)
    if isinstance(label, str) and label.lstrip("-").isdigit():
        return _column_index(names, int(label), path)
    raise ValueError(f"{path}: no column named {label!r}; the columns are {', '.join(map(str, names))}")


MISSING = ("", "na", "nan", "n/a", "null", "none", "?", "-")  # cells read as a missing value (any case)


def _csv_rows(path, delimiter, encoding):
    """(delimiter, rows): the delimiter detected from the first 64 kB unless given, and an iterator over the
    non-blank rows, read lazily (quoting as the csv module does it); a wrong encoding or a binary file is a
    clear ValueError while iterating."""
    def rows(f):
        try:
            yield from (r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not {encoding} text (byte {exc.object[exc.start:exc.start + 1]!r} at "
                             f"position {exc.start}): give the file's encoding (CLI: --encoding latin-1)") from None
        except csv.Error as exc:
            raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
        finally:
            f.close()

    try:
        f = open(path, newline="", encoding=encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None
    try:
        sample = f.read(1 << 16)
    except UnicodeDecodeError as exc:
        f.close()
        raise ValueError(f"{path}: not {encoding} text (byte {exc.object[exc.start:exc.start + 1]!r} at "
                         f"position {exc.start}): give the file's encoding (CLI: --encoding latin-1)") from None
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    f.seek(0)
    return delimiter, rows(f)


def _read_rows(path, delimiter, encoding):
    """(rows, delimiter) of a whole CSV file (see :func:`_csv_rows`)."""
    delimiter, rows = _csv_rows(path, delimiter, encoding)
    return list(rows), delimiter


def load_csv(path, label="label", header=None, delimiter=None, regression=False, require_label=True,
             encoding="utf-8-sig", missing="error", categorical=None):
    """Read a CSV file of numeric features and one label column → :class:`Table`.

    * ``label``: the label column's name (from the header row) or index (0-based, negative from the
      end); ``None`` when the file has no labels (then ``y`` is None).
    * ``header``: True/False, or None to detect it (a first row with any non-numeric feature cell).
    * ``delimiter``: None detects it (``,`` ``;`` tab ``|``); quoted cells may hold the delimiter.
    * ``encoding``: the text encoding (default UTF-8, with or without a byte-order mark).
    * A feature column that holds only text (no cell a number), or is named in ``categorical`` (names or
      indices: integer codes, say), is a text column: ``X`` is then an object array (the numbers float, the
      text as stripped strings, None where missing) for :class:`nnkit.Preprocessing`, which encodes it one-hot.
    * Other feature cells must be numbers; an empty, ``NA``, ``NaN``, ``null`` or ``?`` cell is a missing
      value: ``missing="error"`` (default) names its column and first row, ``missing="keep"`` keeps it
      as NaN for imputation (:class:`nnkit.data.preprocessing.Preprocessing`).  Labels may be integers or
      names (``classes`` maps them back); a missing label is always an error.
      A missing label column raises unless ``require_label=False`` (for prediction files).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a CSV file")
    if missing not in ("error", "keep"):
        raise ValueError(f"missing must be 'error' or 'keep', got {missing!r}")
    rows, delimiter = _read_rows(path, delimiter, encoding)
    if not rows:
        raise ValueError(f"{path}: the file is empty")
    width = len(rows[0])
    if header is None:
        header = not all(_is_number(c) or c.strip().lower() in MISSING for c in rows[0])
    names = [c.strip() for c in rows[0]] if header else [str(i) for i in range(width)]
    body = rows[1:] if header else rows
    if not body:
        raise ValueError(f"{path}: no data rows after the header")
    first = 1 + bool(header)  # the file line of body[0] (blank lines aside)
    col, feat = _columns(path, names, width, label, require_label)
    table = _parse_rows(path, body, names, width, first, col, feat, missing, regression, 2 if require_label else 1,
                        delimiter, categorical)
    table.header = bool(header)
    return table


def _columns(path, names, width, label, require_label):
    """(label column or None, feature columns) of a file with these column names."""
    col = None
    if label is not None:
        try:
            col = _column_index(names, label, path)
        except ValueError:
            if require_label:
                raise
    feat = [j for j in range(width) if j != col]
    if not feat:
        raise ValueError(f"{path}: no feature columns besides the label column")
    return col, feat


def _parse_rows(path, body, names, width, first, col, feat, missing, regression, min_classes, delimiter,
                categorical=None):
    """The rows of a CSV body (``first``: the file line of body[0]) → :class:`Table`, with the errors that
    name the column and row.  A feature column holding text only (every present cell not a number), or named in
    ``categorical``, is a text column: then ``X`` is an object array, its cells the stripped strings (None where
    missing) and the numbers float."""
    for i, r in enumerate(body):
        if len(r) != width:
            raise ValueError(f"{path}: row {i + first} has {len(r)} cells, expected {width} "
                             f"(delimiter {delimiter!r})")
    text = _text_features(path, body, names, feat, categorical)
    X = np.empty((len(body), len(feat)), dtype=np.float64)
    for i, r in enumerate(body):
        for k, j in enumerate(feat):
            if k in text:
                continue
            cell = r[j].strip()
            try:
                X[i, k] = float(cell)
            except ValueError:
                if cell.lower() not in MISSING:
                    raise ValueError(f"{path}: column {names[j]!r}, row {i + first}: {cell[:40]!r} is not a number "
                                     "(feature cells must be numbers; a column that holds only text is read as categories, "
                                     f"or name it: categorical=[{names[j]!r}], on the command line --categorical "
                                     f"{names[j]})") from None
                X[i, k] = np.nan
    if text:
        numeric = [k for k in range(len(feat)) if k not in text]
        if missing == "error":
            for k in text:
                gaps = [i for i, r in enumerate(body) if r[feat[k]].strip().lower() in MISSING]
                if gaps:
                    raise ValueError(f"{path}: column {names[feat[k]]!r} has a missing value in row {gaps[0] + first} "
                                     f"({len(gaps)} in that column): fill them in, or impute (nnkit train --impute "
                                     "most_frequent)")
        X = X.astype(object)
        for k in text:
            X[:, k] = [None if r[feat[k]].strip().lower() in MISSING else r[feat[k]].strip() for r in body]
        X_num = X[:, numeric].astype(np.float64)
    else:
        X_num = X
    numeric = [k for k in range(len(feat)) if k not in text]
    if np.isinf(X_num).any():
        i, k = (int(v) for v in np.argwhere(np.isinf(X_num))[0])
        raise ValueError(f"{path}: column {names[feat[numeric[k]]]!r}, row {i + first} holds infinity")
    if missing == "error" and np.isnan(X_num).any():
        i, k = (int(v) for v in np.argwhere(np.isnan(X_num))[0])
        raise ValueError(f"{path}: column {names[feat[numeric[k]]]!r} has a missing value in row {i + first} "
                         f"({int(np.isnan(X_num[:, k]).sum())} in that column): fill them in, or impute "
                         "(nnkit train --impute mean|median|most_frequent)")
    if missing == "error" and not text:
        X = X.astype(np.float32) if np.all(np.abs(X) <= np.finfo(np.float32).max) else X
    y = classes = None
    if col is not None:
        raw = [r[col].strip() for r in body]
        gaps = [i for i, v in enumerate(raw) if v == "" or v.lower() in ("na", "nan", "null", "?")]
        if gaps:
            raise ValueError(f"{path}: the label column {names[col]!r} has a missing value in row {gaps[0] + first}")
        raw = np.array([float(v) for v in raw]) if all(_is_number(v) for v in raw) else np.array(raw)
        y, classes = _labels(raw, regression, min_classes)
    return Table(X, y, classes, [names[j] for j in feat], None if col is None else names[col], path)


def _text_features(path, body, names, feat, categorical):
    """The positions (in ``feat``) of the text columns: every present cell not a number, or named in
    ``categorical`` (names or file column indices)."""
    text = set()
    for c in categorical or ():
        j = _column_index(names, c, path)
        if j not in feat:
            raise ValueError(f"{path}: categorical column {c!r} is the label column")
        text.add(feat.index(j))
    for k, j in enumerate(feat):
        present = [c for c in (r[j].strip() for r in body) if c.lower() not in MISSING]
        if present and not any(_is_number(c) for c in present):
            text.add(k)
    return text


def iter_csv(path, label="label", header=None, delimiter=None, encoding="utf-8-sig", missing="error",
             chunk_rows=65536, categorical=None):
    """A CSV file as :class:`Table` chunks of at most ``chunk_rows`` rows, read one chunk at a time — for files
    larger than memory.  Each chunk is parsed and checked as :func:`load_csv` does (errors name the file's
    row); labels are optional (each chunk's ``classes`` are its own).  Give the text columns as ``categorical``
    (a model's ``preprocessing.text_columns`` by name): a chunk may hold only number-like values of one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a CSV file")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    delimiter, rows = _csv_rows(path, delimiter, encoding)
    top = next(rows, None)
    if top is None:
        raise ValueError(f"{path}: the file is empty")
    width = len(top)
    if header is None:
        header = not all(_is_number(c) or c.strip().lower() in MISSING for c in top)
    names = [c.strip() for c in top] if header else [str(i) for i in range(width)]
    col, feat = _columns(path, names, width, label, False)
    first, chunk, seen = 1 + bool(header), ([] if header else [top]), 0
    for r in rows:
        chunk.append(r)
        if len(chunk) == chunk_rows:
            yield _chunk(path, chunk, names, width, first, col, feat, missing, delimiter, header, categorical)
            first, chunk, seen = first + len(chunk), [], seen + len(chunk)
    if chunk:
        yield _chunk(path, chunk, names, width, first, col, feat, missing, delimiter, header, categorical)
    elif not seen:
        raise ValueError(f"{path}: no data rows after the header")


def _chunk(path, body, names, width, first, col, feat, missing, delimiter, header, categorical):
    table = _parse_rows(path, body, names, width, first, col, feat, missing, False, 1, delimiter, categorical)
    table.header = bool(header)
    return table


def load_npz(path, label="y", features="X", regression=False, require_label=True):
    """Read ``X`` (n, d) and a label array ``y`` (n,) from a ``.npz`` (no pickles) → :class:`Table`."""
    path = os.fspath(path)
    arrays = read_npz(path, "data file (.npz)")
    if features not in arrays:
        raise ValueError(f"{path}: no array named {features!r}; it holds {', '.join(arrays) or 'nothing'}")
    X = np.asarray(arrays[features])
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {features!r} must be a 2-D numeric array (rows, features), got "
                         f"shape {X.shape} dtype {X.dtype}")
    y = classes = None
    if label is not None and label in arrays:
        raw = np.asarray(arrays[label]).reshape(-1)
        if raw.shape[0] != X.shape[0]:
            raise ValueError(f"{path}: {features!r} has {X.shape[0]} rows but {label!r} has {raw.shape[0]}")
        y, classes = _labels(raw, regression, 2 if require_label else 1)
    elif label is not None and require_label:
        raise ValueError(f"{path}: no label array named {label!r}; it holds {', '.join(arrays)}")
    X = X.astype(np.float32)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{path}: the features contain NaN or infinity")
    table = Table(X, y, classes, [str(i) for i in range(X.shape[1])], label if y is not None else None, path)
    table.header = False  # an array's columns have no names: matched by position
    return table


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True
