"""Normalisation layers, each backward pass derived by hand: BatchNorm (batch statistics) and LayerNorm (per row).

Both normalise x̂ = (x − μ)/√(σ² + ε) and scale y = γ ⊙ x̂ + β with trained γ, β of shape (n,).  They differ
in what μ, σ² average over — the batch (per feature) or the features (per row) — and so in their Jacobians.
"""
from __future__ import annotations

import numbers

from .core import Layer, check_size

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

    def _check_width(self, in_features):
        if in_features != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) gets {in_features} features")

    def build(self, backend, rng, in_features):
        super().build(backend, rng, in_features)
        self._check_width(in_features)
        xp, n = self.xp, self.num_features
        self.params = {"gamma": xp.ones((n,), dtype=backend.dtype, device=backend.device),
                       "beta": xp.zeros((n,), dtype=backend.dtype, device=backend.device)}
        return n

    def output_features(self, in_features):
        self._check_width(in_features)
        return self.num_features

    def param_shapes(self, in_features):
        self._check_width(in_features)
        n = self.num_features
        return {**{name: (n,) for name in self.param_names}, **{name: (n,) for name in self.buffer_names}}

    def config(self):
        return {"type": type(self).__name__, "num_features": self.num_features, "eps": self.eps}

    def _backward(self, dY, need_dX, axis):
        """The two norms' shared backward: dβ = Σ_b dY, dγ = Σ_b dY⊙x̂ (over the batch), and with
        g = dY⊙γ, dX = (s/m)(m·g − Σ g − x̂ ⊙ Σ g⊙x̂), the sums along ``axis`` (m entries): the batch
        (axis 0, BatchNorm) or the row's features (axis 1, LayerNorm)."""
        xp = self.xp
        x_hat, s = self._cache
        dY = self.storage(dY)  # float32 under a mixed policy, like the forward statistics
        self.grads = {"gamma": xp.sum(dY * x_hat, axis=0), "beta": xp.sum(dY, axis=0)}
        if not need_dX:
            return None
        g = dY * self.params["gamma"]
        m, keep = dY.shape[axis], axis == 1
        return self.compute((s / m) * (m * g - xp.sum(g, axis=axis, keepdims=keep)
                                       - x_hat * xp.sum(g * x_hat, axis=axis, keepdims=keep)))


class BatchNorm(_Norm):
    r"""Batch normalisation (Ioffe & Szegedy, 2015) over the batch, per feature; X, Y (B, n).

    Training, with batch statistics μ = (1/B)Σ_b x_b and the *biased* σ² = (1/B)Σ_b (x_b − μ)²:

        x̂ = (x − μ)·s,  s = 1/√(σ² + ε),   y = γ ⊙ x̂ + β,

    and the running estimates (PyTorch's convention: the *unbiased* variance B/(B−1)·σ²)
    ``running_mean ← (1 − m)·running_mean + m·μ``, ``running_var ← (1 − m)·running_var + m·B/(B−1)·σ²``.
    Inference uses them: y = γ ⊙ (x − running_mean)/√(running_var + ε) + β.

    Backward through the batch statistics (μ and σ² depend on every row), with g = dY ⊙ γ = ∂L/∂x̂:

        dβ = Σ_b dY                       (n,)
        dγ = Σ_b dY ⊙ x̂                   (n,)
        dX = (s/B) ⊙ (B·g − Σ_b g − x̂ ⊙ Σ_b (g ⊙ x̂))      (B, n)

    (from ∂x̂_b/∂x_c = s(δ_bc − 1/B) − s·x̂_b x̂_c/B).  Training needs B ≥ 2 (the unbiased variance).
    Buffers ``running_mean`` (0) and ``running_var`` (1) are saved, loaded and moved with the model
    and never trained.  In data-parallel ``fit`` each rank normalises with its own slice's statistics
    and updates its own running estimates (they are not synchronised); rank 0's are the ones saved.
    """

    buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features, momentum=0.1, eps=1e-5):
        super().__init__(num_features, eps)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)

    def build(self, backend, rng, in_features):
        n = super().build(backend, rng, in_features)
        xp = self.xp
        self.buffers = {"running_mean": xp.zeros((n,), dtype=backend.dtype, device=backend.device),
                        "running_var": xp.ones((n,), dtype=backend.dtype, device=backend.device)}
        return n

    def forward(self, X, train=True):
        """Training: batch statistics (and the running estimates updated); inference: running estimates.
        Under a mixed policy X is cast up and the statistics, variances and y are computed in float32;
        y goes on in the compute dtype."""
        xp, g, b = self.xp, self.params["gamma"], self.params["beta"]
        X = self.storage(X)
        if not train:
            s = 1.0 / xp.sqrt(self.buffers["running_var"] + self.eps)
            return self.compute((X - self.buffers["running_mean"]) * (g * s) + b)
        B = X.shape[0]
        if B < 2:
            raise ValueError("BatchNorm in training needs at least 2 rows per batch (got 1): choose a batch "
                             "size that leaves no last batch of one row, or use LayerNorm")
        mu = xp.mean(X, axis=0)
        centred = X - mu
        var = xp.mean(centred * centred, axis=0)
        s = 1.0 / xp.sqrt(var + self.eps)
        x_hat = centred * s
        m = self.momentum
        self.buffers["running_mean"] = (1.0 - m) * self.buffers["running_mean"] + m * mu
        self.buffers["running_var"] = (1.0 - m) * self.buffers["running_var"] + (m * B / (B - 1)) * var
        self._cache = (x_hat, s)
        return self.compute(x_hat * g + b)

    def backward(self, dY, need_dX=True):
        """dβ = Σ_b dY, dγ = Σ_b dY⊙x̂, dX = (s/B)(B·g − Σ_b g − x̂ ⊙ Σ_b g⊙x̂) with g = dY⊙γ; (B, n)."""
        return self._backward(dY, need_dX, axis=0)

    def config(self):
        return {**super().config(), "momentum": self.momentum}


class LayerNorm(_Norm):
    r"""Layer normalisation (Ba, Kiros & Hinton, 2016) over each row's n features; X, Y (B, n).

    Per row: μ = (1/n)Σ_j x_j, σ² = (1/n)Σ_j (x_j − μ)², s = 1/√(σ² + ε), x̂ = (x − μ)·s,
    y = γ ⊙ x̂ + β — the same in training and inference (no running statistics).

    Backward, row by row, with g = dY ⊙ γ = ∂L/∂x̂ (sums over the row's features, kept as (B, 1)):

        dβ = Σ_b dY,   dγ = Σ_b dY ⊙ x̂              (n,)
        dX = (s/n) ⊙ (n·g − Σ_j g − x̂ ⊙ Σ_j (g ⊙ x̂))      (B, n)
    """

    def forward(self, X, train=True):
        """y = γ ⊙ (x − μ_row)/√(σ²_row + ε) + β; shapes (B, n).  Statistics in float32 under a mixed policy."""
        xp = self.xp
        X = self.storage(X)
        mu = xp.mean(X, axis=1, keepdims=True)
        centred = X - mu
        s = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=1, keepdims=True) + self.eps)
        x_hat = centred * s
        if train:
            self._cache = (x_hat, s)
        return self.compute(x_hat * self.params["gamma"] + self.params["beta"])

    def backward(self, dY, need_dX=True):
        """dβ = Σ_b dY, dγ = Σ_b dY⊙x̂, dX = (s/n)(n·g − Σ_j g − x̂ ⊙ Σ_j g⊙x̂) with g = dY⊙γ; (B, n)."""
        return self._backward(dY, need_dX, axis=1)
