"""The one place that knows which array library nnkit is talking to.

Everything else in nnkit (layers, activations, losses, optimizers, the model)
is written against the Python Array API standard and sees only the namespace
``backend.xp``.  A :class:`Backend` bundles

* ``xp``      -- the array-API namespace (array-api-compat's wrapper where the
  library needs one),
* ``device``  -- where arrays are created,
* ``dtype``   -- the floating dtype of parameters and activations,
* transfers   -- ``asarray`` (host -> device) and ``to_numpy`` (device -> host,
  counted in ``host_transfers`` so tests can prove a loop does not sync),
* seeding     -- random numbers are always drawn on the host from a
  ``numpy.random.Generator`` and transferred, so one seed gives one model on
  every backend,
* ``synchronize()`` -- wait for queued device work (a no-op on the CPU).
"""
from __future__ import annotations

import numpy as np
import array_api_compat

from .functional import namespace_of, register_namespace

__all__ = ["Backend", "get_backend", "BACKEND_NAMES", "DTYPE_NAMES", "host_copy", "like"]

BACKEND_NAMES = ("numpy", "cupy", "torch", "array_api_strict")
DTYPE_NAMES = ("float32", "float64")


class Backend:
    """An array library, a device on it and a floating dtype.

    Build one with :func:`get_backend`; pass it (or its name) as ``backend=``.
    """

    def __init__(self, name, xp, device=None, dtype="float32"):
        self.name = name
        self.xp = xp
        self.device = device
        if isinstance(dtype, str):
            dtype_name = dtype
        else:
            dtype_name = _dtype_name(xp, dtype)
        if dtype_name not in DTYPE_NAMES:
            raise ValueError(
                f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)}"
            )
        self.dtype_name = dtype_name
        self.dtype = getattr(xp, dtype_name)
        self.host_transfers = 0
        probe = xp.empty(0, dtype=self.dtype, device=device)
        self._array_type, self._array_dtype = type(probe), probe.dtype  # for ready(): no conversions

    def __reduce__(self):
        # pickled by name (the namespace is a module): unpickling looks the backend up again
        known = self.name in BACKEND_NAMES
        return (get_backend, (self.name if known else self.xp, self.device, self.dtype_name))

    # -- identity -------------------------------------------------------------
    def __repr__(self):
        dev = "" if self.device is None else f", device={self.device!r}"
        return f"Backend({self.name!r}{dev}, dtype={self.dtype_name!r})"

    def with_dtype(self, dtype):
        """The same library and device with another floating dtype."""
        return Backend(self.name, self.xp, self.device, dtype)

    # -- arrays -----------------------------------------------------------------
    def owns(self, x):
        """True when ``x`` is an array of this backend's library."""
        if not array_api_compat.is_array_api_obj(x):
            return False
        try:
            return namespace_of(x) is self.xp
        except TypeError:
            return False

    def ready(self, x):
        """True when ``x`` is already an array of this library, dtype and device: nothing to convert.

        A cheap test (no namespace lookup) for the training hot path.
        """
        if type(x) is not self._array_type or x.dtype != self._array_dtype:
            return False
        return self.name == "numpy" or array_api_compat.device(x) == self.device

    def asarray(self, x, dtype=None):
        """Host data (NumPy, lists) or this library's arrays -> an array on this device.

        Arrays already here are returned as they are (no copy) unless ``dtype``
        asks for another dtype.
        """
        xp = self.xp
        if self.owns(x):
            if self.device is not None and array_api_compat.device(x) != self.device:
                x = array_api_compat.to_device(x, self.device)
            if dtype is not None and x.dtype != dtype:
                x = xp.astype(x, dtype)
            return x
        if self.name == "torch":
            # torch cannot take a read-only or non-contiguous NumPy array without a warning
            x = np.ascontiguousarray(x)
            if not x.flags.writeable:
                x = x.copy()
        return xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x):
        """Copy an array of this backend to a NumPy array on the host.

        Every call is counted in ``host_transfers``: on a GPU this is a
        device -> host copy and a synchronisation.
        """
        self.host_transfers += 1
        if isinstance(x, (np.ndarray, np.generic)):
            return np.asarray(x)
        if self.name == "cupy":
            return x.get()
        if self.name == "torch":
            return x.detach().cpu().numpy()
        if self.name == "array_api_strict":
            cpu = type(self.device)("CPU_DEVICE") if self.device is not None else None
            if cpu is not None and x.device != cpu:
                x = x.to_device(cpu)
            return np.asarray(x)
        return np.from_dlpack(x)

    @staticmethod
    def host_float64(data):
        """Host data (an initialiser's output, a state dict entry) as a float64 NumPy array."""
        return np.asarray(data, dtype=np.float64)

    def to_float(self, x):
        """A 0-d array -> Python float (one host transfer)."""
        return float(self.to_numpy(x))

    def rng(self, seed=None):
        """The host random generator all of nnkit's randomness is drawn from."""
        if isinstance(seed, np.random.Generator):
            return seed
        return np.random.default_rng(seed)

    def synchronize(self):
        """Block until all work queued on the device has finished."""
        if self.name == "cupy":
            import cupy

            cupy.cuda.get_current_stream().synchronize()
        elif self.name == "torch" and str(self.device).startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)


def host_copy(x):
    """A NumPy copy of an array of any supported library (a device → host transfer for GPU arrays)."""
    if isinstance(x, np.ndarray):
        return np.array(x, copy=True)
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy().copy()
    return np.array(np.from_dlpack(x), copy=True)


def like(a, x):
    """Host data ``a`` as an array of ``x``'s library on ``x``'s device (the way back from ``host_copy``)."""
    if isinstance(x, np.ndarray):
        return np.asarray(a)
    return namespace_of(x).asarray(a, device=array_api_compat.device(x))


def _dtype_name(xp, dtype):
    for name in DTYPE_NAMES:
        if dtype == getattr(xp, name, None):
            return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _numpy_namespace():
    """array-api-compat's NumPy namespace, with float ``sum``/``max`` going straight to the ufunc reduce
    and ``astype`` straight to the array method.

    ``np.sum``/``np.max`` reach ``np.add.reduce``/``np.maximum.reduce`` through Python-level
    argument handling (~1.5 µs a call), compat's ``astype`` checks its arguments (~1.4 µs); a small
    model's train step makes several of these calls.  The results are identical (same ufunc, same
    summation order, same cast).  Installed as the namespace of
    ``numpy.ndarray`` so layers, losses and optimizers all see it through ``namespace_of``.
    """
    import types

    import array_api_compat.numpy as compat

    ns = types.ModuleType("nnkit.backend.numpy_namespace", compat.__doc__)
    ns.__dict__.update({k: v for k, v in vars(compat).items() if not k.startswith("__")})
    ns.__array_api_version__ = compat.__array_api_version__

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

    ns.sum, ns.max, ns.astype = sum, max, astype
    for kind in {np.ndarray, *np.sctypeDict.values()}:  # arrays and the 0-d scalars reductions return
        register_namespace(kind, ns)
    return ns


_NUMPY = _numpy_namespace()


def _load_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(
            "backend 'cupy' needs CuPy, which is not installed: "
            "pip install 'nnkit[cuda12]' (or 'nnkit[cuda13]' for CUDA 13)"
        ) from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, driver missing, ...
        raise RuntimeError(
            f"backend 'cupy': CuPy is installed but no CUDA device is usable ({exc}); "
            "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use backend='numpy'"
        ) from exc
    if n < 1:
        raise RuntimeError(
            "backend 'cupy': CuPy is installed but no CUDA device is usable (0 devices found); "
            "check CUDA_VISIBLE_DEVICES, or use backend='numpy'"
        )
    return array_api_compat.array_namespace(cupy.empty(0))


def _load_torch():
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "backend 'torch' needs PyTorch, which is not installed: pip install torch"
        ) from exc
    import array_api_compat.torch as xp

    return xp


def _load_strict():
    try:
        import array_api_strict as xp
    except ImportError as exc:
        raise RuntimeError(
            "backend 'array_api_strict' needs array-api-strict: pip install array-api-strict"
        ) from exc
    return xp


def _name_of_namespace(module):
    """Map an imported module (raw or array-api-compat wrapped) to a backend name."""
    for name, test in (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("array_api_strict", array_api_compat.is_array_api_strict_namespace),
    ):
        if test(module):
            return name
    return None


def get_backend(name="numpy", device=None, dtype=None):
    """Return the :class:`Backend` for ``name``.

    ``name`` is one of ``"numpy"``, ``"cupy"``, ``"torch"``,
    ``"array_api_strict"``, an already-imported array module (``numpy``,
    ``cupy``, ``torch``, ``array_api_strict`` or any module that follows the
    Array API standard), or a :class:`Backend` (returned as it is, or with
    ``dtype`` applied).  ``dtype`` is ``"float32"`` (the default) or ``"float64"``.
    ``device`` is the library's device (``"cuda:0"`` for torch, a CuPy device
    id, ``array_api_strict.Device("device1")``); ``None`` is the library's default.
    """
    if isinstance(name, Backend):
        return name if dtype is None or name.dtype_name == dtype else name.with_dtype(dtype)
    if dtype is None:
        dtype = "float32"
    if not isinstance(name, str):
        module = name
        known = _name_of_namespace(module)
        if known is None:
            if not hasattr(module, "__array_api_version__"):
                raise ValueError(
                    f"backend {module!r} is not an array library: expected one of "
                    f"{', '.join(repr(n) for n in BACKEND_NAMES)} or a module that follows "
                    "the Python Array API standard"
                )
            return Backend(getattr(module, "__name__", str(module)), module, device, dtype)
        name = known
    if name == "numpy":
        xp = _NUMPY
        if device not in (None, "cpu"):
            raise ValueError(f"backend 'numpy' runs on the CPU only, got device={device!r}")
        return Backend("numpy", xp, "cpu", dtype)
    if name == "cupy":
        xp = _load_cupy()
        import cupy

        dev = cupy.cuda.Device(0 if device is None else device)
        return Backend("cupy", xp, dev, dtype)
    if name == "torch":
        xp = _load_torch()
        import torch

        return Backend("torch", xp, torch.device("cpu" if device is None else device), dtype)
    if name == "array_api_strict":
        xp = _load_strict()
        return Backend("array_api_strict", xp, device if device is not None else xp.Device("CPU_DEVICE"), dtype)
    raise ValueError(
        f"unknown backend {name!r}: expected one of {', '.join(repr(n) for n in BACKEND_NAMES)}, "
        "or an imported array module"
    )
