"""The one place that knows which array library nnkit is talking to.

Everything else in nnkit (layers, activations, losses, optimizers, the model)
is written against the Python Array API standard and sees only the namespace
``backend.xp``.  A :class:`Backend` bundles

* ``xp``      -- the array-API namespace (array-api-compat's wrapper where the
  library needs one, with nnkit's fixes for NumPy, CuPy and PyTorch below),
* ``device``  -- where arrays are created, normalised once here (a CuPy
  ``Device``, a ``torch.device`` with its index, a JAX ``Device``),
* ``dtype``   -- the floating dtype of parameters and activations,
* transfers   -- ``asarray`` (host -> device) and ``to_numpy`` (device -> host,
  a writable NumPy array, counted in ``host_transfers`` so tests can prove a
  loop does not sync),
* seeding     -- random numbers are always drawn on the host from a
  ``numpy.random.Generator`` and transferred, so one seed gives one model on
  every backend,
* ``synchronize()`` -- wait for queued work on the backend's device (a no-op on
  the CPU), and ``activate()`` -- make that device the current one while
  training or predicting (CuPy and torch-CUDA kernels run on the current device).

Rules the rest of nnkit relies on, enforced here:

* every array a backend creates is created on its device (array-api-compat's
  CuPy ``zeros``/``empty``/``arange``/``*_like`` ignore ``device=``; ours honour it);
* no per-step operation builds a device tensor from a Python scalar (PyTorch
  through array-api-compat turns the ``0.0`` of ``maximum(Z, 0.0)`` into a
  blocking host-to-device copy; ours passes the scalar to ``torch.clamp``);
* on JAX, ``float64`` needs JAX's 64-bit mode (otherwise JAX silently computes
  in float32): refused with the way to enable it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import types

import numpy as np
import array_api_compat

from .functional import namespace_of, register_namespace

__all__ = ["Backend", "get_backend", "BACKEND_NAMES", "DTYPE_NAMES", "host_copy", "like", "finish",
           "local_rank", "is_sparse"]

BACKEND_NAMES = ("numpy", "cupy", "torch", "array_api_strict", "jax")
DTYPE_NAMES = ("float32", "float64")
_NO_CONTEXT = contextlib.nullcontext()
_THREAD = threading.local()  # per thread: the backend whose copies go through copy_stream()


class Backend:
    """An array library, a device on it and a floating dtype.

    Build one with :func:`get_backend`; pass it (or its name) as ``backend=``.
    ``device_spec`` is the plain, picklable form of ``device`` that :func:`get_backend`
    turns back into it (``"cuda:1"``, ``"cpu:0"``, ...).
    """

    def __init__(self, name, xp, device=None, dtype="float32", device_spec=None):
        self.name = name
        self.xp = xp
        self.device = device
        self.device_spec = device_spec
        if isinstance(dtype, str):
            dtype_name = dtype
        else:
            dtype_name = _dtype_name(xp, dtype)
        if dtype_name not in DTYPE_NAMES:
            raise ValueError(
                f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)}"
            )
        if name == "jax" and dtype_name == "float64":
            _check_jax_x64()
        self.dtype_name = dtype_name
        self.dtype = getattr(xp, dtype_name)
        self.host_transfers = 0
        with self.activate():
            probe = xp.empty(0, dtype=self.dtype, device=device)
        self._array_type, self._array_dtype = type(probe), probe.dtype  # for ready(): no conversions
        self._one_device = name == "numpy"

    def __reduce__(self):
        # pickled by name and device spec (the namespace is a module, devices often are not picklable):
        # unpickling looks the backend up again
        known = self.name in BACKEND_NAMES
        return (get_backend, (self.name if known else self.xp, self.device_spec, self.dtype_name))

    # -- identity -------------------------------------------------------------
    def __repr__(self):
        dev = "" if self.device is None or self._one_device else f", device={self.device_spec!r}"
        return f"Backend({self.name!r}{dev}, dtype={self.dtype_name!r})"

    def with_dtype(self, dtype):
        """The same library and device with another floating dtype."""
        return Backend(self.name, self.xp, self.device, dtype, self.device_spec)

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
        return self._one_device or array_api_compat.device(x) == self.device

    def asarray(self, x, dtype=None):
        """Host data (NumPy, lists) or this library's arrays -> an array on this device.

        Arrays already here are returned as they are (no copy) unless ``dtype``
        asks for another dtype.
        """
        xp = self.xp
        if self.owns(x):
            if not self._one_device and array_api_compat.device(x) != self.device:
                x = array_api_compat.to_device(x, self.device)
            if dtype is not None and x.dtype != dtype:
                x = xp.astype(x, dtype)
            return x
        if self.name == "torch":
            # torch cannot take a read-only or non-contiguous NumPy array without a warning
            x = np.ascontiguousarray(x)
            if not x.flags.writeable:
                x = x.copy()
            if getattr(_THREAD, "pinned", None) is self and isinstance(x, np.ndarray):  # in copy_stream(): async
                import torch

                t = torch.from_numpy(x).pin_memory()
                return t.to(device=self.device, dtype=dtype, non_blocking=True)
        with self.activate():
            return xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x):
        """A NumPy array on the host with the values of ``x`` (an array of this backend).

        Writable: a copy for every library but NumPy (whose arrays come back as they are).
        Every call is counted in ``host_transfers``: on a GPU this is a device -> host copy
        and a synchronisation.
        """
        self.host_transfers += 1
        if isinstance(x, np.ndarray):
            return x
        return host_copy(x)

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

    # -- random numbers on the device ---------------------------------------------
    def random_key(self, seed):
        """A device random generator seeded with the integer ``seed`` (for layers that draw in training).

        NumPy and array-api-strict: NumPy's PCG64 (the same numbers on both); torch: a
        ``torch.Generator`` on the backend's device; CuPy: ``cupy.random.default_rng``; JAX: a
        ``jax.random`` key, which :meth:`uniform` splits (so a compiled step carries it as state).
        """
        seed = int(seed)
        if self.name == "torch":
            import torch

            if self.device.type == "meta":
                return None
            g = torch.Generator(device=self.device)
            g.manual_seed(seed % 2**63)
            return g
        if self.name == "cupy":
            import cupy

            with self.device:
                return cupy.random.default_rng(seed % 2**63)
        if self.name == "jax":
            import jax

            return jax.random.key(seed % 2**32)
        return np.random.default_rng(seed)

    def uniform(self, key, shape, dtype):
        """``(U, key)``: U[0, 1) of ``shape`` and ``dtype`` on the device, and the generator to use next
        (the same object for the stateful generators, a new key on JAX).  No host transfer, except on
        array-api-strict and other libraries without a generator, which draw on the host."""
        shape = tuple(int(n) for n in shape)
        if self.name == "numpy":
            return key.random(shape, dtype=dtype), key
        if self.name == "torch":
            import torch

            return torch.rand(shape, generator=key, device=self.device, dtype=dtype), key
        if self.name == "cupy":
            with self.device:
                return key.random(shape, dtype=dtype), key
        if self.name == "jax":
            import jax

            key, sub = jax.random.split(key)
            return jax.random.uniform(sub, shape, dtype=dtype), key
        return self.asarray(key.random(shape), dtype=dtype), key

    # -- the device ---------------------------------------------------------------
    def activate(self, tf32=False):
        """A context manager that makes this backend's device the current one (CuPy, torch-CUDA).

        CuPy and PyTorch launch kernels and allocate results on the *current* device; ``fit``,
        ``train_step`` and ``predict`` run inside it so a model on GPU 1 stays on GPU 1.
        ``tf32=True`` (the ``"tf32"`` precision policy) also lets float32 matmuls use TF32 tensor cores
        inside it, and restores the library's setting on the way out.
        """
        if tf32:
            return _tf32(self)
        if self.name == "cupy":
            return self.device
        if self.name == "torch" and self.device.type == "cuda":
            import torch

            return torch.cuda.device(self.device)
        return _NO_CONTEXT

    @property
    def on_cuda(self):
        """True when this backend's arrays live on an NVIDIA GPU (CuPy, torch-CUDA, JAX on a GPU)."""
        if self.name == "cupy":
            return True
        if self.name == "torch":
            return self.device.type == "cuda"
        if self.name == "jax":
            return getattr(self.device, "platform", "") == "gpu"
        return False

    @property
    def compiles(self):
        """True where :meth:`compile` compiles (JAX, torch); elsewhere steps run eagerly."""
        return self.name in ("jax", "torch")

    def compile(self, fn):
        """``fn`` compiled for this backend, or None where nnkit runs steps eagerly.

        ``fn`` must be a pure function of its arguments (arrays, dicts of arrays, Python floats).
        JAX: ``jax.jit`` (Python floats are traced, not frozen).  torch: ``torch.compile``, with Python
        floats passed as 0-d CPU tensors so that a new learning rate does not recompile; measured on a
        2-core CPU it makes a small model's step ~20% faster and a large one's no faster, after
        10–30 s of compiling.  NumPy, CuPy and array-api-strict: None (eager).
        """
        if self.name == "jax":
            import jax

            return jax.jit(fn)
        if self.name == "torch":
            import torch

            compiled = torch.compile(fn)

            def call(*args):
                return compiled(*[torch.tensor(a, dtype=torch.float64) if isinstance(a, float) else a
                                  for a in args])

            return call
        return None

    @contextlib.contextmanager
    def copy_stream(self):
        """Host-to-device copies for a background thread that prepares batches ahead (``nnkit.data.prefetch``):
        inside, this backend's copies go on a side stream — torch-CUDA copies from pinned host memory with
        ``non_blocking=True``, CuPy copies on a stream of their own — and ``done()`` waits for them in *that*
        thread, so the batch handed over is complete while the main thread's step ran on.  JAX's
        ``device_put`` is asynchronous by itself; on the CPU this is a no-op."""
        class Copies:
            def __init__(self, stream):
                self.stream = stream

            def done(self):
                if self.stream is not None:
                    self.stream.synchronize()

        if self.name == "torch" and self.device.type == "cuda":
            import torch

            stream = torch.cuda.Stream(device=self.device)
            _THREAD.pinned = self  # this thread's copies to this backend: pinned, non-blocking
            try:
                with torch.cuda.stream(stream):
                    yield Copies(stream)
            finally:
                _THREAD.pinned = None
        elif self.name == "cupy":
            import cupy

            with self.device:
                stream = cupy.cuda.Stream(non_blocking=True)
                with stream:
                    yield Copies(stream)
        else:
            yield Copies(None)

    # -- the fused descent update -------------------------------------------------------------
    def descent_update(self, lr, momentum=0.0, largest=None):
        """``update(P, A, B, V=None) -> bool``: P ← P − lr·A·B in place, the product never stored — or with
        momentum μ and the velocity V: V ← μ·V + A·B, then P ← P − lr·V — or None where the library has no
        in-place matrix product, or where ``largest`` (the most entries of any matrix the step could update)
        is too small for it to gain.

        SGD's step on a weight whose gradient is a product (Dense: ∂L/∂W = Xᵀ·dZ) is one GEMM in BLAS's
        form C ← α·A·B + β·C — α = −lr, β = 1 into P; with momentum α = 1, β = μ into V — instead of a GEMM
        that writes dW and the passes over it (lr·dW, W − lr·dW; μv, v + dW).  ``update`` returns False,
        leaving P and V as they were, for arrays it cannot take (another dtype or library, a layout BLAS
        cannot read); the caller then forms A·B.

        * NumPy: the ``?gemm`` (and for P ← P − lr·V the ``?axpy``) of the BLAS NumPy itself calls (OpenBLAS
          in NumPy's wheels, ILP64, by ctypes; the same library, so the same thread pool — a second BLAS,
          SciPy's, would fight it for the cores), found and checked once against ``matmul``
          (:func:`_numpy_gemm`); None where NumPy links another BLAS.  Products under 2¹⁴ entries or 2²⁰
          multiply-adds return False — there the call's overhead outweighs what it saves — and with
          ``largest`` under 2¹⁴ there is no ``update`` at all (a small net pays nothing for the machinery).
        * torch: ``P.addmm_(A, B, alpha=-lr)`` / ``V.addmm_(A, B, beta=μ)``; under a mixed policy (P and V
          float32, A and B bfloat16 or float16) the product in the compute dtype, cast to float32 and added.
          On the CPU, with ``largest`` under 2¹⁴: None (shape S, mixed_bfloat16 with momentum: 7% slower fused).
        * JAX, array-api-strict (immutable arrays), CuPy (not yet measured on a GPU) and other libraries: None.
        """
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            return None  # a traced or device learning rate: the plain update
        lr, mu = float(lr), float(momentum)
        if self.name == "numpy":
            gemm = _numpy_gemm()
            if gemm is None or (largest is not None and largest < _FUSE_MIN_ENTRIES):
                return None

            def update(P, A, B, V=None):
                if type(P) is not np.ndarray or type(A) is not np.ndarray or P.ndim != 2 or A.ndim != 2 \
                        or P.size < _FUSE_MIN_ENTRIES \
                        or P.size * A.shape[1] < _FUSE_MIN_MACS:
                    return False  # a small product: the plain update is faster (see _FUSE_MIN_ENTRIES)
                if V is None:
                    return gemm(P, A, B, -lr)
                if P.dtype != V.dtype or P.shape != V.shape or not gemm(V, A, B, 1.0, mu):
                    return False
                if not gemm.axpy(P, V, -lr):
                    P -= lr * V
                return True

            return update
        if self.name == "torch":
            if self.device.type == "cpu" and largest is not None and largest < _FUSE_MIN_ENTRIES:
                return None  # a small net on the CPU: the update's extra op calls cost more than they save

            def update(P, A, B, V=None):
                C = P if V is None else V
                alpha, beta = (-lr, 1.0) if V is None else (1.0, mu)
                if A.dtype == C.dtype and B.dtype == C.dtype:
                    C.addmm_(A, B, beta=beta, alpha=alpha)
                else:  # mixed: the product in the compute dtype, cast, added (a mixed-dtype add_ is slower)
                    if beta != 1.0:
                        C.mul_(beta)
                    C.add_((A @ B).to(C.dtype), alpha=alpha)
                if V is not None:
                    P.add_(V, alpha=-lr)
                return True

            return update
        return None

    def synchronize(self, *arrays):
        """Block until the work queued on this backend's device (and producing ``arrays``) is done.

        CuPy: the current stream of *this backend's* device; torch-CUDA: its device; JAX
        (asynchronous dispatch on every platform): the given arrays.  A no-op on NumPy.
        """
        if self.name == "cupy":
            import cupy

            with self.device:
                cupy.cuda.get_current_stream().synchronize()
        elif self.name == "torch" and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        elif self.name == "jax":
            import jax

            jax.block_until_ready(arrays)


@contextlib.contextmanager
def _tf32(backend):
    """float32 matmuls on TF32 tensor cores while inside (torch-CUDA, CuPy, JAX on a GPU), then restored."""
    with backend.activate():
        if backend.name == "torch":
            import torch

            before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
        elif backend.name == "cupy":
            import cupy
            from cupy._core import _routines_linalg as linalg  # CuPy's compute-type switch for GEMMs

            before = linalg.get_compute_type(cupy.float32)
            linalg.set_compute_type(cupy.float32, linalg.COMPUTE_TYPE_TF32)
            try:
                yield
            finally:
                linalg.set_compute_type(cupy.float32, before)
        elif backend.name == "jax":
            import jax

            with jax.default_matmul_precision("tensorfloat32"):
                yield
        else:
            yield


# -- NumPy's own BLAS, for the fused descent update ---------------------------------------------------
_UNSET = object()
_GEMM = _UNSET
# NumPy fuses SGD's update into the GEMM only for products this large: C (m×n) of at least 2¹⁴ entries and
# m·n·k ≥ 2²⁰ multiply-adds.  Below, the ctypes call's ~8 µs of Python (checks, pointers) costs more than the
# passes over dW it saves — measured over B ∈ {16, 64, 256} × (in, out) from 64×64 to 256×256 and 1024×10,
# float32 and float64: fused 4–9 µs slower up to 8192 entries, faster from 16384 (B ≥ 64) and 65536 (B = 16).
_FUSE_MIN_ENTRIES, _FUSE_MIN_MACS = 2 ** 14, 2 ** 20


class _Gemm:
    """C ← β·C + α·A·B in place with a BLAS's row-major ``cblas_?gemm`` (ILP64: 64-bit sizes), for float32 and
    float64 NumPy arrays; False (nothing done) for anything it cannot pass to BLAS as it is."""

    ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

    def __init__(self, sgemm, dgemm, saxpy, daxpy):
        import ctypes

        size, ptr = ctypes.c_int64, ctypes.c_void_p
        for fn, real in ((sgemm, ctypes.c_float), (dgemm, ctypes.c_double)):
            fn.restype = None
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, size, size, size, real, ptr, size, ptr, size,
                           real, ptr, size]
        for fn, real in ((saxpy, ctypes.c_float), (daxpy, ctypes.c_double)):
            fn.restype = None
            fn.argtypes = [size, real, ptr, size, ptr, size]
        self.fns = {np.dtype(np.float32): sgemm, np.dtype(np.float64): dgemm}
        self.axpys = {np.dtype(np.float32): saxpy, np.dtype(np.float64): daxpy}

    def axpy(self, Y, X, alpha):
        """Y ← Y + α·X in place, one pass and no temporary (BLAS ``?axpy``); False (nothing done) unless both
        are C-contiguous arrays of one float dtype and shape, Y writable, not overlapping."""
        if not (type(Y) is np.ndarray and type(X) is np.ndarray) or Y.dtype != X.dtype or Y.shape != X.shape:
            return False
        fn = self.axpys.get(Y.dtype)
        if fn is None or not (Y.flags.c_contiguous and X.flags.c_contiguous and Y.flags.writeable
                              and Y.flags.aligned and X.flags.aligned) or np.may_share_memory(Y, X):
            return False
        if Y.size:
            fn(Y.size, alpha, X.ctypes.data, 1, Y.ctypes.data, 1)
        return True

    def _operand(self, a):
        """(transpose flag, leading dimension) of a row-major view of ``a``, or None."""
        if a.flags.c_contiguous:
            return self.NO_TRANS, max(a.shape[1], 1)
        if a.flags.f_contiguous:  # a is the transpose of a C-contiguous array
            return self.TRANS, max(a.shape[0], 1)
        return None

    def __call__(self, C, A, B, alpha, beta=1.0):
        if not (type(C) is np.ndarray and type(A) is np.ndarray and type(B) is np.ndarray):
            return False
        fn = self.fns.get(C.dtype)
        if fn is None or A.dtype != C.dtype or B.dtype != C.dtype or C.ndim != 2 or A.ndim != 2 or B.ndim != 2:
            return False
        (m, n), k = C.shape, A.shape[1]
        if A.shape[0] != m or B.shape != (k, n):
            return False
        if not (C.flags.c_contiguous and C.flags.writeable and C.flags.aligned and A.flags.aligned
                and B.flags.aligned):
            return False
        if m == 0 or n == 0:
            return True  # nothing to write
        if k == 0:  # an empty product: C ← β·C
            C *= beta
            return True
        a, b = self._operand(A), self._operand(B)
        if a is None or b is None or np.may_share_memory(C, A) or np.may_share_memory(C, B):
            return False
        fn(self.ROW_MAJOR, a[0], b[0], m, n, k, alpha, A.ctypes.data, a[1], B.ctypes.data, b[1], beta,
           C.ctypes.data, max(n, 1))
        return True

    def works(self):
        """Checked against NumPy's matmul on every operand layout, in both dtypes."""
        rng = np.random.default_rng(0)
        for dt in (np.float32, np.float64):
            A0, B0, C0 = (rng.standard_normal(s).astype(dt) for s in ((3, 5), (5, 4), (3, 4)))
            for A in (A0, np.asfortranarray(A0)):
                for B in (B0, np.asfortranarray(B0)):
                    C = C0.copy()
                    if not self(C, A, B, -0.5, 0.25) or not np.allclose(C, 0.25 * C0 - 0.5 * (A0 @ B0), rtol=1e-5,
                                                                        atol=1e-5):
                        return False
            Y, X = C0.copy(), np.ascontiguousarray(A0[:, :4])
            if not self.axpy(Y, X, -0.5) or not np.allclose(Y, C0 - 0.5 * X, rtol=1e-6, atol=1e-6):
                return False
        return True


def _loaded_libraries():
    """Paths of the shared libraries loaded in this process (Linux), else None."""
    try:
        with open("/proc/self/maps") as f:  # address perms offset dev inode [path]
            fields = [line.split(None, 5) for line in f]
    except OSError:
        return None
    return {os.path.realpath(parts[5].strip()) for parts in fields if len(parts) == 6}


def _numpy_gemm():
    """The :class:`_Gemm` of the OpenBLAS NumPy's wheels bundle (and NumPy has loaded), or None."""
    global _GEMM
    if _GEMM is _UNSET:
        _GEMM = None
        try:
            import ctypes
            import glob

            root = os.path.dirname(np.__file__)
            paths = sorted(glob.glob(os.path.join(os.path.dirname(root), "numpy.libs", "*openblas*")) +
                           glob.glob(os.path.join(root, ".dylibs", "*openblas*")))
            loaded = _loaded_libraries()
            for path in paths:
                if loaded is not None and os.path.realpath(path) not in loaded:
                    continue  # not the library this NumPy uses: loading it would start a second thread pool
                lib = ctypes.CDLL(path)
                for prefix in ("scipy_cblas_", "cblas_"):
                    fns = [getattr(lib, f"{prefix}{name}64_", None) for name in ("sgemm", "dgemm", "saxpy", "daxpy")]
                    if all(fn is not None for fn in fns):
                        gemm = _Gemm(*fns)
                        if gemm.works():
                            _GEMM = gemm
                            return _GEMM
        except (OSError, AttributeError, ValueError, TypeError):
            _GEMM = None
    return _GEMM


# -- host <-> device, for any library ---------------------------------------------------------------
def host_copy(x):
    """A writable NumPy copy of an array of any supported library (a device → host transfer for
    GPU arrays; it waits for the array's pending work by itself)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.array(x, copy=True)
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        t = x.detach()
        return t.cpu().numpy() if t.device.type != "cpu" else t.numpy().copy()
    if array_api_compat.is_jax_array(x):
        import jax

        return np.array(jax.device_get(x), copy=True)  # an explicit transfer (transfer guards allow it)
    if array_api_compat.is_array_api_strict_namespace(namespace_of(x)):
        cpu = type(x.device)("CPU_DEVICE")
        return np.array(np.asarray(x.to_device(cpu)), copy=True)
    try:  # any other DLPack-capable library: ask for a CPU copy
        return np.from_dlpack(x, device="cpu", copy=True)
    except (TypeError, ValueError, BufferError, AttributeError, NotImplementedError):
        return np.array(x, copy=True)


def is_sparse(x):
    """True for a SciPy sparse matrix (host data that nnkit densifies one batch at a time)."""
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def like(a, x):
    """Host data ``a`` as an array of ``x``'s library on ``x``'s device (the way back from ``host_copy``)."""
    if isinstance(x, np.ndarray):
        return np.asarray(a)
    dev = array_api_compat.device(x)
    if array_api_compat.is_cupy_array(x):
        with dev:
            return namespace_of(x).asarray(a)
    return namespace_of(x).asarray(a, device=dev)


def finish(x):
    """Wait until the queued work that produces ``x`` is done (before a library outside the array
    library's stream — MPI, say — reads its memory).  A no-op for host arrays."""
    if array_api_compat.is_cupy_array(x):
        import cupy

        with x.device:
            cupy.cuda.get_current_stream().synchronize()
    elif array_api_compat.is_torch_array(x) and x.device.type == "cuda":
        import torch

        torch.cuda.current_stream(x.device).synchronize()
    elif array_api_compat.is_jax_array(x):
        x.block_until_ready()


def local_rank(rank, n_devices, environ=None):
    """The node-local rank of process ``rank`` (which GPU it takes): the launcher's variable
    (``LOCAL_RANK``, Open MPI's ``OMPI_COMM_WORLD_LOCAL_RANK``, MPICH/Intel MPI's ``MPI_LOCALRANKID``,
    Slurm's ``SLURM_LOCALID``, PALS' ``PALS_LOCAL_RANKID``), else ``rank mod n_devices``."""
    environ = os.environ if environ is None else environ
    for var in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID",
                "PALS_LOCAL_RANKID"):
        value = environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return rank % max(int(n_devices), 1)


# -- devices, normalised once ---------------------------------------------------------------------
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


def _torch_device(spec):
    import torch

    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = f"cuda:{int(spec)}"
    try:
        dev = torch.device("cpu" if spec is None else spec)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"backend 'torch': {spec!r} is not a device ({exc}); expected 'cpu', 'cuda:N' or 'meta'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"backend 'torch': device {spec!r} asks for CUDA, but PyTorch sees no CUDA device")
        dev = torch.device("cuda", cuda_index(str(dev), torch.cuda.current_device, torch.cuda.device_count()))
    return dev


def _jax_device(spec, jax):
    if spec is None:
        default = jax.config.jax_default_device
        if default is not None and not isinstance(default, str):
            return default
        return jax.devices(default)[0] if isinstance(default, str) else jax.devices()[0]
    if isinstance(spec, jax.Device):
        return spec
    if isinstance(spec, str):
        platform, _, num = spec.strip().lower().partition(":")
        platform = {"cuda": "gpu"}.get(platform, platform)
        try:
            devices = jax.devices(platform)
        except RuntimeError as exc:
            raise RuntimeError(f"backend 'jax': no {platform!r} devices ({exc})") from None
        if num.isdigit() and int(num) < len(devices):
            return devices[int(num)]
    raise ValueError(f"backend 'jax': {spec!r} is not a device: expected 'cpu', 'gpu:N' or a jax.Device")


def _jax_spec(dev, jax):
    """``"platform:index"`` for a JAX device (picklable; ``_jax_device`` turns it back)."""
    return f"{dev.platform}:{jax.devices(dev.platform).index(dev)}"


def _check_jax_x64():
    import jax

    if not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype='float64' on JAX needs JAX's 64-bit mode, which is off (JAX would silently compute "
            "in float32): call jax.config.update('jax_enable_x64', True) before creating any array, or "
            "set JAX_ENABLE_X64=1 in the environment; or use dtype='float32'"
        )


def _dtype_name(xp, dtype):
    for name in DTYPE_NAMES:
        if dtype == getattr(xp, name, None):
            return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


# -- namespaces: array-api-compat's, with nnkit's fixes ------------------------------------------------
def _derived_namespace(base, name, **overrides):
    """A copy of the namespace module ``base`` with some functions replaced."""
    ns = types.ModuleType(f"nnkit.backend.{name}", base.__doc__)
    ns.__dict__.update({k: v for k, v in vars(base).items() if not k.startswith("__")})
    ns.__array_api_version__ = base.__array_api_version__
    ns.__dict__.update(overrides)
    return ns


def _numpy_namespace():
    """array-api-compat's NumPy namespace, with float ``sum``/``max`` going straight to the ufunc reduce
    and ``astype`` straight to the array method.

    ``np.sum``/``np.max`` reach ``np.add.reduce``/``np.maximum.reduce`` through Python-level
    argument handling (~1.5 µs a call), compat's ``astype`` checks its arguments (~1.4 µs); a small
    model's train step makes several of these calls.  The results are identical (same ufunc, same
    summation order, same cast).  Installed as the namespace of
    ``numpy.ndarray`` so layers, losses and optimizers all see it through ``namespace_of``.
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

    ns = _derived_namespace(compat, "numpy_namespace", sum=sum, max=max, astype=astype)
    for kind in {np.ndarray, *np.sctypeDict.values()}:  # arrays and the 0-d scalars reductions return
        register_namespace(kind, ns)
    return ns


_NUMPY = _numpy_namespace()
_TORCH = None
_CUPY = None

_SCALARS = (bool, int, float)


def _torch_namespace():
    """array-api-compat's torch namespace, where ``maximum``/``minimum`` with a Python scalar call
    ``torch.clamp`` (compat turns the scalar into a device tensor: a blocking host-to-device copy on
    CUDA, every call) and ``astype`` from bool to float goes through uint8 (5× faster on the CPU, the
    same values).  Everything else is compat's."""
    global _TORCH
    if _TORCH is None:
        import torch
        import array_api_compat.torch as compat

        def clamping(fallback, bound):
            """max/min(x1, x2) as torch.clamp(tensor, bound=scalar) when one side is a Python scalar."""
            def f(x1, x2, /):
                if isinstance(x2, _SCALARS) and isinstance(x1, torch.Tensor):
                    return torch.clamp(x1, **{bound: x2})
                if isinstance(x1, _SCALARS) and isinstance(x2, torch.Tensor):
                    return torch.clamp(x2, **{bound: x1})
                return fallback(x1, x2)
            f.__name__ = fallback.__name__
            return f

        def astype(x, dtype, /, *, copy=True, device=None):
            """compat's astype, except bool → float through uint8 (the same 0/1; PyTorch's CPU kernel
            converts bool to float ~5× slower than uint8, and ReLU's mask [Z > 0] is one per step)."""
            if x.dtype == torch.bool and device is None and dtype.is_floating_point:
                return x.view(torch.uint8).to(dtype)
            return compat.astype(x, dtype, copy=copy, device=device)

        _TORCH = _derived_namespace(compat, "torch_namespace", maximum=clamping(compat.maximum, "min"),
                                    minimum=clamping(compat.minimum, "max"), astype=astype)
        register_namespace(torch.Tensor, _TORCH)
    return _TORCH


def _cupy_device(device):
    import cupy

    return device if isinstance(device, cupy.cuda.Device) else cupy.cuda.Device(cuda_index(device, cupy.cuda.runtime.getDevice))


def _cupy_namespace():
    """array-api-compat's CuPy namespace whose creation functions honour ``device=`` (compat's
    ``zeros``/``empty``/``ones``/``full``/``arange``/``eye``/``linspace`` ignore it and create on the
    current device) and whose ``*_like`` functions create on the device of their argument."""
    global _CUPY
    if _CUPY is None:
        import cupy
        import array_api_compat.cupy as compat

        def on_device(f):
            def create(*args, device=None, **kwargs):
                if device is None:
                    return f(*args, **kwargs)
                with _cupy_device(device):
                    return f(*args, **kwargs)
            create.__name__ = create.__qualname__ = f.__name__
            create.__doc__ = f.__doc__
            return create

        def like_device(f):
            def create(x, /, *args, device=None, **kwargs):
                with (x.device if device is None else _cupy_device(device)):
                    return f(x, *args, **kwargs)
            create.__name__ = create.__qualname__ = f.__name__
            create.__doc__ = f.__doc__
            return create

        fixes = {n: on_device(getattr(compat, n)) for n in ("zeros", "ones", "empty", "full", "arange", "eye",
                                                              "linspace")}
        fixes.update({n: like_device(getattr(compat, n)) for n in ("zeros_like", "ones_like", "empty_like",
                                                                   "full_like")})
        _CUPY = _derived_namespace(compat, "cupy_namespace", **fixes)
        register_namespace(cupy.ndarray, _CUPY)
    return _CUPY


# -- loading the libraries ----------------------------------------------------------------------------
CUPY_INSTALL = "pip install 'nnkit[cuda12]' (or 'nnkit[cuda13]'), which brings CuPy with the CUDA libraries"


def _load_cupy(device):
    """(namespace, Device) for CuPy on ``device`` (None: the current device), after proving the device
    can run a matrix product (CuPy sees a GPU without cuBLAS when the CUDA libraries are missing)."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(f"backend 'cupy' needs CuPy, which is not installed: {CUPY_INSTALL}") from exc
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
    dev = cupy.cuda.Device(cuda_index(device, cupy.cuda.runtime.getDevice, n))
    try:
        with dev:
            a = cupy.ones((2, 2), dtype=cupy.float32)
            if float((a @ a).sum().get()) != 8.0:
                raise RuntimeError("a 2x2 matrix product gave a wrong result")
    except Exception as exc:  # cuBLAS or NVRTC missing, a broken driver, ...
        raise RuntimeError(
            f"backend 'cupy': CuPy sees GPU {dev.id} but cannot run a matrix product on it "
            f"({type(exc).__name__}: {exc}); the CUDA libraries (cuBLAS, NVRTC) are probably missing: "
            f"{CUPY_INSTALL}, or install the CUDA toolkit"
        ) from exc
    return _cupy_namespace(), dev


def _load_torch():
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "backend 'torch' needs PyTorch, which is not installed: pip install torch"
        ) from exc
    return _torch_namespace()


def _load_jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        raise RuntimeError(
            "backend 'jax' needs JAX, which is not installed: pip install 'jax[cpu]' "
            "(or 'jax[cuda12]' for NVIDIA GPUs)"
        ) from exc
    return jax, jnp


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
    if module in (_NUMPY, _TORCH, _CUPY):
        return {id(_NUMPY): "numpy", id(_TORCH): "torch", id(_CUPY): "cupy"}[id(module)]
    if getattr(module, "__name__", None) == "jax":
        return "jax"
    for name, test in (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("jax", array_api_compat.is_jax_namespace),
        ("array_api_strict", array_api_compat.is_array_api_strict_namespace),
    ):
        if test(module):
            return name
    return None


def get_backend(name="numpy", device=None, dtype=None):
    """Return the :class:`Backend` for ``name``.

    ``name`` is one of ``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"``,
    ``"array_api_strict"``, an already-imported array module (``numpy``,
    ``cupy``, ``torch``, ``jax``/``jax.numpy``, ``array_api_strict`` or any module that
    follows the Array API standard), or a :class:`Backend` (returned as it is, or with
    ``dtype`` applied).  ``dtype`` is ``"float32"`` (the default) or ``"float64"``
    (on JAX it needs ``jax.config.update("jax_enable_x64", True)``).

    ``device`` is where arrays live; ``None`` is the library's current/default device.
    CuPy: a GPU index, ``"cuda:N"`` or a ``cupy.cuda.Device``; torch: ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or ``"meta"``; JAX: ``"cpu"``, ``"gpu:N"`` or a ``jax.Device``;
    array_api_strict: one of its ``Device`` objects.
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
            return Backend(getattr(module, "__name__", str(module)), module, device, dtype, device)
        name = known
    if name == "numpy":
        if device not in (None, "cpu"):
            raise ValueError(f"backend 'numpy' runs on the CPU only, got device={device!r}")
        return Backend("numpy", _NUMPY, "cpu", dtype, "cpu")
    if name == "cupy":
        xp, dev = _load_cupy(device)
        return Backend("cupy", xp, dev, dtype, f"cuda:{dev.id}")
    if name == "torch":
        xp = _load_torch()
        dev = _torch_device(device)
        return Backend("torch", xp, dev, dtype, str(dev))
    if name == "jax":
        jax, jnp = _load_jax()
        dev = _jax_device(device, jax)
        return Backend("jax", jnp, dev, dtype, _jax_spec(dev, jax))
    if name == "array_api_strict":
        xp = _load_strict()
        dev = device if device is not None else xp.Device("CPU_DEVICE")
        return Backend("array_api_strict", xp, dev, dtype, dev)
    raise ValueError(
        f"unknown backend {name!r}: expected one of {', '.join(repr(n) for n in BACKEND_NAMES)}, "
        "or an imported array module"
    )
