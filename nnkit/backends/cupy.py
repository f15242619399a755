"""CuPy: NVIDIA GPUs, with array-api-compat's creation functions made to honour ``device=``."""
from __future__ import annotations

import contextlib

from .functional import register_namespace
from .base import Backend, Copies, cuda_index, derived_namespace

__all__ = ["CupyBackend", "CUPY_INSTALL"]

CUPY_INSTALL = "pip install 'nnkit[cuda12]' (or 'nnkit[cuda13]'), which brings CuPy with the CUDA libraries"
_NAMESPACE = None


def _device(device):
    import cupy

    return device if isinstance(device, cupy.cuda.Device) else cupy.cuda.Device(
        cuda_index(device, cupy.cuda.runtime.getDevice))


def namespace():
    """array-api-compat's CuPy namespace whose creation functions honour ``device=`` (compat's
    ``zeros``/``empty``/``ones``/``full``/``arange``/``eye``/``linspace`` ignore it and create on the current
    device) and whose ``*_like`` functions create on the device of their argument."""
    global _NAMESPACE
    if _NAMESPACE is None:
        import cupy
        import array_api_compat.cupy as compat

        def on_device(f):
            def create(*args, device=None, **kwargs):
                if device is None:
                    return f(*args, **kwargs)
                with _device(device):
                    return f(*args, **kwargs)
            create.__name__ = create.__qualname__ = f.__name__
            create.__doc__ = f.__doc__
            return create

        def like_device(f):
            def create(x, /, *args, device=None, **kwargs):
                with (x.device if device is None else _device(device)):
                    return f(x, *args, **kwargs)
            create.__name__ = create.__qualname__ = f.__name__
            create.__doc__ = f.__doc__
            return create

        fixes = {n: on_device(getattr(compat, n)) for n in ("zeros", "ones", "empty", "full", "arange", "eye",
                                                              "linspace")}
        fixes.update({n: like_device(getattr(compat, n)) for n in ("zeros_like", "ones_like", "empty_like",
                                                                   "full_like")})
        _NAMESPACE = derived_namespace(compat, "cupy_namespace", **fixes)
        register_namespace(cupy.ndarray, _NAMESPACE)
    return _NAMESPACE


class CupyBackend(Backend):
    """CuPy arrays on one GPU: ``cupy.random`` generators, the device's current stream, TF32 by CuPy's
    compute-type switch."""

    name = "cupy"
    listed = 1  # its place in BACKEND_NAMES
    namespace_test = "is_cupy_namespace"

    @classmethod
    def own_namespace(cls):
        return _NAMESPACE

    @classmethod
    def load(cls, device, dtype):
        """CuPy on ``device`` (None: the current device), after proving the device can run a matrix product
        (CuPy sees a GPU without cuBLAS when the CUDA libraries are missing)."""
        try:
            import cupy
        except ImportError as exc:
            raise RuntimeError(f"backend 'cupy' needs CuPy, which is not installed: {CUPY_INSTALL}") from exc
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError, driver missing, ...
            raise RuntimeError(
                f"backend 'cupy': CuPy is installed but no CUDA device is usable ({exc}); "
                "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use backend='numpy'") from exc
        if n < 1:
            raise RuntimeError("backend 'cupy': CuPy is installed but no CUDA device is usable (0 devices found); "
                               "check CUDA_VISIBLE_DEVICES, or use backend='numpy'")
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
                f"{CUPY_INSTALL}, or install the CUDA toolkit") from exc
        return cls(namespace(), dev, dtype, f"cuda:{dev.id}")

    @classmethod
    def holds(cls, x):
        import array_api_compat

        return array_api_compat.is_cupy_array(x)

    @staticmethod
    def host_copy_of(x):
        return x.get()

    @staticmethod
    def finish_array(x):
        import cupy

        with x.device:
            cupy.cuda.get_current_stream().synchronize()

    @staticmethod
    def like_array(a, x):
        from .functional import namespace_of

        with x.device:
            return namespace_of(x).asarray(a)

    def random_key(self, seed):
        """``cupy.random.default_rng`` on the backend's device."""
        import cupy

        with self.device:
            return cupy.random.default_rng(int(seed) % 2**63)

    def uniform(self, key, shape, dtype):
        with self.device:
            return key.random(tuple(int(n) for n in shape), dtype=dtype), key

    def device_context(self):
        return self.device

    @contextlib.contextmanager
    def tf32(self):
        import cupy
        from cupy._core import _routines_linalg as linalg  # CuPy's compute-type switch for GEMMs

        with self.device:
            before = linalg.get_compute_type(cupy.float32)
            linalg.set_compute_type(cupy.float32, linalg.COMPUTE_TYPE_TF32)
            try:
                yield
            finally:
                linalg.set_compute_type(cupy.float32, before)

    @property
    def on_cuda(self):
        return True

    @contextlib.contextmanager
    def copy_stream(self):
        """Copies on a non-blocking stream of their own."""
        import cupy

        with self.device:
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                yield Copies(stream)

    def synchronize(self, *arrays):
        """The current stream of *this backend's* device."""
        import cupy

        with self.device:
            cupy.cuda.get_current_stream().synchronize()
