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
(none)             ``nn.Flatten()`` on a table (B, n) is the identity: taken in as ``Identity``
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


_RESIDUAL = None


def __getattr__(name):  # ``nnkit.export.pytorch.Residual`` is built on first use (torch imported then)
    global _RESIDUAL
    if name == "Residual":
        if _RESIDUAL is None:
            _RESIDUAL = _residual_class()
        return _RESIDUAL
    raise AttributeError(name)


def _to_module(torch, layer, dtype, where):
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
        m = nn.BatchNorm1d(n, eps=layer.eps, momentum=layer.momentum, dtype=dtype) if kind == "BatchNorm" \
            else nn.LayerNorm(n, eps=layer.eps, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(torch.as_tensor(_host(layer.params["gamma"])))
            m.bias.copy_(torch.as_tensor(_host(layer.params["beta"])))
            if kind == "BatchNorm":
                m.running_mean.copy_(torch.as_tensor(_host(layer.buffers["running_mean"])))
                m.running_var.copy_(torch.as_tensor(_host(layer.buffers["running_var"])))
        return m
    if kind == "Residual":
        return __getattr__("Residual")(*[_to_module(torch, l, dtype, f"{where}.{j}") for j, l in enumerate(layer.layers)])
    raise ValueError(f"layer {where} {layer!r} has no PyTorch counterpart in nnkit's map")


def _host(a):
    from ..backend import host_copy

    return np.asarray(host_copy(a))


def to_torch(model):
    """A ``torch.nn.Sequential`` of PyTorch's own layers computing what ``model`` computes, with its weights
    (and running statistics), in the model's storage dtype, on the CPU, in eval mode (``.train()`` for
    training mode: BatchNorm with batch statistics, Dropout drawing masks)."""
    torch = _torch()
    dtype = getattr(torch, model.dtype)
    net = torch.nn.Sequential(*[_to_module(torch, l, dtype, str(i)) for i, l in enumerate(model.layers)])
    return net.eval()


def _from_module(m, where):
    """An nnkit layer (with its host weights as a dict) for the PyTorch module ``m``."""
    from ..layers import activations as A
    from ..layers import BatchNorm, Dense, Dropout, LayerNorm, Residual

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
    simple = {nn.ReLU: A.ReLU, nn.Sigmoid: A.Sigmoid, nn.Tanh: A.Tanh, nn.SiLU: A.SiLU, nn.Identity: A.Identity,
              nn.Flatten: A.Identity}
    if type(m) in simple:
        if type(m) is nn.Flatten and (m.start_dim != 1 or m.end_dim != -1):
            raise refuse("only Flatten() of the features (start_dim=1) is the identity on tables")
        return simple[type(m)](), {}, {}
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
    if type(m) is nn.BatchNorm1d:
        if not m.affine or not m.track_running_stats or m.momentum is None:
            raise refuse("BatchNorm1d needs affine=True, track_running_stats=True and a momentum")
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
    raise refuse(f"nnkit has no layer for {kind} (it takes Linear, ReLU, Sigmoid, Tanh, LeakyReLU, ELU, SiLU, "
                 "Softplus, Softmax, GELU(approximate='tanh'), Identity, Flatten, Dropout, BatchNorm1d, LayerNorm "
                 "and nnkit's Residual)")


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
