"""PyTorch: CPU, CUDA and meta devices; array-api-compat's namespace without its per-call host copies."""
from __future__ import annotations

import contextlib
import threading
import warnings

import numpy as np

from .functional import register_namespace, tree_flatten, tree_unflatten
from .base import Backend, Copies, cuda_index, derived_namespace

__all__ = ["TorchBackend"]

_SCALARS = (bool, int, float)
_THREAD = threading.local()  # per thread: the backend whose copies go through copy_stream() (pinned, async)
_NAMESPACE = None
_EAGER = "eager"  # a GraphedFunction entry whose capture failed


def _conv_kernels(torch):
    """PyTorch's own convolution kernels (oneDNN on the CPU, cuDNN on CUDA) for the sums of the layer's
    derivation: Z = W ⋆ X + b (``F.conv1d/2d``), and dX = dZ ⊛ᵀ W (its transposed convolution), dW = X ⋆ dZ,
    db = Σ dZ in one ``aten.convolution_backward``."""
    from .conv import ConvKernels

    F = torch.nn.functional

    class TorchConvKernels(ConvKernels):
        def forward(self, xp, X, W, stride, padding, dilation, b=None, groups=1):
            conv = F.conv1d if W.dim() == 3 else F.conv2d
            return conv(X, W, b, stride, padding, dilation, groups), X

        def backward(self, xp, saved, dZ, W, stride, padding, dilation, need_dX=True, groups=1):
            """dX, dW and db in PyTorch's one backward kernel (dX its transposed convolution, dW its correlation),
            by groups itself."""
            n = W.dim() - 2
            dX, dW, db = torch.ops.aten.convolution_backward(dZ, saved, W, [W.shape[0]], list(stride), list(padding),
                                                             list(dilation), False, [0] * n, groups,
                                                             [need_dX, True, True])
            return dW, db, dX

        def transposed(self, xp, X, W, in_shape, stride, padding, dilation, groups=1):
            """``F.conv_transpose1d/2d``, its output_padding the rows the stride leaves past the last window."""
            conv_t = F.conv_transpose1d if W.dim() == 3 else F.conv_transpose2d
            extra = [n - ((m - 1) * s - 2 * p + d * (k - 1) + 1) for n, m, s, p, d, k in
                     zip(in_shape, X.shape[2:], stride, padding, dilation, W.shape[2:])]
            return conv_t(X, W, None, stride, padding, extra, groups, dilation)

    return TorchConvKernels()


def namespace():
    """array-api-compat's torch namespace, where ``maximum``/``minimum`` with a Python scalar call
    ``torch.clamp`` (compat turns the scalar into a device tensor: a blocking host-to-device copy on CUDA,
    every call) and ``astype`` from bool to float goes through uint8 (5× faster on the CPU, the same
    values), with ReLU's backward product as one kernel (``relu_grad``), a Dense layer's X·W + b as one
    (``affine``), an SGD step as one (``sub_scaled``) and Aᵀ·B in MKL's faster orientation (``matmul_tn``).
    Everything else is compat's."""
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

        def relu_grad(dA, A, /):
            """dA ⊙ [A > 0] in one kernel (ReLU's backward: ``threshold_backward``, dA where A > 0, else 0)."""
            return torch.ops.aten.threshold_backward(dA, A, 0)

        def matmul_tn(A, B, /):
            """Aᵀ·B for A (n, i), B (n, o) — as (Bᵀ·A)ᵀ, made contiguous, when B is a few columns beside a wide A
            on the CPU: MKL's product with a transposed left operand and ≤ 16 columns ran 2–4× slower than the
            other orientation here (a Dense layer's dW = Xᵀ·dZ into 10 classes: 0.45 → 0.11 ms at 1024 × 10,
            batch 256); the same dot products, summed in MKL's order."""
            if B.shape[1] <= 16 and A.shape[1] >= 256 and A.device.type == "cpu":
                return (B.T @ A).T.contiguous()
            return A.T @ B

        def affine(X, W, b, /):
            """X·W + b for X (..., i), W (i, o), b (o,) in one kernel (``addmm`` over X's rows: the GEMM starts from
            the broadcast bias, as ``nn.Linear`` does) — one pass over Z fewer than the product and a bias add."""
            if X.ndim == 2:
                return torch.addmm(b, X, W)
            return torch.addmm(b, X.reshape(-1, X.shape[-1]), W).reshape(X.shape[:-1] + (W.shape[1],))

        def sub_scaled(p, g, lr, /):
            """p ← p − lr·g in place in one kernel (``sub_`` with alpha; ``addcmul_`` when lr is a 0-d tensor, as
            in a compiled or graphed step): one pass over the parameter instead of two."""
            if isinstance(lr, torch.Tensor):
                return p.addcmul_(g, lr, value=-1)
            return p.sub_(g, alpha=lr)

        _NAMESPACE = derived_namespace(compat, "torch_namespace", maximum=clamping(compat.maximum, "min"),
                                       minimum=clamping(compat.minimum, "max"), astype=astype, relu_grad=relu_grad,
                                       matmul_tn=matmul_tn, affine=affine, sub_scaled=sub_scaled,
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
        """On CUDA, ``fn`` captured as CUDA graphs and replayed (:class:`GraphedFunction`): a small model's step is
        one graph launch instead of one kernel launch per operation.  On the CPU ``torch.compile(fn)``, with
        Python floats passed as 0-d CPU tensors so that a new learning rate does not recompile; measured on a
        2-core CPU it makes a small model's step ~10–20% faster and a large one's no faster, after 10–30 s of
        compiling."""
        import torch

        if self.device.type == "cuda":
            return GraphedFunction(fn, CudaGraphs(self.device))
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


class CudaGraphs:
    """The CUDA side of :class:`GraphedFunction`: a side stream for the warm-up runs, a graph captured with the
    generators it draws from registered (so each replay draws new numbers), its replay."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device

    @contextlib.contextmanager
    def side_stream(self):
        """Warm-up runs on a side stream, as PyTorch asks before a capture (lazy initialisations stay out of it)."""
        torch = self.torch
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def capture(self, fn, args, generators):
        """``(graph, outputs)``: ``fn(*args)`` captured (nothing runs: the graph records the kernels and their
        memory; its own memory pool holds the temporaries and the outputs)."""
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device):
            for g in generators:
                graph.register_generator_state(g)
            # thread_local: a streamed fit's prefetch thread may copy the next batch to the device (and allocate)
            # while the step is captured; only this thread's calls must be capture-safe
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = fn(*args)
        return graph, out

    @staticmethod
    def replay(graph):
        graph.replay()


class GraphedFunction:
    """``fn`` (a pure step: arrays, dicts of arrays and Python floats in, the same out) captured as a CUDA graph
    per input signature and replayed: one launch for the whole step instead of one per operation, PyTorch's
    answer to small, launch-bound steps.

    * A signature is the structure of the arguments, each tensor's shape, dtype and device, each generator's
      device, and every other leaf's value (None, ints, strings); a Python float is a 0-d float64 tensor on the
      device, so a new learning rate is a copy into the graph's input, not a new graph; the generator the capture
      saw is registered with the graph (each replay draws new numbers) and a new one (a new epoch's) hands it its
      state.  An epoch's full batches and its last, shorter batch are two graphs.
    * The first ``warmup`` calls of a signature run ``fn`` as it is, on a side stream; the next captures it (the
      arguments copied into static tensors the graph owns) and every call replays it: each argument tensor that
      is not already the graph's own is copied into it first.  A step that updates its state in place returns
      the graph's own tensors, which the caller keeps and hands back next time — so parameters and moments are
      never copied; the batch is copied in, once.
    * Outputs that are not the graph's inputs (the batch's sums, anything newly made) live in the graph's memory
      and are overwritten by the next replay: they are returned as copies.
    * ``fn`` must not read the device from the host (no ``float()``, ``.item()``): nnkit's step never does.
      A step that cannot be captured (the capture raises) runs eagerly from then on, with a warning.
      ``graphs`` is the mechanism (:class:`CudaGraphs`; a test can stand in for it on the CPU).
    """

    warmup = 2

    def __init__(self, fn, graphs):
        import torch

        self.fn, self.graphs, self.torch = fn, graphs, torch
        self.entries = {}  # signature -> {"runs", "graph", "static" (inputs), "out" (outputs), "own" (ids of static)}
        self.captures = 0

    def _signature(self, spec, leaves):
        torch = self.torch

        def part(x):
            if isinstance(x, torch.Tensor):
                return ("tensor", tuple(x.shape), x.dtype, x.device)
            if isinstance(x, float):
                return ("float",)
            if isinstance(x, torch.Generator):
                return ("generator", x.device)
            return ("value", x)
        return spec, tuple(part(x) for x in leaves)

    def __call__(self, *args):
        leaves, spec = tree_flatten(args)
        sig = self._signature(spec, leaves)
        entry = self.entries.get(sig)
        if entry is None:
            entry = self.entries[sig] = {"runs": 0, "graph": None}
        if entry["graph"] is None and entry["runs"] < self.warmup or entry["graph"] is _EAGER:
            entry["runs"] += 1
            with self.graphs.side_stream():
                return self.fn(*args)
        if entry["graph"] is None:
            try:
                self._capture(entry, spec, leaves)
            except RuntimeError as exc:  # something in the step that a graph cannot hold: run it as it is
                warnings.warn(f"the step could not be captured as a CUDA graph and runs eagerly: {exc}",
                              RuntimeWarning, stacklevel=2)
                entry["graph"] = _EAGER
                return self(*args)
        torch = self.torch
        for static, x in zip(entry["static"], leaves):
            if isinstance(x, float):
                static.fill_(x)
            elif isinstance(x, torch.Tensor) and x is not static:
                static.copy_(x)
            elif isinstance(x, torch.Generator) and x is not static:  # a new epoch's generator: its seed, not a graph
                static.set_state(x.get_state())
        self.graphs.replay(entry["graph"])
        own = entry["own"]
        out, spec_out = tree_flatten(entry["out"])
        return tree_unflatten(spec_out, [o.clone() if isinstance(o, torch.Tensor) and id(o) not in own else o
                                         for o in out])

    def _capture(self, entry, spec, leaves):
        torch = self.torch
        device = next((x.device for x in leaves if isinstance(x, torch.Tensor)), None)
        static = [x.clone() if isinstance(x, torch.Tensor) else
                  torch.tensor(x, dtype=torch.float64, device=device) if isinstance(x, float) else x for x in leaves]
        generators = [x for x in leaves if isinstance(x, torch.Generator)]
        entry["graph"], entry["out"] = self.graphs.capture(self.fn, tree_unflatten(spec, static), generators)
        entry["static"] = static
        entry["own"] = {id(x) for x in static if isinstance(x, torch.Tensor)}
        self.captures += 1
