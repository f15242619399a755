"""PyTorch: CPU, CUDA and meta devices; array-api-compat's namespace without its per-call host copies."""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..functional import register_namespace
from .base import Backend, Copies, cuda_index, derived_namespace

__all__ = ["TorchBackend"]

_SCALARS = (bool, int, float)
_THREAD = threading.local()  # per thread: the backend whose copies go through copy_stream() (pinned, async)
_NAMESPACE = None


def _conv_kernels(torch):
    """PyTorch's own convolution kernels (oneDNN on the CPU, cuDNN on CUDA) for the sums of the layer's
    derivation: Z = W ⋆ X + b (``F.conv1d/2d``), and dX = dZ ⊛ᵀ W (its transposed convolution), dW = X ⋆ dZ,
    db = Σ dZ in one ``aten.convolution_backward``."""
    from ..layers.convolutional import ConvKernels

    F = torch.nn.functional

    class TorchConvKernels(ConvKernels):
        def forward(self, xp, X, W, stride, padding, dilation, b=None):
            conv = F.conv1d if W.dim() == 3 else F.conv2d
            return conv(X, W, b, stride, padding, dilation), X

        def backward(self, xp, saved, dZ, W, stride, padding, dilation, need_dX=True):
            """dX, dW and db in PyTorch's one backward kernel (dX its transposed convolution, dW its correlation)."""
            n = W.dim() - 2
            dX, dW, db = torch.ops.aten.convolution_backward(dZ, saved, W, [W.shape[0]], list(stride), list(padding),
                                                             list(dilation), False, [0] * n, 1, [need_dX, True, True])
            return dW, db, dX

    return TorchConvKernels()


def namespace():
    """array-api-compat's torch namespace, where ``maximum``/``minimum`` with a Python scalar call
    ``torch.clamp`` (compat turns the scalar into a device tensor: a blocking host-to-device copy on CUDA,
    every call) and ``astype`` from bool to float goes through uint8 (5× faster on the CPU, the same
    values).  Everything else is compat's."""
    global _NAMESPACE
    if _NAMESPACE is None:
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
            """compat's astype, except bool → float through uint8 (the same 0/1; PyTorch's CPU kernel converts
            bool to float ~5× slower than uint8, and ReLU's mask [Z > 0] is one per step)."""
            if x.dtype == torch.bool and device is None and dtype.is_floating_point:
                return x.view(torch.uint8).to(dtype)
            return compat.astype(x, dtype, copy=copy, device=device)

        _NAMESPACE = derived_namespace(compat, "torch_namespace", maximum=clamping(compat.maximum, "min"),
                                       minimum=clamping(compat.minimum, "max"), astype=astype,
                                       conv_kernels=_conv_kernels(torch))
        register_namespace(torch.Tensor, _NAMESPACE)
    return _NAMESPACE


def torch_device(spec):
    """A ``torch.device`` (with its index on CUDA) for ``"cpu"``, ``"cuda"``, ``"cuda:N"``, N or ``"meta"``."""
    import torch

    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = f"cuda:{int(spec)}"
    try:
        dev = torch.device("cpu" if spec is None else spec)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"backend 'torch': {spec!r} is not a device ({exc}); expected 'cpu', 'cuda:N' or "
                         "'meta'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"backend 'torch': device {spec!r} asks for CUDA, but PyTorch sees no CUDA device")
        dev = torch.device("cuda", cuda_index(str(dev), torch.cuda.current_device, torch.cuda.device_count()))
    return dev


class TorchBackend(Backend):
    """PyTorch tensors on a ``torch.device``: ``torch.Generator`` per device, ``torch.compile``, CUDA streams."""

    name = "torch"
    listed = 2  # its place in BACKEND_NAMES
    namespace_test = "is_torch_namespace"

    compiles = True

    @classmethod
    def own_namespace(cls):
        return _NAMESPACE

    @classmethod
    def load(cls, device, dtype):
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("backend 'torch' needs PyTorch, which is not installed: pip install torch") from exc
        xp = namespace()
        dev = torch_device(device)
        return cls(xp, dev, dtype, str(dev))

    @classmethod
    def holds(cls, x):
        import array_api_compat

        return array_api_compat.is_torch_array(x)

    @staticmethod
    def host_copy_of(x):
        t = x.detach()
        return t.cpu().numpy() if t.device.type != "cpu" else t.numpy().copy()

    @staticmethod
    def finish_array(x):
        if x.device.type == "cuda":
            import torch

            torch.cuda.current_stream(x.device).synchronize()

    def from_host(self, x, dtype=None):
        """torch cannot take a read-only or non-contiguous NumPy array without a warning: a contiguous,
        writable copy first; inside ``copy_stream()`` the copy is pinned and asynchronous."""
        x = np.ascontiguousarray(x)
        if not x.flags.writeable:
            x = x.copy()
        if getattr(_THREAD, "pinned", None) is self and isinstance(x, np.ndarray):
            import torch

            t = torch.from_numpy(x).pin_memory()
            return t.to(device=self.device, dtype=dtype, non_blocking=True)
        return super().from_host(x, dtype)

    def random_key(self, seed):
        """A ``torch.Generator`` on the backend's device (None on the meta device, which draws nothing)."""
        import torch

        if self.device.type == "meta":
            return None
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed) % 2**63)
        return g

    def uniform(self, key, shape, dtype):
        import torch

        return torch.rand(tuple(int(n) for n in shape), generator=key, device=self.device, dtype=dtype), key

    def device_context(self):
        if self.device.type == "cuda":
            import torch

            return torch.cuda.device(self.device)
        return super().device_context()

    @contextlib.contextmanager
    def tf32(self):
        import torch

        with self.device_context():
            before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before

    @property
    def on_cuda(self):
        return self.device.type == "cuda"

    def compile(self, fn):
        """``torch.compile(fn)``, with Python floats passed as 0-d CPU tensors so that a new learning rate
        does not recompile; measured on a 2-core CPU it makes a small model's step ~20% faster and a large
        one's no faster, after 10–30 s of compiling."""
        import torch

        compiled = torch.compile(fn)

        def call(*args):
            return compiled(*[torch.tensor(a, dtype=torch.float64) if isinstance(a, float) else a for a in args])

        return call

    @contextlib.contextmanager
    def copy_stream(self):
        """On CUDA: copies from pinned host memory with ``non_blocking=True`` on a side stream."""
        if self.device.type != "cuda":
            yield Copies(None)
            return
        import torch

        stream = torch.cuda.Stream(device=self.device)
        _THREAD.pinned = self  # this thread's copies to this backend: pinned, non-blocking
        try:
            with torch.cuda.stream(stream):
                yield Copies(stream)
        finally:
            _THREAD.pinned = None

    def synchronize(self, *arrays):
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
