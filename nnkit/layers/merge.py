"""Merge layers: several tensors in, one out — ``Add``, ``Subtract``, ``Multiply``, ``Concatenate`` — each called
on a list in a graph (``nnkit.Add()([a, b])``), each backward pass returning the list of its inputs' gradients."""
from __future__ import annotations

from ..backends.functional import namespace_of
from .core import Layer, ShapeError, fmt_shape, own_torch_class

__all__ = ["Add", "Subtract", "Multiply", "Concatenate"]


class _TorchMerge(Layer):
    """A layer of several inputs in PyTorch: its own module (PyTorch has none), whose forward takes the list."""

    def explain_backward(self, report, i, dY, need_dX):
        """Each input's gradient dXⱼ (the class docstring derives them)."""
        dXs = self.backward(dY, need_dX=need_dX)
        for j, d in enumerate(dXs or ()):
            report.add(f"dX{j + 1} of layer {i}   [{report.tag(i, self)}]", d, f"dX{i}_{j + 1}")
        return dXs

    @classmethod
    def torch_module(cls, nn):
        """PyTorch has no module for it: ``nnkit.export.pytorch.<Name>``, whose forward takes the list of inputs."""
        return own_torch_class(cls, nn, lambda nn: _torch_merge(cls, nn))

    def to_torch(self, ctx):
        return self.torch_module(ctx.nn)(**{k: v for k, v in self.config().items() if k != "type"})

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        return cls(**getattr(m, "nnkit_config", {})), {}, {}


class _Merge(_TorchMerge):
    """A layer of several inputs of one shape: ``forward([X_1, ..., X_n])``, ``backward(dY) -> [dX_1, ...]``."""

    takes_list = True
    keeps_positions = True
    arity: int | None = None  # the number of inputs it takes (None: two or more)

    def output_shape(self, in_shapes):
        shapes = self._check_count(in_shapes)
        first = shapes[0]
        for s in shapes[1:]:
            if len(s) != len(first) or any(a is not None and b is not None and a != b for a, b in zip(first, s)):
                raise ShapeError(f"needs inputs of one shape; got {', '.join(fmt_shape(s) for s in shapes)}")
        return tuple(next((d for d in dims if d is not None), None) for dims in zip(*shapes))

    def _check_count(self, in_shapes):
        shapes = [tuple(s) for s in in_shapes] if isinstance(in_shapes, list) else None
        n = self.arity
        if shapes is None or len(shapes) < 2 or (n is not None and len(shapes) != n):
            want = f"{n}" if n is not None else "two or more"
            raise ShapeError(f"takes a list of {want} tensors")
        return shapes

    onnx_op: str | None = None  # the ONNX operator of the merge (Sum, Sub, Mul)

    def forward(self, Xs, train=True):
        raise NotImplementedError

    def to_onnx(self, g, xs):
        """One ONNX node over the inputs' tensors (``xs``, a list of names)."""
        return g.op(self.onnx_op, list(xs), type(self).__name__.lower())


def _torch_merge(layer_cls, nn):
    """The PyTorch module of a merge layer: its forward(xs) is the layer's own forward on the tensors, in their
    Array API namespace (autograd records it as PyTorch's own operations)."""

    class Merge(nn.Module):
        def __init__(self, **config):
            super().__init__()
            self.nnkit_config = config
            self.layer = layer_cls(**config)

        def forward(self, xs):
            xs = list(xs)
            self.layer.xp = namespace_of(xs[0])
            return self.layer.forward(xs, train=False)

    Merge.__name__ = layer_cls.__name__
    return Merge


class Add(_Merge):
    r"""Y = X₁ + X₂ + … + Xₙ (inputs of one shape).

    Backward: ∂Y/∂Xᵢ = I, so every input receives dY unchanged: dXᵢ = dY.
    """

    onnx_op = "Sum"

    def forward(self, Xs, train=True):
        Y = Xs[0]
        for X in Xs[1:]:
            Y = Y + X
        if train:
            self._cache = len(Xs)
        return Y

    def backward(self, dY, need_dX=True):
        """dXᵢ = dY for each of the n inputs."""
        return [dY] * self._cache if need_dX else None


class Subtract(_Merge):
    r"""Y = X₁ − X₂ (two inputs of one shape).

    Backward: dX₁ = dY, dX₂ = −dY.
    """

    arity = 2
    onnx_op = "Sub"

    def forward(self, Xs, train=True):
        return Xs[0] - Xs[1]

    def backward(self, dY, need_dX=True):
        """[dY, −dY]."""
        return [dY, -dY] if need_dX else None


class Multiply(_Merge):
    r"""Y = X₁ ⊙ X₂ ⊙ … ⊙ Xₙ, element-wise (inputs of one shape).

    Backward: ∂Y/∂Xᵢ = diag(Π_{j≠i} Xⱼ), so dXᵢ = dY ⊙ Π_{j≠i} Xⱼ (the inputs kept from the forward pass).
    """

    onnx_op = "Mul"

    def forward(self, Xs, train=True):
        Y = Xs[0]
        for X in Xs[1:]:
            Y = Y * X
        if train:
            self._cache = list(Xs)
        return Y

    def backward(self, dY, need_dX=True):
        """dXᵢ = dY ⊙ Π_{j≠i} Xⱼ."""
        Xs = self._cache
        if not need_dX:
            return None
        out = []
        for i in range(len(Xs)):
            d = dY
            for j, X in enumerate(Xs):
                if j != i:
                    d = d * X
            out.append(d)
        return out


class Concatenate(_TorchMerge):
    r"""Y = [X₁, X₂, …, Xₙ] joined along an axis.

    ``axis`` counts the batch-first arrays' axes: −1, the last, by default; the batch axis 0 cannot be joined; the
    other sizes are equal.

    Backward: Y's slices along the axis are the inputs, so dXᵢ is dY's slice of Xᵢ's extent.
    """

    takes_list = True
    keeps_positions = True

    def __init__(self, axis=-1):
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
            raise ValueError(f"Concatenate axis must be a non-zero integer (the batch axis 0 is not joined), got "
                             f"{axis!r}")
        self.axis = axis

    def _axis(self, rank):
        """The axis among the shape without the batch (rank ``rank``), or a ShapeError."""
        a = self.axis
        k = a - 1 if a > 0 else rank + a
        if not 0 <= k < rank:
            raise ShapeError(f"cannot join along axis {a}: its inputs have {rank + 1} axes with the batch")
        return k

    def output_shape(self, in_shapes):
        if not isinstance(in_shapes, list) or len(in_shapes) < 2:
            raise ShapeError("takes a list of two or more tensors")
        shapes = [tuple(s) for s in in_shapes]
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise ShapeError(f"needs inputs of one rank; got {', '.join(fmt_shape(s) for s in shapes)}")
        k = self._axis(rank)
        for d in range(rank):
            if d != k:
                sizes = {s[d] for s in shapes if s[d] is not None}
                if len(sizes) > 1:
                    raise ShapeError(f"needs equal sizes off the joined axis {self.axis}; got "
                                     f"{', '.join(fmt_shape(s) for s in shapes)}")
        joined = None if any(s[k] is None for s in shapes) else sum(s[k] for s in shapes)
        return tuple(joined if d == k else next((s[d] for s in shapes if s[d] is not None), None)
                     for d in range(rank))

    def forward(self, Xs, train=True):
        if train:
            self._cache = [int(X.shape[self.axis]) for X in Xs]
        return self.xp.concat(list(Xs), axis=self.axis)

    def backward(self, dY, need_dX=True):
        """dXᵢ = dY[..., offᵢ : offᵢ + nᵢ, ...] along the joined axis."""
        if not need_dX:
            return None
        axis = self.axis % dY.ndim
        out, start = [], 0
        for n in self._cache:
            index = [slice(None)] * dY.ndim
            index[axis] = slice(start, start + n)
            out.append(dY[tuple(index)])
            start += n
        return out

    def config(self):
        return {"type": "Concatenate", "axis": self.axis}

    def to_onnx(self, g, xs):
        """``Concat`` along the axis."""
        return g.op("Concat", list(xs), "concat", axis=self.axis)

