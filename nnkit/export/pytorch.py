"""PyTorch both ways: ``model.to_torch()`` builds a ``torch.nn.Sequential`` of PyTorch's own layers with
nnkit's weights; ``Sequential.from_torch(module)`` takes such a module (weights and running statistics)
into nnkit (through :func:`layers_from_torch`).

Each layer declares its own PyTorch module in its file (``Layer.to_torch(ctx)``, and ``Layer.from_torch`` for the
``torch.nn`` classes it names in ``torch_classes``); this module walks the model (or the ``nn.Sequential``) and
asks each layer, through :class:`ToTorch` and :class:`FromTorch`.  The built-in layers map one to one:

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

from ..backends import host_copy
from ..layers import LAYER_TYPES, infer_shapes

__all__ = ["to_torch", "layers_from_torch", "ToTorch", "FromTorch"]  # and the layers' own modules (lazily)



def _torch():
    try:
        import torch
    except ImportError:
        raise RuntimeError("PyTorch is not installed: pip install torch") from None
    return torch


def __getattr__(name):
    """``nnkit.export.pytorch.Residual``, ``.Recurrent``, ``.SequencePool``, ``.WithLengths`` ...: the modules PyTorch
    has none of, which the layers build (``torch_module``) when first asked — also by pickle, by name."""
    if not name[:1].isupper():
        raise AttributeError(name)
    nn = _torch().nn
    if name == "WithLengths":
        return _with_lengths(nn)
    if name == "Graph":
        return _graph_class(nn)
    for cls in LAYER_TYPES.values():
        if getattr(cls, "torch_module", None) is not None:
            module = cls.torch_module(nn)
            if module.__module__ == __name__ and module.__qualname__ == name:
                return module
    raise AttributeError(name)


class ToTorch:
    """What a layer's ``to_torch(ctx)`` is given: ``nn``, the parameter ``dtype``, ``rank`` (the layer's input
    rank without the batch, None when unknown), ``load`` to copy an array into a module's tensor and ``module``
    for the layers inside it."""

    def __init__(self, torch, dtype, rank=None, where=""):
        self.torch, self.nn, self.dtype, self.rank, self.where = torch, torch.nn, dtype, rank, where

    def load(self, tensor, array, transpose=False):
        """``tensor`` ← the host copy of ``array`` (transposed when asked), without recording gradients."""
        host = np.asarray(host_copy(array))
        with self.torch.no_grad():
            tensor.copy_(self.torch.as_tensor(host.T if transpose else host))

    def module(self, layer, where=None):
        """The PyTorch module of ``layer`` (an inner layer, ``where`` its index inside this one), with its
        weights; a layer without a counterpart is a ValueError naming it."""
        here = self.where if where is None else (f"{self.where}.{where}" if self.where else where)
        if layer.to_torch is None:
            known = ", ".join(n for n, c in LAYER_TYPES.items() if c.to_torch is not None)
            raise ValueError(f"layer {here} {layer!r} has no PyTorch counterpart: {type(layer).__name__} declares no "
                             f"to_torch method (layers that have one: {known})")
        return layer.to_torch(ToTorch(self.torch, self.dtype, self.rank, here))


class FromTorch:
    """What a layer's ``from_torch(m, ctx)`` is given: ``nn``, ``array`` (a tensor as a host NumPy array),
    ``refuse`` (the ValueError for a setting nnkit cannot express, naming the module) and ``layer`` for the
    modules inside ``m``."""

    def __init__(self, torch, where, module):
        self.torch, self.nn, self.where, self.m = torch, torch.nn, where, module

    @staticmethod
    def array(t):
        """A tensor's values as a host NumPy array."""
        return t.detach().cpu().numpy()

    def refuse(self, why):
        """The ValueError to raise for a module setting nnkit cannot express, naming the module and ``why``."""
        return ValueError(f"module {self.where} ({self.m!r}) cannot be taken into nnkit: {why}")

    def layer(self, m, where):
        """``(layer, params, buffers)`` of the inner module ``m`` (``where`` its index inside this one)."""
        return _from_module(self.torch, m, f"{self.where}.{where}")


def _importers(nn):
    """``{torch module class: nnkit layer class}`` from every layer's ``torch_classes``."""
    table = {}
    for cls in LAYER_TYPES.values():
        for tc in cls.torch_classes(nn):
            table.setdefault(tc, cls)
    return table


def _from_module(torch, m, where):
    """An nnkit layer (with its host weights and buffers as dicts) for the PyTorch module ``m``."""
    cls = _importers(torch.nn).get(type(m))
    if cls is None:
        names = sorted({tc.__name__ for tc in _importers(torch.nn)})
        raise ValueError(f"module {where} ({m!r}) cannot be taken into nnkit: nnkit has no layer for "
                         f"{type(m).__name__} (it takes {', '.join(names)})")
    return cls.from_torch(m, FromTorch(torch, where, m))


def _with_lengths(nn):
    """``nnkit.export.pytorch.WithLengths`` (built once, on first use)."""
    global _WithLengths
    if _WithLengths is None:
        class WithLengths(nn.Module):
            """``net(x, lengths)``: a padded batch of variable-length sequences x (B, T, ...) with each sequence's
            length (B,), through ``layers`` (an ``nn.Sequential``) as nnkit's model runs it with the padding
            mask: the modules that take the lengths (``takes_lengths``: the recurrent layers, packed; the
            sequence pooling) are given them, and a per-position output is zero at the padding."""

            def __init__(self, layers, per_position):
                super().__init__()
                self.layers, self.per_position = layers, bool(per_position)

            def forward(self, x, lengths):
                """The model's output for x (B, T, ...) and ``lengths`` (B,) (a tensor or a sequence of ints)."""
                import torch

                lengths = torch.as_tensor(lengths, dtype=torch.int64, device=x.device)
                T = x.shape[1]
                for m in self.layers:
                    x = m(x, lengths) if getattr(m, "takes_lengths", False) else m(x)
                if self.per_position:
                    mask = torch.arange(T, device=x.device)[None, :] < lengths[:, None]
                    x = x * mask.reshape(mask.shape + (1,) * (x.dim() - 2)).to(x.dtype)
                return x

        WithLengths.__module__, WithLengths.__qualname__ = __name__, "WithLengths"
        _WithLengths = WithLengths
    return _WithLengths


_WithLengths = None


def _tied_from_module(torch, m, shared, where):
    """The nnkit layer for a module that shares Parameters with earlier ones (``shared``: its parameter name ->
    the index of the module that holds it first), from the layer class whose ``tied_from_torch`` takes it."""
    ctx = FromTorch(torch, where, m)
    for cls in LAYER_TYPES.values():
        take = getattr(cls, "tied_from_torch", None)
        found = take(m, shared, ctx) if take is not None else None
        if found is not None:
            return found
    raise ctx.refuse(f"it shares {', '.join(sorted(shared))} with module(s) "
                     f"{', '.join(str(j) for j in sorted(set(shared.values())))}, which no nnkit layer expresses "
                     "(a Linear sharing an Embedding's weight is a TiedDense)")


def to_torch(model, lengths=False):
    """A ``torch.nn.Sequential`` of PyTorch's own layers computing what ``model`` computes, with its weights
    (and running statistics), in the model's storage dtype, on the CPU, in eval mode (``.train()`` for
    training mode: BatchNorm with batch statistics, Dropout drawing masks).  ``lengths=True``: for padded
    variable-length sequences, a :func:`WithLengths <_with_lengths>` module around it, called ``net(x, lengths)``
    (the recurrent layers run packed, as ``predict(X, lengths=...)`` runs them)."""
    torch = _torch()
    dtype = getattr(torch, model.dtype)
    if not model.plan.chain:
        if lengths:
            raise ValueError("to_torch(lengths=True) takes a chain of layers (a Sequential); this model is a graph")
        return _graph_module(torch, dtype, model).eval()
    shape = model.input_shape if model.input_shape is not None else model.known_input_shape
    ranks = [None] * len(model.layers) if shape is None else \
        [len(s) for s in infer_shapes(model.layers, shape)[:-1]]  # each layer's input rank (BatchNorm1d or 2d)
    net = torch.nn.Sequential(*[ToTorch(torch, dtype, r).module(layer, str(i))
                                for i, (layer, r) in enumerate(zip(model.layers, ranks))])
    for i, layer in enumerate(model.layers):  # a tied head shares the source's Parameter, as in PyTorch's own GPTs
        src = getattr(layer, "tie_source", None)
        if src is not None and src.isdigit():
            net[i].weight = net[int(src)].weight
    if not lengths:
        return net.eval()
    for i, (layer, m) in enumerate(zip(model.layers, net)):
        if getattr(layer, "takes_mask", False) and not getattr(m, "takes_lengths", False):
            raise ValueError(f"layer {i} {layer!r} takes the padding mask, but its PyTorch module takes no lengths "
                             "(a module with takes_lengths = True and forward(x, lengths)): call to_torch() without "
                             "lengths= and feed sequences of one length")
    return _with_lengths(torch.nn)(net, model.output_mask(object()) is not None).eval()


def _graph_module(torch, dtype, model):
    """A graph model as a ``torch.nn.Module`` (``nnkit.export.pytorch.Graph``): each layer's own module (a layer
    called at several nodes is one module), and a forward that walks the nodes in order —
    ``net(x)``, ``net(x1, x2, ...)`` for several inputs; several outputs come back as a tuple."""
    plan = model.plan
    shapes = model.value_shapes()
    ranks = {}
    for layer, src, _, srcs, _, _ in plan.forward_order:
        shape = shapes[src]
        ranks.setdefault(id(layer), None if shape is None else len(shape))
    modules = [ToTorch(torch, dtype, ranks.get(id(layer))).module(layer, str(i)) for i, layer in enumerate(plan.layers)]
    index = {id(layer): i for i, layer in enumerate(plan.layers)}
    steps = [(index[id(layer)], src, dst, None if srcs is None else list(srcs))
             for layer, src, dst, srcs, _, _ in plan.forward_order]
    return _graph_class(torch.nn)(modules, steps, list(plan.inputs), list(plan.outputs), plan.n_values)


def _graph_class(nn):
    if "Graph" not in _GRAPH:
        class Graph(nn.Module):
            """The modules of a graph model and its nodes: (module index, input slot, output slot, input slots of a
            list node or None) in order; ``forward(*inputs)`` walks them, as nnkit's model does."""

            def __init__(self, modules, steps, inputs, outputs, n_values):
                super().__init__()
                self.layers = nn.ModuleList(modules)
                self.steps, self.inputs, self.outputs, self.n_values = steps, inputs, outputs, n_values

            def forward(self, *xs):
                values = [None] * self.n_values
                for slot, x in zip(self.inputs, xs):
                    values[slot] = x
                for m, src, dst, srcs in self.steps:
                    values[dst] = self.layers[m](values[src] if srcs is None else [values[v] for v in srcs])
                outs = tuple(values[v] for v in self.outputs)
                return outs[0] if len(outs) == 1 else outs

        Graph.__module__, Graph.__qualname__ = "nnkit.export.pytorch", "Graph"
        _GRAPH["Graph"] = Graph
    return _GRAPH["Graph"]


_GRAPH: dict = {}


def layers_from_torch(module):
    """``(layers, state, dtype)`` for an ``nn.Sequential`` of modules some nnkit layer takes: nnkit layers
    (without weights), their weights and running statistics keyed like ``Sequential.state_dict()``, and the
    module's parameter dtype (``"float64"`` when any parameter is float64, else ``"float32"``).  Used by
    :meth:`nnkit.Sequential.from_torch`."""
    torch = _torch()
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"from_torch takes a torch.nn.Sequential, got {type(module).__name__}")
    if len(module) == 0:
        raise ValueError("from_torch: the nn.Sequential is empty")
    owners, built = {}, []  # id(a Parameter) -> the index of the first module holding it
    for i, m in enumerate(module):
        shared = {name: owners[id(p)] for name, p in m.named_parameters(recurse=False) if id(p) in owners}
        built.append(_tied_from_module(torch, m, shared, str(i)) if shared else _from_module(torch, m, str(i)))
        for p in m.parameters():
            owners.setdefault(id(p), i)
    dtype = "float64" if torch.float64 in {p.dtype for p in module.parameters()} else "float32"
    state = {}
    for i, (_, params, buffers) in enumerate(built):
        state.update({f"{i}.{k}": v for k, v in {**params, **buffers}.items()})
    return [layer for layer, _, _ in built], state, dtype
