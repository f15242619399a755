"""Precision policies: which dtype the weights are stored in, and which dtype the matmuls run in.

Named like Keras' ``DTypePolicy``, chosen once on the model (``Sequential(..., precision=...)``):

=====================  ==============  =========================  ===================================
``precision``          storage         compute (matmuls)          where
=====================  ==============  =========================  ===================================
``None`` (default)     ``dtype``       ``dtype``                  every backend
``"mixed_bfloat16"``   float32         bfloat16                   torch (CPU, CUDA), JAX, CuPy with bfloat16
``"mixed_float16"``    float32         float16, loss scaling      torch, JAX, CuPy
``"tf32"``             float32         float32 storage, TF32      CUDA only: torch-CUDA, CuPy, JAX on a GPU
                                       tensor-core matmuls
=====================  ==============  =========================  ===================================

The semantics (the same on every backend; the casts sit in the places named here and nowhere else):

1. **Master weights in float32.**  Parameters, buffers (running statistics) and optimizer moments stay
   in the storage dtype.  The optimizer update runs there, on float32 gradients.
2. **One cast of each weight per step.**  A matmul layer (``Dense``, ``Conv1D``/``Conv2D``) casts its
   weight and bias to the compute dtype in ``forward`` (``Layer.compute``) and keeps the cast weight for
   its backward pass (dX = dZ·W_cᵀ uses the same W_c); nothing is cast once per use.
3. **Activations flow in the compute dtype.**  The model casts its input X to the compute dtype once
   (``Policy.cast_input``); element-wise activations, dropout and residual sums run in it.
4. **What loses digits runs in float32.**  Softmax/log-sum-exp and the loss see the output cast up to
   float32 (``Policy.cast_output``); ``BatchNorm``/``LayerNorm`` compute their statistics and variances in
   float32 (``Layer.storage``) and hand the compute dtype back; bias gradients are summed in float32.
5. **Gradients in float32 before anything reads them.**  ∂L/∂θ are cast to float32 (``Policy.unscale``)
   before the penalty, the data-parallel all-reduce and the update.
6. **Loss scaling (``mixed_float16``).**  float16 has 5 exponent bits: gradients below 6·10⁻⁸ flush to
   zero.  The loss gradient ∂L/∂out is multiplied by the scale S before it enters the float16 backward
   pass and the float32 gradients are divided by S after it.  The scale follows PyTorch ``GradScaler``'s
   rule: it starts at 2¹⁶; a step whose gradients hold an inf or NaN is skipped (parameters, moments and
   step counts unchanged) and S halves; after 2000 finite steps in a row S doubles.  All of this is
   decided on the device with ``where`` — no host read per step.
7. **Inference uses the same policy** (``predict``, ``evaluate``, validation), and returns float32.

``gradcheck`` always checks a float64 twin of the model without a policy: finite differences need float64.
"""
from __future__ import annotations

import time
import warnings

__all__ = ["Policy", "PRECISIONS", "get_policy", "LossScaler", "SlowPrecisionWarning", "matmul_speeds"]


class SlowPrecisionWarning(UserWarning):
    """A 16-bit policy whose matmuls run slower than float32 on this device (a CPU without bfloat16 or float16
    matrix units runs them emulated, often tens of times slower)."""

PRECISIONS = ("mixed_bfloat16", "mixed_float16", "tf32")
_COMPUTE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16", "tf32": "float32"}


class Policy:
    """A model's precision policy: ``name``, the storage dtype (``backend.dtype``) and the compute dtype.

    Built by :func:`get_policy`, which refuses a precision the backend cannot honour.
    """

    def __init__(self, name, backend):
        self.name = name
        self.backend = backend
        xp = backend.xp
        self.storage_dtype = backend.dtype
        self.compute_dtype_name = _COMPUTE[name] if name else backend.dtype_name
        self.compute_dtype = getattr(xp, self.compute_dtype_name)
        # layers cast only where the compute dtype differs from storage (tf32 changes the matmul, not the dtype)
        self.casts = self.compute_dtype_name != backend.dtype_name
        self.loss_scaling = name == "mixed_float16"

    def __repr__(self):
        return f"Policy({self.name!r}, storage={self.backend.dtype_name}, compute={self.compute_dtype_name})"

    def activate(self):
        """The backend's device made current (and TF32 matmuls allowed under ``"tf32"``) while inside."""
        return self.backend.activate(tf32=self.name == "tf32")

    # -- the casts, in the one place the model makes them ----------------------------------------
    def cast_input(self, X):
        """The model's input in the compute dtype (once per forward pass); integer token ids stay integers."""
        xp = self.backend.xp
        if not self.casts or X.dtype == self.compute_dtype or xp.isdtype(X.dtype, "integral"):
            return X
        return xp.astype(X, self.compute_dtype)

    def cast_output(self, out):
        """The model's output in float32 (storage) for the loss, softmax and the caller."""
        return self.backend.xp.astype(out, self.storage_dtype) if out.dtype != self.storage_dtype else out

    def cast_grad_out(self, d_out, scaler=None):
        """∂L/∂out (float32) times the loss scale S, in the compute dtype: what enters the backward pass."""
        if scaler is not None:
            d_out = d_out * scaler["scale"]
        return self.backend.xp.astype(d_out, self.compute_dtype) if self.casts else d_out

    def unscale(self, grads, scaler=None):
        """∂L/∂θ in float32, divided by the loss scale S: what the penalty, all-reduce and update see."""
        xp, storage = self.backend.xp, self.storage_dtype
        grads = {k: (xp.astype(g, storage) if g.dtype != storage else g) for k, g in grads.items()}
        if scaler is not None:
            inv = 1.0 / scaler["scale"]
            grads = {k: g * inv for k, g in grads.items()}
        return grads


class LossScaler:
    """Dynamic loss scaling with PyTorch ``GradScaler``'s rule, on the device.

    State (two 0-d float32 arrays): ``scale`` S (starts at 2¹⁶) and ``good``, the finite steps since S
    last changed.  After a step with gradients g:

    * ok = all(isfinite(g));
    * not ok: the update is skipped, S ← S·½, good ← 0;
    * ok: good ← good + 1; when good reaches 2000: S ← 2S, good ← 0.
    """

    init_scale = 2.0 ** 16
    growth_factor = 2.0
    backoff_factor = 0.5
    growth_interval = 2000

    @classmethod
    def init(cls, backend, scale=None, good=0.0):
        """A fresh scaler state on ``backend`` (or one restored from a checkpoint's two numbers)."""
        xp = backend.xp
        s = cls.init_scale if scale is None else float(scale)
        with backend.activate():
            return {"scale": xp.asarray(s, dtype=xp.float32, device=backend.device),
                    "good": xp.asarray(float(good), dtype=xp.float32, device=backend.device)}

    @staticmethod
    def all_finite(xp, grads):
        """A 0-d bool: True when no gradient holds an inf or NaN."""
        ok = None
        for g in grads.values():
            fin = xp.all(xp.isfinite(g))
            ok = fin if ok is None else xp.logical_and(ok, fin)
        return ok

    @classmethod
    def update(cls, xp, state, ok):
        """The scaler state after a step whose gradients were finite (``ok``) or not."""
        scale, good = state["scale"], state["good"]
        good1 = good + 1.0
        grow = good1 >= cls.growth_interval
        new_scale = xp.where(ok, xp.where(grow, scale * cls.growth_factor, scale), scale * cls.backoff_factor)
        new_good = xp.where(ok, xp.where(grow, xp.zeros_like(good), good1), xp.zeros_like(good))
        return {"scale": new_scale, "good": new_good}

    @staticmethod
    def copy(xp, tree):
        """Device copies of the arrays in a dict nested up to two levels (params, moments): the values an
        in-place update would overwrite."""
        return {k: LossScaler.copy(xp, v) if isinstance(v, dict) else
                (v if isinstance(v, (int, float)) else xp.asarray(v, copy=True)) for k, v in tree.items()}

    @staticmethod
    def keep_if(xp, ok, new, old):
        """``new`` where ``ok``, else ``old`` — for dicts of arrays nested one level (params, moments)."""
        out = {}
        for k, v in new.items():
            if isinstance(v, dict):
                out[k] = LossScaler.keep_if(xp, ok, v, old[k])
            elif isinstance(v, (int, float)):
                out[k] = v
            else:
                out[k] = xp.where(ok, v, old[k])
        return out


def get_policy(precision, backend):
    """The :class:`Policy` for ``precision`` (None, ``"mixed_bfloat16"``, ``"mixed_float16"``, ``"tf32"``) on
    ``backend``; a precision the backend cannot honour is a ValueError naming backends that can."""
    if isinstance(precision, Policy):
        precision = precision.name
    if precision is None:
        return Policy(None, backend)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected None, "
                         f"{', '.join(repr(p) for p in PRECISIONS)}")
    if backend.dtype_name != "float32":
        raise ValueError(f"precision={precision!r} keeps float32 master weights: use dtype='float32' "
                         f"(got dtype={backend.dtype_name!r})")
    if precision == "tf32":
        if not backend.on_cuda:
            raise ValueError(f"precision='tf32' needs an NVIDIA GPU (TF32 tensor cores), but backend "
                             f"'{backend.name}' runs on {backend.device_spec!r}: use backend='torch' with "
                             f"device='cuda', backend='cupy', or JAX on a GPU; on a CPU use "
                             f"precision='mixed_bfloat16' (backend='torch' or 'jax')")
        return Policy(precision, backend)
    compute = _COMPUTE[precision]
    why = backend.low_precision_refusal(compute)
    if why is not None:
        who = "backend='torch' or 'jax'" if compute == "bfloat16" else "backend='torch', 'jax' or 'cupy'"
        raise ValueError(f"precision={precision!r} computes in {compute}, which backend '{backend.name}' "
                         f"cannot: {why}. Use {who}")
    fast, slow = matmul_speeds(backend, compute)
    if slow < fast / SLOWER:
        warnings.warn(SlowPrecisionWarning(
            f"precision={precision!r} on {backend!r}: {compute} matmuls run at {slow:.3g} GFLOP/s on this device "
            f"against {fast:.3g} GFLOP/s in float32 ({fast / slow:.1f}× slower: this device has no fast {compute} "
            f"matrix unit): use precision=None (float32) here, or {precision!r} on a GPU or a CPU with {compute} "
            "matrix instructions (AVX512-BF16 or AMX for bfloat16)"), stacklevel=3)
    return Policy(precision, backend)


SLOWER = 1.2  # a 16-bit matmul this much slower than float32 is worth a warning (timing noise stays below it)
_SPEEDS: dict[tuple[str, str, str], tuple[float, float]] = {}  # (backend class, device, compute dtype) -> (float32 GFLOP/s, compute-dtype GFLOP/s)


def matmul_speeds(backend, compute, n=192):
    """``(float32, compute)`` GFLOP/s of an n×n matmul on ``backend``'s device, timed once per device and dtype
    (best of a few runs after a warm-up, synchronised) and cached for the process."""
    key = (type(backend).__name__, str(backend.device_spec), compute)
    if key not in _SPEEDS:
        _SPEEDS[key] = tuple(_gflops(backend, dt, n) for dt in ("float32", compute))
    return _SPEEDS[key]


def _gflops(backend, dtype_name, n):
    xp = backend.xp
    with backend.activate():
        a = xp.ones((n, n), dtype=getattr(xp, dtype_name), device=backend.device)
        best = float("inf")
        for i in range(4):
            t0 = time.perf_counter()
            c = a @ a
            backend.synchronize(c)
            if i:  # the first run warms up
                best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / max(best, 1e-9) / 1e9
