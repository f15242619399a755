"""NumPy: the CPU backend, with array-api-compat's namespace made cheaper per call where a small step feels it."""
from __future__ import annotations

import itertools
import math

import numpy as np

from .functional import register_namespace
from .base import Backend, derived_namespace

__all__ = ["NumpyBackend"]


def _tap_slices(offs, dilation, stride, padding, out, in_shape):
    """Where one kernel tap meets the input: ``(positions, inputs)``, the slices of the output positions whose read
    at this tap (input index j·s + o·d − p) falls inside the input, and of the inputs they read — the padding's
    zeros left out — or None when no position reads inside."""
    positions, inputs = [], []
    for o, d, s, p, m, size in zip(offs, dilation, stride, padding, out, in_shape):
        first = max(0, -((o * d - p) // s))  # ceil((p − o·d) / s): the first position that reads inside
        last = min(m - 1, (size - 1 + p - o * d) // s)
        if last < first:
            return None
        start = first * s + o * d - p
        positions.append(slice(first, last + 1))
        inputs.append(slice(start, start + s * (last - first) + 1, s))
    return tuple(positions), tuple(inputs)


def _add_shifted(dX, dcols, t, shifts, positions):
    """Tap t's slab of dcols (B, C, K, *out) — any layout whose positions lie contiguous — added into dX (B, C, *m)
    at the positions shifted by ``shifts`` (position j's entry into dX[..., j + e]), as one run per (example,
    channel): with dX as wide as the slab past the first axis, the shift is a fixed distance δ = Σ_i e_i·pitch_i in
    the flattened (row-major) positions, so the slab is one shifted slice — once its positions whose target leaves
    dX on a later axis (and would wrap into the neighbouring row) are set to 0 in ``dcols`` (dX + 0 = dX: the same
    sums as the tap-by-tap slices).  ``positions``: the slices of :func:`_tap_slices`, the positions whose target
    lies inside."""
    B, C, in_shape = dX.shape[0], dX.shape[1], tuple(dX.shape[2:])
    slab = dcols[:, :, t]  # (B, C, *out)
    for i in range(1, len(in_shape)):
        before = (slice(None),) * (i + 2)
        slab[before + (slice(0, positions[i].start),)] = 0
        slab[before + (slice(positions[i].stop, None),)] = 0
    pitch = [math.prod(in_shape[i + 1:]) for i in range(len(in_shape))]
    delta = sum(e * q for e, q in zip(shifts, pitch))
    size = math.prod(in_shape)
    lo = max(positions[0].start * pitch[0], -delta)
    hi = min(positions[0].stop * pitch[0], size - delta)
    flat_dX = dX.reshape(B, C, size)
    flat_dcols = dcols.reshape(dcols.shape[:3] + (math.prod(dcols.shape[3:]),))  # (B, C, K, P): the same pitch
    flat_dX[:, :, lo + delta:hi + delta] += flat_dcols[:, :, t, lo:hi]


_CHUNK_BYTES = 2 << 20  # dcols made and folded ~2 MB at a time where the GEMMs run per example (L2/L3-sized)


def _conv_kernels():
    """NumPy's convolution kernels: the same unfolding and GEMMs as the Array-API ones, laid out for one GEMM over
    all B·P positions (per-example GEMMs where the (O, C·K) product is small beside the positions) — the unfolding
    written tap by tap straight into the (C, K, B, *out) matrix, its adjoint added tap by tap, in the same order,
    straight into dX — with no padded copy of X or dX and no stacked slices or concatenated zeros."""
    from .conv import ConvKernels, conv_output_size

    all_ = slice(None)

    def taps(kernel):
        return enumerate(itertools.product(*[range(k) for k in kernel]))

    class NumpyConvKernels(ConvKernels):
        def columns(self, X, kernel, stride, padding, dilation):
            """cols (C, K, B, *out): tap t's row block holds, at each position, the input its read meets (0 where it
            meets the padding) — one strided copy per tap from X seen as (C, B, *in)."""
            cols, out = self._unfold(X, kernel, stride, padding, dilation, ones_row=False)
            return cols.reshape((X.shape[1], math.prod(kernel), X.shape[0]) + out), out

        def _unfold(self, X, kernel, stride, padding, dilation, ones_row):
            """(cols₂, out): the matrix (C·K, B·P) of :meth:`columns` — with one more row of ones under it when
            ``ones_row``, the row that carries the bias through the forward product and db out of dW's."""
            in_shape = tuple(X.shape[2:])
            out = tuple(conv_output_size(*args) for args in zip(in_shape, kernel, stride, padding, dilation))
            C, K, BP = X.shape[1], math.prod(kernel), X.shape[0] * math.prod(out)
            cols2 = np.zeros((C * K + ones_row, BP), X.dtype)
            if ones_row:
                cols2[-1] = 1
            cols = cols2[:C * K].reshape((C, K, X.shape[0]) + out)
            X_cb = X.swapaxes(0, 1)
            for t, offs in taps(kernel):
                meet = _tap_slices(offs, dilation, stride, padding, out, in_shape)
                if meet is not None:
                    cols[(all_, t, all_) + meet[0]] = X_cb[(all_, all_) + meet[1]]
            return cols2, out

        def forward(self, xp, X, W, stride, padding, dilation, b=None, groups=1):
            """With groups g > 1: one unfolding of all C channels — its (C·K, B·P) rows lie group by group — and the
            g groups' GEMMs as one batched product, Z_j = W₂ⱼ·cols_j (O/g, B·P) for W₂ⱼ (O/g, C/g·K), + b."""
            if groups == 1:
                return self.forward_one(xp, X, W, stride, padding, dilation, b)
            B, O = X.shape[0], W.shape[0]
            cols2, out = self._unfold(X, tuple(W.shape[2:]), stride, padding, dilation, ones_row=False)
            W2 = W.reshape(groups, O // groups, -1)  # (g, O/g, C/g·K)
            Z = np.matmul(W2, cols2.reshape(groups, W2.shape[2], -1)).reshape(O, -1)  # (O, B·P)
            if b is not None:
                Z += b[:, None]
            return Z.reshape((O, B) + out).swapaxes(0, 1), (cols2, W2, tuple(X.shape[2:]))

        def backward(self, xp, saved, dZ, W, stride, padding, dilation, need_dX=True, groups=1):
            """With groups g > 1, each group's sums as one batched product over the groups: dW₂ⱼ = dZ₂ⱼ·cols_jᵀ,
            db = Σ dZ₂ over the positions, dcols_j = W₂ⱼᵀ·dZ₂ⱼ — stacked, they are dcols (C, K, B, *out) — folded."""
            if groups == 1:
                return self.backward_one(xp, saved, dZ, W, stride, padding, dilation, need_dX)
            cols2, W2, in_shape = saved
            B, O, out = dZ.shape[0], dZ.shape[1], tuple(dZ.shape[2:])
            dZ2 = np.ascontiguousarray(dZ.swapaxes(0, 1)).reshape(groups, O // groups, -1)  # (g, O/g, B·P)
            dW = np.matmul(dZ2, cols2.reshape(groups, W2.shape[2], -1).transpose(0, 2, 1)).reshape(W.shape)
            db = np.add.reduce(dZ2.reshape(O, -1), 1)
            if not need_dX:
                return dW, db, None
            dcols = np.matmul(W2.transpose(0, 2, 1), dZ2)  # (g, C/g·K, B·P): the groups' rows are C·K's
            return dW, db, self._fold_rows(xp, dcols, W.shape[1] * groups, B, out, in_shape, tuple(W.shape[2:]),
                                           stride, padding, dilation)

        def forward_one(self, xp, X, W, stride, padding, dilation, b=None):
            """One GEMM over the B·P positions: Z₂ = [W₂ b]·[cols; 1] = W₂·cols + b (O, B·P), seen as (B, O, *out)
            — the bias a column of the product's left factor against a row of ones under cols (C·K, B·P)."""
            B, O = X.shape[0], W.shape[0]
            cols2, out = self._unfold(X, tuple(W.shape[2:]), stride, padding, dilation, ones_row=b is not None)
            W2 = W.reshape(O, -1)
            Z = (W2 if b is None else np.concatenate([W2, b[:, None]], axis=1)) @ cols2
            return Z.reshape((O, B) + out).swapaxes(0, 1), (cols2, W2, tuple(X.shape[2:]))

        def backward_one(self, xp, saved, dZ, W, stride, padding, dilation, need_dX=True):
            """[dW₂ db] = dZ₂·[cols; 1]ᵀ (db = Σ dZ₂ over the positions, out of the same product when the forward
            pass had the row of ones) and dcols = W₂ᵀ·dZ₂, col2im tap by tap.  One GEMM each over the B·P positions
            — or, for a small (O, C·K) over many positions (O·C·K < P, CIFAR's first layer: 32 × 27 over 1,024
            positions an example), per-example products: Σ_b dZ_b·cols_bᵀ ran twice as fast as the one product
            over 65,536 positions, and dcols made and folded a few examples at a time stays in cache — nor is dZ
            copied into the (O, B·P) layout."""
            cols2, W2, in_shape = saved
            B, O, out = dZ.shape[0], dZ.shape[1], tuple(dZ.shape[2:])
            P, CK, kernel = math.prod(out), W2.shape[1], tuple(W.shape[2:])
            per_example = O * CK < P
            if per_example:
                dZ3 = dZ.reshape(B, O, P)
                dWb = np.matmul(dZ3, cols2.reshape(-1, B, P).transpose(1, 2, 0)).sum(axis=0)  # (O, C·K [+ 1])
            else:
                dZ2 = np.ascontiguousarray(dZ.swapaxes(0, 1)).reshape(O, -1)  # (O, B·P)
                dWb = dZ2 @ cols2.T
            dW = np.ascontiguousarray(dWb[:, :CK]).reshape(W.shape)
            db = dWb[:, CK].copy() if cols2.shape[0] > CK else np.add.reduce(np.add.reduce(dZ.reshape(B, O, P), 2), 0)
            if not need_dX:
                return dW, db, None
            if not per_example:
                return dW, db, self._fold_rows(xp, W2.T @ dZ2, W.shape[1], B, out, in_shape, kernel, stride, padding,
                                               dilation)
            return dW, db, self.transposed(xp, dZ, W, in_shape, stride, padding, dilation)

        def transposed(self, xp, X, W, in_shape, stride, padding, dilation, groups=1):
            """col2im(W₂ᵀ·X) (B, C, *in_shape) for X (B, O, *out): per-example products — group j's W₂ⱼᵀ·X_bj, all
            groups in one batched product — made and folded ~2 MB of dcols at a time (in cache), X never copied
            into a GEMM's layout."""
            B, O, out, kernel = X.shape[0], X.shape[1], tuple(X.shape[2:]), tuple(W.shape[2:])
            C, K, P = W.shape[1] * groups, math.prod(kernel), math.prod(out)
            W2T = np.ascontiguousarray(W.reshape(groups, O // groups, -1).transpose(0, 2, 1))  # (g, C/g·K, O/g)
            X4 = X.reshape(B, groups, O // groups, P)
            Y = np.zeros((B, C) + tuple(in_shape), X.dtype)
            step = max(1, _CHUNK_BYTES // max(1, C * K * P * X.itemsize))
            for b0 in range(0, B, step):  # ~2 MB of dcols at a time
                dcols = np.matmul(W2T, X4[b0:b0 + step]).reshape((-1, C, K) + out)  # (b, C, K, *out)
                self._fold_into(Y[b0:b0 + step], dcols, kernel, stride, padding, dilation)
            return Y

        def _fold_rows(self, xp, dcols, C, B, out, in_shape, kernel, stride, padding, dilation):
            """col2im of the GEMM's dcols (C·K, B·P) — W₂ᵀ·dZ₂ over all B·P positions — read as (B, C, K, *out)
            without a copy."""
            dcols = dcols.reshape((C, math.prod(kernel), B) + out)
            return self.fold(xp, dcols.transpose((2, 0, 1) + tuple(range(3, 3 + len(out)))), in_shape, kernel,
                             stride, padding, dilation)

        def fold(self, xp, dcols, in_shape, kernel, stride, padding, dilation):
            """col2im of dcols (B, C, K, *out), the adjoint of :meth:`columns`: tap t's (B, C, *out) slab added where
            the tap read the input — only at the positions whose read fell inside it — into dX (B, C, *in); taps in
            order, so the same sums in the same order as the Array-API fold.  ``dcols`` may be a view of another
            layout (the GEMM's (C, K, B, *out)); its entries that read the padding may be overwritten with 0."""
            dX = np.zeros(dcols.shape[:2] + tuple(in_shape), dcols.dtype)
            self._fold_into(dX, dcols, kernel, stride, padding, dilation)
            return dX

        def _fold_into(self, dX, dcols, kernel, stride, padding, dilation):
            """:meth:`fold`'s sums added into dX (B, C, *in), where dcols's positions lie contiguous (it writes 0s
            into dcols) and there is more than one axis, as shifted runs (:func:`_add_shifted`): a stride-1
            convolution as wide as its input one run per tap; a strided one whose output is as wide as the input's
            phase grids (⌈n/s⌉, e.g. k 3 or 4, stride 2, padding 1) one run per tap into its phase — the inputs
            q ≡ r (mod s), where tap o's reads land (r = (o·d − p) mod s), at q // s = j + ⌊(o·d − p)/s⌋, a shift —
            each phase then added into its strided slice of dX.  Every input gets the same taps in the same order
            as tap-by-tap slices (each phase starts at 0)."""
            in_shape, out = tuple(dX.shape[2:]), tuple(dcols.shape[3:])
            item, pitch = dcols.itemsize, [math.prod(out[i + 1:]) for i in range(len(out))]
            grid = tuple(-(-n // s) for n, s in zip(in_shape, stride)) if len(kernel) > 1 else None  # ⌈n/s⌉
            runs = grid is not None and out[1:] == grid[1:] and \
                all(st == item * q for st, q in zip(dcols.strides[3:], pitch))
            phased = runs and set(stride) != {1}
            phases = np.zeros(tuple(stride) + tuple(dX.shape[:2]) + grid, dX.dtype) if phased else None
            for t, offs in taps(kernel):
                meet = _tap_slices(offs, dilation, stride, padding, out, in_shape)
                if meet is None:
                    continue
                if not runs:
                    dX[(all_, all_) + meet[1]] += dcols[(all_, all_, t) + meet[0]]
                    continue
                reach = [o * d - p for o, d, p in zip(offs, dilation, padding)]
                if phased:  # (s1, ..., B, C, *grid)[r]: the phase this tap's reads land in
                    _add_shifted(phases[tuple(q % s for q, s in zip(reach, stride))], dcols, t,
                                 [q // s for q, s in zip(reach, stride)], meet[0])
                else:
                    _add_shifted(dX, dcols, t, reach, meet[0])
            if phased:
                for r in itertools.product(*[range(s) for s in stride]):
                    part = tuple(slice(0, len(range(q, n, s))) for q, n, s in zip(r, in_shape, stride))
                    dX[(all_, all_) + tuple(slice(q, None, s) for q, s in zip(r, stride))] += phases[r][(all_, all_) +
                                                                                                         part]


    return NumpyConvKernels()


def _namespace():
    """array-api-compat's NumPy namespace, with float ``sum``/``max`` going straight to the ufunc reduce
    and ``astype``, ``reshape`` and ``take`` straight to the array methods.

    ``np.sum``/``np.max`` reach ``np.add.reduce``/``np.maximum.reduce`` through Python-level argument
    handling (~1.5 µs a call), compat's ``astype`` checks its arguments (~1.4 µs), ``np.reshape``/``np.take``
    dispatch through ``__array_function__`` (~0.6 µs); a small model's train
    step makes several of these calls.  The results are identical (same ufunc, same summation order, same
    cast).  Installed as the namespace of ``numpy.ndarray`` so layers, losses and optimizers all see it
    through ``namespace_of``.
    """
    import array_api_compat.numpy as compat

    def sum(x, /, *, axis=None, dtype=None, keepdims=False):
        if dtype is None and x.dtype.kind == "f":
            return np.add.reduce(x, axis=axis, keepdims=keepdims)
        return compat.sum(x, axis=axis, dtype=dtype, keepdims=keepdims)

    def max(x, /, *, axis=None, keepdims=False):
        if x.dtype.kind == "f" and x.size:
            return np.maximum.reduce(x, axis=axis, keepdims=keepdims)
        return compat.max(x, axis=axis, keepdims=keepdims)

    def astype(x, dtype, /, *, copy=True, device=None):
        if device is None or device == "cpu":
            return x.astype(dtype, copy=copy)
        return compat.astype(x, dtype, copy=copy, device=device)

    def reshape(x, /, shape, *, copy=None):
        return x.reshape(shape) if copy is None else compat.reshape(x, shape, copy=copy)

    def take(x, indices, /, *, axis=None):
        return x.take(indices, axis=axis)

    ns = derived_namespace(compat, "numpy_namespace", sum=sum, max=max, astype=astype, reshape=reshape, take=take,
                           conv_kernels=_conv_kernels())
    for kind in {np.ndarray, *np.sctypeDict.values()}:  # arrays and the 0-d scalars reductions return
        register_namespace(kind, ns)
    return ns


NAMESPACE = _namespace()


class NumpyBackend(Backend):
    """NumPy on the CPU: one device, NumPy's own generator for the random layers, eager steps."""

    name = "numpy"
    listed = 0  # its place in BACKEND_NAMES
    namespace_test = "is_numpy_namespace"

    one_device = True

    @classmethod
    def own_namespace(cls):
        return NAMESPACE

    @classmethod
    def load(cls, device, dtype):
        if device not in (None, "cpu"):
            raise ValueError(f"backend 'numpy' runs on the CPU only, got device={device!r}")
        return cls(NAMESPACE, "cpu", dtype, "cpu")

    @classmethod
    def holds(cls, x):
        return isinstance(x, (np.ndarray, np.generic))

    @staticmethod
    def host_copy_of(x):
        return np.array(x, copy=True)

    @staticmethod
    def like_array(a, x):
        return np.asarray(a)

    def random_key(self, seed):
        """NumPy's PCG64 (array-api-strict draws the same numbers from it)."""
        return np.random.default_rng(int(seed))

    def uniform(self, key, shape, dtype):
        return key.random(tuple(int(n) for n in shape), dtype=dtype), key

    def low_precision_refusal(self, dtype_name):
        return "NumPy has no bfloat16 dtype and no BLAS matmul for float16"
