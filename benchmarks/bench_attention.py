"""Attention kernels at a small GPT's shape (B 12, T 64, E 128, 4 heads, causal, float32): nnkit's
MultiHeadAttention forward + backward (dX included) on every CPU backend here, beside PyTorch's
``nn.MultiheadAttention`` on the same input, and one TransformerBlock step beside ``nn.TransformerEncoderLayer``.

Run:  pytest benchmarks/bench_attention.py --benchmark-enable      (or, alternating in one run and printing the
ratio: python -m benchmarks.run_attention)
Times are reported, never asserted; CI runs each once (``--benchmark-disable``) so they cannot rot.
"""
import importlib.util

import numpy as np
import pytest

import nnkit

B, T, E, HEADS = 12, 64, 128, 4
BACKENDS = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")


def nnkit_step(kind, backend="numpy"):
    """forward(train) + backward(dX) of one layer on fixed data: a function of no arguments."""
    layer = nnkit.MultiHeadAttention(E, HEADS, causal=True) if kind == "attention" else \
        nnkit.TransformerBlock(E, HEADS, causal=True)
    model = nnkit.Sequential([layer], backend=backend, dtype="float32", seed=0, input_shape=(None, E))
    rng = np.random.default_rng(0)
    X = model.backend.asarray(rng.standard_normal((B, T, E)), dtype=model.backend.dtype)
    dY = model.xp.ones((B, T, E), dtype=model.backend.dtype, device=model.backend.device)

    def step():
        layer.forward(X, train=True)
        return layer.backward(dY, need_dX=True)

    return step


def torch_step(kind):
    """The same in PyTorch eager: the module's forward and ``backward`` to the input."""
    import torch

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((B, T, E)), dtype=torch.float32, requires_grad=True)
    dy, causal = torch.ones(B, T, E), torch.ones(T, T, dtype=torch.bool).triu(1)
    if kind == "attention":
        mha = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
        fn = lambda: mha(x, x, x, attn_mask=causal, need_weights=False)[0]  # noqa: E731
    else:
        enc = torch.nn.TransformerEncoderLayer(E, HEADS, 4 * E, dropout=0.0, batch_first=True, norm_first=True,
                                               activation=torch.nn.GELU(approximate="tanh"))
        fn = lambda: enc(x, src_mask=causal, is_causal=True)  # noqa: E731

    def step():
        fn().backward(dy)
        x.grad = None

    return step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["attention", "block"])
def test_nnkit(benchmark, backend, kind):
    benchmark(nnkit_step(kind, backend))


@needs_torch
@pytest.mark.parametrize("kind", ["attention", "block"])
def test_torch(benchmark, kind):
    benchmark(torch_step(kind))
