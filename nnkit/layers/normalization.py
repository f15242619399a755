"""Normalisation layers, each backward pass derived by hand: BatchNorm (batch statistics, per channel) and
LayerNorm (per row, over the last axis).

Both normalise x̂ = (x − μ)/√(σ² + ε) and scale y = γ ⊙ x̂ + β with trained γ, β of shape (n,).  They differ
in what μ, σ² average over — the batch (per feature) or the features (per row) — and so in their Jacobians.
"""
from __future__ import annotations

import numbers

from .core import Layer, ShapeError, check_size

__all__ = ["BatchNorm", "LayerNorm"]


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be a small positive number, got {eps!r}")
    return float(eps)


class _Norm(Layer):
    """γ and β of shape (n,): γ starts at 1, β at 0."""

    param_names = ("gamma", "beta")

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.num_features = check_size("num_features", num_features)
        self.eps = _check_eps(eps)

    def build(self, backend, rng):
        super().build(backend, rng)
        xp, n = self.xp, self.num_features
        self.params = {"gamma": xp.ones((n,), dtype=backend.dtype, device=backend.device),
                       "beta": xp.zeros((n,), dtype=backend.dtype, device=backend.device)}

    def param_shapes(self):
        n = self.num_features
        return {**{name: (n,) for name in self.param_names}, **{name: (n,) for name in self.buffer_names}}

    def config(self):
        return {"type": type(self).__name__, "num_features": self.num_features, "eps": self.eps}

    def _backward(self, dY, need_dX, stat_axes, param_axes):
        """The two norms' shared backward: dβ = Σ dY, dγ = Σ dY⊙x̂ (over ``param_axes``: all but γ's own), and
        with g = dY⊙γ, dX = (s/m)(m·g − Σ g − x̂ ⊙ Σ g⊙x̂), the sums over ``stat_axes`` (m entries, kept):
        the batch and positions (BatchNorm) or the row's features (LayerNorm)."""
        xp = self.xp
        x_hat, s, gamma = self._cache
        dY = self.storage(dY)  # float32 under a mixed policy, like the forward statistics
        self.grads = {"gamma": xp.sum(dY * x_hat, axis=param_axes), "beta": xp.sum(dY, axis=param_axes)}
        if not need_dX:
            return None
        g = dY * gamma
        m = 1
        for a in stat_axes:
            m *= dY.shape[a]
        return self.compute((s / m) * (m * g - xp.sum(g, axis=stat_axes, keepdims=True)
                                       - x_hat * xp.sum(g * x_hat, axis=stat_axes, keepdims=True)))


class BatchNorm(_Norm):
    r"""Batch normalisation (Ioffe & Szegedy, 2015), per feature or per channel: X, Y (B, n) or (B, C, *spatial)
    (PyTorch's BatchNorm1d/2d), the statistics over the batch (and the positions).

    Training, with the statistics over the m = B·(positions) entries of each channel, μ = (1/m)Σ x and the
    *biased* σ² = (1/m)Σ (x − μ)²:

        x̂ = (x − μ)·s,  s = 1/√(σ² + ε),   y = γ ⊙ x̂ + β,

    and the running estimates (PyTorch's convention: the *unbiased* variance m/(m−1)·σ²)
    ``running_mean ← (1 − mom)·running_mean + mom·μ``, ``running_var ← (1 − mom)·running_var + mom·m/(m−1)·σ²``.
    Inference uses them: y = γ ⊙ (x − running_mean)/√(running_var + ε) + β.

    Backward through the batch statistics (μ and σ² depend on every entry of the channel), with
    g = dY ⊙ γ = ∂L/∂x̂ and Σ over the batch (and positions):

        dβ = Σ dY                       (n,)
        dγ = Σ dY ⊙ x̂                   (n,)
        dX = (s/m) ⊙ (m·g − Σ g − x̂ ⊙ Σ (g ⊙ x̂))      (shape of X)

    (from ∂x̂_b/∂x_c = s(δ_bc − 1/m) − s·x̂_b x̂_c/m).  Training needs m ≥ 2 (the unbiased variance).
    Buffers ``running_mean`` (0) and ``running_var`` (1) are saved, loaded and moved with the model
    and never trained.  In data-parallel ``fit`` each rank normalises with its own slice's statistics
    and updates its own running estimates (they are not synchronised); rank 0's are the ones saved.
    """

    buffer_names = ("running_mean", "running_var")
    padding_refusal = ("its statistics are per channel over the batch and every position, so the padding of "
                       "variable-length sequences would be averaged in with the data (and axis 1, the channels, "
                       "would be the time steps of (B, T, F)); normalise each position on its own with "
                       "LayerNorm(F), which keeps positions and never sees the padding")

    def __init__(self, num_features, momentum=0.1, eps=1e-5):
        super().__init__(num_features, eps)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)

    def build(self, backend, rng):
        super().build(backend, rng)
        xp, n = self.xp, self.num_features
        self.buffers = {"running_mean": xp.zeros((n,), dtype=backend.dtype, device=backend.device),
                        "running_var": xp.ones((n,), dtype=backend.dtype, device=backend.device)}

    def input_shape(self):
        return None  # (n,) for tables, (C, L) for signals, (C, H, W) for images: the rank is the data's

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if not in_shape or in_shape[0] not in (None, self.num_features):
            raise ShapeError(f"expects {self.num_features} features or channels on axis 1")
        return in_shape

    def _channel(self, v, ndim):
        """A (C,) vector shaped to broadcast along axis 1 of an ``ndim``-dimensional array."""
        return v if ndim == 2 else self.xp.reshape(v, (v.shape[0],) + (1,) * (ndim - 2))

    def forward(self, X, train=True):
        """Training: batch statistics (and the running estimates updated); inference: running estimates.
        Under a mixed policy X is cast up and the statistics, variances and y are computed in float32;
        y goes on in the compute dtype."""
        xp, nd = self.xp, X.ndim
        g, b = self._channel(self.params["gamma"], nd), self._channel(self.params["beta"], nd)
        X = self.storage(X)
        if not train:
            s = 1.0 / xp.sqrt(self._channel(self.buffers["running_var"], nd) + self.eps)
            return self.compute((X - self._channel(self.buffers["running_mean"], nd)) * (g * s) + b)
        axes = (0,) + tuple(range(2, nd))
        m = 1
        for a in axes:
            m *= X.shape[a]
        if m < 2:
            raise ValueError("BatchNorm in training needs at least 2 rows per batch (2 values per channel; got 1): "
                             "choose a batch size that leaves no last batch of one row, or use LayerNorm")
        mu = xp.mean(X, axis=axes, keepdims=True)
        centred = X - mu
        var = xp.mean(centred * centred, axis=axes, keepdims=True)
        s = 1.0 / xp.sqrt(var + self.eps)
        x_hat = centred * s
        mom = self.momentum
        n = self.num_features
        self.buffers["running_mean"] = (1.0 - mom) * self.buffers["running_mean"] + mom * xp.reshape(mu, (n,))
        self.buffers["running_var"] = (1.0 - mom) * self.buffers["running_var"] \
            + (mom * m / (m - 1)) * xp.reshape(var, (n,))
        self._cache = (x_hat, s, g)
        return self.compute(x_hat * g + b)

    def backward(self, dY, need_dX=True):
        """dβ = Σ dY, dγ = Σ dY⊙x̂, dX = (s/m)(m·g − Σ g − x̂ ⊙ Σ g⊙x̂) with g = dY⊙γ, Σ over the batch and
        positions (m entries a channel); shapes of X."""
        axes = (0,) + tuple(range(2, dY.ndim))
        return self._backward(dY, need_dX, axes, axes)

    def to_onnx(self, g, x):
        """``BatchNormalization`` with the running mean and variance (the inference form)."""
        return g.op("BatchNormalization", [x, g.param(self, "gamma"), g.param(self, "beta"),
                                           g.buffer(self, "running_mean"), g.buffer(self, "running_var")],
                    "batchnorm", epsilon=self.eps)

    def to_torch(self, ctx):
        """``nn.BatchNorm2d`` on (B, C, H, W) images, ``nn.BatchNorm1d`` on tables and signals (the same
        momentum convention), with the running statistics."""
        bn = ctx.nn.BatchNorm2d if ctx.rank == 3 else ctx.nn.BatchNorm1d
        m = bn(self.num_features, eps=self.eps, momentum=self.momentum, dtype=ctx.dtype)
        ctx.load(m.weight, self.params["gamma"])
        ctx.load(m.bias, self.params["beta"])
        ctx.load(m.running_mean, self.buffers["running_mean"])
        ctx.load(m.running_var, self.buffers["running_var"])
        return m

    torch_modules = ("BatchNorm1d", "BatchNorm2d")

    @classmethod
    def from_torch(cls, m, ctx):
        if not m.affine or not m.track_running_stats or m.momentum is None:
            raise ctx.refuse(f"{type(m).__name__} needs affine=True, track_running_stats=True and a momentum")
        return (cls(m.num_features, momentum=m.momentum, eps=m.eps),
                {"gamma": ctx.array(m.weight), "beta": ctx.array(m.bias)},
                {"running_mean": ctx.array(m.running_mean), "running_var": ctx.array(m.running_var)})

    def config(self):
        return {**super().config(), "momentum": self.momentum}


class LayerNorm(_Norm):
    r"""Layer normalisation (Ba, Kiros & Hinton, 2016) over the last axis's n features; X, Y (..., n) —
    (B, n) tables, or every position of (B, L, n) (PyTorch's ``LayerNorm(n)``).

    Per row: μ = (1/n)Σ_j x_j, σ² = (1/n)Σ_j (x_j − μ)², s = 1/√(σ² + ε), x̂ = (x − μ)·s,
    y = γ ⊙ x̂ + β — the same in training and inference (no running statistics).

    Backward, row by row, with g = dY ⊙ γ = ∂L/∂x̂ (sums over the row's features, kept as (..., 1)):

        dβ = Σ_rows dY,   dγ = Σ_rows dY ⊙ x̂              (n,)
        dX = (s/n) ⊙ (n·g − Σ_j g − x̂ ⊙ Σ_j (g ⊙ x̂))      (shape of X)
    """

    keeps_positions = True

    def input_shape(self):
        return (self.num_features,)

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if not in_shape or in_shape[-1] not in (None, self.num_features):
            raise ShapeError(f"expects {self.num_features} features on the last axis")
        return in_shape

    def forward(self, X, train=True):
        """y = γ ⊙ (x − μ_row)/√(σ²_row + ε) + β over the last axis.  Statistics in float32 under a mixed policy."""
        xp = self.xp
        X = self.storage(X)
        mu = xp.mean(X, axis=-1, keepdims=True)
        centred = X - mu
        s = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        x_hat = centred * s
        if train:
            self._cache = (x_hat, s, self.params["gamma"])
        return self.compute(x_hat * self.params["gamma"] + self.params["beta"])

    def backward(self, dY, need_dX=True):
        """dβ = Σ_rows dY, dγ = Σ_rows dY⊙x̂, dX = (s/n)(n·g − Σ_j g − x̂ ⊙ Σ_j g⊙x̂) with g = dY⊙γ."""
        return self._backward(dY, need_dX, (dY.ndim - 1,), tuple(range(dY.ndim - 1)))

    def to_onnx(self, g, x):
        """``LayerNormalization(axis=−1)``."""
        return g.op("LayerNormalization", [x, g.param(self, "gamma"), g.param(self, "beta")], "layernorm", axis=-1,
                    epsilon=self.eps)

    def to_torch(self, ctx):
        """``nn.LayerNorm(n)``."""
        m = ctx.nn.LayerNorm(self.num_features, eps=self.eps, dtype=ctx.dtype)
        ctx.load(m.weight, self.params["gamma"])
        ctx.load(m.bias, self.params["beta"])
        return m

    torch_modules = ("LayerNorm",)

    @classmethod
    def from_torch(cls, m, ctx):
        if len(m.normalized_shape) != 1 or not m.elementwise_affine or m.bias is None:
            raise ctx.refuse("LayerNorm needs one normalised dimension with weight and bias")
        return cls(m.normalized_shape[0], eps=m.eps), {"gamma": ctx.array(m.weight), "beta": ctx.array(m.bias)}, {}
