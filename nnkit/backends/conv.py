r"""Convolution kernels: the unfolding (im2col), its adjoint (col2im) and the sums a convolution layer needs,
written once against the Array API — :class:`ConvKernels`, which each backend may replace by its library's own
(``xp.conv_kernels``: PyTorch's and XLA's convolutions, NumPy's batched unfolding) with the same numbers.

The derivation these sums implement is the layers' (:mod:`nnkit.layers.convolutional`): with cols(X) the
(B, C·K, P) unfolding of the padded input and W₂ = W reshaped to (O, C·K),

    Z = W₂·cols(X) + b,    dW₂ = Σ_b dZ_b·cols(X)_bᵀ,    db = Σ_b Σ_positions dZ,    dX = col2im(W₂ᵀ·dZ).
"""
from __future__ import annotations

import itertools
import math

__all__ = ["conv_output_size", "pad_mode", "pad_mode_adjoint", "unfold", "fold", "ConvKernels", "GENERIC_KERNELS",
           "PADDING_MODES"]


def conv_output_size(n, kernel, stride, padding, dilation=1, padding_after=None):
    """Output length along one axis: ⌊(n + p + q − d(k − 1) − 1)/s⌋ + 1 for p = ``padding`` before the input and
    q = ``padding_after`` after it (default p: ⌊(n + 2p − d(k − 1) − 1)/s⌋ + 1); None for an unknown n."""
    if n is None:
        return None
    q = padding if padding_after is None else padding_after
    return (n + padding + q - dilation * (kernel - 1) - 1) // stride + 1


def _filled(xp, like, axis, width, value=0.0):
    """An array shaped like ``like`` but ``width`` long on ``axis``, all ``value``, on ``like``'s device (made
    from ``like`` itself: traced arrays have no device to ask)."""
    one = like[(slice(None),) * axis + (slice(0, 1), ...)]
    shape = list(like.shape)
    shape[axis] = width
    return xp.broadcast_to(xp.full_like(one, value), tuple(shape))


def _pad(xp, X, padding, value=0.0):
    """X (B, C, *n) with ``padding[i]`` entries of ``value`` before and after spatial axis i."""
    for i, p in enumerate(padding):
        if p:
            fill = _filled(xp, X, 2 + i, p, value)
            X = xp.concat([fill, X, fill], axis=2 + i)
    return X


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _cut(X, axis, start, stop):
    return X[(slice(None),) * axis + (slice(start, stop), ...)]


def pad_mode(xp, X, before, after, mode):
    """X (B, C, *n) padded by ``before[i]`` entries before and ``after[i]`` after spatial axis i, as PyTorch's
    ``padding_mode``: "zeros" with 0s, or from X's own entries — "reflect" mirrors about the edge entry
    (x₁ x₀ | x₀ x₁ … → … x₂ x₁ | x₀ x₁ x₂), "replicate" repeats the edge entry, "circular" wraps around (the last
    p entries before, the first q after)."""
    for i, (p, q) in enumerate(zip(before, after)):
        if not p and not q:
            continue
        a, n = 2 + i, X.shape[2 + i]
        if mode == "zeros":
            lo, hi = _filled(xp, X, a, p), _filled(xp, X, a, q)
        elif mode == "reflect":
            lo, hi = xp.flip(_cut(X, a, 1, p + 1), axis=a), xp.flip(_cut(X, a, n - 1 - q, n - 1), axis=a)
        elif mode == "replicate":
            lo = xp.broadcast_to(_cut(X, a, 0, 1), X.shape[:a] + (p,) + X.shape[a + 1:])
            hi = xp.broadcast_to(_cut(X, a, n - 1, n), X.shape[:a] + (q,) + X.shape[a + 1:])
        else:  # circular
            lo, hi = _cut(X, a, n - p, n), _cut(X, a, 0, q)
        X = xp.concat([part for part, w in ((lo, p), (X, n), (hi, q)) if w], axis=a)
    return X


def pad_mode_adjoint(xp, G, before, after, mode):
    """The adjoint of :func:`pad_mode`: G (B, C, *(p + n + q)) → (B, C, *n), each padding entry's gradient added back
    to the entry it copied — "zeros": dropped (a constant); "reflect": G's before-block flipped onto x₁ … x_p (its
    after-block onto x_{n−1−q} … x_{n−2}); "replicate": each block's sum onto the edge entry; "circular": the
    before-block onto the last p entries, the after-block onto the first q.  Axes in the reverse order of the
    padding."""
    for i in reversed(range(len(before))):
        p, q = before[i], after[i]
        if not p and not q:
            continue
        a = 2 + i
        n = G.shape[a] - p - q
        lo, mid, hi = _cut(G, a, 0, p), _cut(G, a, p, p + n), _cut(G, a, p + n, p + n + q)

        def placed(block, start):  # block (width w) at [start, start + w) of a length-n axis, zeros elsewhere
            w = block.shape[a]
            parts = [_filled(xp, block, a, start)] if start else []
            parts += [block] + ([_filled(xp, block, a, n - start - w)] if n - start - w else [])
            return xp.concat(parts, axis=a) if len(parts) > 1 else block

        back = []  # (the block's gradient as it lands on the input, where it starts): zeros pad a constant, none
        if mode == "reflect":
            back = [(xp.flip(lo, axis=a), 1) if p else None, (xp.flip(hi, axis=a), n - 1 - q) if q else None]
        elif mode == "replicate":
            back = [(xp.sum(lo, axis=a, keepdims=True), 0) if p else None,
                    (xp.sum(hi, axis=a, keepdims=True), n - 1) if q else None]
        elif mode == "circular":
            back = [(lo, n - p) if p else None, (hi, 0) if q else None]
        for landed in back:
            if landed is not None:
                mid = mid + placed(*landed)
        G = mid
    return G


def _taps(kernel):
    """The kernel's tap offsets in row-major order (the order of W's kernel axes flattened)."""
    return list(itertools.product(*[range(k) for k in kernel]))


def unfold(xp, X, kernel, stride, padding, dilation, pad_value=0.0):
    """cols (B, C, K, *out): tap j of output position t is X_padded[..., t·s + j·d]; K = Π kernel."""
    Xp = _pad(xp, X, padding, pad_value)
    out = [conv_output_size(n, k, s, 0, d) for n, k, s, d in zip(Xp.shape[2:], kernel, stride, dilation)]
    taps = []
    for offs in _taps(kernel):
        idx = tuple(slice(o * d, o * d + s * (m - 1) + 1, s) for o, d, s, m in zip(offs, dilation, stride, out))
        taps.append(Xp[(slice(None), slice(None)) + idx])
    return xp.stack(taps, axis=2)


def fold(xp, cols, in_shape, kernel, stride, padding, dilation):
    """The adjoint of :func:`unfold`: cols (B, C, K, *out) → (B, C, *in_shape), overlapping taps added up."""
    out = cols.shape[3:]
    padded = [n + 2 * p for n, p in zip(in_shape, padding)]
    total = None
    for t, offs in enumerate(_taps(kernel)):
        piece = cols[:, :, t, ...]
        for i, (o, d, s, m, n) in enumerate(zip(offs, dilation, stride, out, padded)):
            axis = 2 + i
            if s > 1:  # spread by the stride: s − 1 zeros after every entry, the trailing ones cut
                piece = xp.stack([piece] + [xp.zeros_like(piece)] * (s - 1), axis=axis + 1)
                shape = list(piece.shape[:axis]) + [m * s] + list(piece.shape[axis + 2:])
                piece = xp.reshape(piece, tuple(shape))
                piece = piece[(slice(None),) * axis + (slice(0, s * (m - 1) + 1), ...)]
            before, after = o * d, n - o * d - (s * (m - 1) + 1)
            parts = []
            for width in (before, None, after):
                if width is None:
                    parts.append(piece)
                elif width:
                    parts.append(_filled(xp, piece, axis, width))
            piece = xp.concat(parts, axis=axis) if len(parts) > 1 else piece
        total = piece if total is None else total + piece
    crop = tuple(slice(p, p + n) for p, n in zip(padding, in_shape))
    return total[(slice(None), slice(None)) + crop]


class ConvKernels:
    """The convolution sums a layer needs, written against the Array API (the unfolding and one GEMM); a backend
    may put faster ones with the same numbers in its namespace as ``xp.conv_kernels`` (PyTorch's own
    convolution kernels, a NumPy-specific unfolding) — the layer's derivation does not change:

    * ``forward``: Z = W ⋆ X (+ b) (the cross-correlation) (B, O, *out), and what the backward pass keeps;
    * ``backward``: (dW, db, dX) — dW = X ⋆ dZ, the correlation of the input with the output's gradient
      (O, C/g, *k) (``grad_weight``); db = Σ dZ over the batch and positions (O,); dX = dZ ⊛ᵀ W, the transposed
      convolution of the gradient with the weights (B, C, *n) (``grad_input``), None unless asked for;
    * ``transposed``: Y = X ⊛ᵀ W for any X (B, O, *out) — backward's dX with X in dZ's place, the adjoint of the
      convolution — the forward pass of :class:`ConvTranspose1D`/:class:`ConvTranspose2D`.

    With ``groups`` g > 1 the channels split into g groups: output group j (its O/g channels) sees only input
    group j (its C/g channels) through W's rows of group j, W (O, C/g, *k) — g convolutions side by side, so
    each of the sums above is group j's own over its slices, and the results stand side by side again (Z and
    db along the output channels, dW along W's first axis, dX along the input channels).  Here that is
    literally g calls of the one-group kernels (``forward_one``/``backward_one``); NumPy's unfold all channels once
    and run the groups' products as one batched product, PyTorch's and XLA's kernels take the groups themselves.
    """

    def forward(self, xp, X, W, stride, padding, dilation, b=None, groups=1):
        """(Z (B, O, *out), saved): Z = W ⋆ X (+ b), by groups when ``groups`` > 1 (:meth:`forward_one` each)."""
        if groups == 1:
            return self.forward_one(xp, X, W, stride, padding, dilation, b)
        C, O = X.shape[1] // groups, W.shape[0] // groups
        parts = [self.forward_one(xp, X[:, j * C:(j + 1) * C, ...], W[j * O:(j + 1) * O, ...], stride, padding,
                                  dilation, None if b is None else b[j * O:(j + 1) * O]) for j in range(groups)]
        return xp.concat([Z for Z, _ in parts], axis=1), [saved for _, saved in parts]

    def backward(self, xp, saved, dZ, W, stride, padding, dilation, need_dX=True, groups=1):
        """(dW, db, dX) of the class docstring, group j's from dZ's channels of group j (:meth:`backward_one`
        each); dX None unless ``need_dX``."""
        if groups == 1:
            return self.backward_one(xp, saved, dZ, W, stride, padding, dilation, need_dX)
        O = W.shape[0] // groups
        parts = [self.backward_one(xp, saved[j], dZ[:, j * O:(j + 1) * O, ...], W[j * O:(j + 1) * O, ...], stride,
                                   padding, dilation, need_dX) for j in range(groups)]
        dW, db, dX = ([part[i] for part in parts] for i in range(3))
        return xp.concat(dW, axis=0), xp.concat(db, axis=0), (xp.concat(dX, axis=1) if need_dX else None)

    def transposed(self, xp, X, W, in_shape, stride, padding, dilation, groups=1):
        """Y = X ⊛ᵀ W (B, C, *in_shape) for X (B, O, *out), W (O, C/g, *k): the adjoint of the convolution of a
        (B, C, *in_shape) input — Y's channels of group j from X's channels of group j (:meth:`transposed_one`)."""
        if groups == 1:
            return self.transposed_one(xp, X, W, in_shape, stride, padding, dilation)
        O = W.shape[0] // groups
        return xp.concat([self.transposed_one(xp, X[:, j * O:(j + 1) * O, ...], W[j * O:(j + 1) * O, ...], in_shape,
                                              stride, padding, dilation) for j in range(groups)], axis=1)

    def transposed_one(self, xp, X, W, in_shape, stride, padding, dilation):
        """One group's X ⊛ᵀ W = col2im(W₂ᵀ·X) (B, C, *in_shape), W₂ = W as (O, C·K)."""
        B, O, out, kernel = X.shape[0], X.shape[1], tuple(X.shape[2:]), tuple(W.shape[2:])
        W2 = xp.reshape(W, (O, W.shape[1] * math.prod(kernel)))
        dcols = xp.reshape(W2.T @ xp.reshape(X, (B, O, math.prod(out))), (B, W.shape[1], math.prod(kernel)) + out)
        return self.fold(xp, dcols, in_shape, kernel, stride, padding, dilation)

    def unfold(self, xp, X, kernel, stride, padding, dilation):
        """cols (B, C·K, P) of X (B, C, *n)."""
        cols = unfold(xp, X, kernel, stride, padding, dilation)
        return xp.reshape(cols, (cols.shape[0], cols.shape[1] * cols.shape[2], math.prod(cols.shape[3:]))), \
            tuple(cols.shape[3:])

    def fold(self, xp, dcols, in_shape, kernel, stride, padding, dilation):
        """The adjoint of :meth:`unfold`: dcols (B, C, K, *out) → (B, C, *in_shape)."""
        return fold(xp, dcols, in_shape, kernel, stride, padding, dilation)

    def forward_one(self, xp, X, W, stride, padding, dilation, b=None):
        """One group's (Z (B, O, *out), saved): Z = W₂·cols(X) (+ b), W₂ = W as (O, C·K)."""
        O, kernel = W.shape[0], tuple(W.shape[2:])
        cols, out = self.unfold(xp, X, kernel, stride, padding, dilation)
        W2 = xp.reshape(W, (O, cols.shape[1]))
        Z = W2 @ cols
        if b is not None:
            Z = Z + xp.reshape(b, (O, 1))
        return xp.reshape(Z, (X.shape[0], O) + out), (cols, W2, tuple(X.shape[2:]))

    def backward_one(self, xp, saved, dZ, W, stride, padding, dilation, need_dX=True):
        """One group's (dW, db, dX) of the class docstring; dX None unless ``need_dX``."""
        dW = self.grad_weight(xp, saved, dZ, W, stride, padding, dilation)
        db = xp.sum(dZ, axis=(0,) + tuple(range(2, dZ.ndim)))
        return dW, db, (self.grad_input(xp, saved, dZ, W, stride, padding, dilation) if need_dX else None)

    def grad_weight(self, xp, saved, dZ, W, stride, padding, dilation):
        """dW₂ = Σ_b dZ_b·cols_bᵀ (O, C·K), as W's (O, C, *k)."""
        cols = saved[0]
        dZ3 = xp.reshape(dZ, (dZ.shape[0], dZ.shape[1], -1))
        return xp.reshape(xp.tensordot(dZ3, cols, axes=([0, 2], [0, 2])), tuple(W.shape))

    def grad_input(self, xp, saved, dZ, W, stride, padding, dilation):
        """dX = dZ ⊛ᵀ W = col2im(W₂ᵀ·dZ) (B, C, *n) (:meth:`transposed_one`)."""
        return self.transposed_one(xp, dZ, W, saved[2], stride, padding, dilation)


GENERIC_KERNELS = ConvKernels()
