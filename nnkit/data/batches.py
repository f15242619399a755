"""Batches: how rows become what ``fit``, ``evaluate`` and ``predict`` read — :class:`FitData` (the validation
split, the per-epoch shuffle, each batch checked and sent to the device, each rank's slice in data-parallel
training) and ``predict`` over arrays, sequences or streams."""
from __future__ import annotations

import itertools

import numpy as np

from ..backends import is_sparse
from ..backends.functional import device_of
from .arrays import (BatchError, _labels_of, as_target, batch_ranges, batch_sums, check_weights, class_weights, dense,
                     host_if_foreign, n_rows, positions_of, row_weights, rows, slice_rows, take_rows)
from .ragged import (_trimmed, _trims, bucketed, compiled_length, host_mask, is_ragged, pad_sequences, sequences,
                     target_sequences)
from .streams import MappedRows, _Rows, is_stream, make_stream, prefetch

__all__ = ["rank_slice", "FitData", "predict"]


# -- one run's data: batches for the loop, sums for the logs ---------------------------------------------------
def rank_slice(start, stop, rank, size):
    """Rank ``rank``'s contiguous share [a, b) of the rows [start, stop): sizes differ by at most one."""
    n = stop - start
    return start + (n * rank) // size, start + (n * (rank + 1)) // size


class FitData:
    """One run's data: in memory (validated once, sent to the device once) or streamed (read, checked and
    copied a batch at a time, prefetched); its batches for this rank, and the validation sums (each batch's
    weight travels in its :class:`nnkit.metrics.BatchStats`).
    """

    def __init__(self, model, loss, metric_fns, batch_size, shuffle=False, epochs=1, rank=0, size=1, bucket=False,
                 steps_per_epoch=None):
        self.model, self.be, self.xp, self.loss = model, model.backend, model.xp, loss
        self.metric_fns, self.batch_size, self.shuffle, self.epochs = metric_fns, batch_size, shuffle, epochs
        self.rank, self.size, self.parallel = rank, size, size > 1
        self.stream = self.val_stream = None
        self.lengths, self.trim, self.bucket = None, False, bool(bucket)
        self.compiled = False  # a compiled step: batches padded to one of a few lengths (compiled_length)
        self.steps_per_epoch = steps_per_epoch  # K random batches an epoch (with replacement), or None: every row
        self.X = self.T = self.W = self.M = self.Xv = self.Tv = self.Wv = self.Mv = None
        self.n = self.row_w = None

    def load(self, X, y, sample_weight=None, validation_data=None, validation_split=0.0, class_weight=None,
             lengths=None):
        """Take the data (arrays, or a stream: :func:`is_stream`) and the validation part; returns self.
        ``class_weight`` (arrays only) multiplies the training rows' weights (not the validation part's).
        ``lengths`` (n,): the lengths of padded sequences X (a list of sequences brings its own)."""
        if getattr(self.model, "multi", False):  # several inputs or outputs: lists or dicts of arrays in memory
            for what, given in (("class_weight", class_weight), ("lengths", lengths),
                                ("steps_per_epoch", self.steps_per_epoch), ("bucket", self.bucket or None)):
                if given is not None:
                    raise ValueError(f"{what} takes a model of one input and one output for now")
            if isinstance(X, (list, tuple, dict)) or y is not None:  # a stream brings its y inside its batches
                self._setup_arrays(X, y, sample_weight, validation_data, validation_split)
            else:  # a dataset, batches or a generator whose batches' X and y are lists or dicts
                self._setup_stream(X, y, sample_weight, validation_data, validation_split)
        elif is_stream(X, y):
            if class_weight is not None:
                raise ValueError("class_weight takes arrays held in memory; for a stream, give each batch its "
                                 "weights (X, y, w)")
            if lengths is not None:
                raise ValueError("lengths= is for padded arrays in memory; a stream's batches bring their sequences "
                                 "as lists of arrays of their own lengths")
            if self.bucket:
                raise ValueError("bucket=True orders sequences held in memory; a stream's batches are padded to "
                                 "their own longest sequence already — group similar lengths in your batches")
            self._setup_stream(X, y, sample_weight, validation_data, validation_split)
        else:
            self._setup_arrays(X, y, sample_weight, validation_data, validation_split, class_weight, lengths)
        if self.steps_per_epoch is not None and not isinstance(self.stream, _Rows):
            raise ValueError("steps_per_epoch draws each epoch's rows at random: it needs rows it can index — a "
                             "dataset (len(ds), ds[indices], e.g. nnkit.text.TokenWindows) or a memory-mapped "
                             "array; for arrays in memory, an epoch is one pass over every row")
        return self

    @property
    def has_validation(self):
        return self.Xv is not None or self.val_stream is not None

    def n_batches(self):
        """Batches per epoch (0 when a stream does not say)."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if self.stream is None:
            return len(batch_ranges(self.n, self.batch_size))
        return self.stream.n_batches(self.batch_size) or 0

    def _prepared(self, stream, order, batch_size=None):
        """A stream's batches as checked device batches (this rank's slice) with this rank's share of each global
        batch's weight (its rows, Σ w, or its valid positions); a batch that cannot be used is a
        BatchError naming it.  A batch's X may be a list of sequences of different lengths: padded here, with its
        mask."""
        model, loss, be = self.model, self.loss, self.be
        it = stream.epoch_batches(batch_size or self.batch_size, order)
        with be.activate(), be.copy_stream() as copies:  # the device context is per thread (CUDA)
            for i in itertools.count():
                try:
                    (s, e), (xb, yb, wb) = next(it)
                except StopIteration:
                    return
                except BatchError:
                    raise
                except Exception as exc:  # the user's dataset or loader raised
                    raise BatchError(f"batch {i} of the stream could not be read: {type(exc).__name__}: "
                                          f"{exc}") from exc
                if getattr(model, "multi", False):  # several inputs or outputs: lists or dicts of arrays
                    try:
                        Xs, n = model.inputs_of(xb)
                        T = model.targets_of(yb, loss, n)
                        W = None if wb is None else check_weights(model, host_if_foreign(be, wb), n)[0]
                    except (TypeError, ValueError) as exc:
                        raise BatchError(f"batch {i} (rows {s} to {e - 1}) of the stream: {exc}") from None
                    copies.done()
                    yield (Xs[0] if len(Xs) == 1 else Xs), T, W, None, 1.0, e
                    continue
                try:
                    lengths = None
                    if is_ragged(xb):
                        steps = None
                        if self.compiled:  # a few padded lengths, each traced once
                            steps = compiled_length(max(int(np.shape(x)[0]) for x in xb))
                        xb, lengths = pad_sequences(xb, steps)
                        yb = target_sequences(yb, lengths, steps)
                        wb = None if wb is None else target_sequences(wb, lengths, steps)
                    xb, yb = host_if_foreign(be, xb), host_if_foreign(be, yb)
                    rows = int(xb.shape[0])
                    model.check_batch_shape(tuple(int(d) for d in xb.shape[1:]))
                    w_host = None
                    if wb is not None:
                        _, w_host = check_weights(model, host_if_foreign(be, wb), rows)
                    row_w = row_weights(model, rows, w_host, host_mask(lengths, int(xb.shape[1])
                                                                       if lengths is not None else 0))
                    a, b = rank_slice(0, rows, self.rank, self.size) if self.parallel else (0, rows)
                    if b <= a:
                        yield None, None, None, None, 0.0, e
                        continue
                    whole = (a, b) == (0, rows)
                    S = sequences(model, xb if whole else xb[a:b], None if lengths is None else lengths[a:b])
                    T = as_target(model, yb if whole else yb[a:b], b - a, loss)
                    W = None if w_host is None else be.asarray(w_host[a:b], dtype=be.dtype)
                    share = float(row_w[a:b].sum() / row_w.sum())
                except (TypeError, ValueError) as exc:
                    raise BatchError(f"batch {i} (rows {s} to {e - 1}) of the stream: {exc}") from None
                copies.done()  # this batch's copies are complete before it is handed to the step
                yield S.X, T, W, S.M, share, e

    def stream_sums(self, stream):
        """Validation sums over a stream (inference, in order): a :class:`nnkit.metrics.BatchStats` or None."""
        sums = None
        for X, T, W, M, _, _ in self._prepared(stream, None, max(self.batch_size, 1024)):
            if X is None:
                continue
            part = batch_sums(self.model, X, T, self.loss, self.metric_fns, max(self.batch_size, 1024), W, M)
            sums = part if sums is None else sums + part
        return sums

    def _inputs(self, X, y, sample_weight, lengths, what):
        """(X, T, W, M, w_host, row weights) of in-memory data: a list of sequences padded (and its per-position
        targets and weights with it), checked once, on the device once."""
        model = self.model
        if getattr(model, "multi", False):
            Xs, n = model.inputs_of(X)
            T = model.targets_of(y, self.loss, n)
            W, w_host = check_weights(model, sample_weight, n)
            return (Xs[0] if len(Xs) == 1 else Xs), T, W, None, w_host, row_weights(model, n, w_host), None
        S = sequences(model, X, lengths)
        y = target_sequences(y, S.lengths)
        sample_weight = target_sequences(sample_weight, S.lengths)
        T = as_target(model, y, S.X.shape[0], self.loss)
        W, w_host = check_weights(model, sample_weight, S.X.shape[0])
        m_host = host_mask(S.lengths, int(S.X.shape[1]) if S.lengths is not None else 0)
        return S.X, T, W, S.M, w_host, row_weights(model, S.X.shape[0], w_host, m_host), m_host

    def _setup_arrays(self, X, y, sample_weight, validation_data, validation_split, class_weight=None, lengths=None):
        """In-memory data: validated once, sent to the device once."""
        model, loss = self.model, self.loss
        X, T, W, M, w_host, row_w, m_host = self._inputs(X, y, sample_weight, lengths, "X")
        self.Wv = self.Mv = None
        if validation_split:
            split = int(n_rows(X) * (1.0 - validation_split))
            if split < 1:
                raise ValueError(f"validation_split={validation_split} leaves no training rows out of {n_rows(X)}")
            self.Xv, self.Tv, X, T = slice_rows(X, split, None), slice_rows(T, split, None), slice_rows(X, 0, split), \
                slice_rows(T, 0, split)
            row_w = row_w[:split]
            if W is not None:
                self.Wv, W, w_host = W[split:], W[:split], w_host[:split]
            if M is not None:
                self.Mv, M, m_host = M[split:], M[:split], m_host[:split]
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                 "sample_weight_val)")
            try:
                wv = validation_data[2] if len(validation_data) == 3 else None
                self.Xv, self.Tv, self.Wv, self.Mv, _, _, _ = self._inputs(validation_data[0],
                                                                                validation_data[1], wv, None, "X_val")
            except (TypeError, ValueError) as exc:
                raise ValueError(f"validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                 f"sample_weight_val) of arrays that fit the model: {exc}") from None
            if not getattr(model, "multi", False):
                model.check_batch_shape(tuple(int(d) for d in X.shape[1:]))  # the training data's shape again
        else:
            self.Xv = self.Tv = None
        if class_weight is not None:  # the training rows' weights times their class's
            labels, k = _labels_of(model, T, loss)
            if isinstance(class_weight, dict):  # keys may be class names
                pre = model.preprocessing
                names = {str(c): i for i, c in enumerate(pre.classes)} if pre is not None and pre.classes else {}
                class_weight = {names.get(c, c) if isinstance(c, str) else c: w for c, w in class_weight.items()}
            cw = np.reshape(class_weights(labels, class_weight, k), tuple(T.shape[:1 + len(positions_of(model))]))
            w_host = cw if w_host is None else (w_host[:, None] if w_host.ndim < cw.ndim else w_host) * cw
            row_w = row_weights(model, X.shape[0], w_host, m_host)
            if not row_w.sum() > 0:
                raise ValueError("class_weight leaves every training row with weight 0")
            W = model.backend.asarray(w_host, dtype=model.backend.dtype)
        self.X, self.T, self.W, self.M, self.n = X, T, W, M, n_rows(X)
        self.row_w = row_w
        self.lengths = None if m_host is None else m_host.sum(axis=1).astype(np.int64)
        self.trim = self.lengths is not None and _trims(model, T, int(X.shape[1]))
        if self.bucket and (self.lengths is None or not self.shuffle):
            raise ValueError("bucket=True shuffles sequences of variable lengths within length buckets: it needs X as "
                             "a list of sequences (or padded with lengths=) and shuffle=True" if self.lengths is None
                             else "bucket=True shuffles within length buckets: it needs shuffle=True")

    def _setup_stream(self, X, y, sample_weight, validation_data, validation_split):
        """Streamed data (:mod:`nnkit.data`): checked batch by batch on the host as it is read."""
        stream = make_stream(X, y, sample_weight)
        if validation_split:
            if not isinstance(stream, MappedRows):
                raise ValueError("validation_split needs rows it can count: with a dataset or batches pass "
                                 "validation_data=")
            split = int(stream.n * (1.0 - validation_split))
            if split < 1:
                raise ValueError(f"validation_split={validation_split} leaves no training rows out of {stream.n}")
            self.val_stream, stream = stream.tail(split), stream.head(split)  # views of the file: no copy
        elif validation_data is not None:
            if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3):
                vx, vy = validation_data[0], validation_data[1]
                vw = validation_data[2] if len(validation_data) == 3 else None
                self.val_stream = make_stream(np.asarray(vx) if not isinstance(vx, np.ndarray) else vx, vy, vw)
            else:
                self.val_stream = make_stream(validation_data)
        if stream.one_shot and self.epochs > 1:
            raise ValueError("X is a one-shot generator, which can feed one epoch only, and fit was asked for "
                             f"{self.epochs}: pass a function that returns a new generator (fit(lambda: "
                             "make_batches(), ...)) or a re-iterable (a list of batches, a torch DataLoader)")
        self.stream, self.n = stream, stream.n
        self.X = self.T = self.W = self.M = self.Xv = self.Tv = self.Wv = self.Mv = None

    def batches(self):
        """(X_b, T_b, W_b, M_b, share, end) for this rank's slice of every global batch of an epoch (X_b None
        when the slice is empty; W_b None without sample weights; M_b the padding mask of variable-length
        sequences, or None); one shuffle per epoch, drawn on the host from the model's generator.  ``share`` is
        the slice's part of the global batch's weight (its rows, or its valid positions).  A sparse X (host CSR)
        is densified one batch at a time; a stream's batches are read, checked and copied to the device ahead,
        in a background thread."""
        if self.stream is not None:
            order = self.model.state.rng.permutation(self.n) if self.shuffle and self.n is not None else None
            if self.steps_per_epoch is not None:  # K batches of rows drawn at random, with replacement
                order = self.model.state.rng.integers(0, self.n, size=self.steps_per_epoch * self.batch_size)
            yield from prefetch(self._prepared(self.stream, order))
            return
        xp, model, W, M, row_w = self.xp, self.model, self.W, self.M, self.row_w
        sparse = is_sparse(self.X)
        order = None
        if self.shuffle:
            perm = model.state.rng.permutation(self.n)
            if self.bucket and self.lengths is not None:
                perm = bucketed(perm, self.lengths, self.batch_size, model.state.rng)
            order = (perm, self.be.asarray(perm))
        for s, e in batch_ranges(self.n, self.batch_size):
            a, b = rank_slice(s, e, self.rank, self.size) if self.parallel else (s, e)
            if b <= a:  # a global batch smaller than the number of ranks: nothing here this step
                yield None, None, None, None, 0.0, e
                continue
            if self.parallel:
                host = np.arange(self.n) if order is None else order[0]
                share = float(row_w[host[a:b]].sum() / row_w[host[s:e]].sum())
            else:
                share = 1.0
            if order is None:
                batch = (rows(model, self.X, a, b), slice_rows(self.T, a, b), None if W is None else W[a:b, ...],
                         None if M is None else M[a:b])
            else:
                idx = order[1][a:b]
                xb = dense(model, self.X[order[0][a:b]]) if sparse else take_rows(xp, self.X, idx)
                batch = (xb, take_rows(xp, self.T, idx), None if W is None else xp.take(W, idx, axis=0),
                         None if M is None else xp.take(M, idx, axis=0))
            if self.trim:  # padded to the batch's own longest sequence, not the data set's
                longest = int((self.lengths[a:b] if order is None else self.lengths[order[0][a:b]]).max())
                if self.compiled:  # to its length bucket's: a compiled step traces each length once
                    longest = compiled_length(longest, int(self.X.shape[1]))
                batch = _trimmed(batch, longest, int(self.X.shape[1]))
            yield batch + (share, e)

    def whole_epochs(self):
        """True when an epoch's batches can be made on the device at once, for a step that runs the epoch
        whole: dense arrays in memory on one process, rows of one length (no sequences of varying length)."""
        return (self.stream is None and self.X is not None and not is_sparse(self.X) and not self.parallel
                and self.lengths is None and self.M is None and self.steps_per_epoch is None)

    def epoch_plan(self):
        """One epoch for a step that runs it whole (:meth:`whole_epochs`): ``(idx, last)`` — the full batches' row
        indices (batches, B) sent to the device at once (None when no batch is full) and the last, shorter batch
        (X_b, T_b, W_b) or None.  The order is :meth:`batches`' own, drawn the same way from the model's
        generator, so a compiled epoch sees the batches an eager one does."""
        xp, n, B = self.xp, self.n, self.batch_size
        perm = self.model.state.rng.permutation(n) if self.shuffle else np.arange(n)
        full = n // B * B
        idx = self.be.asarray(perm[:full].reshape(-1, B)) if full else None
        last = None
        if full < n:
            rows = self.be.asarray(perm[full:])
            last = tuple(None if A is None else xp.take(A, rows, axis=0) for A in (self.X, self.T, self.W))
        return idx, last

    def validation_sums(self, nothing):
        """The :class:`nnkit.metrics.BatchStats` of this rank's share of the validation data (``nothing`` when it
        has no rows), on the device."""
        if self.val_stream is not None:
            vs = self.stream_sums(self.val_stream)
            return nothing if vs is None else vs
        nv = n_rows(self.Xv)
        va, vb = rank_slice(0, nv, self.rank, self.size) if self.parallel else (0, nv)
        if vb <= va:
            return nothing
        return batch_sums(self.model, slice_rows(self.Xv, va, vb), slice_rows(self.Tv, va, vb), self.loss, self.metric_fns,
                          max(self.batch_size, 1024), None if self.Wv is None else self.Wv[va:vb, ...],
                          None if self.Mv is None else self.Mv[va:vb])


# -- prediction: in memory, in batches, or streamed ----------------------------------------------------
def predict(model, X, batch_size=None, lengths=None):
    """``model``'s output for X (inference mode), as an array of its backend: in memory at once, or in
    batches of ``batch_size`` rows (sparse input: 4096 by default, densified a batch at a time), or — X
    streamed (a memory-mapped array, a dataset, batches) — a batch at a time (default 4096 rows), the
    outputs joined in order.  A bad streamed batch is a :class:`BatchError` naming it.

    Sequences of different lengths — a list of (T_i, ...) arrays, or a padded array with ``lengths`` — are
    padded to the longest; a per-position output (n, T, K) is zero at the padded positions."""
    stream = is_stream(X) and not is_ragged(X)
    if stream and batch_size is None:
        batch_size = 4096
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if stream:
        if lengths is not None:
            raise ValueError("lengths= is for padded arrays in memory; a stream's batches bring their sequences as "
                             "lists of arrays of their own lengths")
        return _predict_stream(model, X, batch_size)
    S = sequences(model, X, lengths)
    X, M = S.X, S.M
    n = X.shape[0]
    sparse = is_sparse(X)
    if batch_size is None and sparse:
        batch_size = 4096  # sparse input: densified a batch at a time
    with model.policy.activate():
        if batch_size is None or batch_size >= n and not sparse:
            return _masked_output(model, model.forward_batch(X, train=False, mask=M), M)
        parts = [_masked_output(model, model.forward_batch(rows(model, X, s, min(s + batch_size, n)), train=False,
                                                      mask=None if M is None else M[s:s + batch_size]),
                                None if M is None else M[s:s + batch_size])
                 for s in range(0, n, batch_size)]
        return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)


def _masked_output(model, out, M):
    """A per-position output with its padded positions set to zero (as ``pad_packed_sequence`` gives them)."""
    if M is None or out.ndim < 3:
        return out
    om = model.output_mask(M)
    if om is None:
        return out
    return out * model.xp.reshape(model.xp.astype(om, out.dtype), tuple(om.shape) + (1,) * (out.ndim - om.ndim))


def _predict_stream(model, X, batch_size):
    """predict() of streamed data: each batch's rows (its X for a dataset or batches), in order."""
    stream = MappedRows(X, np.zeros(X.shape[0], dtype=np.int8)) if isinstance(X, np.ndarray) else make_stream(X)
    parts = []
    with model.policy.activate():
        for i, ((s, e), (xb, _, _)) in enumerate(stream.epoch_batches(batch_size)):
            try:
                S = sequences(model, host_if_foreign(model.backend, xb) if not is_ragged(xb) else xb)
            except (TypeError, ValueError) as exc:
                raise BatchError(f"batch {i} (rows {s} to {e - 1}): {exc}") from None
            parts.append(_masked_output(model, model.forward_batch(S.X, train=False, mask=S.M), S.M))
    if len({tuple(p.shape[1:]) for p in parts}) > 1 and all(p.ndim >= 3 for p in parts):
        longest = max(int(p.shape[1]) for p in parts)  # batches of sequences padded to their own longest: to one
        xp = model.xp
        parts = [p if p.shape[1] == longest else
                 xp.concat([p, xp.zeros((p.shape[0], longest - p.shape[1]) + tuple(p.shape[2:]), dtype=p.dtype,
                                        device=device_of(p))], axis=1) for p in parts]
    return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)
