"""Convolutions forward + backward: nnkit on NumPy, on the torch backend and on JAX beside PyTorch's own module,
JAX's own convolution and NumPy's unfolding-plus-GEMM floor — each pair's calls alternating, the pairs one after
the other, in one run.

    python -m benchmarks.run_conv [--rounds 30] [--out FILE]

Shapes (float32): FCN's Conv1D (B 16, 128 → 256 channels, L 151, k 5, padding 2), CIFAR's Conv2D (B 64, 3 → 32
channels, 32 × 32, k 3, padding 1), MNIST-1D's small Conv1D (B 100, 1 → 25 channels, L 40, k 5, stride 2,
padding 1), and DCGAN's generator upsampling ConvTranspose2D (B 64, 128 → 64 channels, 8 × 8 → 16 × 16, k 4,
stride 2, padding 1; against ``nn.ConvTranspose2d``, no JAX cell).  Each call is the layer's forward (training)
and backward with dX; PyTorch's is the module's forward and ``backward`` to the input.  On JAX both are compiled with ``jax.jit``: nnkit's layer (its kernels
are ``lax.conv_general_dilated`` and its linearisation) against ``jax.vjp`` of the same convolution written
directly.  The floor: one unfolding of X (the NumPy kernels' own) and the three
GEMMs of the derivation (Z = W₂·cols, dW₂ = dZ·colsᵀ, dcols = W₂ᵀ·dZ), with nothing else.
"""
from __future__ import annotations

import argparse

import numpy as np

import nnkit
from nnkit.tools.bench import alternating_medians, number_in, report

SHAPES = {"FCN Conv1D": ((16, 128, 151), dict(out=256, k=5, stride=1, padding=2)),
          "CIFAR Conv2D": ((64, 3, 32, 32), dict(out=32, k=3, stride=1, padding=1)),
          "MNIST-1D Conv1D": ((100, 1, 40), dict(out=25, k=5, stride=2, padding=1)),
          "DCGAN ConvTranspose2D": ((64, 128, 8, 8), dict(out=64, k=4, stride=2, padding=1, transposed=True))}


def _layer(shape, spec):
    n = len(shape) - 2
    cls = ((nnkit.Conv1D, nnkit.Conv2D), (nnkit.ConvTranspose1D, nnkit.ConvTranspose2D))[spec.get("transposed", 0)]
    return cls[n - 1](shape[1], spec["out"], spec["k"], stride=spec["stride"], padding=spec["padding"])


def nnkit_call(shape, spec, backend):
    layer = _layer(shape, spec)
    model = nnkit.Sequential([layer], backend=backend, dtype="float32", seed=0, input_shape=shape[1:])
    rng = np.random.default_rng(0)
    X = model.backend.asarray(rng.standard_normal(shape), dtype=model.backend.dtype)
    dY = model.backend.asarray(np.ones((shape[0],) + model.output_shape(shape[1:])), dtype=model.backend.dtype)

    def call():
        layer.forward(X, train=True)
        return layer.backward(dY, need_dX=True)

    return call


def torch_call(shape, spec):
    import torch

    n = len(shape) - 2
    module = getattr(torch.nn, f"{'ConvTranspose' if spec.get('transposed') else 'Conv'}{n}d")
    conv = module(shape[1], spec["out"], spec["k"], stride=spec["stride"], padding=spec["padding"])
    x = torch.randn(*shape, requires_grad=True)
    dy = torch.ones_like(conv(x))

    def call():
        conv(x).backward(dy)
        x.grad = None

    return call


def jax_calls(shape, spec):
    """(nnkit's layer on JAX, JAX's own convolution), each forward + backward with dX, compiled."""
    import jax

    layer = _layer(shape, spec)
    model = nnkit.Sequential([layer], backend="jax", dtype="float32", seed=0, input_shape=shape[1:])
    rng = np.random.default_rng(0)
    X = model.backend.asarray(rng.standard_normal(shape), dtype=model.backend.dtype)
    dY = model.backend.asarray(np.ones((shape[0],) + model.output_shape(shape[1:])), dtype=model.backend.dtype)
    W, b = layer.params["W"], layer.params["b"]

    def ours(X, W, b, dY):
        kept = layer.params
        layer.params = {"W": W, "b": b}
        try:
            layer.forward(X, train=True)
            dX = layer.backward(dY, need_dX=True)
            return dX, layer.grads["W"], layer.grads["b"]
        finally:
            layer.params, layer._cache, layer.grads = kept, None, {}

    n = len(shape) - 2
    dims = ("NCH", "OIH", "NCH") if n == 1 else ("NCHW", "OIHW", "NCHW")

    def theirs(X, W, b, dY):
        def conv(X, W, b):
            Z = jax.lax.conv_general_dilated(X, W, (spec["stride"],) * n, [(spec["padding"],) * 2] * n,
                                             dimension_numbers=dims)
            return Z + b.reshape((1, -1) + (1,) * n)
        _, vjp = jax.vjp(conv, X, W, b)
        return vjp(dY)

    f, g = jax.jit(ours), jax.jit(theirs)
    return (lambda: jax.block_until_ready(f(X, W, b, dY))), (lambda: jax.block_until_ready(g(X, W, b, dY)))


def floor_call(shape, spec):
    """The unfolding (NumPy's kernels' own, (C·K, B·P)) and the three GEMMs over the B·P positions, in NumPy, with
    the output's gradient given in the GEMM's layout: nothing else.  A transposed convolution's are those of the
    convolution it is the adjoint of (its forward pass that convolution's dcols product, its backward pass the
    convolution's forward and dW products over the unfolded dY)."""
    from nnkit.backends.numpy import NAMESPACE as xp

    if spec.get("transposed"):
        out = _layer(shape, spec).output_shape(shape[1:])
        return floor_call((shape[0],) + out, dict(spec, out=shape[1], transposed=False))

    kernels = xp.conv_kernels
    n = len(shape) - 2
    rng = np.random.default_rng(0)
    X = rng.standard_normal(shape).astype(np.float32)
    k, s, p = (spec["k"],) * n, (spec["stride"],) * n, (spec["padding"],) * n
    W = rng.standard_normal((spec["out"], shape[1]) + k).astype(np.float32)
    W2 = W.reshape(spec["out"], -1)
    _, (cols, _, _) = kernels.forward(xp, X, W, s, p, (1,) * n)
    dZ2 = np.ones((spec["out"], cols.shape[1]), np.float32)

    def call():
        c = kernels.columns(X, k, s, p, (1,) * n)[0].reshape(W2.shape[1], -1)
        return W2 @ c, dZ2 @ c.T, W2.T @ dZ2

    return call


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=number_in("--rounds", 3, 10_000, int), default=30)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    import importlib.util

    has_jax = importlib.util.find_spec("jax") is not None
    rows = ["| shape | nnkit NumPy ms | its floor ms | NumPy / floor | nnkit torch backend ms | PyTorch ms | "
            "torch backend / PyTorch | NumPy / PyTorch | nnkit JAX (jit) ms | JAX's own (jit) ms | JAX / JAX's own |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (shape, spec) in SHAPES.items():
        # each library's pair alternating, the pairs apart: PyTorch's OpenMP threads, and XLA's, spin on after a
        # call and would slow the next library's (and OpenBLAS's theirs)
        groups = [{"numpy": nnkit_call(shape, spec, "numpy"), "floor": floor_call(shape, spec)},
                  {"torch_backend": nnkit_call(shape, spec, "torch"), "torch": torch_call(shape, spec)}]
        jax_row = has_jax and not spec.get("transposed")  # (JAX's own transposed convolution is the same call)
        if jax_row:
            groups.append(dict(zip(("jax", "jax_own"), jax_calls(shape, spec))))
        m = {k: 1e3 * v for fns in groups for k, v in alternating_medians(fns, args.rounds).items()}
        jax_cells = (f"{m['jax']:.2f} | {m['jax_own']:.2f} | {m['jax'] / m['jax_own']:.2f}" if jax_row
                     else "— | — | —")
        rows.append(f"| {name} {shape} | {m['numpy']:.2f} | {m['floor']:.2f} | {m['numpy'] / m['floor']:.2f} | "
                    f"{m['torch_backend']:.2f} | {m['torch']:.2f} | {m['torch_backend'] / m['torch']:.2f} | "
                    f"{m['numpy'] / m['torch']:.2f} | {jax_cells} |")
    report("\n".join(rows), args.out)


if __name__ == "__main__":
    main()
