"""Ragged sequences: token-id lists of different lengths padded to one array (``pad_sequences``), their lengths
and the padding mask (B, T) carried beside the batch, and the shorter batches a fit may cut them to (buckets of
similar lengths, the few padded lengths a compiled step traces)."""
from __future__ import annotations

import numpy as np

from ..layers.core import reads_padding
from .arrays import as_input, numeric_host, positions_of
from .streams import _batch_list

__all__ = ["MAX_PADDING", "is_ragged", "pad_sequences", "Sequences", "check_lengths", "mask_of", "sequences", "target_sequences", "host_mask", "COMPILED_LENGTHS", "compiled_length", "bucketed"]


# -- sequences of different lengths: padded, with their lengths -------------------------------------------
MAX_PADDING = 16  # a padded array may hold at most this many times the sequences' own elements (or 2**24)


def is_ragged(X):
    """True for sequences of different lengths: a list or tuple of arrays (or nested lists) of shapes (T_i, ...)
    whose lengths differ (see :func:`pad_sequences`; equal lengths stack into one array and need no padding)."""
    if not isinstance(X, (list, tuple)) or len(X) == 0 or _batch_list(X):
        return False
    lengths = set()
    for x in X:
        shape = getattr(x, "shape", None)
        if shape is None:
            if not isinstance(x, (list, tuple)):
                return False
            shape = np.shape(x) if x and not isinstance(x[0], (list, tuple)) else (len(x),)
        if len(shape) == 0:
            return False
        lengths.add(int(shape[0]))
    return len(lengths) > 1


def pad_sequences(sequences, maxlen=None, value=0, dtype=None):
    """``(padded, lengths)``: sequences of shapes (T_i, ...) — the same trailing shape and kind — as one array
    (N, T, ...) padded at the end with ``value`` (T the longest, or ``maxlen``: longer ones are refused, not
    cut), and their lengths (N,) int64.  As PyTorch's ``pad_sequence(batch_first=True)``; give ``lengths`` to
    ``fit``/``evaluate``/``predict`` with the padded array (a list of sequences is padded for you).

    A sequence must have at least one step.  A padded array larger than 16× the sequences' elements
    (one very long sequence among short ones) is refused before it is allocated: sort and batch by length."""
    if not isinstance(sequences, (list, tuple)) or len(sequences) == 0:
        raise TypeError(f"pad_sequences takes a non-empty list of arrays of shape (T_i, ...), got "
                        f"{type(sequences).__name__}")
    arrays = []
    for i, x in enumerate(sequences):
        a = numeric_host(x, f"sequence {i}")
        if a.ndim == 0:
            raise ValueError(f"sequence {i} is a single number: each sequence is an array (T_i,) or (T_i, F)")
        if a.shape[0] == 0:
            raise ValueError(f"sequence {i} is empty: every sequence needs at least one step")
        if arrays and a.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"sequence {i} has steps of shape {a.shape[1:]} but sequence 0 has "
                             f"{arrays[0].shape[1:]}: every step of every sequence must have the same shape")
        arrays.append(a)
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    longest = int(lengths.max())
    if maxlen is not None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer or None, got {maxlen!r}")
        if longest > maxlen:
            raise ValueError(f"sequence {int(np.argmax(lengths))} has {longest} steps, more than maxlen={maxlen}")
        longest = int(maxlen)
    step = int(np.prod(arrays[0].shape[1:], dtype=np.int64))
    own, padded_size = int(lengths.sum()) * step, len(arrays) * longest * step
    if padded_size > max(MAX_PADDING * own, 2 ** 24):
        raise ValueError(f"padding {len(arrays)} sequences to {longest} steps would hold {padded_size:,} numbers for "
                         f"{own:,} of data: sort the sequences by length and pass them in batches of similar lengths "
                         "(or cut them to a maxlen)")
    kinds = {a.dtype.kind for a in arrays}
    if dtype is None:
        dtype = np.result_type(*[a.dtype for a in arrays]) if len(kinds) == 1 or "f" in kinds else np.int64
    out = np.full((len(arrays), longest) + arrays[0].shape[1:], value, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, :a.shape[0]] = a
    return out, lengths


class Sequences:
    """A batch of padded sequences on the model's device: ``X`` (N, T, ...), the mask ``M`` (N, T) (1 at a real
    step, 0 at padding) and the host ``lengths``; ``M`` None when every sequence is T long."""

    __slots__ = ("X", "M", "lengths")

    def __init__(self, X, M, lengths):
        self.X, self.M, self.lengths = X, M, lengths


def check_lengths(lengths, n, T):
    """The host lengths (n,) int64: integers in [1, T], one per sequence."""
    try:
        arr = np.asarray(lengths)
    except (TypeError, ValueError):
        raise TypeError(f"lengths must be integers, got {type(lengths).__name__}") from None
    if arr.dtype.kind not in "iu" or arr.shape != (n,):
        raise ValueError(f"lengths must be {n} integers (one per sequence, each in [1, {T}]), got "
                         f"{arr.dtype} of shape {arr.shape}")
    if n and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must lie in [1, {T}] (the padded length), got {int(arr.min())} to {int(arr.max())}")
    return arr.astype(np.int64)


def mask_of(model, lengths, T):
    """The (n, T) mask of ``lengths`` in the model's dtype on its device (1 at t < length), or None when no
    sequence is shorter than T."""
    if lengths is None or bool(np.all(lengths == T)):
        return None
    return model.backend.asarray(host_mask(lengths, T), dtype=model.backend.dtype)


def sequences(model, X, lengths=None, check_values=True):
    """X as the model's input and its padding: a :class:`Sequences` (``X`` checked by :func:`as_input`, the
    mask ``M``, the host ``lengths``).  X may be a list of (T_i, ...) sequences (padded here), or a padded array
    with ``lengths`` (n,); else ``M`` and ``lengths`` are None."""
    lengths_given = lengths
    if is_ragged(X):
        if lengths is not None:
            raise ValueError("lengths= is for a padded array; a list of sequences brings its own lengths")
        X, lengths = pad_sequences(X)
    elif lengths is not None:
        shape = np.shape(X) if not hasattr(X, "shape") else tuple(X.shape)
        if len(shape) < 2:
            raise ValueError(f"lengths= needs padded sequences X of shape (n, T, ...), got shape {tuple(shape)}")
        lengths = check_lengths(lengths, int(shape[0]), int(shape[1]))
    ragged = lengths is not None and lengths_given is None
    if lengths is not None:
        shape = tuple(int(d) for d in (np.shape(X) if not hasattr(X, "shape") else X.shape)[1:])
        if not bool(np.all(lengths == shape[0])):  # padding: a layer that would read it refused before any other check
            plan = getattr(model, "_plan", None)
            if plan is not None and not plan.chain:
                raise ValueError("sequences of different lengths go into a chain of layers (a Sequential) for now; "
                                 "this model is a graph: pad them to one length")
            try:
                bad = reads_padding(model.layers, shape)
            except ValueError:  # a shape the model cannot take: as_input below says so in its own words
                bad = None
            if bad is not None:
                what = "X is a list of sequences of different lengths" if ragged else \
                    "X holds padded sequences (lengths=)"
                msg = (f"{what}, padded to {(len(lengths),) + shape}, but {bad!r} would read the padding "
                       "as data: " + (bad.padding_refusal or
                                      "sequences go through layers that keep their positions (B, T, F) into one "
                                      "that takes the padding mask (a recurrent layer, SequencePool) or a "
                                      "per-position output; token ids (B, T) start with an Embedding"))
                raise (TypeError if ragged else ValueError)(msg)
    Xd = as_input(model, X, check_values)
    if lengths is None:
        return Sequences(Xd, None, None)
    M = mask_of(model, lengths, int(Xd.shape[1]))
    if M is not None:
        model.check_batch_shape(tuple(int(d) for d in Xd.shape[1:]))
    return Sequences(Xd, M, lengths)


def target_sequences(y, lengths, maxlen=None):
    """Targets for sequences of ``lengths`` (host, or None): a list of per-position targets (T_i,) / (T_i, K),
    one per sequence and of its length, padded (with 0, a valid label that the mask leaves out); anything else
    (one target per sequence) is returned as it is.  ``maxlen``: pad to that many steps (X's padded length)."""
    if lengths is None or not isinstance(y, (list, tuple)) or len(y) != len(lengths) or not y \
            or np.ndim(y[0]) == 0:
        return y
    ylen = np.array([np.shape(t)[0] if np.ndim(t) else -1 for t in y])
    if np.array_equal(ylen, lengths):
        Y, _ = pad_sequences(y, maxlen)
        return Y
    if len(set(ylen.tolist())) == 1:  # one row per sequence (e.g. one-hot rows)
        return y
    raise ValueError("y is a list of per-position targets whose lengths are not those of the input sequences: "
                     "target i must have X[i]'s length")


def host_mask(lengths, T):
    """The host padding mask (n, T) float64 of ``lengths`` (None for None)."""
    return None if lengths is None else (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)


def _trims(model, T, steps):
    """Whether batches of padded sequences (``steps`` long) may be cut to their own longest sequence: the model's
    output either keeps the input's positions one to one ((B, steps, K), scored per position; the targets then
    hold those positions) or has none (a pooled or final state) — a model that changes the number of positions
    (a strided convolution) keeps the data set's padding."""
    P = positions_of(model)
    return P == () or (P == (steps,) and T.ndim >= 2 and int(T.shape[1]) == steps)


def _trimmed(batch, longest, steps):
    """A batch (X, T, W, M) of sequences padded to ``steps``, cut to its ``longest`` sequence: what lies beyond is
    padding in every row (the recurrent layers carry their state unchanged over it and output zeros there, the
    losses and metrics give it weight 0), so the result is the same and the recurrence runs ``longest`` steps."""
    X, T, W, M = batch
    if longest >= steps:
        return batch
    per_position = T.ndim >= 2 and int(T.shape[1]) == steps
    return (X[:, :longest, ...], T[:, :longest, ...] if per_position else T,
            None if W is None else (W[:, :longest] if W.ndim == 2 else W), M[:, :longest])


COMPILED_LENGTHS = 8  # a compiled fit pads each batch to one of at most this many lengths (compiled_length)


def compiled_length(longest, steps=None):
    """The length a batch whose longest sequence has ``longest`` steps is padded to under ``fit(compile=True)``,
    so that a compiled step is traced once per length bucket, not once per length: the next multiple of
    ⌈steps/8⌉ (at most ``COMPILED_LENGTHS`` = 8 buckets; ``steps`` the data set's padded length), or for a stream,
    whose longest sequence is not known in advance, the next power of two (⌈log₂ T⌉ + 1 buckets)."""
    longest = max(int(longest), 1)
    if steps is None:
        return 1 << (longest - 1).bit_length()
    q = -(-int(steps) // COMPILED_LENGTHS)
    return min(-(-longest // q) * q, int(steps))


def bucketed(perm, lengths, batch_size, rng, batches_per_bucket=50):
    """A shuffled order whose batches hold sequences of similar lengths: ``perm`` cut into buckets of
    ``batches_per_bucket`` batches, each bucket sorted by length and cut into batches, the batches shuffled
    (``rng``: the model's generator, so resume replays it).  Each batch is then padded to its own longest
    sequence only (``fit(..., bucket=True)``)."""
    chunk = batch_size * batches_per_bucket
    parts = []
    for s in range(0, len(perm), chunk):
        part = perm[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        parts += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    full = [p for p in parts if len(p) == batch_size]
    short = [p for p in parts if len(p) < batch_size]  # at most one (the last bucket's rest): last, as batch_ranges cuts
    order = [full[i] for i in rng.permutation(len(full))] + short
    return np.concatenate(order) if order else perm
