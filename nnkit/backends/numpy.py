"""NumPy: the CPU backend, with array-api-compat's namespace made cheaper per call where a small step feels it."""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..functional import register_namespace
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


def _add_shifted(dX, cf, t, offs, dilation, padding, positions):
    """Tap t's slab of ``cf`` (C, K, B, *out), contiguous, added into dX (B, C, *in) as one run per (channel,
    example): with stride 1 and the output as wide as the input on every axis but the first, the input a position
    reads at this tap sits a fixed distance δ = Σ_i (o_i·d_i − p_i)·pitch_i away in the flattened (row-major)
    positions, so the slab is one shifted slice — once its positions whose read leaves the input on a later axis
    (and would wrap into the neighbouring row) are set to 0 in ``cf`` (dX + 0 = dX: the same sums as the
    tap-by-tap slices).  ``positions``: the slices of :func:`_tap_slices`."""
    B, C, in_shape = dX.shape[0], dX.shape[1], tuple(dX.shape[2:])
    slab = cf[:, t]  # (C, B, *out)
    for i in range(1, len(in_shape)):
        before = (slice(None),) * (i + 2)
        slab[before + (slice(0, positions[i].start),)] = 0
        slab[before + (slice(positions[i].stop, None),)] = 0
    pitch = [math.prod(in_shape[i + 1:]) for i in range(len(in_shape))]
    delta = sum((o * d - p) * q for o, d, p, q in zip(offs, dilation, padding, pitch))
    size = math.prod(in_shape)
    lo = max(positions[0].start * pitch[0], -delta)
    hi = min(positions[0].stop * pitch[0], size - delta)
    flat_dX = dX.reshape(B, C, size).swapaxes(0, 1)  # (C, B, size), views
    flat_cf = cf.reshape(cf.shape[:3] + (math.prod(cf.shape[3:]),))  # (C, K, B, P): the same pitch past the first axis
    flat_dX[:, :, lo + delta:hi + delta] += flat_cf[:, t, :, lo:hi]


def _conv_kernels():
    """NumPy's convolution kernels: the same unfolding and GEMMs as the Array-API ones, laid out for one GEMM over
    all B·P positions — the unfolding written tap by tap straight into the (C, K, B, *out) matrix, its adjoint
    added tap by tap, in the same order, straight into dX — with no padded copy of X or dX and no stacked slices
    or concatenated zeros."""
    from ..layers.convolutional import ConvKernels, conv_output_size

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

        def forward(self, xp, X, W, stride, padding, dilation, b=None):
            """One GEMM over the B·P positions: Z₂ = [W₂ b]·[cols; 1] = W₂·cols + b (O, B·P), seen as (B, O, *out)
            — the bias a column of the product's left factor against a row of ones under cols (C·K, B·P)."""
            B, O = X.shape[0], W.shape[0]
            cols2, out = self._unfold(X, tuple(W.shape[2:]), stride, padding, dilation, ones_row=b is not None)
            W2 = W.reshape(O, -1)
            Z = (W2 if b is None else np.concatenate([W2, b[:, None]], axis=1)) @ cols2
            return Z.reshape((O, B) + out).swapaxes(0, 1), (cols2, W2, tuple(X.shape[2:]))

        def backward(self, xp, saved, dZ, W, stride, padding, dilation, need_dX=True):
            """[dW₂ db] = dZ₂·[cols; 1]ᵀ (db = Σ dZ₂ over the positions, out of the same product when the forward
            pass had the row of ones) and dcols = W₂ᵀ·dZ₂, one GEMM each over the B·P positions; col2im tap by
            tap."""
            cols2, W2, in_shape = saved
            B, O, out = dZ.shape[0], dZ.shape[1], tuple(dZ.shape[2:])
            P, CK = math.prod(out), W2.shape[1]
            per_example = O * CK < P
            dZ2 = None if per_example and not need_dX else np.ascontiguousarray(dZ.swapaxes(0, 1)).reshape(O, -1)
            if per_example:
                # a small (O, C·K) product over a long B·P sum (CIFAR's first layer: 32 × 27 over 65,536) runs twice
                # as fast as B per-example products summed, Σ_b dZ_b·cols_bᵀ (each cols_b (C·K, P) a view), as
                # one product over all the positions
                dWb = np.matmul(dZ.reshape(B, O, P), cols2.reshape(-1, B, P).transpose(1, 2, 0)).sum(axis=0)
            else:
                dWb = dZ2 @ cols2.T  # (O, C·K [+ 1])
            dW = np.ascontiguousarray(dWb[:, :CK]).reshape(W.shape)
            db = dWb[:, CK].copy() if cols2.shape[0] > CK else np.add.reduce(np.add.reduce(dZ.reshape(B, O, P), 2), 0)
            if not need_dX:
                return dW, db, None
            kernel = tuple(W.shape[2:])
            dcols = (W2.T @ dZ2).reshape((W.shape[1], math.prod(kernel), B) + out)  # (C, K, B, *out)
            return dW, db, self.fold(xp, dcols.swapaxes(0, 2).swapaxes(1, 2), in_shape, kernel, stride, padding,
                                     dilation)

        def fold(self, xp, dcols, in_shape, kernel, stride, padding, dilation):
            """col2im of dcols (B, C, K, *out), the adjoint of :meth:`columns`, in the layout the GEMM leaves dcols in
            ((C, K, B, *out), of which dcols is a view): tap t's (C, B, *out) slab added where the tap read the input
            — only at the positions whose read fell inside it — into dX (B, C, *in) seen as (C, B, *in); taps in
            order, so the same sums in the same order as the Array-API fold."""
            n, in_shape = len(kernel), tuple(in_shape)
            cf = dcols.transpose((1, 2, 0) + tuple(range(3, 3 + n)))  # (C, K, B, *out)
            out = tuple(cf.shape[3:])
            dX = np.zeros(cf.shape[2:3] + cf.shape[:1] + in_shape, cf.dtype)  # (B, C, *in)
            dX_cb = dX.swapaxes(0, 1)
            rows = n > 1 and set(stride) == {1} and out[1:] == in_shape[1:] and cf.flags.c_contiguous
            for t, offs in taps(kernel):
                meet = _tap_slices(offs, dilation, stride, padding, out, in_shape)
                if meet is None:
                    continue
                if rows:
                    _add_shifted(dX, cf, t, offs, dilation, padding, meet[0])
                else:
                    dX_cb[(all_, all_) + meet[1]] += cf[(all_, t, all_) + meet[0]]
            return dX


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
