r"""Convolution: the batched matrix calculus of Dense, over unfolded patches (im2col).

Channels first, as in PyTorch: a signal is X (B, C, L), an image X (B, C, H, W).  A convolution with O
output channels and kernel k (k_h × k_w in 2-D) has W (O, C, *k) and b (O,) — PyTorch's own layout, so the
weights map one to one.

**Unfolding.**  Pad X with p zeros on each side of every spatial axis; each output position t reads the
patch X_p[:, :, t·s + j·d] for the kernel taps j = 0 … k−1 (stride s, dilation d).  Stacking the K = Π k
taps gives cols(X) of shape (B, C·K, P), P = Π out positions, out = ⌊(n + 2p − d(k − 1) − 1)/s⌋ + 1 along
each axis.  Written against the Array API: strided slices of the padded input, stacked (no
``as_strided``, which the standard does not have).

**Forward.**  With W₂ = W reshaped to (O, C·K):

    Z = W₂·cols(X) + b          (B, O, P) → (B, O, *out)

**Backward** (the Dense derivation, per batch element, summed over the batch):

    dW₂ = Σ_b dZ_b·cols(X)_bᵀ               (O, C·K)  → reshaped to W's (O, C, *k)
    db  = Σ_b Σ_positions dZ                (O,)
    dX  = col2im(W₂ᵀ·dZ)                    (B, C, *n)

col2im is the adjoint of the unfolding: every tap's gradient goes back to the input position it was
read from, and where patches overlap (stride < kernel) the contributions add up.  It is written as a sum
over the taps of the tap's gradient spread out by the stride and shifted by its offset (zeros between
and around), then the padding cut off — again only array-API operations.

**Groups.**  With ``groups`` g, W is (O, C/g, *k) and output group j sees input group j only: g convolutions
side by side, each of the sums above group j's own over its slices.

**Transposed convolution** (``ConvTranspose1D/2D``).  Its forward pass is the col2im above with the input in
dZ's place, Y = col2im(W₂ᵀ·X) + b — the adjoint of a convolution — so its backward pass is that convolution
read the other way round: dX = W₂·cols(dY) (the convolution of dY), dW₂ = Σ_b X_b·cols(dY)_bᵀ, db = Σ dY.
"""
from __future__ import annotations

import math
import numbers

from ..backends import functional as F
from .init import get_initializer
from ..backends.conv import (GENERIC_KERNELS, PADDING_MODES, ConvKernels, conv_output_size, fold, pad_mode,
                             pad_mode_adjoint, unfold)
from .core import Layer, ShapeError, check_size

__all__ = ["Conv1D", "Conv2D", "ConvTranspose1D", "ConvTranspose2D", "unfold", "fold", "conv_output_size",
           "ConvKernels"]


def _ints(name, value, n, low):
    """``value`` as an n-tuple of ints >= ``low`` (an int is repeated), else a ValueError naming ``name``."""
    vals = (value,) * n if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    try:
        vals = tuple(vals)
    except TypeError:
        vals = ()
    if len(vals) != n or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low for v in vals):
        what = "an integer" if n == 1 else "an integer or a pair of integers"
        raise ValueError(f"{name} must be {what} >= {low}, got {value!r}")
    return tuple(int(v) for v in vals)


def _same_padding(kernel, stride, dilation):
    """(before, after): the padding that keeps a stride-1 output as long as its input (``padding="same"``, as
    PyTorch's and Keras's) — d(k − 1) entries on each axis, ⌊d(k − 1)/2⌋ before and the rest after (one more after
    where d(k − 1) is odd: an even kernel); a ValueError where the stride is not 1."""
    if set(stride) != {1}:
        raise ValueError(f"padding='same' needs stride 1, got stride={_short(stride)!r}: give the padding as numbers")
    reach = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return tuple(r // 2 for r in reach), tuple(r - r // 2 for r in reach)


def _short(values):
    """An n-tuple as one int when its entries agree (for reprs): (3, 3) → 3, (2, 3) → (2, 3)."""
    return values[0] if len(set(values)) == 1 else values


def _onnx_pad(g, x, before, after, mode):
    """ONNX nodes padding x (B, C, *n) by ``before[i]``/``after[i]`` entries on spatial axis i from its own entries:
    ``Pad`` in mode "reflect" or "edge" (replicate); circular as the last p entries and the first q concatenated
    around x."""
    if mode != "circular":
        pads = [0, 0] + list(before) + [0, 0] + list(after)
        return g.op("Pad", [x, g.ints(pads, "pads")], "padded", mode="reflect" if mode == "reflect" else "edge")
    for i, (p, q) in enumerate(zip(before, after)):
        if p or q:
            axis = g.ints([2 + i], "axis")
            last = [g.op("Slice", [x, g.ints([-p], "start"), g.ints([2 ** 62], "end"), axis], "wrap_last")] if p else []
            first = [g.op("Slice", [x, g.ints([0], "start"), g.ints([q], "end"), axis], "wrap_first")] if q else []
            x = g.op("Concat", last + [x] + first, "wrapped", axis=2 + i)
    return x


class _Conv(Layer):
    """Shared by Conv1D and Conv2D (``n`` spatial axes)."""

    n = 1
    param_names = ("W", "b")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", init="he_uniform"):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.in_channels = check_size("in_channels", in_channels)
        self.out_channels = check_size("out_channels", out_channels)
        self.kernel_size = _ints("kernel_size", kernel_size, self.n, 1)
        self.stride = _ints("stride", stride, self.n, 1)
        self.dilation = _ints("dilation", dilation, self.n, 1)
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an integer, {'a pair of integers, ' if self.n > 1 else ''}'same' or "
                             f"'valid', got {padding!r}")
        self.padding_text = padding if isinstance(padding, str) else None  # "same"/"valid" as given, for config()
        if self.padding_text == "same":  # padding before each axis; padding_after: after it (one more: even kernels)
            self.padding, self.padding_after = _same_padding(self.kernel_size, self.stride, self.dilation)
        else:
            self.padding = (0,) * self.n if self.padding_text == "valid" else _ints("padding", padding, self.n, 0)
            self.padding_after = self.padding
        self.groups = check_size("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels "
                             f"({out_channels}): each group maps in_channels/groups inputs to out_channels/groups "
                             "outputs")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self.bias = bias
        if not bias:
            self.param_names = ("W",)
        self._init_fn = get_initializer(init)
        self.init = init

    @property
    def _fan_in(self):
        return self.in_channels // self.groups * math.prod(self.kernel_size)

    def _weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    def _weights_from(self, M):
        """W from the initialiser's (C/g·K, O) matrix, whose column o holds output o's weights (a Dense from one
        group's patch): W₂ = Mᵀ."""
        return M.T.reshape(self._weight_shape())

    def build(self, backend, rng):
        super().build(backend, rng)
        O, CK = self.out_channels, self._fan_in
        M = backend.host_float64(self._init_fn(rng, CK, O))
        if tuple(M.shape) != (CK, O):
            raise ValueError(f"initializer {self.init!r} returned shape {tuple(M.shape)}, expected {(CK, O)}")
        self.params = {"W": backend.asarray(self._weights_from(M).copy(), dtype=backend.dtype)}
        if self.bias:
            self.params["b"] = self.xp.zeros((O,), dtype=backend.dtype, device=backend.device)

    def param_shapes(self):
        shapes = {"W": self._weight_shape(), "b": (self.out_channels,)}
        return {name: shapes[name] for name in self.param_names}

    def input_shape(self):
        return (self.in_channels,) + (None,) * self.n

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 1 + self.n or in_shape[0] not in (None, self.in_channels):
            form = "(B, C, L)" if self.n == 1 else "(B, C, H, W)"
            raise ShapeError(f"expects {form} inputs with C = {self.in_channels} channels")
        return (self.out_channels,) + tuple(None if n is None else self._length(i, n)
                                            for i, n in enumerate(in_shape[1:]))

    def _length(self, i, n):
        """The output's length along spatial axis i from the input's n (a ShapeError below 1)."""
        k, s, p, d = self.kernel_size[i], self.stride[i], self.padding[i], self.dilation[i]
        q = self.padding_after[i]
        m = conv_output_size(n, k, s, p, d, q)
        if m < 1:
            raise ShapeError(f"reaches over {d * (k - 1) + 1} positions, more than the padded input's {n + p + q}")
        if (self.padding_mode == "reflect" and max(p, q) >= n) or (self.padding_mode == "circular" and max(p, q) > n):
            bound = "below" if self.padding_mode == "reflect" else "at most"
            raise ShapeError(f"pads {max(p, q)} positions with padding_mode={self.padding_mode!r}, which needs the "
                             f"padding {bound} the input's length, {n}")
        return m

    @property
    def _pads_itself(self):
        """Whether the layer pads X before the kernels (which then pad nothing): under a ``padding_mode`` other
        than zeros (X's own entries), or where the padding after an axis differs from the padding before it
        (``padding="same"`` with an even kernel; the kernels pad both sides alike)."""
        return self.padding != self.padding_after or (self.padding_mode != "zeros" and any(self.padding))

    def _padded(self, X):
        """(X, the kernels' padding): X padded first where the layer pads itself (:func:`pad_mode`), and no padding
        for the kernels; else X as it is and the zero padding for the kernels."""
        if not self._pads_itself:
            return X, self.padding
        return pad_mode(self.xp, X, self.padding, self.padding_after, self.padding_mode), (0,) * self.n

    def forward(self, X, train=True):
        """Z = W₂·cols(X) + b: X (B, C, *n) → Z (B, O, *out), W₂ = W as (O, C·K) in the compute dtype (with
        groups, group j's O/g outputs from its C/g inputs: Z_j = W₂ⱼ·cols(X_j) + b_j) — the sums by the backend's
        convolution kernels (``xp.conv_kernels``) where it has them, the unfolding and one GEMM otherwise
        (:class:`ConvKernels`).  Keeps what the backward pass needs when training."""
        xp = self.xp
        kernels = F.own_kernel(xp, "conv_kernels") or GENERIC_KERNELS
        W = self.compute(self.params["W"])
        b = self.compute(self.params["b"]) if self.bias else None
        X, padding = self._padded(X)
        Z, saved = kernels.forward(xp, X, W, self.stride, padding, self.dilation, b, groups=self.groups)
        if train:
            self._cache = (kernels, saved, W, padding)
        return Z

    def backward(self, dZ, need_dX=True):
        """dW = X ⋆ dZ (the correlation: dW₂ = Σ_b dZ_b·cols_bᵀ) (O, C/g, *k), db = Σ_b Σ_positions dZ (O,),
        dX = dZ ⊛ᵀ W (the transposed convolution: col2im(W₂ᵀ·dZ)) (B, C, *n) — with groups, each group's from its
        own slices (dW_j = X_j ⋆ dZ_j, dX_j = dZ_j ⊛ᵀ W_j), side by side.  Under a ``padding_mode`` other than zeros
        the padding is X's own entries, so dX is the padded input's gradient sent back through the padding's adjoint
        (:func:`pad_mode_adjoint`: each padding entry's gradient added to the entry it copied; zeros padded
        unevenly — an even kernel's "same" — are constants: their gradient is dropped)."""
        kernels, saved, W, padding = self._cache
        dW, db, dX = kernels.backward(self.xp, saved, dZ, W, self.stride, padding, self.dilation, need_dX,
                                      groups=self.groups)
        self.grads = {"W": dW, "b": db} if self.bias else {"W": dW}
        if dX is not None and self._pads_itself:
            dX = pad_mode_adjoint(self.xp, dX, self.padding, self.padding_after, self.padding_mode)
        return dX

    onnx_op = "Conv"  # ONNX's operator; the PyTorch module: ``torch_modules`` (nn.Conv1d, nn.Conv2d, ...)

    def _settings(self):
        """The geometry PyTorch's module takes besides the channels, kernel and bias, by PyTorch's names."""
        return dict(stride=self.stride, padding=self.padding_text or self.padding, dilation=self.dilation,
                    groups=self.groups, padding_mode=self.padding_mode)

    @staticmethod
    def _settings_of(m):
        """:meth:`_settings` read from a PyTorch module."""
        return dict(stride=tuple(m.stride), padding=m.padding if isinstance(m.padding, str) else tuple(m.padding),
                    dilation=tuple(m.dilation), groups=m.groups, padding_mode=m.padding_mode)

    def to_onnx(self, g, x):
        """ONNX's ``Conv``/``ConvTranspose`` (W in the same layout; pads, strides, dilations, group)."""
        before, after = list(self.padding), list(self.padding_after)  # ONNX pads: every axis's start, then ends
        if self.padding_mode != "zeros" and any(before + after):  # padded by its own entries first, then no pads
            x, before, after = _onnx_pad(g, x, before, after, self.padding_mode), [0] * self.n, [0] * self.n
        inputs = [x, g.param(self, "W")] + ([g.param(self, "b")] if self.bias else [])
        return g.op(self.onnx_op, inputs, self.onnx_op.lower(), kernel_shape=list(self.kernel_size),
                    strides=list(self.stride), pads=before + after, dilations=list(self.dilation), group=self.groups,
                    **self._onnx_attributes())

    def _onnx_attributes(self):
        """The operator's attributes besides the geometry both operators share (none for ``Conv``)."""
        return {}

    def to_torch(self, ctx):
        """``nn.Conv1d/2d`` (``nn.ConvTranspose1d/2d``), W in the same layout."""
        module = getattr(ctx.nn, self.torch_modules[0])
        m = module(self.in_channels, self.out_channels, self.kernel_size, bias=self.bias, dtype=ctx.dtype,
                   **self._settings())
        ctx.load(m.weight, self.params["W"])
        if self.bias:
            ctx.load(m.bias, self.params["b"])
        return m

    @classmethod
    def from_torch(cls, m, ctx):
        bias = m.bias is not None
        try:
            layer = cls(m.in_channels, m.out_channels, tuple(m.kernel_size), bias=bias, **cls._settings_of(m))
        except ValueError as e:
            raise ctx.refuse(str(e)) from None
        return layer, {"W": ctx.array(m.weight), **({"b": ctx.array(m.bias)} if bias else {})}, {}

    def config(self):
        one = (lambda v: v[0]) if self.n == 1 else (lambda v: list(v))
        cfg = {"type": type(self).__name__, "in_channels": self.in_channels, "out_channels": self.out_channels,
               "kernel_size": one(self.kernel_size), "stride": one(self.stride),
               "padding": self.padding_text or one(self.padding),
               "dilation": one(self.dilation)}
        if self.groups != 1:
            cfg["groups"] = self.groups
        if self.padding_mode != "zeros":
            cfg["padding_mode"] = self.padding_mode
        if not self.bias:
            cfg["bias"] = False
        if isinstance(self.init, str) and self.init != "he_uniform":
            cfg["init"] = self.init
        return cfg

    def _shown(self):
        """``{argument: (value, default)}`` for the repr, in the constructor's order."""
        return {"stride": (_short(self.stride), 1), "padding": (self.padding_text or _short(self.padding), 0),
                "dilation": (_short(self.dilation), 1), "groups": (self.groups, 1), "bias": (self.bias, True),
                "padding_mode": (self.padding_mode, "zeros")}

    def __repr__(self):
        extra = "".join(f", {name}={value!r}" for name, (value, default) in self._shown().items()
                        if value != default and value != "valid")
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, {_short(self.kernel_size)!r}{extra})"


class Conv1D(_Conv):
    r"""1-D convolution (cross-correlation, as PyTorch's ``Conv1d``) over signals X (B, C, L).

    ``Conv1D(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
    padding_mode="zeros", init="he_uniform")``; W (out_channels, in_channels/groups, k), b (out_channels,) (none
    with ``bias=False``);
    output (B, O, L_out), L_out = ⌊(L + 2p − d(k − 1) − 1)/s⌋ + 1 (``padding="same"``: L_out = L, stride 1 only,
    ⌊d(k − 1)/2⌋ before and the rest after — one more after for an even kernel, as PyTorch's; ``"valid"``:
    p = 0).  ``groups`` g splits the channels into g groups, output group j seeing only input group j
    (``groups=in_channels``: a depthwise convolution), as PyTorch's ``groups``; ``padding_mode`` "reflect",
    "replicate" or "circular" pads X with its own entries (:func:`pad_mode`), as PyTorch's.

    Z = W₂·cols(X) + b with cols(X) (B, C·k, L_out) the unfolded patches;
    dW₂ = Σ_b dZ_b·cols_bᵀ, db = Σ dZ over batch and positions, dX = col2im(W₂ᵀ·dZ), the adjoint of the
    unfolding (overlapping patches add up).  See :mod:`nnkit.layers.convolutional`.
    """

    n = 1
    torch_modules = ("Conv1d",)


class Conv2D(_Conv):
    r"""2-D convolution (cross-correlation, as PyTorch's ``Conv2d``) over images X (B, C, H, W).

    ``Conv2D(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
    padding_mode="zeros", init="he_uniform")``, each of kernel_size/stride/padding/dilation an int or an (h, w)
    pair; W (O, C/g, k_h, k_w), b (O,) (none with ``bias=False``); output (B, O, H_out, W_out) with
    H_out = ⌊(H + 2p_h − d_h(k_h − 1) − 1)/s_h⌋ + 1 (W_out alike); ``padding="same"``/``"valid"``, ``groups`` g
    and ``padding_mode`` as in :class:`Conv1D` (``groups=in_channels``: depthwise).

    Z = W₂·cols(X) + b with cols(X) (B, C·k_h·k_w, H_out·W_out);
    dW₂ = Σ_b dZ_b·cols_bᵀ, db = Σ dZ over batch and positions, dX = col2im(W₂ᵀ·dZ).
    """

    n = 2
    torch_modules = ("Conv2d",)


class _ConvTranspose(_Conv):
    r"""Shared by ConvTranspose1D and ConvTranspose2D: the adjoint of a convolution as a layer of its own.

    With C = in_channels, O = out_channels and W (C, O/g, *k) — the weights of the convolution that maps O channels
    back to C, PyTorch's ``ConvTranspose`` layout — the forward pass is that convolution's input gradient:

        Y = X ⊛ᵀ W + b = col2im(W₂ᵀ·X) + b         X (B, C, *n) → Y (B, O, *out), W₂ = W as (C, O/g·K)

    out = (n − 1)·s − 2p + d(k − 1) + output_padding + 1 along each axis.  Since Y is linear in X through the adjoint,
    its backward pass is the convolution itself — the transposed pair read the other way round:

        dX = dY ⋆ W = W₂·cols(dY)                   (B, C, *n)    the convolution of dY
        dW = dY ⋆ X, i.e. Σ_b X_b·cols(dY)_bᵀ       (C, O/g, *k)  the convolution's weight gradient, with dY as its
                                                                  input and X as its output's gradient
        db = Σ dY over the batch and positions      (O,)

    (⟨X ⊛ᵀ W, dY⟩ = ⟨X, dY ⋆ W⟩ for every X and W: the adjoint identity, differentiated.)  The sums are the backend's
    convolution kernels (``transposed``, ``forward``, ``backward``), as for Conv1D/Conv2D.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", init="he_uniform"):
        if isinstance(padding, str):
            raise ValueError(f"padding must be an integer{' or a pair of integers' if self.n > 1 else ''} for a "
                             f"transposed convolution, got {padding!r}")
        if padding_mode != "zeros":  # PyTorch's ConvTranspose takes the argument and refuses the rest alike
            raise ValueError(f"padding_mode must be 'zeros' for a transposed convolution (its padding crops the "
                             f"output, it adds no entries to pad), got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, init=init)
        self.output_padding = _ints("output_padding", output_padding, self.n, 0)
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"output_padding must be smaller than the stride or the dilation, got "
                                 f"output_padding={_short(self.output_padding)!r}, stride={_short(self.stride)!r}, "
                                 f"dilation={_short(self.dilation)!r}")

    def _weight_shape(self):
        return (self.in_channels, self.out_channels // self.groups) + self.kernel_size

    def _weights_from(self, M):
        """W[j·C/g + c, o, t] = M[(c, t), j·O/g + o]: column j·O/g + o of the initialiser's (C/g·K, O) matrix holds
        output channel j·O/g + o's weights over group j's C/g channels."""
        C, O, g, K = self.in_channels, self.out_channels, self.groups, math.prod(self.kernel_size)
        return M.reshape(C // g, K, g, O // g).transpose(2, 0, 3, 1).reshape(self._weight_shape())

    def _length(self, i, n):
        """(n − 1)·s − 2p + d(k − 1) + output_padding + 1 (a ShapeError below 1)."""
        k, s, p, d = self.kernel_size[i], self.stride[i], self.padding[i], self.dilation[i]
        m = (n - 1) * s - 2 * p + d * (k - 1) + self.output_padding[i] + 1
        if m < 1:
            raise ShapeError(f"gives an output of {m} positions from {n}: the padding {p} cuts more than the "
                             f"{m + 2 * p} positions the windows reach")
        return m

    def forward(self, X, train=True):
        """Y = X ⊛ᵀ W + b = col2im(W₂ᵀ·X) + b: X (B, C, *n) → Y (B, O, *out) (the backend's ``transposed``
        kernel); keeps X when training."""
        xp = self.xp
        kernels = F.own_kernel(xp, "conv_kernels") or GENERIC_KERNELS
        W = self.compute(self.params["W"])
        out = self.output_shape(tuple(X.shape[1:]))[1:]
        Y = kernels.transposed(xp, X, W, out, self.stride, self.padding, self.dilation, groups=self.groups)
        if self.bias:
            Y = Y + xp.reshape(self.compute(self.params["b"]), (1, -1) + (1,) * self.n)
        if train:
            self._cache = (kernels, X, W)
        return Y

    def backward(self, dY, need_dX=True):
        """dX = dY ⋆ W (the convolution of dY: W₂·cols(dY)) (B, C, *n); dW = dY ⋆ X — the convolution's weight
        gradient with dY its input and X its output's gradient (Σ_b X_b·cols(dY)_bᵀ) — (C, O/g, *k);
        db = Σ dY over the batch and positions (O,)."""
        kernels, X, W = self._cache
        xp, geometry = self.xp, (self.stride, self.padding, self.dilation)
        dX, saved = kernels.forward(xp, dY, W, *geometry, None, groups=self.groups)
        dW = kernels.backward(xp, saved, X, W, *geometry, need_dX=False, groups=self.groups)[0]
        self.grads = {"W": dW}
        if self.bias:
            self.grads["b"] = xp.sum(dY, axis=(0,) + tuple(range(2, dY.ndim)))
        return dX if need_dX else None

    onnx_op = "ConvTranspose"

    def _settings(self):
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding, groups=self.groups,
                    dilation=self.dilation)

    @staticmethod
    def _settings_of(m):
        return dict(stride=tuple(m.stride), padding=tuple(m.padding), output_padding=tuple(m.output_padding),
                    groups=m.groups, dilation=tuple(m.dilation))

    def _onnx_attributes(self):
        return {"output_padding": list(self.output_padding)}

    def config(self):
        cfg = super().config()
        if set(self.output_padding) != {0}:
            cfg["output_padding"] = self.output_padding[0] if self.n == 1 else list(self.output_padding)
        return cfg

    def _shown(self):
        return {"stride": (_short(self.stride), 1), "padding": (_short(self.padding), 0),
                "output_padding": (_short(self.output_padding), 0), "groups": (self.groups, 1),
                "bias": (self.bias, True), "dilation": (_short(self.dilation), 1)}  # PyTorch's order


class ConvTranspose1D(_ConvTranspose):
    r"""1-D transposed convolution (as PyTorch's ``ConvTranspose1d``): the adjoint of a Conv1D, X (B, C, L) →
    Y (B, O, L_out), L_out = (L − 1)·s − 2p + d(k − 1) + output_padding + 1 — a strided one upsamples.

    ``ConvTranspose1D(in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
    bias=True, dilation=1, padding_mode="zeros", init="he_uniform")``; W (in_channels, out_channels/groups, k), b
    (out_channels,).

    Y = col2im(W₂ᵀ·X) + b; dX = W₂·cols(dY) (the convolution of dY), dW = Σ_b X_b·cols(dY)_bᵀ, db = Σ dY — see
    :class:`_ConvTranspose` for the derivation.
    """

    n = 1
    torch_modules = ("ConvTranspose1d",)


class ConvTranspose2D(_ConvTranspose):
    r"""2-D transposed convolution (as PyTorch's ``ConvTranspose2d``): the adjoint of a Conv2D, X (B, C, H, W) →
    Y (B, O, H_out, W_out), H_out = (H − 1)·s_h − 2p_h + d_h(k_h − 1) + output_padding_h + 1 (W_out alike).

    ``ConvTranspose2D(in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
    bias=True, dilation=1, padding_mode="zeros", init="he_uniform")``, each geometry argument an int or an (h, w)
    pair; W (C, O/g, k_h, k_w), b (O,).  Y = col2im(W₂ᵀ·X) + b; dX = W₂·cols(dY), dW = Σ_b X_b·cols(dY)_bᵀ,
    db = Σ dY.
    """

    n = 2
    torch_modules = ("ConvTranspose2d",)
