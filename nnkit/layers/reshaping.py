"""Reshaping layers: Flatten (B, *shape) → (B, Π shape) and Reshape (B, *in) → (B, *shape).

Neither changes a value, so each backward pass is the inverse reshape: dX = reshape(dY, X's shape).
"""
from __future__ import annotations

import math
import numbers

from .core import Layer, ShapeError

__all__ = ["Flatten", "Reshape"]


class Flatten(Layer):
    """Y = X as rows: (B, C, *n) → (B, C·Π n) in C order (PyTorch's ``Flatten()``).  Backward: dX = reshape(dY)."""

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        return (None if any(d is None for d in in_shape) else math.prod(in_shape),)

    def forward(self, X, train=True):
        """Y = reshape(X, (B, -1)); keeps X's shape when training."""
        if train:
            self._cache = tuple(X.shape)
        return self.xp.reshape(X, (X.shape[0], -1))

    def backward(self, dY, need_dX=True):
        """dX = reshape(dY, X's shape)."""
        return self.xp.reshape(dY, self._cache)


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

    def config(self):
        return {"type": "Reshape", "shape": list(self.shape)}

    def __repr__(self):
        return f"Reshape({self.shape!r})"

