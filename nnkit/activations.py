"""Element-wise and row-wise activations, each with its derivative beside it.

A = f(Z) with Z, A of shape (B, n).  ``backward(dA)`` returns
dZ = ∂L/∂Z = f'(Z) ⊙ dA (⊙: element-wise product) — except ``Softmax``, whose
Jacobian couples the units of a row and is applied as a batched
Jacobian-vector product.
"""
from __future__ import annotations

import numbers

from . import functional as F
from .layers import Layer

__all__ = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax", "Identity", "ACTIVATIONS", "get_activation"]


class Sigmoid(Layer):
    """A = σ(Z) = 1/(1+e^{−Z}) (stable for any Z).  Backward: dZ = dA ⊙ A ⊙ (1 − A)."""

    def forward(self, Z, train=True):
        """A = σ(Z); shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        A = F.sigmoid(self.xp, Z)
        if train:
            self._cache = A
        return A

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ A ⊙ (1 − A), shapes (B, n)."""
        A = self._cache
        return dA * (A * (1.0 - A))


class Tanh(Layer):
    """A = tanh(Z).  Backward: dZ = dA ⊙ (1 − A²)."""

    def forward(self, Z, train=True):
        """A = tanh(Z); shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        A = self.xp.tanh(Z)
        if train:
            self._cache = A
        return A

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ (1 − A²), shapes (B, n)."""
        A = self._cache
        return dA * (1.0 - A * A)


class ReLU(Layer):
    """A = max(Z, 0).  Backward: dZ = dA ⊙ [Z > 0] (the subgradient 0 at Z = 0).

    The indicator [Z > 0] is kept as a 0/1 array of Z's dtype: the backward pass is one
    multiplication (``where`` is ~20× slower on NumPy).
    """

    def forward(self, Z, train=True):
        """A = max(Z, 0); shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        xp = self.xp
        if train:
            self._cache = xp.astype(Z > 0, Z.dtype)
        return xp.maximum(Z, 0.0)

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ [Z > 0]; shapes (B, n)."""
        return dA * self._cache


class LeakyReLU(Layer):
    """A = Z for Z > 0, α·Z otherwise, i.e. max(Z, α·Z) for 0 ≤ α < 1.

    Backward: dZ = dA ⊙ s with the slope s = α + (1 − α)·[Z > 0] (1 where Z > 0, else α).
    """

    def __init__(self, alpha=0.01):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha < 1.0:
            raise ValueError(f"LeakyReLU alpha must be a number in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, Z, train=True):
        """A = max(Z, α·Z); shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        xp = self.xp
        if train:
            self._cache = (1.0 - self.alpha) * xp.astype(Z > 0, Z.dtype) + self.alpha
        return xp.maximum(Z, self.alpha * Z)

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ s, s = α + (1 − α)·[Z > 0]; shapes (B, n)."""
        return dA * self._cache

    def config(self):
        return {"type": "LeakyReLU", "alpha": self.alpha}


class Softmax(Layer):
    """A_k = e^{Z_k} / Σ_j e^{Z_j} per row (stable).

    Backward: the Jacobian of one row is ∂A_k/∂Z_j = A_k(δ_kj − A_j), so the
    batched Jacobian-vector product is

        dZ = A ⊙ (dA − Σ_k (dA ⊙ A)_k)      (row sums kept as (B, 1)), shapes (B, n).

    For classification, feed logits to ``CrossEntropy`` instead of ending the
    model in Softmax: the pair's gradient is simply softmax(Z) − y.
    """

    def forward(self, Z, train=True):
        """A = softmax(Z) per row; shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        A = F.softmax(self.xp, Z)
        if train:
            self._cache = A
        return A

    def backward(self, dA, need_dX=True):
        """dZ = A ⊙ (dA − rowsum(dA ⊙ A)), shapes (B, n)."""
        A = self._cache
        return A * (dA - self.xp.sum(dA * A, axis=1, keepdims=True))


class Identity(Layer):
    """A = Z.  Backward: dZ = dA."""

    def forward(self, Z, train=True):
        """A = Z; shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        return Z

    def backward(self, dA, need_dX=True):
        """dZ = dA."""
        return dA


ACTIVATIONS = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "softmax": Softmax,
    "identity": Identity,
    "linear": Identity,
}


def get_activation(name):
    """An activation layer from its name (``"relu"``, ``"tanh"``, ...)."""
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}: expected one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None
