"""Benchmarks of nnkit's kernels on CPU and GPU: what is timed, how, and the report.

Used by the pytest-benchmark suite in ``benchmarks/``, by ``python -m benchmarks.report`` and by
``nnkit bench``.

Shapes (MLP widths, batch):
  S = 64-128-64-10, batch 64 (overhead-bound)       M = 784-1024-1024-10, batch 256
  L = 2048-2048-2048-2048-10, batch 512 (matmul-bound)   and a batch-size sweep of M from 32 to 4096.

Targets ("where the arrays live"):  numpy (CPU), torch (PyTorch CPU), cupy and torch-cuda (when a GPU is
usable).  On each target we time nnkit's kernels, the *matmul floor* written in the target's own library,
and, on the torch targets, the peer: a plain PyTorch eager training step.

The matmul floor is what no MLP step can avoid: per Dense layer X·W (forward), Xᵀ·dZ (dW) and dZ·Wᵀ (dX),
at the same shapes.  The tight floor leaves out the first layer's dX, which nobody needs.

Every timed callable ends with the target's synchronisation (a stream sync on a GPU, nothing on the CPU),
so GPU timings measure finished work.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import statistics
import sys
import time

import numpy as np

from .. import data
from ..backends import get_backend
from ..backends.threads import apply_default, set_threads, threads_arg
from ..data.files import VERSION, atomic_write
from ..layers import Conv1D, Conv2D, Dense, Flatten, ReLU, Reshape
from ..losses import CrossEntropy
from ..models import Sequential
from ..training import precision as precision_module
from ..training.callbacks import Callback
from ..training.optim import SGD, Adam

SHAPES = {
    "S": ((64, 128, 64, 10), 64),
    "M": ((784, 1024, 1024, 10), 256),
    "L": ((2048, 2048, 2048, 2048, 10), 512),
}
SWEEP = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # batch sizes for shape M
DTYPES = ("float32", "float64", "mixed_bfloat16", "mixed_float16", "tf32")  # dtypes and precision policies
QUICK = {"targets": ("numpy", "torch", "cupy", "torch-cuda"), "shapes": ("S", "M"), "sweep": (64, 1024),
         "blocks": 3, "warmup": 1, "settle": 0.1}  # a smoke run: fewer, shorter blocks (noisier figures, flagged)
PACE = {"blocks": 5, "warmup": 2, "settle": 0.25}  # measure's defaults; --quick sets QUICK's
KERNELS = ("dense_forward", "dense_backward", "relu_forward", "relu_backward", "softmax_cross_entropy",
           "train_step", "fit_epoch", "matmul_floor", "matmul_floor_tight", "torch_eager_step")
TARGETS = ("numpy", "torch", "torch-compile", "jax", "jax-jit", "cupy", "torch-cuda")
COMPILED = {"torch-compile": "torch", "jax-jit": "jax"}  # a compiled step (fit(compile=True)) on this library
FIT_BATCHES = 8  # a fit_epoch runs over this many batches


def target_backend(target, dtype="float32"):
    """The nnkit Backend for a target name; raises RuntimeError (with the reason) when it is not usable."""
    if target == "torch-cuda":
        try:
            import torch
        except ImportError as exc:
            raise RuntimeError("torch-cuda needs PyTorch: pip install torch") from exc
        if not torch.cuda.is_available():
            raise RuntimeError("torch-cuda: PyTorch sees no CUDA device")
        return get_backend("torch", device="cuda", dtype=dtype)
    return get_backend(COMPILED.get(target, target), dtype=dtype)


def why_unavailable(target):
    """None when ``target`` can run here, else the reason."""
    try:
        target_backend(target)
    except RuntimeError as exc:
        return str(exc)
    return None


def available_targets():
    return [t for t in TARGETS if why_unavailable(t) is None]


def mlp(sizes, backend, seed=0, precision=None):
    """Dense + ReLU between every pair of widths (He-initialised), no activation after the last layer."""
    return Sequential.mlp(sizes, "relu", backend=backend, seed=seed, precision=precision)


def split_dtype(dtype):
    """(storage dtype, precision policy) of a report "dtype": ``"float64"`` → (float64, None),
    ``"mixed_bfloat16"`` → (float32, "mixed_bfloat16")."""
    return ("float32", dtype) if dtype in precision_module.PRECISIONS else (dtype, None)


def why_not(target, dtype):
    """None when ``target`` can run ``dtype`` (a dtype or a precision policy) here, else the reason."""
    why = why_unavailable(target)
    if why is not None:
        return why
    storage, precision = split_dtype(dtype)
    try:
        precision_module.get_policy(precision, target_backend(target, storage))
    except (RuntimeError, ValueError) as exc:
        return str(exc)
    return None


EMULATED = 4.0  # a 16-bit policy whose matmuls run this much slower than float32 is emulated on this device


def why_emulated(target, dtype):
    """None, or why timing ``dtype`` on ``target`` beyond the small shape would say nothing but wait: a 16-bit
    policy on a device without that dtype's matrix unit (float16 on most CPUs; bfloat16 without AVX512-BF16 or
    AMX), whose matmuls were measured here more than ``EMULATED`` times slower than float32's (one small probe
    per device, :func:`nnkit.precision.matmul_speeds`).  On such a CPU PyTorch's float16 step of the L shape
    takes minutes."""
    storage, precision = split_dtype(dtype)
    if precision is None or precision == "tf32" or why_not(target, dtype) is not None:
        return None
    compute = precision_module.Policy(precision, target_backend(target, storage)).compute_dtype_name
    fast, slow = precision_module.matmul_speeds(target_backend(target, storage), compute)
    if slow * EMULATED < fast:
        return (f"{precision} on {target} here: {compute} matmuls run at {slow:.3g} GFLOP/s against {fast:.3g} in "
                f"float32 ({fast / slow:.0f}× slower: no {compute} matrix unit), so only the S shape is timed")
    return None


def host_batch(sizes, batch, dtype, seed=0):
    """(X, labels) on the host: standard-normal features, uniform labels."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], size=batch)


def train_step_flops(sizes, batch):
    """Floating-point operations of one train step's matmuls: 2·B·in·out each for X·W and Xᵀ·dZ in every
    layer and for dZ·Wᵀ in all but the first."""
    pairs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * batch * (3 * sum(pairs) - pairs[0])


class Case:
    """One (target, dtype, widths, batch): the model, its data and every kernel as a no-argument callable."""

    def __init__(self, target, dtype, sizes, batch):
        self.target, self.dtype, self.sizes, self.batch = target, dtype, tuple(sizes), batch
        storage, precision = split_dtype(dtype)
        self.backend = be = target_backend(target, storage)
        self.model = mlp(sizes, be, precision=precision)
        self.policy = self.model.policy
        X, y = host_batch(sizes, batch, storage)
        self.loss = CrossEntropy()
        self.X = be.asarray(X, dtype=be.dtype)
        self.T = self.loss.prepare_target(y, sizes[-1], be)
        self.y_host, self.X_host = y, X
        self.flops = train_step_flops(sizes, batch)

    def _sync(self, fn):
        sync = self.backend.synchronize

        def timed():
            out = fn()
            sync(out)  # JAX: block on the result; GPUs: the stream
            return out

        return timed

    def kernel(self, name):
        """The callable that runs kernel ``name`` once (synchronised, under the precision policy); KeyError for
        an unknown name."""
        fn, policy = self._sync(getattr(self, f"_k_{name}")()), self.policy

        def run():
            with policy.activate():  # tf32: TF32 matmuls; elsewhere the device made current
                return fn()

        return run

    # -- the pieces of a step, on the model's widest Dense layer and its ReLU ----------------------
    def _widest(self):
        """Index of the Dense layer with the most weights (a hidden one for M and L) and its input."""
        dense = [i for i, l in enumerate(self.model.layers) if isinstance(l, Dense)]
        k = max(dense, key=lambda i: (self.model.layers[i].in_features * self.model.layers[i].out_features, i))
        A = self.policy.cast_input(self.X)  # the compute dtype, as inside a step
        for layer in self.model.layers[:k]:
            A = layer.forward(A, train=False)
        return k, A

    def _k_dense_forward(self):
        k, A = self._widest()
        layer = self.model.layers[k]
        return lambda: layer.forward(A, train=True)

    def _k_dense_backward(self):
        k, A = self._widest()
        layer = self.model.layers[k]
        dZ = layer.forward(A, train=True)
        return lambda: layer.backward(dZ, need_dX=True)

    def _relu(self):
        k, A = self._widest()
        Z = self.model.layers[k].forward(A, train=False)
        relu = ReLU()
        relu.build(self.backend, None)
        return relu, Z

    def _k_relu_forward(self):
        relu, Z = self._relu()
        return lambda: relu.forward(Z, train=True)

    def _k_relu_backward(self):
        relu, Z = self._relu()
        relu.forward(Z, train=True)
        return lambda: relu.backward(Z)

    def _k_softmax_cross_entropy(self):
        logits = self.model.predict(self.X)
        return lambda: self.loss.value_and_grad(logits, self.T)

    def _k_train_step(self):
        model, X, T, loss, opt = self.model, self.X, self.T, self.loss, SGD(0.01)
        if self.target in COMPILED:  # the step fit(compile=True) runs
            from ..training.step import make_step

            run = make_step(model, loss, opt, metric_fns=[], compile=True)
            return lambda: (run(X, T), model.params())
        # the parameters too: on an asynchronous runtime (JAX) the update is still queued after the loss
        return lambda: (model.train_step(X, T, loss, opt, check_input=False), model.params())

    def _k_fit_epoch(self):
        reps = FIT_BATCHES
        X = np.concatenate([self.X_host] * reps)
        y = np.concatenate([self.y_host] * reps)
        model, opt = self.model, SGD(0.01)
        Xd, yd = self.backend.asarray(X, dtype=self.backend.dtype), self.backend.asarray(y)
        return lambda: (model.fit(Xd, yd, loss=self.loss, optimizer=opt, epochs=1, batch_size=self.batch,
                                  verbose=0, compile=self.target in COMPILED), model.params())

    # -- the floor, in the target's own library ------------------------------------------------------
    def _floor(self, first_dX):
        """The matmuls in the compute dtype (bfloat16 under mixed_bfloat16; TF32 under tf32, see ``kernel``)."""
        be, rng = self.backend, np.random.default_rng(1)
        sizes, B = self.sizes, self.batch
        compute = self.policy.compute_dtype

        def arr(*shape):
            return be.xp.astype(be.asarray(rng.standard_normal(shape), dtype=be.dtype), compute)

        Ws = [arr(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        Xs = [arr(B, a) for a in sizes[:-1]]
        dZs = [arr(B, b) for b in sizes[1:]]

        def floor(Ws=Ws, Xs=Xs, dZs=dZs):
            out = []
            for i, (W, X, dZ) in enumerate(zip(Ws, Xs, dZs)):
                out += [X @ W, X.T @ dZ] + ([dZ @ W.T] if i or first_dX else [])
            return out

        if self.target == "jax-jit":  # the compiled step's floor: the same matmuls, compiled
            compiled = be.compile(floor)
            return lambda: compiled(Ws, Xs, dZs)
        return floor

    def _k_matmul_floor(self):
        return self._floor(first_dX=True)

    def _k_matmul_floor_tight(self):
        return self._floor(first_dX=False)

    # -- the peer: a plain PyTorch eager step (autograd, torch.optim.SGD) ------------------------------
    def _k_torch_eager_step(self):
        if self.target not in PEERS:
            raise KeyError("torch_eager_step runs on the torch targets only")
        import torch

        torch.manual_seed(0)
        dev, dt = self.backend.device, getattr(torch, self.backend.dtype_name)
        layers = []
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(self.sizes) - 2:
                layers.append(torch.nn.ReLU())
        net = torch.nn.Sequential(*layers).to(device=dev, dtype=dt)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        X = torch.as_tensor(self.X_host, device=dev)
        y = torch.as_tensor(self.y_host, device=dev)
        precision = self.model.precision
        if precision in ("mixed_bfloat16", "mixed_float16"):  # PyTorch's own mixed precision: autocast (+ GradScaler)
            cdt = getattr(torch, self.model.compute_dtype)
            scaler = torch.amp.GradScaler(dev.type) if precision == "mixed_float16" else None

            def step():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=cdt):
                    loss = torch.nn.functional.cross_entropy(net(X), y)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                return loss

            return step

        return _eager_step(torch, net, opt, X, y)


def _eager_step(torch, net, opt, X, y):
    """A plain PyTorch eager training step: zero the gradients, cross-entropy, autograd, the optimizer."""
    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(X), y)
        loss.backward()
        opt.step()
        return loss

    return step


# -- convolution: the conv kernels against their im2col GEMMs, and a CNN step against PyTorch eager ----------
CONV_SHAPES = {  # (batch, in channels, out channels, spatial size, kernel, stride, padding)
    "MNIST-1D": (100, 25, 25, (10,), 3, 2, 1),       # ConvBase's third layer (its second is the same at length 19)
    "CIFAR": (64, 3, 32, (32, 32), 3, 1, 1),
    "FCN": (16, 128, 256, (151,), 5, 1, 2),          # Wang et al.'s FCN on UCR series, its widest layer
}
CONV_KERNELS = ("conv_forward", "conv_backward", "gemm_floor", "conv_torch_module", "cnn_step",
                "cnn_torch_eager_step")


def convbase_layers():
    """The MNIST-1D paper's ConvBase on (B, 40) rows (see ``benchmarks/run_mnist1d.py``)."""
    return [Reshape((1, 40)), Conv1D(1, 25, 5, stride=2, padding=1), ReLU(),
            Conv1D(25, 25, 3, stride=2, padding=1), ReLU(),
            Conv1D(25, 25, 3, stride=2, padding=1), ReLU(), Flatten(), Dense(125, 10)]


class ConvCase:
    """One (target, conv shape): the layer's forward and backward, its im2col GEMM floor, and the ConvBase
    training step (Adam, batch 100) with its PyTorch eager peer."""

    def __init__(self, target, shape):
        self.target, self.shape = target, shape
        self.backend = be = target_backend(target, "float32")
        B, C, O, n, k, s, p = CONV_SHAPES[shape]
        cls = Conv1D if len(n) == 1 else Conv2D
        self.layer = cls(C, O, k, stride=s, padding=p)
        self.model = Sequential([self.layer], backend=be, seed=0)
        rng = np.random.default_rng(0)
        self.X = be.asarray(rng.standard_normal((B, C) + n), dtype=be.dtype)
        self.out = self.model.output_shape(tuple(self.X.shape[1:]))
        self.cnn = Sequential(convbase_layers(), backend=be, seed=0, input_shape=(40,))
        self.X40 = rng.standard_normal((100, 40)).astype(np.float32)
        self.y40 = rng.integers(0, 10, size=100)

    def kernel(self, name):
        """The callable that runs ``name`` once, synchronised."""
        fn, sync = getattr(self, f"_k_{name}")(), self.backend.synchronize

        def run():
            out = fn()
            sync(out)
            return out

        return run

    def _k_conv_forward(self):
        layer, X = self.layer, self.X
        return lambda: layer.forward(X, train=True)

    def _k_conv_backward(self):
        layer, X = self.layer, self.X
        dZ = layer.forward(X, train=True)
        return lambda: layer.backward(dZ, need_dX=True)

    def _k_gemm_floor(self):
        """The three GEMMs of im2col at this shape: W₂·cols, dZ·colsᵀ (summed over the batch), W₂ᵀ·dZ."""
        be, xp, layer = self.backend, self.backend.xp, self.layer
        B, CK, O = self.X.shape[0], layer._fan_in, layer.out_channels
        P = math.prod(self.out[1:])
        rng = np.random.default_rng(1)
        cols, W2, dZ = (be.asarray(rng.standard_normal(s), dtype=be.dtype) for s in ((B, CK, P), (O, CK), (B, O, P)))
        return lambda: [W2 @ cols, xp.tensordot(dZ, cols, axes=([0, 2], [0, 2])), W2.T @ dZ]

    def _k_conv_torch_module(self):
        """PyTorch's own module at the same shape: ``nn.Conv1d/2d`` forward and backward to its input (the peer)."""
        if self.target not in PEERS:
            raise KeyError("PyTorch's convolution module runs on the torch targets only")
        import torch

        torch.manual_seed(0)
        layer = self.layer
        conv = getattr(torch.nn, f"Conv{layer.n}d")(layer.in_channels, layer.out_channels, layer.kernel_size,
                                                    stride=layer.stride, padding=layer.padding).to(self.backend.device)
        from ..backends import host_copy

        x = torch.as_tensor(host_copy(self.X), device=self.backend.device).requires_grad_(True)
        dy = torch.ones_like(conv(x))

        def step():
            conv(x).backward(dy)
            grad, x.grad = x.grad, None
            return grad
        return step

    def _k_cnn_step(self):
        model, opt = self.cnn, Adam(1e-2)
        X = data.as_input(model, self.X40)
        T = data.as_target(model, self.y40, 100, CrossEntropy())
        return lambda: (model.train_step(X, T, "cross_entropy", opt, check_input=False), model.params())

    def _k_cnn_torch_eager_step(self):
        if self.target not in PEERS:
            raise KeyError("the PyTorch eager CNN step runs on the torch targets only")
        import torch

        torch.manual_seed(0)
        nn = torch.nn
        dev = self.backend.device
        net = nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, 25, 5, 2, 1), nn.ReLU(), nn.Conv1d(25, 25, 3, 2, 1),
                            nn.ReLU(), nn.Conv1d(25, 25, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(125, 10)).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        X, y = torch.as_tensor(self.X40, device=dev), torch.as_tensor(self.y40, device=dev)
        return _eager_step(torch, net, opt, X, y)


def run_conv_report(targets, seconds=1.0, log=print, progress=None):
    """``{"conv": [...], "cnn": [...]}``: conv kernels against their GEMM floor per target and shape, and the
    ConvBase step of every target against PyTorch eager (measured in one run); ``progress`` as
    :func:`run_report`'s."""
    conv, cnn = [], []
    targets = [t for t in targets if t not in COMPILED and why_unavailable(t) is None]
    for shape in CONV_SHAPES:
        cases = {t: ConvCase(t, shape) for t in targets}
        groups = {t: {f"{t}|{k}": c.kernel(k) for k in ("conv_forward", "conv_backward", "gemm_floor")}
                  for t, c in cases.items()}
        for t, c in cases.items():
            if t in PEERS:
                groups[t][f"{t}|conv_torch_module"] = c.kernel("conv_torch_module")
        if shape == "MNIST-1D":
            for t, c in cases.items():
                groups[t][f"{t}|cnn_step"] = c.kernel("cnn_step")
                if t in PEERS:
                    groups[t][f"{t}|cnn_torch_eager_step"] = c.kernel("cnn_torch_eager_step")
        log(f"conv {shape}: timing on {', '.join(targets)}")
        times = measure(groups, seconds=seconds, log=lambda m: log(f"conv {shape}: {m}"))
        below = [t for t in cases if _conv_below_floor(times, t)]
        if below:  # forward + backward under their GEMM floor: the machine changed state; once more
            log(f"conv {shape}: re-measuring {', '.join(below)} (forward + backward below the GEMM floor)")
            times.update(measure({t: groups[t] for t in below}, seconds=seconds))
        for t in cases:
            conv.append({"shape": shape, "target": t, "forward": times[f"{t}|conv_forward"],
                         "backward": times[f"{t}|conv_backward"], "floor": times[f"{t}|gemm_floor"],
                         "peer": times.get(f"{PEER_OF[t]}|conv_torch_module")})
            if shape == "MNIST-1D":
                peer = times.get(f"{PEER_OF[t]}|cnn_torch_eager_step")
                cnn.append({"target": t, "step": times[f"{t}|cnn_step"], "peer": peer})
        del cases
        if progress is not None:
            progress({"conv": conv, "cnn": cnn})
    return {"conv": conv, "cnn": cnn}


def _conv_below_floor(times, t):
    return times[f"{t}|conv_forward"] + times[f"{t}|conv_backward"] < times[f"{t}|gemm_floor"]


# -- timing ---------------------------------------------------------------------------------------
EPOCH_BATCHES = 200  # the S epoch: 200 batches of 64
EPOCHS = 5  # each timed call runs this many epochs (a fit's checks and set-up shared by them, as in real use)


def _hand_scan_epoch(sizes, X, y, batch, lr=0.01):
    """The S epoch written by hand in JAX and compiled whole (``lax.scan`` over the batches, ``jax.grad``,
    plain SGD), shuffled as ``fit`` shuffles (a permutation drawn on the host each epoch, the rows gathered in the
    compiled function): the reference a compiled epoch is held to.  A no-argument callable running
    :data:`EPOCHS` epochs."""
    import jax
    import jax.numpy as jnp

    key, params = jax.random.PRNGKey(0), []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, k = jax.random.split(key)
        params.append((jax.random.normal(k, (a, b)) * (2.0 / (a + b)) ** 0.5, jnp.zeros(b)))
    Xd, yd = jnp.asarray(X), jnp.asarray(y)
    rng = np.random.default_rng(0)

    def loss(params, x, t):
        a = x
        for i, (W, b) in enumerate(params):
            a = a @ W + b
            a = jax.nn.relu(a) if i < len(params) - 1 else a
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(a), t[:, None], axis=1))

    @jax.jit
    def epoch(params, idx):
        Xb = jnp.take(Xd, idx.reshape(-1), axis=0).reshape(idx.shape + (Xd.shape[1],))
        yb = jnp.take(yd, idx.reshape(-1), axis=0).reshape(idx.shape)

        def body(params, xt):
            value, grads = jax.value_and_grad(loss)(params, *xt)
            return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), value
        params, values = jax.lax.scan(body, params, (Xb, yb))
        return params, jnp.sum(values)

    state = [params]

    def run():
        for _ in range(EPOCHS):
            idx = jnp.asarray(rng.permutation(len(X)).reshape(-1, batch))
            state[0], total = epoch(state[0], idx)
            float(total)  # the epoch's loss read once, as fit reads its logs
    return run


def _hand_numpy_epoch(sizes, X, y, batch, lr=0.01):
    """The S epoch written by hand in NumPy, as tight as NumPy allows: every activation, gradient and mask in a
    buffer allocated once and written with ``out=`` or in place, the batches gathered in a permuted order each
    epoch, softmax cross-entropy on the labels, plain SGD — no framework, no checks.  What the eager ``fit`` is
    held to besides the GEMM floor: the calls a NumPy step cannot avoid.  A no-argument callable running
    :data:`EPOCHS` epochs."""
    rng = np.random.default_rng(0)
    Ws = [(rng.standard_normal((a, b)) * (2.0 / (a + b)) ** 0.5).astype(np.float32) for a, b in zip(sizes[:-1],
                                                                                                     sizes[1:])]
    bs = [np.zeros(b, np.float32) for b in sizes[1:]]
    Zs = [np.empty((batch, b), np.float32) for b in sizes[1:]]
    dWs = [np.empty_like(W) for W in Ws]
    dAs = [np.empty((batch, a), np.float32) for a in sizes[1:-1]]
    masks = [np.empty((batch, a), bool) for a in sizes[1:-1]]
    rows, last = np.arange(batch), len(Ws) - 1
    scale = np.float32(1 / batch)

    def run():
        for _ in range(EPOCHS):
            order, total = rng.permutation(len(X) // batch * batch), 0.0
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                As, t = [X.take(idx, axis=0)], y.take(idx)
                for i, (W, b, Z) in enumerate(zip(Ws, bs, Zs)):  # Z = A·W + b, ReLU in place but on the logits
                    np.matmul(As[-1], W, out=Z)
                    Z += b
                    if i < last:
                        As.append(np.maximum(Z, 0, out=Z))
                P = Zs[-1]  # softmax in place, then dZ = (P − onehot(t)) / B
                P -= P.max(axis=1, keepdims=True)
                np.exp(P, out=P)
                P /= P.sum(axis=1, keepdims=True)
                total += -np.log(P[rows, t]).sum()
                P[rows, t] -= 1
                dZ = np.multiply(P, scale, out=P)
                for i in range(last, -1, -1):
                    np.matmul(As[i].T, dZ, out=dWs[i])
                    db = dZ.sum(axis=0)
                    if i:  # dA = dZ·Wᵀ, then dZ = dA ⊙ [A > 0] — before W is updated
                        dA = np.matmul(dZ, Ws[i].T, out=dAs[i - 1])
                        dA *= np.greater(As[i], 0, out=masks[i - 1])
                    dWs[i] *= lr
                    Ws[i] -= dWs[i]
                    db *= lr
                    bs[i] -= db
                    if i:
                        dZ = dA
            float(total)  # the epoch's loss read once, as fit reads its logs
    return run


def epoch_callables(shape="S", log=print):
    """``{library: {row: fn}}``: each fn runs :data:`EPOCHS` epochs of :data:`EPOCH_BATCHES` batches of ``shape``
    (nnkit's as one ``fit`` call) — the NumPy GEMM floor (the step's nine GEMMs), nnkit's NumPy ``fit``, the same
    epoch written by hand in NumPy as tightly as NumPy allows, JAX ``fit(compile=True)`` with the epoch compiled
    whole and step by step, the hand-written ``lax.scan`` epoch and PyTorch's own eager loop (the libraries that are installed); where PyTorch sees a CUDA device, nnkit's torch
    ``fit`` there eager and with ``compile=True`` (the step as CUDA graphs) beside PyTorch's own loop on it."""
    sizes, batch = SHAPES[shape]
    rng = np.random.default_rng(0)
    n = batch * EPOCH_BATCHES
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=n)
    groups = {"numpy": {}, "jax": {}, "torch": {}}
    Ws = [rng.standard_normal((a, b)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    Xs = [rng.standard_normal((batch, a)).astype(np.float32) for a in sizes[:-1]]
    dZs = [rng.standard_normal((batch, b)).astype(np.float32) for b in sizes[1:]]

    def floor():
        for _ in range(EPOCH_BATCHES * EPOCHS):
            for W, A, dZ in zip(Ws, Xs, dZs):
                A @ W, A.T @ dZ, dZ @ W.T

    groups["numpy"]["GEMM floor (NumPy, the step's nine GEMMs)"] = floor

    def fit_epoch(backend, compile=False, every_batch=False):
        model = mlp(sizes, backend)
        opt = SGD(0.01)
        Xd, yd = model.backend.asarray(X, dtype=model.backend.dtype), model.backend.asarray(y)
        hooks = [_EveryBatch()] if every_batch else []

        def run():
            model.fit(Xd, yd, loss="cross_entropy", optimizer=opt, epochs=EPOCHS, batch_size=batch, verbose=0,
                      compile=compile, metrics=[], callbacks=hooks)
        return run

    groups["numpy"]["nnkit fit, NumPy"] = fit_epoch("numpy")
    groups["numpy"]["NumPy step written by hand (in place, out= buffers, no framework)"] = _hand_numpy_epoch(
        sizes, X, y, batch)
    for name, why in (("jax", why_unavailable("jax")), ("torch", why_unavailable("torch"))):
        if why:
            log(f"epoch report: no {name} ({why})")
    if not why_unavailable("jax"):
        groups["jax"]["nnkit fit, JAX, compile=True (the epoch compiled whole)"] = fit_epoch("jax", True)
        groups["jax"]["nnkit fit, JAX, compile=True, step by step"] = fit_epoch("jax", True, True)
        groups["jax"]["hand-written JAX epoch (lax.scan, compiled whole, shuffled)"] = _hand_scan_epoch(sizes, X, y,
                                                                                                      batch)
    if not why_unavailable("torch"):
        groups["torch"]["PyTorch's own eager loop"] = _torch_epoch(sizes, X, y, batch, "cpu")
    if why_unavailable("torch-cuda"):
        log(f"epoch report: no CUDA rows ({why_unavailable('torch-cuda')})")
    else:  # the step as one CUDA graph launch against the same step kernel by kernel, and PyTorch's loop there
        cuda = target_backend("torch-cuda")
        groups["torch-cuda"] = {"nnkit fit, torch CUDA, eager": fit_epoch(cuda),
                                "nnkit fit, torch CUDA, compile=True (CUDA graphs)": fit_epoch(cuda, True),
                                "PyTorch's own eager loop, CUDA": _torch_epoch(sizes, X, y, batch, "cuda")}
    return {g: fns for g, fns in groups.items() if fns}


def _torch_epoch(sizes, X, y, batch, device):
    """PyTorch's own eager loop over the epoch's batches (in order), :data:`EPOCHS` times, on ``device``: an MLP of
    ``sizes`` with ReLU, plain SGD; the loss read once per epoch, as ``fit`` reads its logs."""
    import torch

    net = torch.nn.Sequential(*[m for a, b in zip(sizes[:-1], sizes[1:])
                                for m in (torch.nn.Linear(a, b), torch.nn.ReLU())][:-1]).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    steps = [_eager_step(torch, net, opt, Xt[s:s + batch], yt[s:s + batch]) for s in range(0, len(X), batch)]

    def run():
        for _ in range(EPOCHS):
            for step in steps:
                loss = step()
            loss.item()
    return run


def run_epoch_report(seconds=1.0, log=print, shape="S"):
    """Rows ``{"what", "step"}``: seconds per step of each of :func:`epoch_callables`, timed in one run, each
    alternating with the others (:func:`measure`)."""
    groups = epoch_callables(shape, log)
    log(f"epoch report: shape {shape}, {EPOCHS} epochs of {EPOCH_BATCHES} batches of {SHAPES[shape][1]}")
    times = measure(groups, seconds=5 * seconds, log=lambda m: log(f"epoch report: {m}"))
    n = EPOCH_BATCHES * EPOCHS
    return [{"what": name, "step": Timing(t / n, *(None if v is None else v / n for v in (t.lo, t.hi)))}
            for name, t in times.items()]


class _EveryBatch(Callback):
    """A callback that asks for every batch: the compiled epoch then runs step by step."""

    def on_batch_end(self, batch=None, logs=None):
        pass


def epoch_markdown(rows, shape="S"):
    """The epoch table: per step, against the NumPy GEMM floor and against the hand-written compiled epoch."""
    sizes, batch = SHAPES[shape]
    by = {r["what"]: r["step"] for r in rows}
    floor = next((t for k, t in by.items() if k.startswith("GEMM floor")), None)
    hand = next((t for k, t in by.items() if k.startswith("hand-written")), None)
    L = [f"## A small network's epoch, {shape} ({'-'.join(map(str, sizes))}, batch {batch}, plain SGD, "
         f"{EPOCH_BATCHES} batches; one fit of {EPOCHS} epochs), float32, median per step", "",
         "| what | µs per step | fastest–slowest block | × the NumPy GEMM floor | × the hand-written compiled epoch |",
         "|---|---:|---:|---:|---:|"]
    for what, t in by.items():
        spread = "—" if getattr(t, "lo", None) is None else \
            f"{t.lo * 1e6:.1f}–{t.hi * 1e6:.1f}" + (" ⚠" if doubtful(t) else "")
        L.append(f"| {what} | {t * 1e6:.1f} | {spread} | {t / floor:.2f} | "
                 + (f"{t / hand:.2f} |" if hand else "— |"))
    return L


class Timing(float):
    """A median time per call (a float, seconds) that carries its spread: ``lo`` and ``hi``, the fastest and the
    slowest of the per-block medians (the alternating rounds), so a report can say how far to trust it."""

    lo = hi = None

    def __new__(cls, median, lo=None, hi=None):
        t = super().__new__(cls, median)
        t.lo, t.hi = lo, hi
        return t

    @property
    def spread(self):
        """(hi − lo) / median: 0.3 is a figure whose blocks disagree by 30 % of it (0 where unknown)."""
        return 0.0 if self.lo is None or float(self) <= 0 else (self.hi - self.lo) / float(self)


SPREAD_FLAG = 0.30  # a figure whose blocks disagree by more than this is flagged (and re-measured once)


def measure(groups, seconds=1.0, blocks=None, warmup=None, settle=None, floors=None, log=None):
    """Median seconds per call of each no-argument callable: ``{group: {name: fn}}`` → ``{name: Timing}`` (the
    median of all calls, with the fastest and slowest block's median as its spread).

    Within a group (one library) the callables alternate call by call — the step and its floor see
    the same machine state, each call running after other work as in a real program — in a new order
    every round (a seeded shuffle): in a fixed order each callable would always follow the same one, and
    what runs before a call moves its time by a few percent on a small machine (its caches).  Groups (the
    libraries) alternate in *blocks* with a pause of ``settle`` seconds before each block: BLAS
    thread pools keep spinning for a while after a call (OpenBLAS for ~0.1 s), and on a machine
    with few cores one library's spinning threads would slow the next library's calls.  Each block
    starts with ``warmup`` untimed rounds; the rounds per block (at least two) are chosen so that each
    group's blocks take about ``seconds`` per callable.  A plain ``{name: fn}`` is one group.

    A group with a doubtful figure (:func:`doubtful`: a spread over :data:`SPREAD_FLAG`, or below its floor —
    ``floors`` maps a name to its floor's name) is measured once more and the second figures kept (``log`` says
    so); a figure still doubtful is flagged in the report.
    """
    if groups and callable(next(iter(groups.values()))):
        groups = {"": groups}
    blocks, warmup, settle = (PACE[k] if v is None else v for k, v in
                              (("blocks", blocks), ("warmup", warmup), ("settle", settle)))
    times = _measure(groups, seconds, blocks, warmup, settle)
    floors = floors or {}
    why = {g: [f"{name.split('|')[-1]}: {doubtful(times[name], times.get(floors.get(name)))}" for name in fns
               if doubtful(times[name], times.get(floors.get(name)))] for g, fns in groups.items()}
    again = {g: groups[g] for g, w in why.items() if w}
    if again:
        if log is not None:
            log("re-measuring " + "; ".join(f"{g or 'the group'} ({', '.join(why[g])})" for g in again))
        times.update(_measure(again, seconds, blocks, warmup, settle))
    return times


def _measure(groups, seconds, blocks, warmup, settle):
    """One measurement of :func:`measure`'s groups (``{group: {name: fn}}``)."""
    per_round = {}
    for g, fns in groups.items():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        t0 = time.perf_counter()
        for fn in fns.values():
            fn()
        per_round[g] = max(time.perf_counter() - t0, 1e-7) / len(fns)
    samples = {name: [] for fns in groups.values() for name in fns}
    block_medians = {name: [] for name in samples}
    order = random.Random(0)
    for _ in range(blocks):
        for g, fns in groups.items():
            rounds = max(2, int(seconds / blocks / per_round[g]))
            time.sleep(settle)
            for _ in range(warmup):
                for fn in fns.values():
                    fn()
            names = list(fns)
            block = {name: [] for name in names}
            for _ in range(rounds):
                order.shuffle(names)
                for name in names:
                    fn = fns[name]
                    t0 = time.perf_counter()
                    fn()
                    block[name].append(time.perf_counter() - t0)
            for name, v in block.items():
                samples[name] += v
                block_medians[name].append(statistics.median(v))
    return {name: Timing(statistics.median(v), min(block_medians[name]), max(block_medians[name]))
            for name, v in samples.items()}


def doubtful(step, floor=None):
    """Why a figure is not to be trusted as it stands (None if it is): faster than its own floor (the machine
    changed state between them; ``floor`` None: none), or a spread over :data:`SPREAD_FLAG`."""
    if floor is not None and step < floor:
        return f"below its floor ({float(step) / float(floor):.2f}×)"
    spread = getattr(step, "spread", 0.0)
    if spread > SPREAD_FLAG:
        return f"spread {spread:.0%}"
    return None


# -- the report -----------------------------------------------------------------------------------
PEERS = ("torch", "torch-cuda")  # the targets that also time the plain PyTorch eager step
PEER_OF = {"numpy": "torch", "torch": "torch", "torch-compile": "torch", "jax": "torch", "jax-jit": "torch",
           "cupy": "torch-cuda", "torch-cuda": "torch-cuda"}


def machine_info():
    """Lines naming the machine, BLAS, library versions and GPU."""
    import array_api_compat

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no dict mode
        blas = "unknown"
    lines = [f"- CPU: {cpu}, {os.cpu_count()} logical cores; {platform.system()} {platform.release()}",
             f"- Python {platform.python_version()}; NumPy {np.__version__} (BLAS: {blas}); "
             f"array-api-compat {array_api_compat.__version__}; nnkit {VERSION}"]
    try:
        import torch

        lines.append(f"- PyTorch {torch.__version__} ({torch.get_num_threads()} CPU threads)"
                     + (f"; CUDA GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    except ImportError:
        lines.append("- PyTorch: not installed (no peer on this machine)")
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines.append(f"- CuPy {cupy.__version__}; GPU: {name}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
    except Exception as exc:
        lines.append(f"- CuPy/GPU: not usable here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    return lines


def _fmt_timing(t):
    """A median time with its spread, ``1.23 ms (1.20–1.31 ms)``, and ⚠ when :func:`doubtful`."""
    if getattr(t, "lo", None) is None:
        return _fmt_time(t)
    return f"{_fmt_time(t)} ({_fmt_time(t.lo)}–{_fmt_time(t.hi)})" + (" ⚠" if doubtful(t) else "")


def _fmt_rate(n, t):
    """``n`` samples per ``t`` seconds as samples/s with the spread of the blocks, ⚠ when doubtful."""
    if getattr(t, "lo", None) is None:
        return f"{n / t:,.0f}"
    return f"{n / t:,.0f} ({n / t.hi:,.0f}–{n / t.lo:,.0f})" + (" ⚠" if doubtful(t) else "")


def _fmt_time(s):
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def run_report(targets=None, shapes=("S", "M", "L"), dtypes=DTYPES, sweep=SWEEP, seconds=1.0, log=print,
               progress=None):
    """Measure everything the machine supports; returns a dict of results (see ``write_markdown``).
    ``progress(results)``, when given, is called with the results so far after each group of rows is measured
    (``nnkit bench`` writes them then: a stopped run keeps what it measured)."""
    asked = list(targets or TARGETS)
    targets = [t for t in asked if why_unavailable(t) is None]
    steps, kernels, curve, skipped = [], [], [], {}
    results = {"targets": targets, "steps": steps, "kernels": kernels, "sweep": curve,
               "unavailable": {t: why_unavailable(t) for t in asked if t not in targets}, "skipped": skipped}
    done = progress or (lambda results: None)
    for shape in shapes:
        sizes, batch = SHAPES[shape]
        for dtype in dtypes:
            runs = [t for t in targets if why_not(t, dtype) is None]
            for t in targets:
                if t not in runs:
                    skipped.setdefault(dtype, []).append(t)
            if shape != "S":  # an emulated 16-bit policy only waits beyond the small shape (why_emulated)
                slow = [t for t in runs if why_emulated(t, dtype) is not None]
                for t in slow:
                    log(f"{shape} {dtype}: not timed on {t}: {why_emulated(t, dtype)}")
                    skipped.setdefault(dtype, []).append(f"{t} ({shape}: emulated)")
                runs = [t for t in runs if t not in slow]
            if not runs:
                continue
            cases = {t: Case(t, dtype, sizes, batch) for t in runs}
            fns = {}
            for t, c in cases.items():
                for k in ("train_step", "matmul_floor", "matmul_floor_tight"):
                    fns[(t, k)] = c.kernel(k)
                if t in PEERS:
                    fns[(t, "torch_eager_step")] = c.kernel("torch_eager_step")
            log(f"{shape} {dtype}: timing {len(fns)} callables on {', '.join(runs)}")
            groups = {}
            for (t, k), fn in fns.items():
                groups.setdefault(t, {})[f"{t}|{k}"] = fn
            times = measure(groups, seconds=seconds, floors={f"{t}|train_step": f"{t}|matmul_floor_tight"
                                                             for t in cases},
                            log=lambda m: log(f"{shape} {dtype}: {m}"))
            for t, c in cases.items():
                step = times[f"{t}|train_step"]
                peer = times.get(f"{PEER_OF[t]}|torch_eager_step")
                steps.append({"shape": shape, "dtype": dtype, "target": t, "batch": batch, "sizes": sizes,
                              "step": step, "floor": times[f"{t}|matmul_floor"],
                              "tight": times[f"{t}|matmul_floor_tight"], "peer": peer,
                              "peer_name": f"{PEER_OF[t]} eager" if peer is not None else None,
                              "flops": c.flops})
                if t in PEERS:
                    eager = times[f"{t}|torch_eager_step"]
                    steps.append({"shape": shape, "dtype": dtype, "target": f"{t} eager (peer)", "batch": batch,
                                  "sizes": sizes, "step": eager, "floor": times[f"{t}|matmul_floor"],
                                  "tight": times[f"{t}|matmul_floor_tight"], "peer": eager,
                                  "peer_name": f"{t} eager", "flops": c.flops})
            done(results)
            if shape == "M" and dtype == "float32":
                names = [k for k in KERNELS if k not in ("torch_eager_step",)]
                groups = {t: {f"{t}|{k}": c.kernel(k) for k in names} for t, c in cases.items() if t not in COMPILED}
                log(f"{shape} {dtype}: timing {len(names) * len(groups)} kernels")
                times = measure(groups, seconds=seconds / 2, log=lambda m: log(f"kernels: {m}"))
                for t in groups:
                    kernels.append({"target": t, **{k: times[f"{t}|{k}"] for k in names}})
                done(results)
            del cases
    if sweep:
        sizes = SHAPES["M"][0]
        for batch in sweep:
            cases = {t: Case(t, "float32", sizes, batch) for t in targets if t != "torch-compile"}  # recompiles per batch
            groups = {}
            for t, c in cases.items():
                fns = groups[t] = {f"{t}|train_step": c.kernel("train_step"),
                                   f"{t}|matmul_floor": c.kernel("matmul_floor")}
                if t in PEERS:
                    fns[f"{t}|torch_eager_step"] = c.kernel("torch_eager_step")
            log(f"sweep M float32 batch {batch}")
            times = measure(groups, seconds=seconds / 2, blocks=min(3, PACE["blocks"]), log=lambda m: log(f"sweep batch {batch}: {m}"))
            for key, s in times.items():
                t, k = key.split("|")
                curve.append({"target": t, "kernel": k, "batch": batch, "seconds": s})
            done(results)
    return results


def precision_against_float32(steps):
    """Lines comparing each mixed-precision step with the same target's float32 step of the same run, a policy
    that is slower than float32 on this machine said so (a CPU without 16-bit matrix units emulates them)."""
    base = {(r["shape"], r["target"]): r["step"] for r in steps if r["dtype"] == "float32"}
    rows = [(r, base[(r["shape"], r["target"])]) for r in steps
            if r["dtype"] in precision_module.PRECISIONS and (r["shape"], r["target"]) in base]
    if not rows:
        return []
    L = ["", "Mixed precision against float32 (the same target and shape, this run):", "",
         "| shape | target | precision | step / float32 step | |", "|---|---|---|---:|---|"]
    for r, f32 in rows:
        ratio = r["step"] / f32
        note = "**slower than float32 here**" if ratio > 1.05 else ("faster" if ratio < 0.95 else "about the same")
        L.append(f"| {r['shape']} | {r['target']} | {r['dtype']} | {ratio:.2f} | {note} |")
    return L


def write_markdown(results, path, plot_name=None, command="python -m benchmarks.report", status=None):
    """RESULTS.md: machine, the train-step table, the kernel table for M and the sweep (written atomically).
    ``status``: a line saying the run is still going or was stopped (the rows are those measured by then)."""
    L = ["# nnkit benchmark results", "",
         f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}; every number in one run on one machine.",
         *(["", f"**{status}**"] if status else []), "", "## Machine", "", *machine_info(), ""]
    for t, why in results.get("unavailable", {}).items():
        L.append(f"- not measured: **{t}** — {why}")
    for d, ts in results.get("skipped", {}).items():
        L.append(f"- not measured in {d}: {', '.join(sorted(set(ts)))} (the backend cannot run it, or only emulates it: see "
                 "nnkit.precision)")
    L += ["", "## One train step (forward + softmax cross-entropy + backward + SGD update), median",
          "",
          "Floor = the raw matmuls every Dense layer needs (X·W, Xᵀ·dZ, dZ·Wᵀ) at the same shapes in the "
          "target's own library, in the compute dtype (bfloat16 for mixed_bfloat16, float16 for mixed_float16, "
          "TF32 tensor cores for tf32); tight floor = without the first layer's dX. Peer = a plain PyTorch eager "
          "step (autograd + torch.optim.SGD; under a mixed policy inside torch.autocast, with GradScaler for "
          "float16) on the same device. GFLOP/s counts the step's matmul flops. "
          "Timing: on each target the step, its floors and the peer alternate call by call; targets alternate "
          "in blocks with a pause between them, so one library's spinning BLAS threads do not slow another's "
          "(see `nnkit.tools.bench.measure`).", "",
          "Spread: the fastest and the slowest of the alternating blocks' medians (five; three with --quick). "
          f"In every table ⚠ marks a figure below its floor or with a spread over {SPREAD_FLAG:.0%}: it was "
          "measured a second time, and is still so.", "",
          "| shape | dtype | target | time/step | spread (min–max) | samples/s | GFLOP/s | / floor | / tight floor "
          "| / peer |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results.get("steps", ()):
        peer = f"{r['step'] / r['peer']:.2f}" if r["peer"] is not None and "peer" not in r["target"] else "—"
        step = r["step"]
        spread = f"{_fmt_time(step.lo)}–{_fmt_time(step.hi)}" if getattr(step, "lo", None) is not None else "—"
        flag = " ⚠" if "peer" not in r["target"] and doubtful(step, r["tight"]) else ""
        L.append(f"| {r['shape']} {'-'.join(map(str, r['sizes']))} ×{r['batch']} | {r['dtype']} | {r['target']} | "
                 f"{_fmt_time(step)}{flag} | {spread} | {r['batch'] / step:,.0f} | {r['flops'] / step / 1e9:.1f} | "
                 f"{step / r['floor']:.2f} | {step / r['tight']:.2f} | {peer} |")
    L += precision_against_float32(results.get("steps", ()))
    if results.get("kernels"):
        names = [k for k in results["kernels"][0] if k != "target"]
        L += ["", "## Kernels, shape M (784-1024-1024-10, batch 256), float32, median (fastest–slowest block)", "",
              "Dense and ReLU kernels on the widest layer (1024→1024); `fit_epoch` = one `fit` epoch over "
              f"{FIT_BATCHES} batches.", "",
              "| target | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for r in results["kernels"]:
            L.append(f"| {r['target']} | " + " | ".join(_fmt_timing(r[k]) for k in names) + " |")
    if results.get("conv"):
        L += ["", "## Convolution kernels against their im2col GEMMs, float32, median (fastest–slowest block)", "",
              "Shapes: " + "; ".join(f"{k} = batch {v[0]}, {v[1]}→{v[2]} channels, size {'×'.join(map(str, v[3]))}, "
                                     f"kernel {v[4]}, stride {v[5]}, padding {v[6]}" for k, v in CONV_SHAPES.items())
              + ". Floor = the three GEMMs of im2col (W₂·cols, dZ·colsᵀ, W₂ᵀ·dZ) at the same shapes in the "
                "target's own library.", "",
              "| shape | target | forward | backward | GEMM floor | (forward + backward) / floor | PyTorch nn.Conv "
              "(forward + backward) | / PyTorch |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in results["conv"]:
            peer = r.get("peer")
            both = r["forward"] + r["backward"]
            below = " ⚠ below its floor" if both < r["floor"] else ""
            L.append(f"| {r['shape']} | {r['target']} | {_fmt_timing(r['forward'])} | {_fmt_timing(r['backward'])} | "
                     f"{_fmt_timing(r['floor'])} | {both / r['floor']:.2f}{below} | "
                     + ("— | — |" if peer is None else f"{_fmt_timing(peer)} | {both / peer:.2f} |"))
        L += ["", "## MNIST-1D ConvBase: one Adam step (batch 100), median (fastest–slowest block)", "",
              "| target | time/step | / PyTorch eager |", "|---|---:|---:|"]
        for r in results.get("cnn", ()):
            peer = "—" if r["peer"] is None else f"{r['step'] / r['peer']:.2f}"
            L.append(f"| {r['target']} | {_fmt_timing(r['step'])} | {peer} |")
        peers = [r for r in results.get("cnn", ()) if r["target"] in PEERS and r["peer"] is not None]
        for r in peers:
            L.append(f"| {r['target']} eager (peer) | {_fmt_timing(r['peer'])} | — |")
    if results.get("epoch"):
        L += [""] + epoch_markdown(results["epoch"])
    if results.get("sweep"):
        batches = sorted({r["batch"] for r in results["sweep"]})
        series = sorted({(r["target"], r["kernel"]) for r in results["sweep"]})
        L += ["", "## Batch-size sweep, shape M, float32: samples/s (slowest–fastest block)", ""]
        if plot_name:
            L += [f"![samples/s against batch size]({plot_name})", ""]
        L += ["| target | kernel | " + " | ".join(map(str, batches)) + " |", "|---|---|" + "---:|" * len(batches)]
        for t, k in series:
            row = {r["batch"]: _fmt_rate(r["batch"], r["seconds"]) for r in results["sweep"]
                   if (r["target"], r["kernel"]) == (t, k)}
            L.append(f"| {t} | {k} | " + " | ".join(row.get(b, "—") for b in batches) + " |")
    L.append("")
    atomic_write(path, lambda f: f.write("\n".join(L).encode()))


def write_plot(results, path):
    """samples/s against batch size (log-log): a solid line per target's train step, its floor dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the plot needs matplotlib: pip install 'nnkit[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    style = {"train_step": "-", "matmul_floor": "--", "torch_eager_step": ":"}
    label = {"train_step": "nnkit step", "matmul_floor": "matmul floor", "torch_eager_step": "PyTorch eager step"}
    colors = {}
    for t, k in sorted({(r["target"], r["kernel"]) for r in results["sweep"]}):
        pts = sorted((r["batch"], r["batch"] / r["seconds"]) for r in results["sweep"]
                     if (r["target"], r["kernel"]) == (t, k))
        color = colors.setdefault(t, f"C{len(colors)}")
        ax.plot(*zip(*pts), style[k], color=color, marker="o" if k == "train_step" else None,
                label=f"{t}: {label[k]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s (higher is better)")
    ax.set_title("Shape M (784-1024-1024-10), float32: one train step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)


def _jax_64_bit():
    """The report times float64 on JAX too: JAX's 64-bit mode, set before any JAX array (this process only)."""
    try:
        import jax
    except ImportError:
        return
    jax.config.update("jax_enable_x64", True)


def output_file(text):
    """An argparse ``type`` for an output file (``--out``, ``--plot``): refused at once — not after minutes of
    timing — when it is a folder, its folder is missing or it cannot be written."""
    import argparse

    from ..data.files import check_writable

    try:
        return check_writable(text)
    except OSError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def alternating_medians(fns, rounds, warm=3):
    """``{name: median seconds}`` of the functions ``fns`` ({name: fn}) called in turn, ``rounds`` times each
    after ``warm`` calls each: alternating, so that every one sees the same machine."""
    import statistics
    import time

    for fn in fns.values():
        for _ in range(warm):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def report(text, out=None):
    """Print a benchmark's table and, given ``out`` (a path), also write it there (atomically)."""
    from ..data.files import atomic_write

    text = text.rstrip("\n") + "\n"
    print(text, end="")
    if out:
        atomic_write(out, lambda f: f.write(text.encode()))


def number_in(what, low, high, kind=float, low_open=False):
    """An argparse ``type``: a finite ``kind`` (float or int) in [low, high] — (low, high] with ``low_open`` —
    and otherwise argparse's clear error naming ``what`` and the range."""
    import argparse

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and (low < value if low_open else low <= value) and value <= high):
            raise argparse.ArgumentTypeError(f"expected {what} in {'(' if low_open else '['}{low}, {high}], "
                                             f"got {text!r}")
        return value

    return parse


# ``--seconds``: a finite number of seconds in (0, 600]
positive_seconds = number_in("seconds", 0, 600, low_open=True)


class _Stopped(Exception):
    """Ctrl-C or SIGTERM during a benchmark run: ``why`` names it, ``code`` is the exit status (130, 143)."""

    def __init__(self, why, code):
        super().__init__(why)
        self.why, self.code = why, code


@contextlib.contextmanager
def _stopped_by_signal():
    """Inside: Ctrl-C and SIGTERM raise :class:`_Stopped` (so the rows measured so far are written); the handlers
    of before come back after."""
    import signal

    def on_term(signum, frame):
        raise _Stopped("SIGTERM", 143)

    before = None
    try:
        before = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: only Ctrl-C is caught
        pass
    try:
        yield
    except KeyboardInterrupt:
        raise _Stopped("Ctrl-C", 130) from None
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def main(argv=None, default_out="nnkit-bench.md", prog="nnkit bench"):
    """Command line: run the report and write the Markdown table and the PNG plot."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=(
        "Time nnkit's train step and kernels on every backend this machine has (NumPy, PyTorch CPU, "
        "and CuPy / PyTorch CUDA when a GPU is usable), next to the raw-matmul floor and a PyTorch eager "
        "step, and write a Markdown report with a samples/s plot."))
    p.add_argument("--out", type=output_file, default=default_out,
                   help="Markdown report to write (default: %(default)s)")
    p.add_argument("--plot", type=output_file, default=None, help="PNG plot to write (default: next to --out, .png)")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=None,
                   help="only these targets (default: all; with --quick: the uncompiled ones)")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None, help="default: all; --quick: S M")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=None,
                   help="dtypes and precision policies (default: all; --quick: float32 mixed_bfloat16 tf32)")
    p.add_argument("--no-sweep", action="store_true", help="skip the batch-size sweep (and the plot)")
    p.add_argument("--no-conv", action="store_true", help="skip the convolution kernels and the CNN step")
    p.add_argument("--no-epoch", action="store_true", help="skip the small network's epoch (S): NumPy fit, JAX's "
                   "compiled epoch and step, the hand-written lax.scan epoch and PyTorch's loop against the GEMM floor")
    p.add_argument("--seconds", type=positive_seconds, default=None,
                   help="timing per callable, in seconds (default: 1; --quick: 0.05); more gives steadier ratios")
    p.add_argument("--quick", action="store_true", help="a smoke run within a minute: short timings, the "
                   "uncompiled targets, shapes S and M, two batch sizes, no epoch report (numbers are noisy)")
    p.add_argument("--threads", type=threads_arg, default=None, metavar="N",
                   help="CPU threads of the BLAS libraries and PyTorch (default: one per physical core)")
    args = p.parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads)
    else:
        apply_default()  # one per physical core, unless OMP_NUM_THREADS=… or the like chose
    _jax_64_bit()
    quick = args.quick
    seconds = args.seconds or (0.05 if quick else 1.0)
    plot = args.plot or os.path.splitext(args.out)[0] + ".png"
    command = f"{prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    results = {}

    def progress(part):  # the rows measured so far, written at once: a stopped run keeps them
        results.update(part)
        write_markdown(results, args.out, command=command, status="Partial: the run is still measuring; these are "
                       "the rows measured so far.")

    pace = dict(PACE)
    if quick:
        PACE.update({k: QUICK[k] for k in PACE})
    try:
        with _stopped_by_signal():
            results.update(run_report(targets=args.targets or (QUICK["targets"] if quick else None),
                                      shapes=args.shapes or (QUICK["shapes"] if quick else list(SHAPES)),
                                      dtypes=args.dtypes or (("float32", "mixed_bfloat16", "tf32") if quick
                                                             else DTYPES),
                                      sweep=() if args.no_sweep else (QUICK["sweep"] if quick else SWEEP),
                                      seconds=seconds, log=log, progress=progress))
            if not args.no_conv:
                results.update(run_conv_report(results["targets"], seconds=seconds, log=log, progress=progress))
            if not (args.no_epoch or quick):
                results["epoch"] = run_epoch_report(seconds=seconds, log=log)
    except _Stopped as stop:
        write_markdown(results, args.out, command=command,
                       status=f"Stopped ({stop.why}) before the run ended: these are the rows measured by then.")
        print(f"{prog}: stopped ({stop.why}); wrote the rows measured so far to {args.out}", file=sys.stderr)
        return stop.code
    finally:
        PACE.update(pace)
    plot_name = None
    if results.get("sweep"):
        try:
            write_plot(results, plot)
            plot_name = os.path.relpath(plot, os.path.dirname(os.path.abspath(args.out)))
        except RuntimeError as exc:
            print(f"{prog}: no plot: {exc}", file=sys.stderr)
    write_markdown(results, args.out, plot_name, command=command)
    print(f"wrote {args.out}" + (f" and {plot}" if plot_name else ""))
    return 0
