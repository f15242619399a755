"""Convolution, pooling and reshaping: values and every gradient against PyTorch autograd (float64, 1e-9),
gradchecks on every backend, shapes checked through the model, and conv models everywhere dense ones go."""
import importlib.util
import math
import pickle
import tracemalloc

import numpy as np
import pytest

import nnkit
from nnkit.layers import convolutional

from helpers import to_np

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
RNG = np.random.default_rng(11)

# (B, C_in, C_out, L, kernel, stride, padding, dilation): the edges the issue names and a few ordinary ones
CONV1D = [
    (4, 3, 5, 17, 3, 1, 0, 1),
    (1, 1, 1, 7, 7, 1, 0, 1),      # kernel as long as the input, one channel, batch of one
    (3, 2, 4, 11, 2, 3, 0, 1),     # stride larger than the kernel
    (2, 3, 2, 9, 5, 1, 2, 1),      # padding of half the kernel
    (2, 2, 3, 13, 3, 2, 1, 2),     # dilation with stride and padding, odd length
    (5, 1, 25, 40, 5, 2, 1, 1),    # MNIST-1D's first layer
    (2, 4, 3, 8, 4, 4, 3, 1),
]
CONV2D = [
    (2, 3, 4, (7, 6), 3, 1, 0, 1),
    (1, 1, 2, (5, 5), 5, 1, 0, 1),
    (2, 2, 3, (9, 8), (2, 3), (3, 2), (0, 1), 1),
    (3, 2, 2, (8, 7), (3, 1), 1, (1, 0), (2, 1)),
    (2, 3, 2, (6, 6), 3, 2, 1, 1),
]


def _layer(layer, be, **params):
    layer.build(be, np.random.default_rng(0))
    for k, v in params.items():
        layer.params[k] = be.asarray(v, dtype=be.dtype)
    return layer


def _torch_check(nn_out, nn_grads, t_out, t_inputs, tol=1e-9):
    np.testing.assert_allclose(to_np(nn_out), t_out.detach().numpy(), rtol=tol, atol=tol)
    for (name, ours), theirs in zip(nn_grads, t_inputs):
        np.testing.assert_allclose(to_np(ours), theirs.grad.numpy(), rtol=tol, atol=tol, err_msg=name)


@needs_torch
@pytest.mark.parametrize("case", CONV1D + CONV2D, ids=[f"conv{len(c[3]) if isinstance(c[3], tuple) else 1}d-{i}"
                                                      for i, c in enumerate(CONV1D + CONV2D)])
@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_conv_value_and_gradients_equal_pytorch(case, backend):
    """Each backend's convolution kernels — NumPy's unfolding, PyTorch's own, XLA's — against autograd."""
    import torch
    import torch.nn.functional as F

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")

    B, C, O, n, k, s, p, d = case
    two = isinstance(n, tuple)
    spatial = n if two else (n,)
    cls, conv = (nnkit.Conv2D, F.conv2d) if two else (nnkit.Conv1D, F.conv1d)
    layer = cls(C, O, k, stride=s, padding=p, dilation=d)
    W = RNG.normal(size=layer.param_shapes()["W"])
    b = RNG.normal(size=O)
    X = RNG.normal(size=(B, C) + spatial)
    be = nnkit.get_backend(backend, dtype="float64")
    _layer(layer, be, W=W, b=b)
    Z = layer.forward(be.asarray(X), train=True)
    dZ = RNG.normal(size=tuple(Z.shape))
    dX = layer.backward(be.asarray(dZ))
    tX, tW, tb = (torch.tensor(a, requires_grad=True) for a in (X, W, b))
    tZ = conv(tX, tW, tb, stride=s, padding=p, dilation=d)
    tZ.backward(torch.tensor(dZ))
    _torch_check(Z, [("X", dX), ("W", layer.grads["W"]), ("b", layer.grads["b"])], tZ, [tX, tW, tb])


# (B, C_in, C_out, n, kernel, stride, padding, dilation, groups, bias)
GROUPED = [
    (2, 4, 6, 11, 3, 1, 1, 1, 2, True),                      # two groups
    (3, 3, 3, 9, 3, 2, 1, 1, 3, False),                      # depthwise, stride 2, no bias
    (2, 2, 3, 10, 3, 1, 1, 1, 1, False),                     # one group, no bias
    (2, 4, 8, (7, 6), 3, 1, 1, 1, 4, True),                  # depthwise with two outputs per channel
    (2, 6, 4, (6, 7), (2, 3), (2, 1), (0, 1), (1, 2), 2, False),
    (1, 8, 8, (9, 9), 3, 1, 1, 1, 8, True),                  # depthwise, one example
    (2, 4, 4, 12, 5, 1, "same", 1, 2, True),                 # padding="same", as PyTorch's
    (2, 2, 4, (7, 8), (3, 5), 1, "same", (2, 1), 1, False),  # "same" with dilation
    (2, 2, 4, 9, 4, 1, "same", 1, 2, True),                  # an even kernel's "same": one more zero after
    (2, 2, 2, (6, 7), (2, 4), 1, "same", (3, 1), 1, False),  # even reach on one axis (1·3), odd on the other
    (2, 3, 2, 9, 4, 2, "valid", 1, 1, True),
]


@needs_torch
@pytest.mark.parametrize("case", GROUPED, ids=[f"g{c[8]}-{'b' if c[9] else 'nob'}-{i}" for i, c in enumerate(GROUPED)])
@pytest.mark.parametrize("backend", ["numpy", "array_api_strict", "torch", "jax"])
def test_grouped_and_biasless_conv_equal_pytorch(case, backend):
    """``groups``, ``bias=False`` and ``padding="same"``/``"valid"`` as PyTorch's: Z, dX, dW (and db) against
    autograd in float64 on every backend's kernels — the Array-API ones group by group, NumPy's one unfolding and
    batched per-group products, PyTorch's and XLA's taking the groups themselves."""
    import torch
    import torch.nn.functional as F

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    B, C, O, n, k, s, p, d, g, bias = case
    spatial = n if isinstance(n, tuple) else (n,)
    cls, conv = (nnkit.Conv2D, F.conv2d) if len(spatial) == 2 else (nnkit.Conv1D, F.conv1d)
    layer = cls(C, O, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    assert layer.param_shapes()["W"][:2] == (O, C // g) and ("b" in layer.param_shapes()) == bias
    W, b, X = RNG.normal(size=layer.param_shapes()["W"]), RNG.normal(size=O), RNG.normal(size=(B, C) + spatial)
    be = nnkit.get_backend(backend, dtype="float64")
    _layer(layer, be, W=W, **({"b": b} if bias else {}))
    assert sorted(layer.params) == (["W", "b"] if bias else ["W"])
    Z = layer.forward(be.asarray(X), train=True)
    dZ = RNG.normal(size=tuple(Z.shape))
    dX = layer.backward(be.asarray(dZ))
    tX, tW, tb = (torch.tensor(a, requires_grad=True) for a in (X, W, b))
    tZ = conv(tX, tW, tb if bias else None, stride=s, padding=p, dilation=d, groups=g)
    tZ.backward(torch.tensor(dZ))
    assert sorted(layer.grads) == sorted(layer.params)
    grads = [("X", dX), ("W", layer.grads["W"])] + ([("b", layer.grads["b"])] if bias else [])
    _torch_check(Z, grads, tZ, [tX, tW, tb][:len(grads)])


def test_grouped_conv_models_pass_the_gradient_check_on_every_backend(make_backend):
    be = make_backend("float64")
    rng = np.random.default_rng(4)
    layers = [nnkit.Conv1D(2, 4, 3, padding=1, groups=2), nnkit.Tanh(), nnkit.Conv1D(4, 4, 3, groups=4, bias=False),
              nnkit.Tanh(), nnkit.Reshape((4, 2, 3)), nnkit.Conv2D(4, 2, (2, 2), padding=1, groups=2, bias=False),
              nnkit.GlobalAvgPool(), nnkit.Dense(2, 3)]
    model = nnkit.Sequential(layers, backend=be, dtype="float64", seed=0, input_shape=(2, 8))
    X, y = rng.normal(size=(5, 2, 8)), rng.integers(0, 3, size=5)
    assert nnkit.gradcheck(model, X, y, "cross_entropy") < 1e-6


def test_groups_and_bias_are_checked_kept_and_shown(tmp_path):
    for bad, error, match in [(dict(groups=2), ValueError, r"groups \(2\) must divide in_channels \(3\) and "
                                                               r"out_channels \(4\)"),
                              (dict(groups=0), ValueError, "groups must be a positive integer"),
                              (dict(groups=1.5), TypeError, "groups must be a positive integer"),
                              (dict(bias="no"), TypeError, "bias must be True or False")]:
        with pytest.raises(error, match=match):
            nnkit.Conv1D(3, 4, 3, **bad)
    for bad, match in [(dict(padding="same", stride=2), "padding='same' needs stride 1, got stride=2"),
                       (dict(padding="full"), "padding must be an integer, 'same' or 'valid', got 'full'")]:
        with pytest.raises(ValueError, match=match):
            nnkit.Conv1D(3, 4, **{"kernel_size": 3, **bad})
    assert nnkit.Conv2D(1, 1, (3, 5), padding="same", dilation=(1, 2)).padding == (1, 4)
    even = nnkit.Conv2D(1, 1, (4, 2), padding="same", dilation=(1, 3))  # reach 3 and 3: 1 before, 2 after
    assert (even.padding, even.padding_after, even.output_shape((1, 5, 6))) == ((1, 1), (2, 2), (1, 5, 6))
    assert nnkit.Conv1D(1, 1, 3, padding="valid").padding == (0,)
    layer = nnkit.Conv2D(4, 8, 3, padding="same", groups=4, bias=False)
    assert repr(layer) == "Conv2D(4, 8, 3, padding='same', groups=4, bias=False)"
    assert repr(nnkit.Conv1D(3, 4, 3)) == "Conv1D(3, 4, 3)"
    model = nnkit.Sequential([layer, nnkit.GlobalAvgPool(), nnkit.Dense(8, 2)], seed=0, input_shape=(4, 6, 6))
    assert model.n_params == 8 * 1 * 9 + 8 * 2 + 2
    assert repr(nnkit.layers.layer_from_config(model.config()[0])) == repr(layer)
    model.save(tmp_path / "m.npz")
    again = nnkit.load(tmp_path / "m.npz")
    assert again.config() == model.config() and sorted(again.state_dict()) == ["0.W", "2.W", "2.b"]
    X = np.random.default_rng(0).normal(size=(3, 4, 6, 6))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


# (B, C_in, C_out, n, kernel, stride, padding, dilation, groups, padding_mode)
PADDING_MODES = [
    (2, 3, 4, 9, 3, 1, 2, 1, 1, "reflect"),
    (2, 2, 4, 7, 3, 2, 3, 1, 2, "replicate"),
    (2, 3, 2, 6, 3, 1, 6, 2, 1, "circular"),                 # padding as long as the input
    (2, 2, 3, (6, 7), (3, 2), (1, 2), (2, 1), 1, 1, "reflect"),
    (1, 2, 2, (5, 4), 3, 1, (1, 3), (2, 1), 2, "replicate"),
    (2, 1, 2, (4, 5), (3, 3), 2, (4, 2), 1, 1, "circular"),
    (2, 2, 2, (6, 6), 3, 1, "same", 1, 1, "reflect"),
    (2, 2, 2, 7, 4, 1, "same", 1, 1, "reflect"),             # an even kernel: 1 before, 2 after
    (2, 2, 2, (5, 6), (2, 3), 1, "same", (1, 2), 2, "circular"),
    (1, 2, 2, (6, 5), 2, 1, "same", 1, 1, "replicate"),
]


@needs_torch
@pytest.mark.parametrize("case", PADDING_MODES, ids=[f"{c[9]}-{i}" for i, c in enumerate(PADDING_MODES)])
@pytest.mark.parametrize("backend", ["numpy", "array_api_strict", "torch", "jax"])
def test_padding_modes_equal_pytorch(case, backend):
    """``padding_mode`` "reflect", "replicate", "circular" as PyTorch's: X padded by its own entries, then the
    convolution; dX through the padding's adjoint — against autograd in float64 on every backend."""
    import torch

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    B, C, O, n, k, s, p, d, g, mode = case
    spatial = n if isinstance(n, tuple) else (n,)
    cls, tcls = (nnkit.Conv2D, torch.nn.Conv2d) if len(spatial) == 2 else (nnkit.Conv1D, torch.nn.Conv1d)
    layer = cls(C, O, k, stride=s, padding=p, dilation=d, groups=g, padding_mode=mode)
    W, b, X = RNG.normal(size=layer.param_shapes()["W"]), RNG.normal(size=O), RNG.normal(size=(B, C) + spatial)
    be = nnkit.get_backend(backend, dtype="float64")
    _layer(layer, be, W=W, b=b)
    Z = layer.forward(be.asarray(X), train=True)
    assert tuple(Z.shape[1:]) == layer.output_shape((C,) + spatial)
    dZ = RNG.normal(size=tuple(Z.shape))
    dX = layer.backward(be.asarray(dZ))
    conv = tcls(C, O, k, stride=s, padding=p, dilation=d, groups=g, padding_mode=mode).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(W))
        conv.bias.copy_(torch.tensor(b))
    tX = torch.tensor(X, requires_grad=True)
    tZ = conv(tX)
    tZ.backward(torch.tensor(dZ))
    _torch_check(Z, [("X", dX), ("W", layer.grads["W"]), ("b", layer.grads["b"])], tZ,
                 [tX, conv.weight, conv.bias])


def test_padding_modes_are_checked_kept_and_gradchecked(make_backend, tmp_path):
    with pytest.raises(ValueError, match="padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular'"):
        nnkit.Conv1D(1, 1, 3, padding=1, padding_mode="mirror")
    with pytest.raises(ValueError, match=r"padding_mode='reflect', which needs the padding below the input's length"):
        nnkit.Sequential([nnkit.Conv1D(1, 1, 3, padding=3, padding_mode="reflect")], input_shape=(1, 3))
    with pytest.raises(ValueError, match=r"padding_mode='circular', which needs the padding at most the input's"):
        nnkit.Sequential([nnkit.Conv1D(1, 1, 3, padding=4, padding_mode="circular")], input_shape=(1, 3))
    layer = nnkit.Conv2D(2, 2, 3, padding=1, padding_mode="circular")
    assert repr(layer) == "Conv2D(2, 2, 3, padding=1, padding_mode='circular')"
    be = make_backend("float64")
    model = nnkit.Sequential([layer, nnkit.Tanh(), nnkit.Conv2D(2, 2, 3, padding="same", padding_mode="reflect"),
                              nnkit.Tanh(), nnkit.Conv2D(2, 3, 2, padding=(1, 2), padding_mode="replicate"),
                              nnkit.Tanh(), nnkit.Conv2D(3, 3, (2, 4), padding="same"),  # padded 0/1 before, 1/2 after
                              nnkit.Tanh(), nnkit.Conv2D(3, 3, 2, padding="same", padding_mode="circular"),
                              nnkit.GlobalAvgPool()], backend=be, dtype="float64", seed=0, input_shape=(2, 4, 5))
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(3, 2, 4, 5)), rng.integers(0, 3, size=3)
    assert nnkit.gradcheck(model, X, y, "cross_entropy") < 1e-6
    model.save(tmp_path / "m.npz")
    again = nnkit.load(tmp_path / "m.npz", backend=be)
    assert again.config() == model.config() and repr(again.layers[0]) == repr(layer)


# (B, C_in, C_out, n, kernel, stride, padding, output_padding, groups, bias, dilation)
TRANSPOSED = [
    (2, 4, 6, 5, 3, 2, 1, 1, 2, True, 1),                    # upsampling ×2, two groups
    (2, 3, 2, (4, 5), (3, 2), (2, 1), (1, 0), (1, 0), 1, False, (1, 2)),
    (1, 4, 4, 6, 3, 1, 0, 0, 4, True, 2),                    # depthwise, dilated
    (2, 2, 3, (3, 3), 4, 2, 1, 0, 1, True, 1),               # DCGAN's k 4, s 2, p 1: 3 → 6
    (3, 1, 2, 7, 5, 3, 2, 2, 1, True, 1),                    # stride beyond half the kernel, output_padding 2
]


@needs_torch
@pytest.mark.parametrize("case", TRANSPOSED, ids=[f"convT{len(c[3]) if isinstance(c[3], tuple) else 1}d-{i}"
                                                  for i, c in enumerate(TRANSPOSED)])
@pytest.mark.parametrize("backend", ["numpy", "array_api_strict", "torch", "jax"])
def test_transposed_conv_value_and_gradients_equal_pytorch(case, backend):
    """ConvTranspose1D/2D against ``F.conv_transpose1d/2d`` and autograd in float64: Y by each backend's
    ``transposed`` kernel, dX as the convolution of dY and dW as its weight gradient (X in the output gradient's
    place), db."""
    import torch
    import torch.nn.functional as F

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    B, C, O, n, k, s, p, op, g, bias, d = case
    spatial = n if isinstance(n, tuple) else (n,)
    cls, conv_t = (nnkit.ConvTranspose2D, F.conv_transpose2d) if len(spatial) == 2 else \
        (nnkit.ConvTranspose1D, F.conv_transpose1d)
    layer = cls(C, O, k, stride=s, padding=p, output_padding=op, groups=g, bias=bias, dilation=d)
    assert layer.param_shapes()["W"][:2] == (C, O // g)
    W, b, X = RNG.normal(size=layer.param_shapes()["W"]), RNG.normal(size=O), RNG.normal(size=(B, C) + spatial)
    be = nnkit.get_backend(backend, dtype="float64")
    _layer(layer, be, W=W, **({"b": b} if bias else {}))
    Y = layer.forward(be.asarray(X), train=True)
    assert tuple(Y.shape[1:]) == layer.output_shape((C,) + spatial)
    dY = RNG.normal(size=tuple(Y.shape))
    dX = layer.backward(be.asarray(dY))
    tX, tW, tb = (torch.tensor(a, requires_grad=True) for a in (X, W, b))
    tY = conv_t(tX, tW, tb if bias else None, s, p, op, g, d)
    tY.backward(torch.tensor(dY))
    grads = [("X", dX), ("W", layer.grads["W"])] + ([("b", layer.grads["b"])] if bias else [])
    _torch_check(Y, grads, tY, [tX, tW, tb][:len(grads)])


def test_an_autoencoder_with_transposed_convolutions_passes_the_gradient_check_on_every_backend(make_backend):
    be = make_backend("float64")
    rng = np.random.default_rng(5)
    layers = [nnkit.Conv2D(1, 3, 3, stride=2, padding=1), nnkit.Tanh(),
              nnkit.ConvTranspose2D(3, 2, 3, stride=2, padding=1, output_padding=1), nnkit.Tanh(),
              nnkit.ConvTranspose2D(2, 2, (2, 3), groups=2, bias=False), nnkit.Flatten()]
    model = nnkit.Sequential(layers, backend=be, dtype="float64", seed=0, input_shape=(1, 6, 6))
    assert model.output_shape() == (2 * 7 * 8,)
    X = rng.normal(size=(4, 1, 6, 6))
    assert nnkit.gradcheck(model, X, rng.normal(size=(4, 2 * 7 * 8)), "mse") < 1e-6


def test_transposed_convolutions_check_their_arguments_and_keep_them(tmp_path):
    for args, error, match in [(dict(stride=2, output_padding=2), ValueError, "output_padding must be smaller than"),
                               (dict(padding="same"), ValueError, "padding must be an integer for a transposed"),
                               (dict(groups=3), ValueError, r"groups \(3\) must divide"),
                               (dict(output_padding=-1), ValueError, "output_padding must be an integer"),
                               (dict(padding_mode="reflect"), ValueError, "padding_mode must be 'zeros' for a trans")]:
        with pytest.raises(error, match=match):
            nnkit.ConvTranspose1D(2, 4, 3, **args)
    # PyTorch's signature: padding_mode="zeros" (its only mode) is taken by keyword, init comes after it
    layer = nnkit.ConvTranspose1D(2, 4, 3, 1, 0, 0, 1, True, 1, "zeros", "glorot_uniform")
    assert layer.init == "glorot_uniform" and "padding_mode" not in layer.config()
    with pytest.raises(ValueError, match="gives an output of -1 positions from 1"):
        nnkit.Sequential([nnkit.ConvTranspose1D(1, 1, 1, padding=1)], input_shape=(1, 1))
    layer = nnkit.ConvTranspose2D(2, 4, 4, stride=2, padding=1, output_padding=1, groups=2, bias=False)
    assert repr(layer) == "ConvTranspose2D(2, 4, 4, stride=2, padding=1, output_padding=1, groups=2, bias=False)"
    model = nnkit.Sequential([layer, nnkit.GlobalAvgPool(), nnkit.Dense(4, 2)], seed=0, input_shape=(2, 5, 5))
    assert model.n_params == 2 * 2 * 16 + 4 * 2 + 2
    assert model.layers[0].output_shape((2, 5, 5)) == (4, 11, 11)
    model.save(tmp_path / "m.npz")
    again = nnkit.load(tmp_path / "m.npz")
    assert again.config() == model.config() and repr(again.layers[0]) == repr(layer)
    X = np.random.default_rng(0).normal(size=(3, 2, 5, 5))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


POOLS = [((3, 2, 11), 3, None, 0), ((2, 3, 10), 2, 2, 1), ((1, 1, 7), 7, None, 0), ((2, 2, 12), 4, 3, 2),
         ((2, 3, 7, 6), 2, None, 0), ((2, 2, 9, 8), (3, 2), (2, 1), (1, 0)), ((1, 2, 5, 5), 5, None, 2)]


@needs_torch
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,k,s,p", POOLS)
def test_pool_value_and_gradient_equal_pytorch(kind, shape, k, s, p):
    import torch
    import torch.nn.functional as F

    two = len(shape) == 4
    cls = {("max", False): nnkit.MaxPool1D, ("max", True): nnkit.MaxPool2D, ("avg", False): nnkit.AvgPool1D,
           ("avg", True): nnkit.AvgPool2D}[kind, two]
    fn = getattr(F, f"{kind}_pool{2 if two else 1}d")
    layer = _layer(cls(k, stride=s, padding=p), nnkit.get_backend("numpy", dtype="float64"))
    X = RNG.normal(size=shape)
    Y = layer.forward(X, train=True)
    dY = RNG.normal(size=Y.shape)
    dX = layer.backward(dY)
    tX = torch.tensor(X, requires_grad=True)
    tY = fn(tX, k, stride=s, padding=p)
    tY.backward(torch.tensor(dY))
    _torch_check(Y, [("X", dX)], tY, [tX])


@needs_torch
def test_max_pool_ties_send_the_gradient_to_the_first_maximum_like_pytorch():
    import torch
    import torch.nn.functional as F

    X = np.array([[[1.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, -1.0]]])
    layer = _layer(nnkit.MaxPool1D(3, stride=2), nnkit.get_backend("numpy", dtype="float64"))
    Y = layer.forward(X, train=True)
    dX = layer.backward(np.ones_like(Y))
    tX = torch.tensor(X, requires_grad=True)
    F.max_pool1d(tX, 3, stride=2).sum().backward()
    np.testing.assert_array_equal(dX, tX.grad.numpy())
    np.testing.assert_array_equal(dX, [[[0, 1, 1, 0, 1, 0, 0, 0]]])  # windows X[0:3] X[2:5] X[4:7]: first maxima


@needs_torch
def test_global_pool_flatten_reshape_and_channel_batchnorm_equal_pytorch():
    import torch

    be = nnkit.get_backend("numpy", dtype="float64")
    X = RNG.normal(size=(4, 3, 5, 6))
    for layer, ref in ((nnkit.GlobalAvgPool(), lambda t: t.mean(dim=(2, 3))),
                       (nnkit.Flatten(), lambda t: t.flatten(1)),
                       (nnkit.Reshape((6, -1)), lambda t: t.reshape(4, 6, -1)),
                       (nnkit.BatchNorm(3), lambda t: torch.nn.functional.batch_norm(
                           t, None, None, torch.tensor(G), torch.tensor(Bt), training=True))):
        G, Bt = RNG.normal(size=3), RNG.normal(size=3)
        layer = _layer(layer, be, **({"gamma": G, "beta": Bt} if isinstance(layer, nnkit.BatchNorm) else {}))
        Y = layer.forward(X, train=True)
        dY = RNG.normal(size=Y.shape)
        dX = layer.backward(dY)
        tX = torch.tensor(X, requires_grad=True)
        tY = ref(tX)
        tY.backward(torch.tensor(dY))
        _torch_check(Y, [("X", dX)], tY, [tX])
    bn = nnkit.BatchNorm(3)
    _layer(bn, be)
    bn.forward(X, train=True)
    tbn = torch.nn.BatchNorm2d(3).double()
    tbn(torch.tensor(X))
    np.testing.assert_allclose(bn.buffers["running_var"], tbn.running_var.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_mean"], tbn.running_mean.numpy(), rtol=1e-12, atol=1e-15)


def _cnn1d(pool="max", norm=True):
    P = nnkit.MaxPool1D if pool == "max" else nnkit.AvgPool1D
    return [nnkit.Conv1D(2, 3, 3, padding=1), nnkit.BatchNorm(3) if norm else nnkit.Identity(), nnkit.Tanh(), P(2),
            nnkit.Conv1D(3, 4, 2, stride=2, dilation=1), nnkit.Dropout(0.0), nnkit.Flatten(), nnkit.Dense(8, 3)]


def _cnn2d():
    return [nnkit.Reshape((1, 4, 5)), nnkit.Conv2D(1, 3, (2, 3), padding=(1, 0)), nnkit.SiLU(),
            nnkit.AvgPool2D(2, stride=1), nnkit.Conv2D(3, 2, 2, stride=(1, 2), dilation=(1, 1)),
            nnkit.GlobalAvgPool(), nnkit.Dense(2, 3)]


@pytest.mark.parametrize("net", ["conv1d-max", "conv1d-avg", "conv2d"])
def test_gradcheck_of_conv_models_on_every_backend(net, make_backend):
    be = make_backend("float64")
    rng = np.random.default_rng(3)
    if net == "conv2d":
        layers, X = _cnn2d(), rng.normal(size=(5, 20))
    else:
        layers, X = _cnn1d(net.split("-")[1]), rng.normal(size=(5, 2, 8))
    model = nnkit.Sequential(layers, backend=be, dtype="float64", seed=0)
    y = rng.integers(0, 3, size=5)
    assert nnkit.gradcheck(model, X, y, "cross_entropy") < 1e-6


def test_numpy_kernels_equal_the_array_api_kernels_on_random_geometries(monkeypatch):
    """NumPy's tap-by-tap unfolding and fold against the Array-API kernels (stacked slices of the padded input):
    1-D and 2-D, strides, paddings wider than the kernel's reach (taps that never meet the input), dilations —
    Z, dW, db and dX to round-off in float64; and an empty batch's shapes."""
    from nnkit.backends.numpy import NAMESPACE as xp

    ours, ref = xp.conv_kernels, convolutional.GENERIC_KERNELS
    rng, checked = np.random.default_rng(0), 0
    for n in (1, 2):
        for _ in range(60):
            k, s, d, p = (tuple(int(v) for v in rng.integers(lo, hi, n)) for lo, hi in ((1, 5), (1, 4), (1, 3), (0, 5)))
            size = tuple(int(v) for v in rng.integers(1, 10, n))
            out = [(m + 2 * q - e * (kk - 1) - 1) // ss + 1 for m, q, e, kk, ss in zip(size, p, d, k, s)]
            if min(out) < 1:
                continue
            B = int(rng.integers(1, 3))
            X, W, b = rng.normal(size=(B, 3) + size), rng.normal(size=(4, 3) + k), rng.normal(size=4)
            (Z1, saved1), (Z2, saved2) = ours.forward(xp, X, W, s, p, d, b), ref.forward(xp, X, W, s, p, d, b)
            np.testing.assert_allclose(Z1, Z2, rtol=1e-12, atol=1e-12)
            dZ = rng.normal(size=Z2.shape)
            for a, c in zip(ours.backward(xp, saved1, dZ, W, s, p, d), ref.backward(xp, saved2, dZ, W, s, p, d)):
                assert a.shape == c.shape
                np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
            checked += 1
    assert checked > 80
    # stride 1 with the output as wide as the input past the first axis: fold's one-shifted-run-per-tap path,
    # with taps that wrap into the neighbouring row, rows the tap never reaches, and dilation
    for k, p, d, size in [((3, 3), (1, 1), (1, 1), (5, 7)), ((5, 3), (2, 1), (1, 1), (6, 4)),
                          ((3, 3), (2, 2), (2, 2), (4, 5)), ((1, 3), (3, 1), (1, 1), (2, 6)),
                          ((3, 5), (0, 2), (1, 1), (5, 3)), ((2, 1), (1, 0), (1, 1), (3, 3))]:
        X, W = rng.normal(size=(2, 3) + size), rng.normal(size=(4, 3) + k)
        b = rng.normal(size=4) if size[0] % 2 else None  # with and without a bias (db then by its own sum)
        (Z1, saved1), (Z2, saved2) = ours.forward(xp, X, W, (1, 1), p, d, b), ref.forward(xp, X, W, (1, 1), p, d, b)
        np.testing.assert_allclose(Z1, Z2, rtol=1e-12, atol=1e-12)
        assert Z1.shape[3] == size[1]
        dZ = rng.normal(size=Z2.shape)
        for a, c in zip(ours.backward(xp, saved1, dZ, W, (1, 1), p, d), ref.backward(xp, saved2, dZ, W, (1, 1), p, d)):
            np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
    # strided, with the output as wide as the input's phase grids (⌈n/s⌉) past the first axis: fold's one run per
    # tap into its phase (taps of every phase, wrapping ones, dilation, unequal strides), and the transposed kernel
    import nnkit.backends.numpy as numpy_backend

    runs = []
    monkeypatch.setattr(numpy_backend, "_add_shifted", lambda *a, f=numpy_backend._add_shifted: runs.append(1) or f(*a))
    for size, k, s, p, d in [((8, 8), (3, 3), (2, 2), (1, 1), (1, 1)), ((7, 10), (3, 4), (2, 2), (1, 1), (1, 1)),
                             ((6, 9), (3, 3), (3, 3), (1, 1), (1, 1)), ((8, 8), (3, 3), (2, 2), (2, 2), (2, 2)),
                             ((5, 8), (3, 3), (1, 2), (1, 1), (1, 1)), ((4, 6), (4, 4), (2, 2), (1, 1), (1, 1))]:
        X, W, b = rng.normal(size=(2, 3) + size), rng.normal(size=(4, 3) + k), rng.normal(size=4)
        (Z1, saved1), (Z2, saved2) = ours.forward(xp, X, W, s, p, d, b), ref.forward(xp, X, W, s, p, d, b)
        assert Z1.shape[3] == -(-size[1] // s[1])
        dZ = rng.normal(size=Z2.shape)
        before = len(runs)
        for a, c in zip(ours.backward(xp, saved1, dZ, W, s, p, d), ref.backward(xp, saved2, dZ, W, s, p, d)):
            np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.transposed(xp, dZ, W, size, s, p, d), ref.transposed(xp, dZ, W, size, s, p, d),
                                   rtol=1e-12, atol=1e-12)
        assert len(runs) > before  # the phased runs were taken
    # a small (O, C·K) over many positions: per-example GEMMs, dX made and folded a few examples at a time (here
    # one: the chunk size shrunk), 1-D and 2-D, stride 1 and 2
    monkeypatch.setattr(numpy_backend, "_CHUNK_BYTES", 1)
    for size, k, s, p in [((12, 12), (3, 3), (1, 1), (1, 1)), ((11, 13), (3, 2), (2, 1), (0, 1)), ((50,), (3,), (1,), (1,))]:
        X, W, b = rng.normal(size=(3, 2) + size), rng.normal(size=(3, 2) + k), rng.normal(size=3)
        d = (1,) * len(size)
        (Z1, saved1), (Z2, saved2) = ours.forward(xp, X, W, s, p, d, b), ref.forward(xp, X, W, s, p, d, b)
        assert 3 * W[0].size < math.prod(Z2.shape[2:])
        np.testing.assert_allclose(Z1, Z2, rtol=1e-12, atol=1e-12)
        dZ = rng.normal(size=Z2.shape)
        for a, c in zip(ours.backward(xp, saved1, dZ, W, s, p, d), ref.backward(xp, saved2, dZ, W, s, p, d)):
            np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
    # groups: NumPy's one unfolding and batched per-group products against the Array-API kernels group by group,
    # and their transposed convolutions
    for size, k, s, p, d, C, O, g in [((9,), (3,), (1,), (1,), (1,), 4, 6, 2),
                                      ((7, 8), (3, 3), (1, 2), (1, 0), (1, 1), 6, 6, 6),
                                      ((8, 6), (2, 3), (2, 1), (0, 2), (2, 1), 4, 8, 4)]:
        X, W, b = rng.normal(size=(3, C) + size), rng.normal(size=(O, C // g) + k), rng.normal(size=O)
        for bias in (b, None):
            (Z1, saved1), (Z2, saved2) = (kern.forward(xp, X, W, s, p, d, bias, groups=g) for kern in (ours, ref))
            np.testing.assert_allclose(Z1, Z2, rtol=1e-12, atol=1e-12)
            dZ = rng.normal(size=Z2.shape)
            for a, c in zip(ours.backward(xp, saved1, dZ, W, s, p, d, groups=g),
                            ref.backward(xp, saved2, dZ, W, s, p, d, groups=g)):
                assert a.shape == c.shape
                np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
            # the transposed convolution (ConvTranspose's forward): dZ's shape in, X's out
            np.testing.assert_allclose(ours.transposed(xp, dZ, W, size, s, p, d, groups=g),
                                       ref.transposed(xp, dZ, W, size, s, p, d, groups=g), rtol=1e-12, atol=1e-12)
    Z, saved = ours.forward(xp, np.zeros((0, 3, 8, 8)), np.ones((4, 3, 3, 3)), (1, 1), (1, 1), (1, 1), np.zeros(4))
    assert Z.shape == (0, 4, 8, 8)
    assert [g.shape for g in ours.backward(xp, saved, Z, np.ones((4, 3, 3, 3)), (1, 1), (1, 1), (1, 1))] == \
        [(4, 3, 3, 3), (4,), (0, 3, 8, 8)]


@pytest.mark.parametrize("backend", ["array_api_strict", "numpy"])
def test_a_wrong_col2im_fails_the_gradient_check(monkeypatch, backend):
    """The Array-API kernels' col2im and NumPy's own, each made wrong, are caught by gradcheck."""
    pytest.importorskip(backend)
    rng = np.random.default_rng(4)
    model = nnkit.Sequential([nnkit.Conv1D(1, 2, 3), nnkit.Tanh(), nnkit.Conv1D(2, 2, 3), nnkit.Flatten(),
                              nnkit.Dense(8, 2)], dtype="float64", seed=0, backend=backend)
    X, y = rng.normal(size=(4, 1, 8)), rng.integers(0, 2, size=4)
    assert nnkit.gradcheck(model, X, y, "cross_entropy") < 1e-6
    kernels = getattr(model.xp, "conv_kernels", convolutional.GENERIC_KERNELS)
    real = kernels.fold

    def last_tap_wins(xp, cols, in_shape, kernel, *rest):  # overlapping patches overwritten instead of added up
        return real(xp, cols[:, :, -1:, ...], in_shape, (1,), *rest)

    monkeypatch.setattr(kernels, "fold", last_tap_wins)
    assert nnkit.gradcheck(model, X, y, "cross_entropy") > 1e-2


# -- shapes through the model ----------------------------------------------------------------------------
def test_shapes_are_checked_naming_the_layer_and_summary_shows_them():
    with pytest.raises(ValueError, match=r"layer 3 Dense\(100, 10\) expects 100 input features, but the layer "
                                         r"before it gives \(B, 125\)"):
        nnkit.Sequential([nnkit.Conv1D(1, 25, 5, stride=2, padding=1), nnkit.Conv1D(25, 25, 3, stride=4),
                          nnkit.Flatten(), nnkit.Dense(100, 10)], input_shape=(1, 40))
    model = nnkit.Sequential([nnkit.Conv1D(1, 4, 3), nnkit.ReLU(), nnkit.GlobalAvgPool(), nnkit.Dense(4, 2)])
    assert model.input_shape == (1, None) and model.n_outputs == 2
    with pytest.raises(ValueError, match=r"X has shape \(B, 2, 9\) but the model expects \(B, 1, \?\)"):
        model.predict(np.zeros((3, 2, 9)))
    with pytest.raises(ValueError, match=r"layer 0 Conv1D\(1, 4, 3\) reaches over 3 positions"):
        model.predict(np.zeros((3, 1, 2)))
    assert to_np(model.predict(np.zeros((3, 1, 9)))).shape == (3, 2)
    assert "(B, 4, 7)" in model.summary()  # the first batch decided the length
    flat = nnkit.Sequential([nnkit.Reshape((1, 8, 8)), nnkit.Conv2D(1, 2, 3), nnkit.Flatten(), nnkit.Dense(72, 3)],
                            input_shape=(64,))
    assert flat.n_features_in == 64 and "(B, 2, 6, 6)" in flat.summary()
    with pytest.raises(ValueError, match=r"Reshape\(\(1, 8, 8\)\) cannot hold the 63 values"):
        nnkit.Sequential([nnkit.Reshape((1, 8, 8)), nnkit.Flatten()], input_shape=(63,))
    with pytest.raises(ValueError, match="input_shape must be"):
        nnkit.Sequential([nnkit.Flatten()], input_shape=(0, 3))


@pytest.mark.parametrize("bad", [dict(kernel_size=0), dict(stride=(1, 2)), dict(padding=-1), dict(dilation=True)])
def test_bad_conv_arguments_are_named(bad):
    args = dict(in_channels=1, out_channels=2, kernel_size=3) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        nnkit.Conv1D(**args)


# -- everywhere the dense layers go ------------------------------------------------------------------------
def _signals(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2, 8))
    y = (X[:, 0, :4].sum(axis=1) > X[:, 1, 4:].sum(axis=1)).astype(int) + (X[:, 0, 0] > 1)
    return X, y


def test_conv_fit_on_every_backend_agrees_with_numpy(make_backend):
    X, y = _signals()
    ref = nnkit.Sequential(_cnn1d(), dtype="float64", seed=1)
    ref.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=3, batch_size=16, verbose=0)
    model = nnkit.Sequential(_cnn1d(), backend=make_backend("float64"), dtype="float64", seed=1)
    model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=3, batch_size=16, verbose=0)
    a, b = ref.state_dict(), model.state_dict()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-10, err_msg=k)


def test_conv_checkpoint_pickle_and_to(tmp_path):
    X, y = _signals()
    model = nnkit.Sequential(_cnn1d(), seed=0)
    model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=16, verbose=0)
    model.save(tmp_path / "cnn.npz")
    back = nnkit.load(tmp_path / "cnn.npz")
    assert back.input_shape == (2, None) and back.config() == model.config()
    np.testing.assert_array_equal(to_np(back.predict(X)), to_np(model.predict(X)))
    twin = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(to_np(twin.predict(X)), to_np(model.predict(X)))
    if HAS_TORCH:
        model.to("torch")
        np.testing.assert_allclose(to_np(model.predict(X)), to_np(back.predict(X)), rtol=1e-5, atol=1e-6)


def test_checkpoints_written_before_shapes_still_load(tmp_path):
    import json
    import zipfile

    model = nnkit.Sequential.mlp([4, 8, 3], seed=0)
    model.save(tmp_path / "new.npz")
    with zipfile.ZipFile(tmp_path / "new.npz") as zin, zipfile.ZipFile(tmp_path / "old.npz", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "__nnkit__.npy":
                header_end = data.index(b"\n") + 1
                meta = json.loads(data[header_end:].decode())
                meta.pop("input_shape")
                meta.pop("precision"), meta.pop("loss_scale")
                body = json.dumps(meta).encode()
                header = data[:header_end].replace(f"({len(data) - header_end},)".encode(), f"({len(body)},)".encode())
                header = header[:-1].ljust(len(data[:header_end]) - 1) + b"\n"
                data = header + body
            zout.writestr(item, data)
    old = nnkit.load(tmp_path / "old.npz")
    assert old.input_shape == (4,) and old.precision is None
    np.testing.assert_array_equal(old.state_dict()["0.W"], model.state_dict()["0.W"])


def test_a_checkpoint_claiming_a_huge_kernel_is_refused_before_any_allocation(tmp_path):
    import json
    import zipfile

    model = nnkit.Sequential([nnkit.Conv1D(1, 2, 3), nnkit.Flatten(), nnkit.Dense(2, 2)], input_shape=(1, 3), seed=0)
    model.save(tmp_path / "ok.npz")
    with zipfile.ZipFile(tmp_path / "ok.npz") as zin, zipfile.ZipFile(tmp_path / "huge.npz", "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "__nnkit__.npy":
                text = data.decode("latin-1").replace('"kernel_size": 3', '"kernel_size": 3000000000')
                text = text.replace('"input_shape": [1, 3]', '"input_shape": [1, 3000000000]')
                data = text.encode("latin-1")
            zout.writestr(item, data)
    tracemalloc.start()
    with pytest.raises(nnkit.CheckpointError):
        nnkit.load(tmp_path / "huge.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 30 * 2**20
    del json


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@pytest.mark.parametrize("backend,compile", [("torch", True), ("jax", True), ("torch", False)])
def test_conv_compiled_and_mixed_precision_fits(backend, compile):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    X, y = _signals(96)
    runs = {}
    for c in (False, compile):
        model = nnkit.Sequential(_cnn1d("avg", norm=False), backend=backend, seed=2)  # no bias before a norm:
        # its gradient is 0 in exact arithmetic, and Adam would turn the round-off into steps
        model.fit(X.astype(np.float32), y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=32,
                  verbose=0, compile=c)
        runs[c] = model.state_dict()
    for k in runs[False]:
        np.testing.assert_allclose(runs[compile][k], runs[False][k], rtol=2e-4, atol=2e-5, err_msg=k)
    mixed = nnkit.Sequential(_cnn1d("max"), backend=backend, seed=2, precision="mixed_bfloat16")
    h = mixed.fit(X.astype(np.float32), y, loss="cross_entropy", optimizer="adam", epochs=4, batch_size=32,
                  verbose=0, compile=compile)
    assert h["loss"][-1] < h["loss"][0]
    assert mixed.layers[0]._cache is None or mixed.layers[0]._cache[2].dtype == mixed.xp.bfloat16  # W in bf16


def test_data_parallel_conv_fit_equals_one_process(tmp_path, monkeypatch):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from test_distributed import _assert_same, _launch
    import mpi_worker

    monkeypatch.setenv("NNKIT_TEST_CONV", "1")
    mpi_worker.run(None, tmp_path / "one.npz", 3)
    _launch(2, tmp_path / "two.npz", 3)
    two = np.load(tmp_path / "two.npz")
    assert two["param/1.W"].shape == (4, 1, 3)  # the ranks trained the CNN
    _assert_same(two, np.load(tmp_path / "one.npz"))
