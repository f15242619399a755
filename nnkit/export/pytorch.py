"""PyTorch both ways: ``model.to_torch()`` builds a ``torch.nn.Sequential`` of PyTorch's own layers with
nnkit's weights; ``Sequential.from_torch(module)`` takes such a module (weights and running statistics)
into nnkit (through :func:`layers_from_torch`).

The layers map one to one:

=================  ==============================================================
nnkit              PyTorch
=================  ==============================================================
Dense(in, out)     ``nn.Linear(in, out)`` — ``weight`` = Wᵀ (PyTorch stores (out, in))
ReLU, Sigmoid,     ``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``, ``nn.LeakyReLU(α)``, ``nn.ELU(α)``,
Tanh, LeakyReLU,   ``nn.SiLU``, ``nn.Softplus`` (β = 1), ``nn.Softmax(dim=1)``, ``nn.Identity``,
ELU, SiLU,         ``nn.GELU(approximate="tanh")``
Softplus, Softmax,
Identity, GELU
BatchNorm          ``nn.BatchNorm1d`` (same momentum convention, running statistics copied)
LayerNorm          ``nn.LayerNorm(n)``
Dropout(p)         ``nn.Dropout(p)``
Residual(layers)   :class:`Residual` below (PyTorch has no residual container): x + f(x)
Conv1D, Conv2D     ``nn.Conv1d``, ``nn.Conv2d`` (W in the same (O, C, *k) layout)
MaxPool1D/2D,      ``nn.MaxPool1d/2d``, ``nn.AvgPool1d/2d(count_include_pad=True)``
AvgPool1D/2D
GlobalAvgPool      :class:`GlobalAvgPool` below (the mean over the positions)
Flatten, Reshape   ``nn.Flatten()``, ``nn.Unflatten(1, shape)`` (:class:`Reshape` below when shape has −1)
BatchNorm on       ``nn.BatchNorm2d``
images
=================  ==============================================================

``from_torch`` refuses any other module by name (and modules whose settings nnkit cannot express:
a Linear without bias, a BatchNorm1d without affine parameters or running statistics, a Softplus with
β ≠ 1, ...).  PyTorch's Softplus switches to x above its threshold (20), where log(1 + eˣ) − x < 2·10⁻⁹.
"""
from __future__ import annotations

import numpy as np

__all__ = ["to_torch", "layers_from_torch", "Residual"]

_ACTIVATIONS = {"ReLU": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "SiLU": "SiLU", "Identity": "Identity"}


def _torch():
    try:
        import torch
    except ImportError:
        raise RuntimeError("PyTorch is not installed: pip install torch") from None
    return torch


def _residual_class():
    torch = _torch()

    class Residual(torch.nn.Module):
        """y = x + f(x), f an ``nn.Sequential`` (nnkit's Residual block)."""

        def __init__(self, *layers):
            super().__init__()
            self.body = torch.nn.Sequential(*layers)

        def forward(self, x):
            """x + f(x)."""
            return x + self.body(x)

    return Residual


def _global_avg_pool_class():
    torch = _torch()

    class GlobalAvgPool(torch.nn.Module):
        """y = mean over every position: (B, C, *n) → (B, C) (nnkit's GlobalAvgPool)."""

        def forward(self, x):
            """The mean over the positions."""
            return x.mean(dim=tuple(range(2, x.dim())))

    return GlobalAvgPool


def _reshape_class():
    torch = _torch()

    class Reshape(torch.nn.Module):
        """y = x reshaped to (B, *shape), one entry may be −1 (nnkit's Reshape; ``Unflatten`` where no −1)."""

        def __init__(self, shape):
            super().__init__()
            self.shape = tuple(shape)

        def forward(self, x):
            """x as (B, *shape)."""
            return x.reshape((x.shape[0],) + self.shape)

    return Reshape


_CLASSES = {}
_MAKERS = {"Residual": _residual_class, "GlobalAvgPool": _global_avg_pool_class, "Reshape": _reshape_class}


def __getattr__(name):  # ``nnkit.export.pytorch.Residual`` etc. are built on first use (torch imported then)
    if name in _MAKERS:
        if name not in _CLASSES:
            _CLASSES[name] = _MAKERS[name]()
        return _CLASSES[name]
    raise AttributeError(name)


def _to_module(torch, layer, dtype, where, rank=None):
    nn = torch.nn
    kind = type(layer).__name__
    if kind == "Dense":
        m = nn.Linear(layer.in_features, layer.out_features, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(torch.as_tensor(_host(layer.params["W"]).T))
            m.bias.copy_(torch.as_tensor(_host(layer.params["b"])))
        return m
    if kind in _ACTIVATIONS:
        return getattr(nn, _ACTIVATIONS[kind])()
    if kind == "LeakyReLU":
        return nn.LeakyReLU(layer.alpha)
    if kind == "ELU":
        return nn.ELU(layer.alpha)
    if kind == "Softplus":
        return nn.Softplus()
    if kind == "Softmax":
        return nn.Softmax(dim=1)
    if kind == "GELU":
        return nn.GELU(approximate="tanh")
    if kind == "Dropout":
        return nn.Dropout(layer.p)
    if kind in ("BatchNorm", "LayerNorm"):
        n = layer.num_features
        bn = nn.BatchNorm2d if rank == 3 else nn.BatchNorm1d  # (B, C, H, W) images, else tables and signals
        m = bn(n, eps=layer.eps, momentum=layer.momentum, dtype=dtype) if kind == "BatchNorm" \
            else nn.LayerNorm(n, eps=layer.eps, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(torch.as_tensor(_host(layer.params["gamma"])))
            m.bias.copy_(torch.as_tensor(_host(layer.params["beta"])))
            if kind == "BatchNorm":
                m.running_mean.copy_(torch.as_tensor(_host(layer.buffers["running_mean"])))
                m.running_var.copy_(torch.as_tensor(_host(layer.buffers["running_var"])))
        return m
    if kind in ("Conv1D", "Conv2D"):
        cls = nn.Conv1d if kind == "Conv1D" else nn.Conv2d
        m = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                dilation=layer.dilation, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(torch.as_tensor(_host(layer.params["W"])))
            m.bias.copy_(torch.as_tensor(_host(layer.params["b"])))
        return m
    if kind in ("MaxPool1D", "MaxPool2D"):
        return getattr(nn, kind[:-1] + "d")(layer.kernel_size, stride=layer.stride, padding=layer.padding)
    if kind in ("AvgPool1D", "AvgPool2D"):
        return getattr(nn, kind[:-1] + "d")(layer.kernel_size, stride=layer.stride, padding=layer.padding,
                                            count_include_pad=True)
    if kind == "GlobalAvgPool":
        return __getattr__("GlobalAvgPool")()
    if kind == "Flatten":
        return nn.Flatten()
    if kind == "Reshape":
        return nn.Unflatten(1, layer.shape) if -1 not in layer.shape else __getattr__("Reshape")(layer.shape)
    if kind == "Residual":
        return __getattr__("Residual")(*[_to_module(torch, l, dtype, f"{where}.{j}", rank)
                                         for j, l in enumerate(layer.layers)])
    raise ValueError(f"layer {where} {layer!r} has no PyTorch counterpart in nnkit's map")


def _host(a):
    from ..backend import host_copy

    return np.asarray(host_copy(a))


def to_torch(model):
    """A ``torch.nn.Sequential`` of PyTorch's own layers computing what ``model`` computes, with its weights
    (and running statistics), in the model's storage dtype, on the CPU, in eval mode (``.train()`` for
    training mode: BatchNorm with batch statistics, Dropout drawing masks)."""
    from ..layers import infer_shapes

    torch = _torch()
    dtype = getattr(torch, model.dtype)
    shape = model.input_shape if model.input_shape is not None else next(iter(model._batch_shapes), None)
    ranks = [None] * len(model.layers) if shape is None else \
        [len(s) for s in infer_shapes(model.layers, shape)[:-1]]  # each layer's input rank (BatchNorm1d or 2d)
    net = torch.nn.Sequential(*[_to_module(torch, l, dtype, str(i), r)
                                for i, (l, r) in enumerate(zip(model.layers, ranks))])
    return net.eval()


def _from_module(m, where):
    """An nnkit layer (with its host weights as a dict) for the PyTorch module ``m``."""
    from ..layers import activations as A
    from ..layers import (AvgPool1D, AvgPool2D, BatchNorm, Conv1D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool,
                          LayerNorm, MaxPool1D, MaxPool2D, Reshape, Residual)

    torch = _torch()
    nn = torch.nn
    kind = type(m).__name__

    def arr(t):
        return t.detach().cpu().numpy()

    def refuse(why):
        return ValueError(f"module {where} ({m!r}) cannot be taken into nnkit: {why}")

    if type(m) is nn.Linear:
        if m.bias is None:
            raise refuse("a Linear without bias (nnkit's Dense always has one)")
        return Dense(m.in_features, m.out_features), {"W": arr(m.weight).T, "b": arr(m.bias)}, {}
    simple = {nn.ReLU: A.ReLU, nn.Sigmoid: A.Sigmoid, nn.Tanh: A.Tanh, nn.SiLU: A.SiLU, nn.Identity: A.Identity}
    if type(m) in simple:
        return simple[type(m)](), {}, {}
    if type(m) is nn.Flatten:
        if m.start_dim != 1 or m.end_dim != -1:
            raise refuse("nnkit's Flatten flattens everything after the batch (start_dim=1, end_dim=-1)")
        return Flatten(), {}, {}
    if type(m) is nn.Unflatten:
        if m.dim != 1:
            raise refuse("nnkit's Reshape reshapes everything after the batch (Unflatten(1, shape))")
        return Reshape(tuple(m.unflattened_size)), {}, {}
    if type(m) in (nn.Conv1d, nn.Conv2d):
        if m.bias is None or m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise refuse("nnkit's convolutions have a bias, one group, zero padding given as numbers")
        cls = Conv1D if type(m) is nn.Conv1d else Conv2D
        layer = cls(m.in_channels, m.out_channels, tuple(m.kernel_size), stride=tuple(m.stride),
                    padding=tuple(m.padding), dilation=tuple(m.dilation))
        return layer, {"W": arr(m.weight), "b": arr(m.bias)}, {}
    if type(m) in (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d):
        if m.ceil_mode or getattr(m, "dilation", 1) not in (1, (1, 1)) or getattr(m, "return_indices", False) \
                or not getattr(m, "count_include_pad", True) or getattr(m, "divisor_override", None):
            raise refuse("nnkit's pools use floor mode, no dilation and (average) count_include_pad=True")
        cls = {nn.MaxPool1d: MaxPool1D, nn.MaxPool2d: MaxPool2D, nn.AvgPool1d: AvgPool1D, nn.AvgPool2d: AvgPool2D}[type(m)]
        return cls(m.kernel_size, stride=m.stride, padding=m.padding), {}, {}
    if kind in ("GlobalAvgPool", "Reshape") and type(m) is __getattr__(kind):
        return (GlobalAvgPool() if kind == "GlobalAvgPool" else Reshape(m.shape)), {}, {}
    if type(m) is nn.LeakyReLU:
        return A.LeakyReLU(m.negative_slope), {}, {}
    if type(m) is nn.ELU:
        return A.ELU(m.alpha), {}, {}
    if type(m) is nn.Softplus:
        if m.beta != 1:
            raise refuse(f"Softplus with beta={m.beta} (nnkit's Softplus has β = 1)")
        return A.Softplus(), {}, {}
    if type(m) is nn.Softmax:
        if m.dim not in (1, -1):
            raise refuse(f"Softmax over dim={m.dim} (nnkit's is over the features, dim=1)")
        return A.Softmax(), {}, {}
    if type(m) is nn.GELU:
        if m.approximate != "tanh":
            raise refuse("GELU(approximate='none') needs erf; nnkit offers GELU(approximate='tanh') only")
        return A.GELU(), {}, {}
    if type(m) is nn.Dropout:
        return Dropout(m.p), {}, {}
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
        if not m.affine or not m.track_running_stats or m.momentum is None:
            raise refuse(f"{kind} needs affine=True, track_running_stats=True and a momentum")
        return (BatchNorm(m.num_features, momentum=m.momentum, eps=m.eps),
                {"gamma": arr(m.weight), "beta": arr(m.bias)},
                {"running_mean": arr(m.running_mean), "running_var": arr(m.running_var)})
    if type(m) is nn.LayerNorm:
        if len(m.normalized_shape) != 1 or not m.elementwise_affine or m.bias is None:
            raise refuse("LayerNorm needs one normalised dimension with weight and bias")
        return LayerNorm(m.normalized_shape[0], eps=m.eps), {"gamma": arr(m.weight), "beta": arr(m.bias)}, {}
    if kind == "Residual" and isinstance(getattr(m, "body", None), nn.Sequential):
        inner = [_from_module(c, f"{where}.{j}") for j, c in enumerate(m.body)]
        params = {f"{j}.{k}": v for j, (_, p, _) in enumerate(inner) for k, v in p.items()}
        buffers = {f"{j}.{k}": v for j, (_, _, b) in enumerate(inner) for k, v in b.items()}
        return Residual([l for l, _, _ in inner]), params, buffers
    raise refuse(f"nnkit has no layer for {kind} (it takes Linear, Conv1d, Conv2d, MaxPool1d/2d, AvgPool1d/2d, "
                 "ReLU, Sigmoid, Tanh, LeakyReLU, ELU, SiLU, Softplus, Softmax, GELU(approximate='tanh'), Identity, "
                 "Flatten, Unflatten(1, shape), Dropout, BatchNorm1d/2d, LayerNorm and nnkit's Residual, "
                 "GlobalAvgPool and Reshape modules)")


def layers_from_torch(module):
    """``(layers, state, dtype)`` for an ``nn.Sequential`` of the modules in this module's table: nnkit layers
    (without weights), their weights and running statistics keyed like ``Sequential.state_dict()``, and the
    module's parameter dtype (``"float64"`` when any parameter is float64, else ``"float32"``).  Used by
    :meth:`nnkit.Sequential.from_torch`."""
    torch = _torch()
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"from_torch takes a torch.nn.Sequential, got {type(module).__name__}")
    if len(module) == 0:
        raise ValueError("from_torch: the nn.Sequential is empty")
    built = [_from_module(m, str(i)) for i, m in enumerate(module)]
    dtype = "float64" if torch.float64 in {p.dtype for p in module.parameters()} else "float32"
    state = {}
    for i, (_, params, buffers) in enumerate(built):
        state.update({f"{i}.{k}": v for k, v in {**params, **buffers}.items()})
    return [layer for layer, _, _ in built], state, dtype
