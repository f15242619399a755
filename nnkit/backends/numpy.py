"""NumPy: the CPU backend, with array-api-compat's namespace made cheaper per call where a small step feels it."""
from __future__ import annotations

import numpy as np

from ..functional import register_namespace
from .base import Backend, derived_namespace

__all__ = ["NumpyBackend"]


def _namespace():
    """array-api-compat's NumPy namespace, with float ``sum``/``max`` going straight to the ufunc reduce
    and ``astype`` straight to the array method.

    ``np.sum``/``np.max`` reach ``np.add.reduce``/``np.maximum.reduce`` through Python-level argument
    handling (~1.5 µs a call), compat's ``astype`` checks its arguments (~1.4 µs); a small model's train
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

    ns = derived_namespace(compat, "numpy_namespace", sum=sum, max=max, astype=astype)
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
