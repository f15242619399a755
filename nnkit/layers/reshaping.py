"""Reshaping layers: Flatten (B, *shape) → (B, Π shape) and Reshape (B, *in) → (B, *shape).

Neither changes a value, so each backward pass is the inverse reshape: dX = reshape(dY, X's shape).
"""
from __future__ import annotations

import math
import numbers

from .core import Layer, ShapeError, own_torch_class

__all__ = ["Flatten", "Reshape"]


class Flatten(Layer):
    """Y = X as rows: (B, C, *n) → (B, C·Π n) in C order (PyTorch's ``Flatten()``).  Backward: dX = reshape(dY)."""

    padding_refusal = ("it lays every position out as features, padding included; reduce each sequence to one "
                       "vector first: a recurrent layer with return_sequences=False, or SequencePool('mean'|'max')")

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        return (None if any(d is None for d in in_shape) else math.prod(in_shape),)

    def to_onnx(self, g, x):
        """``Flatten(axis=1)``."""
        return g.op("Flatten", [x], "flatten", axis=1)

    def to_torch(self, ctx):
        """``nn.Flatten()``."""
        return ctx.nn.Flatten()

    torch_modules = ("Flatten",)

    @classmethod
    def from_torch(cls, m, ctx):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ctx.refuse("nnkit's Flatten flattens everything after the batch (start_dim=1, end_dim=-1)")
        return cls(), {}, {}

    def forward(self, X, train=True):
        """Y = reshape(X, (B, -1)); keeps X's shape when training."""
        if train:
            self._cache = tuple(X.shape)
        return self.xp.reshape(X, (X.shape[0], -1))

    def backward(self, dY, need_dX=True):
        """dX = reshape(dY, X's shape)."""
        return self.xp.reshape(dY, self._cache)


def _reshape_torch_class(nn):
    """The PyTorch module class of nnkit's Reshape (``nnkit.export.pytorch.Reshape``)."""
    class Reshape(nn.Module):
        """y = x reshaped to (B, *shape), one entry may be −1 (nnkit's Reshape; ``Unflatten`` where no −1)."""

        def __init__(self, shape):
            super().__init__()
            self.shape = tuple(shape)

        def forward(self, x):
            """x as (B, *shape)."""
            return x.reshape((x.shape[0],) + self.shape)

    return Reshape


class Reshape(Layer):
    """Y = X reshaped to (B, *shape): e.g. ``Reshape((1, 40))`` turns a (B, 40) table row into a (B, 1, 40)
    signal (PyTorch's ``Unflatten(1, shape)``); one entry may be −1.  Backward: dX = reshape(dY, X's shape)."""

    def __init__(self, shape):
        super().__init__()
        if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
            shape = (shape,)
        try:
            shape = tuple(shape)
        except TypeError:
            shape = None
        if not shape or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or (d < 1 and d != -1)
                            for d in shape) or sum(d == -1 for d in shape) > 1:
            raise ValueError(f"Reshape needs a shape of positive sizes (one may be -1) without the batch, "
                             f"e.g. (1, 40), got {shape!r}")
        self.shape = tuple(int(d) for d in shape)

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if any(d is None for d in in_shape):
            return tuple(None if d == -1 else d for d in self.shape)
        size, known = math.prod(in_shape), math.prod(d for d in self.shape if d != -1)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ShapeError(f"cannot hold the {size} values of each example")
        return tuple(size // known if d == -1 else d for d in self.shape)

    def forward(self, X, train=True):
        """Y = reshape(X, (B, *shape))."""
        if train:
            self._cache = tuple(X.shape)
        return self.xp.reshape(X, (X.shape[0],) + self.shape)

    def backward(self, dY, need_dX=True):
        """dX = reshape(dY, X's shape)."""
        return self.xp.reshape(dY, self._cache)

    def to_onnx(self, g, x):
        """``Reshape([0, *shape])`` (0 keeps the batch size)."""
        return g.op("Reshape", [x, g.ints([0, *self.shape], "shape")], "reshape")

    @classmethod
    def torch_module(cls, nn):
        """``nnkit.export.pytorch.Reshape``: x as (B, *shape) with a −1 allowed (``nn.Unflatten`` takes none)."""
        return own_torch_class(cls, nn, _reshape_torch_class)

    def to_torch(self, ctx):
        """``nn.Unflatten(1, shape)``, or :meth:`torch_module` when the shape has a −1."""
        return ctx.nn.Unflatten(1, self.shape) if -1 not in self.shape else self.torch_module(ctx.nn)(self.shape)

    @classmethod
    def torch_classes(cls, nn):
        return (nn.Unflatten, cls.torch_module(nn))

    @classmethod
    def from_torch(cls, m, ctx):
        if isinstance(m, ctx.nn.Unflatten):
            if m.dim != 1:
                raise ctx.refuse("nnkit's Reshape reshapes everything after the batch (Unflatten(1, shape))")
            return cls(tuple(m.unflattened_size)), {}, {}
        return cls(m.shape), {}, {}

    def config(self):
        return {"type": type(self).__name__, "shape": list(self.shape)}

    def __repr__(self):
        return f"Reshape({self.shape!r})"

