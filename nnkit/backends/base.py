"""The backend base class: an array library, a device on it and a floating dtype, written once against the
Array API standard.

A :class:`Backend` bundles

* ``xp``      -- the array-API namespace (array-api-compat's wrapper where the library needs one, with the
  fixes a library's own subclass makes),
* ``device``  -- where arrays are created, normalised once by the subclass (a CuPy ``Device``, a
  ``torch.device`` with its index, a JAX ``Device``),
* ``dtype``   -- the floating dtype of parameters and activations,
* transfers   -- ``asarray`` (host -> device) and ``to_numpy`` (device -> host, a writable NumPy array,
  counted in ``host_transfers`` so tests can prove a loop does not sync),
* seeding     -- initial weights are drawn on the host from a ``numpy.random.Generator`` and transferred,
  so one seed gives one model on every backend; layers that draw in training use ``random_key``/``uniform``,
* ``synchronize()`` and ``activate()`` -- wait for the device, make it the current one.

This class is the generic backend: everything here works for any library that follows the standard.  A
library's subclass (one file each in this folder) overrides only what differs for it: random numbers on the
device, compilation, copy streams, synchronisation, device names, its fast paths.  The rules the rest of
nnkit relies on — every array created on the backend's device, no per-step device tensor built from a
Python scalar, no silent float32 for float64 — are each library's subclass's to keep.
"""
from __future__ import annotations

import contextlib

import numpy as np
import array_api_compat

from .functional import namespace_of

__all__ = ["Backend", "DTYPE_NAMES", "cuda_index"]

DTYPE_NAMES = ("float32", "float64")
NO_CONTEXT = contextlib.nullcontext()


class Backend:
    """An array library, a device on it and a floating dtype.

    Build one with :func:`nnkit.get_backend`; pass it (or its name) as ``backend=``.  ``device_spec`` is the
    plain, picklable form of ``device`` that :func:`nnkit.get_backend` turns back into it (``"cuda:1"``,
    ``"cpu:0"``, ...).

    Subclasses set ``name`` (the ``backend=`` string) and implement :meth:`load` (the library's namespace and
    device for a user's ``device=``) and :meth:`matches` (whether an imported module is this library); the
    factory picks the class by these and by nothing else.
    """

    name: str | None = None  # the backend= string; None for the generic backend (named after its module)
    one_device = False       # True where every array lives on one device (NumPy): no device checks
    compiles = False         # True where compile() compiles a step
    immutable = False        # True where arrays never change once made (JAX): a copy to keep one is not needed

    def __init__(self, xp, device=None, dtype="float32", device_spec=None, name=None):
        if name is not None:
            self.name = name
        self.xp = xp
        self.device = device
        self.device_spec = device_spec
        dtype_name = dtype if isinstance(dtype, str) else _dtype_name(xp, dtype)
        if dtype_name not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)}")
        self.check_dtype(dtype_name)
        self.dtype_name = dtype_name
        self.dtype = getattr(xp, dtype_name)
        self.host_transfers = 0
        with self.activate():
            probe = xp.empty(0, dtype=self.dtype, device=device)
        self._array_type, self._array_dtype = type(probe), probe.dtype  # for ready(): no conversions

    # -- what a library's subclass provides --------------------------------------------------------
    namespace_test: str | None = None  # the name of array-api-compat's ``is_<library>_namespace`` test

    @classmethod
    def matches(cls, module):
        """True when the imported module ``module`` (raw or array-api-compat's) is this class's library:
        array-api-compat's ``namespace_test`` says so, or it is the namespace this class made."""
        test = getattr(array_api_compat, cls.namespace_test) if cls.namespace_test else None
        return (test is not None and test(module)) or (module is not None and module is cls.own_namespace())

    @classmethod
    def own_namespace(cls):
        """The namespace this class derived from array-api-compat's (with the library's fixes), once made."""
        return None

    @classmethod
    def load(cls, device, dtype):
        """The backend for the user's ``device`` (None: the library's current/default device)."""
        raise NotImplementedError

    def check_dtype(self, dtype_name):
        """Refuse a dtype the library would silently compute in another (JAX's float64 without x64 mode)."""

    @classmethod
    def holds(cls, x):
        """True when ``x`` is an array of this class's library (for :func:`host_copy` and friends)."""
        return False

    @staticmethod
    def host_copy_of(x):
        """A writable NumPy copy of ``x``, an array this class holds (any library with DLPack by default)."""
        try:
            return np.from_dlpack(x, device="cpu", copy=True)
        except (TypeError, ValueError, BufferError, AttributeError, NotImplementedError):
            return np.array(x, copy=True)

    @staticmethod
    def finish_array(x):
        """Wait until the queued work producing ``x`` (an array this class holds) is done; no-op by default."""

    @staticmethod
    def like_array(a, x):
        """Host data ``a`` as an array of ``x``'s library on ``x``'s device."""
        return namespace_of(x).asarray(a, device=array_api_compat.device(x))

    # -- pickling and identity -------------------------------------------------------------------
    def __reduce__(self):
        # pickled as its class's load and the device spec (the namespace is a module, devices often are not
        # picklable): unpickling loads the library again
        return (type(self).load, (self.device_spec, self.dtype_name))

    def __repr__(self):
        dev = "" if self.device is None or self.one_device else f", device={self.device_spec!r}"
        return f"Backend({self.name!r}{dev}, dtype={self.dtype_name!r})"

    def with_dtype(self, dtype):
        """The same library and device with another floating dtype."""
        return type(self)(self.xp, self.device, dtype, self.device_spec, self.__dict__.get("name"))

    # -- arrays ------------------------------------------------------------------------------------
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
        return self.one_device or array_api_compat.device(x) == self.device

    def asarray(self, x, dtype=None):
        """Host data (NumPy, lists) or this library's arrays -> an array on this device.

        Arrays already here are returned as they are (no copy) unless ``dtype`` asks for another dtype.
        """
        if self.owns(x):
            if not self.one_device and array_api_compat.device(x) != self.device:
                x = array_api_compat.to_device(x, self.device)
            if dtype is not None and x.dtype != dtype:
                x = self.xp.astype(x, dtype)
            return x
        return self.from_host(x, dtype)

    def from_host(self, x, dtype=None):
        """Host data -> an array on this device (the copy ``asarray`` makes for data not of this library)."""
        with self.activate():
            return self.xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x):
        """A NumPy array on the host with the values of ``x`` (an array of this backend).

        Writable: a copy for every library but NumPy (whose arrays come back as they are).  Every call is
        counted in ``host_transfers``: on a GPU this is a device -> host copy and a synchronisation.
        """
        self.host_transfers += 1
        if isinstance(x, np.ndarray):
            return x
        return self.host_copy_of(x)

    @staticmethod
    def host_float64(data):
        """Host data (an initialiser's output, a state dict entry) as a float64 NumPy array."""
        return np.asarray(data, dtype=np.float64)

    def to_float(self, x):
        """A 0-d array -> Python float (one host transfer)."""
        return float(self.to_numpy(x))

    def rng(self, seed=None):
        """The host random generator the initial weights and the shuffles are drawn from."""
        if isinstance(seed, np.random.Generator):
            return seed
        return np.random.default_rng(seed)

    # -- random numbers on the device ------------------------------------------------------------
    def random_key(self, seed):
        """A device random generator seeded with the integer ``seed`` (for layers that draw in training).

        Generic: NumPy's PCG64 on the host (libraries without a generator draw there and transfer)."""
        return np.random.default_rng(int(seed))

    def uniform(self, key, shape, dtype):
        """``(U, key)``: U[0, 1) of ``shape`` and ``dtype`` on the device, and the generator to use next (the
        same object for stateful generators, a new key on JAX).  Generic: drawn on the host, transferred."""
        shape = tuple(int(n) for n in shape)
        return self.asarray(key.random(shape), dtype=dtype), key

    # -- the device ----------------------------------------------------------------------------------
    def activate(self, tf32=False):
        """A context manager that makes this backend's device the current one (CuPy, torch-CUDA).

        CuPy and PyTorch launch kernels and allocate results on the *current* device; ``fit``,
        ``train_step`` and ``predict`` run inside it so a model on GPU 1 stays on GPU 1.  ``tf32=True`` (the
        ``"tf32"`` precision policy) also lets float32 matmuls use TF32 tensor cores inside it, and restores
        the library's setting on the way out.
        """
        return self.tf32() if tf32 else self.device_context()

    def device_context(self):
        """The context that makes this device current (nothing to do for one-device and CPU libraries)."""
        return NO_CONTEXT

    @contextlib.contextmanager
    def tf32(self):
        """Inside: this device current and float32 matmuls on TF32 tensor cores (where the library has them)."""
        with self.device_context():
            yield

    @property
    def on_cuda(self):
        """True when this backend's arrays live on an NVIDIA GPU (CuPy, torch-CUDA, JAX on a GPU)."""
        return False

    def low_precision_refusal(self, dtype_name):
        """Why this backend cannot run matmuls in ``dtype_name`` (``"bfloat16"``, ``"float16"``) for a mixed
        precision policy, or None when it can (probed with a 2×2 product)."""
        dt = getattr(self.xp, dtype_name, None)
        if dt is not None:
            try:
                with self.activate():
                    a = self.xp.ones((2, 2), dtype=dt, device=self.device)
                    a @ a
                return None
            except Exception:  # the library has the dtype but no matmul for it
                pass
        return f"{self.name} has no {dtype_name} matrix product"

    def compile(self, fn):
        """``fn`` compiled for this backend, or None where nnkit runs steps eagerly (the default).

        ``fn`` must be a pure function of its arguments (arrays, dicts of arrays, Python floats)."""
        return None

    @contextlib.contextmanager
    def copy_stream(self):
        """Host-to-device copies for a background thread that prepares batches ahead
        (``nnkit.data.prefetch``): inside, this backend's copies go on a side stream where the library has
        one, and ``done()`` waits for them in *that* thread.  On the CPU (the default) there is nothing to do."""
        yield Copies(None)

    def synchronize(self, *arrays):
        """Block until the work queued on this backend's device (and producing ``arrays``) is done.
        A no-op for synchronous libraries (the default)."""


class Copies:
    """What :meth:`Backend.copy_stream` yields: ``done()`` waits for the copies made inside it."""

    def __init__(self, stream):
        self.stream = stream

    def done(self):
        if self.stream is not None:
            self.stream.synchronize()


def _dtype_name(xp, dtype):
    for name in DTYPE_NAMES:
        if dtype == getattr(xp, name, None):
            return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def derived_namespace(base, name, **overrides):
    """A copy of the namespace module ``base`` with some functions replaced (a library's fixes)."""
    import types

    ns = types.ModuleType(f"nnkit.backends.{name}", base.__doc__)
    ns.__dict__.update({k: v for k, v in vars(base).items() if not k.startswith("__")})
    ns.__array_api_version__ = base.__array_api_version__
    ns.__dict__.update(overrides)
    return ns


def cuda_index(spec, current, count=None):
    """The GPU index a device spec names: ``None`` (the current device, ``current()``), an integer,
    ``"cuda"``, ``"cuda:N"``, ``"gpu:N"``, or an object with an integer ``id`` (a CuPy ``Device``)."""
    if spec is None:
        index = int(current())
    elif isinstance(spec, bool):
        raise ValueError(f"device must be a GPU index or 'cuda:N', got {spec!r}")
    elif isinstance(spec, (int, np.integer)):
        index = int(spec)
    elif isinstance(spec, str):
        kind, _, num = spec.strip().lower().partition(":")
        if kind not in ("cuda", "gpu") or (num and not num.isdigit()):
            raise ValueError(f"device {spec!r} is not a GPU: expected 'cuda', 'cuda:N' or an index N")
        index = int(num) if num else int(current())
    elif isinstance(getattr(spec, "id", None), int):
        index = spec.id
    else:
        raise ValueError(f"device {spec!r} is not a GPU: expected 'cuda', 'cuda:N' or an index N")
    if index < 0 or (count is not None and index >= count):
        raise ValueError(f"device {spec!r}: GPU {index} does not exist ({count} visible)")
    return index
