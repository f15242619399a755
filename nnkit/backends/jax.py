"""JAX: CPU and GPU devices, ``jax.random`` keys carried as state, ``jax.jit`` for the compiled step."""
from __future__ import annotations

import contextlib

import numpy as np

from .base import Backend, derived_namespace

__all__ = ["JaxBackend"]


def _load():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        raise RuntimeError("backend 'jax' needs JAX, which is not installed: pip install 'jax[cpu]' "
                           "(or 'jax[cuda12]' for NVIDIA GPUs)") from exc
    return jax, jnp


_NAMESPACE: list = []  # jax.numpy with nnkit's additions, made on first use (importing JAX is slow)


def _conv_kernels(jax):
    """XLA's own convolutions (``lax.conv_general_dilated``) for the sums of the layer's derivation: Z = W ⋆ X + b,
    and from the same call's linearisation the transposed convolution dX = dZ ⊛ᵀ W and the correlation dW = X ⋆ dZ
    (what ``jax.vjp`` of the convolution runs: ``conv_general_dilated`` with the input dilated by the stride, and
    with the batch as the contracted axis); db = Σ dZ."""
    from .conv import ConvKernels

    lax = jax.lax

    class JaxConvKernels(ConvKernels):
        @staticmethod
        def _conv(W, stride, padding, dilation, groups):
            """X ↦ W ⋆ X, XLA's convolution with W fixed (channels first)."""
            spatial = "HW"[:W.ndim - 2]
            dims = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
            return lambda X, W=W: lax.conv_general_dilated(X, W, tuple(stride), [(p, p) for p in padding],
                                                           rhs_dilation=tuple(dilation), dimension_numbers=dims,
                                                           feature_group_count=groups)

        def forward(self, xp, X, W, stride, padding, dilation, b=None, groups=1):
            Z, linear = jax.vjp(self._conv(W, stride, padding, dilation, groups), X, W)
            if b is not None:
                Z = Z + xp.reshape(b, (1, -1) + (1,) * (W.ndim - 2))
            return Z, linear

        def backward(self, xp, saved, dZ, W, stride, padding, dilation, need_dX=True, groups=1):
            """dX (the transposed convolution) and dW (the correlation) from the forward call's linearisation."""
            dX, dW = saved(dZ)
            return dW, xp.sum(dZ, axis=(0,) + tuple(range(2, dZ.ndim))), (dX if need_dX else None)

        def transposed(self, xp, X, W, in_shape, stride, padding, dilation, groups=1):
            """The transpose of the linear map X ↦ W ⋆ X on (B, C, *in_shape) inputs (``jax.linear_transpose``: no
            forward convolution is run), applied to X."""
            like = jax.ShapeDtypeStruct((X.shape[0], W.shape[1] * groups) + tuple(in_shape), X.dtype)
            return jax.linear_transpose(self._conv(W, stride, padding, dilation, groups), like)(X)[0]

    return JaxConvKernels()


def _namespace():
    """``jax.numpy`` with ``scan``: ``jax.lax.scan`` while a step is being compiled (the loop compiled once, not
    unrolled), the Python loop of :func:`nnkit.functional.python_scan` on concrete arrays."""
    if not _NAMESPACE:
        jax, jnp = _load()
        from .functional import python_scan, register_namespace

        def scan(body, carry, xs, reverse=False):
            if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((carry, xs))):
                return jax.lax.scan(body, carry, xs, reverse=reverse)
            return python_scan(ns, body, carry, xs, reverse)

        ns = derived_namespace(jnp, "jax_namespace", scan=scan, conv_kernels=_conv_kernels(jax))
        register_namespace(type(jnp.zeros(0)), ns)  # jax.Array's concrete type
        _NAMESPACE.append(ns)
    return _NAMESPACE[0]


def jax_device(spec, jax):
    """The ``jax.Device`` for None (the default device), ``"cpu"``, ``"gpu:N"``/``"cuda:N"`` or a Device."""
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


class JaxBackend(Backend):
    """jax.numpy arrays on a ``jax.Device``: immutable arrays, asynchronous dispatch, ``jax.jit``."""

    name = "jax"
    listed = 4  # its place in BACKEND_NAMES
    compiles = True
    immutable = True

    namespace_test = "is_jax_namespace"

    @classmethod
    def matches(cls, module):
        return getattr(module, "__name__", None) == "jax" or super().matches(module)

    @classmethod
    def own_namespace(cls):
        return _NAMESPACE[0] if _NAMESPACE else None

    @classmethod
    def load(cls, device, dtype):
        jax, jnp = _load()
        dev = jax_device(device, jax)
        spec = f"{dev.platform}:{jax.devices(dev.platform).index(dev)}"  # picklable; jax_device turns it back
        return cls(_namespace(), dev, dtype, spec)

    def check_dtype(self, dtype_name):
        """float64 needs JAX's 64-bit mode (otherwise JAX silently computes in float32)."""
        import jax

        if dtype_name == "float64" and not jax.config.jax_enable_x64:
            raise ValueError(
                "dtype='float64' on JAX needs JAX's 64-bit mode, which is off (JAX would silently compute "
                "in float32): call jax.config.update('jax_enable_x64', True) before creating any array, or "
                "set JAX_ENABLE_X64=1 in the environment; or use dtype='float32'")

    @classmethod
    def holds(cls, x):
        import array_api_compat

        return array_api_compat.is_jax_array(x)

    @staticmethod
    def host_copy_of(x):
        import jax

        return np.array(jax.device_get(x), copy=True)  # an explicit transfer (transfer guards allow it)

    @staticmethod
    def finish_array(x):
        x.block_until_ready()

    def random_key(self, seed):
        """A ``jax.random`` key, which :meth:`uniform` splits (so a compiled step carries it as state)."""
        import jax

        return jax.random.key(int(seed) % 2**32)

    def uniform(self, key, shape, dtype):
        import jax

        key, sub = jax.random.split(key)
        return jax.random.uniform(sub, tuple(int(n) for n in shape), dtype=dtype), key

    @contextlib.contextmanager
    def tf32(self):
        import jax

        with jax.default_matmul_precision("tensorfloat32"):
            yield

    @property
    def on_cuda(self):
        return getattr(self.device, "platform", "") == "gpu"

    def compile(self, fn):
        """``jax.jit(fn)`` (Python floats are traced, not frozen)."""
        import jax

        return jax.jit(fn)

    def synchronize(self, *arrays):
        """Asynchronous dispatch on every platform: wait for the given arrays."""
        import jax

        jax.block_until_ready(arrays)
