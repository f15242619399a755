r"""Pooling over the positions of signals (B, C, L) and images (B, C, H, W), through the same unfolding
as the convolutions (:func:`nnkit.layers.convolutional.unfold`): cols (B, C, K, *out), K the window size.

* ``MaxPool1D/2D``: Y = max_K cols, the padding is −∞ (never the maximum).  Backward: each window's
  gradient goes to **one** element, the window's first maximum in row-major order (on ties the earliest
  tap, as PyTorch's CPU kernel picks), dX = col2im(onehot(argmax) ⊙ dY).
* ``AvgPool1D/2D``: Y = (1/K) Σ_K cols with zero padding counted in K (PyTorch's default
  ``count_include_pad=True``).  Backward: dX = col2im(dY/K broadcast over the window).
* ``GlobalAvgPool``: Y = mean over all positions, (B, C, *n) → (B, C).  Backward: dX = dY/P everywhere.
"""
from __future__ import annotations

import math

from ..backends.conv import conv_output_size, fold, unfold
from .convolutional import _ints, _short
from .core import Layer, ShapeError, own_torch_class

__all__ = ["MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "GlobalAvgPool"]


class _Pool(Layer):
    n = 1

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _ints("kernel_size", kernel_size, self.n, 1)
        self.stride = self.kernel_size if stride is None else _ints("stride", stride, self.n, 1)
        self.padding = _ints("padding", padding, self.n, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding must be at most half the kernel size (as in PyTorch), got padding "
                             f"{padding!r} for kernel_size {kernel_size!r}")
        self._ones = (1,) * self.n

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 1 + self.n:
            form = "(B, C, L)" if self.n == 1 else "(B, C, H, W)"
            raise ShapeError(f"expects {form} inputs")
        out = []
        for n, k, s, p in zip(in_shape[1:], self.kernel_size, self.stride, self.padding):
            m = conv_output_size(n, k, s, p)
            if m is not None and m < 1:
                raise ShapeError(f"has a window of {k}, longer than the padded input's {n + 2 * p}")
            out.append(m)
        return (in_shape[0],) + tuple(out)

    def _cols(self, X, pad_value):
        return unfold(self.xp, X, self.kernel_size, self.stride, self.padding, self._ones, pad_value)

    def _fold(self, dcols, in_shape):
        return fold(self.xp, dcols, in_shape, self.kernel_size, self.stride, self.padding, self._ones)

    torch_kind: str | None = None  # "Max" or "Avg": nn.MaxPool1d, nn.AvgPool2d, ...

    def to_onnx(self, g, x):
        """``MaxPool``, or ``AveragePool(count_include_pad=1)``."""
        attrs = dict(kernel_shape=list(self.kernel_size), strides=list(self.stride), pads=list(self.padding) * 2)
        if self.torch_kind == "Avg":
            return g.op("AveragePool", [x], "avgpool", count_include_pad=1, **attrs)
        return g.op("MaxPool", [x], "maxpool", **attrs)

    def to_torch(self, ctx):
        """``nn.MaxPool1d/2d``, ``nn.AvgPool1d/2d(count_include_pad=True)``."""
        extra = {"count_include_pad": True} if self.torch_kind == "Avg" else {}
        return getattr(ctx.nn, f"{self.torch_kind}Pool{self.n}d")(self.kernel_size, stride=self.stride,
                                                                  padding=self.padding, **extra)

    @classmethod
    def torch_classes(cls, nn):
        return (getattr(nn, f"{cls.torch_kind}Pool{cls.n}d"),) if cls.torch_kind else ()

    @classmethod
    def from_torch(cls, m, ctx):
        if m.ceil_mode or getattr(m, "dilation", 1) not in (1, (1, 1)) or getattr(m, "return_indices", False) \
                or not getattr(m, "count_include_pad", True) or getattr(m, "divisor_override", None):
            raise ctx.refuse("nnkit's pools use floor mode, no dilation and (average) count_include_pad=True")
        return cls(m.kernel_size, stride=m.stride, padding=m.padding), {}, {}

    def config(self):
        one = (lambda v: v[0]) if self.n == 1 else (lambda v: list(v))
        return {"type": type(self).__name__, "kernel_size": one(self.kernel_size), "stride": one(self.stride),
                "padding": one(self.padding)}

    def __repr__(self):
        extra = "" if self.stride == self.kernel_size else f", stride={_short(self.stride)!r}"
        extra += "" if set(self.padding) == {0} else f", padding={_short(self.padding)!r}"
        return f"{type(self).__name__}({_short(self.kernel_size)!r}{extra})"


class _MaxPool(_Pool):
    torch_kind = "Max"

    def forward(self, X, train=True):
        """Y = max over each window (padding −∞); (B, C, *n) → (B, C, *out).  Keeps the argmax when training."""
        xp = self.xp
        cols = self._cols(X, -math.inf)
        if train:
            self._cache = (xp.argmax(cols, axis=2), cols.shape, tuple(X.shape[2:]))
        return xp.max(cols, axis=2)

    def backward(self, dY, need_dX=True):
        """dX = col2im(onehot(argmax) ⊙ dY): each window's gradient to its first maximum."""
        xp = self.xp
        idx, shape, in_shape = self._cache
        mask = xp.stack([xp.astype(idx == t, dY.dtype) for t in range(shape[2])], axis=2)  # onehot(argmax)
        return self._fold(mask * xp.expand_dims(dY, axis=2), in_shape)


class _AvgPool(_Pool):
    torch_kind = "Avg"

    def forward(self, X, train=True):
        """Y = (1/K) Σ over each window, zero padding counted; (B, C, *n) → (B, C, *out)."""
        cols = self._cols(X, 0.0)
        if train:
            self._cache = (cols.shape, tuple(X.shape[2:]))
        return self.xp.sum(cols, axis=2) * (1.0 / cols.shape[2])

    def backward(self, dY, need_dX=True):
        """dX = col2im(dY/K broadcast over the window's K taps)."""
        xp = self.xp
        shape, in_shape = self._cache
        dcols = xp.broadcast_to(xp.expand_dims(dY * (1.0 / shape[2]), axis=2), shape)
        return self._fold(dcols, in_shape)


class MaxPool1D(_MaxPool):
    """Max pooling over signals (B, C, L): ``MaxPool1D(kernel_size, stride=kernel_size, padding=0)``.
    Backward sends each window's gradient to its first maximum (see :mod:`nnkit.layers.pooling`)."""

    n = 1


class MaxPool2D(_MaxPool):
    """Max pooling over images (B, C, H, W): ``MaxPool2D(kernel_size, stride=kernel_size, padding=0)``, ints or
    (h, w) pairs.  Backward sends each window's gradient to its first maximum in row-major order."""

    n = 2


class AvgPool1D(_AvgPool):
    """Average pooling over signals (B, C, L): ``AvgPool1D(kernel_size, stride=kernel_size, padding=0)``, zero
    padding counted (PyTorch's ``count_include_pad=True``).  Backward: dX = col2im(dY/K)."""

    n = 1


class AvgPool2D(_AvgPool):
    """Average pooling over images (B, C, H, W): ``AvgPool2D(kernel_size, stride=kernel_size, padding=0)``, zero
    padding counted.  Backward: dX = col2im(dY/K)."""

    n = 2


def _global_avg_pool_torch_class(nn):
    """The PyTorch module class of nnkit's GlobalAvgPool (``nnkit.export.pytorch.GlobalAvgPool``)."""
    class GlobalAvgPool(nn.Module):
        """y = mean over every position: (B, C, *n) → (B, C) (nnkit's GlobalAvgPool)."""

        def forward(self, x):
            """The mean over the positions."""
            return x.mean(dim=tuple(range(2, x.dim())))

    return GlobalAvgPool


class GlobalAvgPool(Layer):
    """Y = mean over every position: (B, C, *n) → (B, C).  Backward: dX = dY/P broadcast over the P positions.

    Channels first, every position counted: for variable-length sequences (B, T, C) pool over time with
    ``SequencePool("mean")`` or ``SequencePool("max")``, which take the padding mask (this layer refuses it)."""

    padding_refusal = ("it averages every position of (B, C, *positions), padding included; pool sequences "
                       "(B, T, C) over their valid steps with SequencePool('mean') or SequencePool('max'), which "
                       "take the padding mask")

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) < 2:
            raise ShapeError("expects (B, C, L) or (B, C, H, W) inputs")
        return in_shape[:1]

    def forward(self, X, train=True):
        """Y_bc = (1/P) Σ_positions X_bc; keeps X's shape when training."""
        if train:
            self._cache = tuple(X.shape)
        return self.xp.mean(X, axis=tuple(range(2, X.ndim)))

    def backward(self, dY, need_dX=True):
        """dX = dY/P at every position."""
        xp, shape = self.xp, self._cache
        P = math.prod(shape[2:])
        return xp.broadcast_to(xp.reshape(dY * (1.0 / P), tuple(dY.shape) + (1,) * (len(shape) - 2)), shape)

    def to_onnx(self, g, x):
        """``GlobalAveragePool`` then ``Flatten``."""
        return g.op("Flatten", [g.op("GlobalAveragePool", [x])], "globalavgpool", axis=1)

    @classmethod
    def torch_module(cls, nn):
        """``nnkit.export.pytorch.GlobalAvgPool``: the mean over every position (PyTorch has no such module)."""
        return own_torch_class(cls, nn, _global_avg_pool_torch_class)

    def to_torch(self, ctx):
        """An instance of :meth:`torch_module`."""
        return self.torch_module(ctx.nn)()

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        return cls(), {}, {}
