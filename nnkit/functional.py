"""Numerically stable building blocks written once for any array-API namespace.

The Array API standard has no ``sigmoid``, ``softmax`` or ``logsumexp``; the
naive formulas overflow for logits of a few hundred.  These versions never
exponentiate a positive number, so logits of +-1000 give finite results and no
warnings in float32 and float64.
"""
from __future__ import annotations

from typing import Any

import array_api_compat

__all__ = ["Array", "namespace_of", "device_of", "sigmoid", "softmax", "logsumexp", "softplus"]

Array = Any  # an array of any array-API library (NumPy, CuPy, torch, JAX, ...): the type hints' name for one

_NAMESPACES: dict[type, object] = {}


def namespace_of(x):
    """The array-API namespace of ``x`` (array-api-compat's), cached by array type.

    ``array_namespace`` inspects its argument each call (a few µs); the answer depends only on
    the type, and a training step asks it several times.
    """
    kind = type(x)
    xp = _NAMESPACES.get(kind)
    if xp is None:
        xp = _NAMESPACES[kind] = array_api_compat.array_namespace(x)
    return xp


def device_of(x):
    """The device ``x`` lives on (array-api-compat's ``device``): for creating arrays beside it."""
    return array_api_compat.device(x)


def register_namespace(kind, xp):
    """Make ``namespace_of`` answer ``xp`` for arrays of type ``kind`` (the backend module's hook)."""
    _NAMESPACES[kind] = xp


def sigmoid(xp, z):
    """σ(z) = 1 / (1 + e^{-z}), computed from e = e^{-|z|} ∈ (0, 1]:

    σ(z) = 1/(1+e) for z ≥ 0 and e/(1+e) for z < 0.
    """
    e = xp.exp(-xp.abs(z))
    r = 1.0 / (1.0 + e)
    return xp.where(z >= 0, r, e * r)


def softplus(xp, z):
    """log(1 + e^{z}) = max(z, 0) + log1p(e^{-|z|})."""
    return xp.maximum(z, 0.0) + xp.log1p(xp.exp(-xp.abs(z)))


def logsumexp(xp, z, axis=-1):
    """log Σ_k e^{z_k} along ``axis`` (kept as a size-1 axis): m + log Σ e^{z-m}, m = max z."""
    m = xp.max(z, axis=axis, keepdims=True)
    return m + xp.log(xp.sum(xp.exp(z - m), axis=axis, keepdims=True))


def softmax(xp, z, axis=-1):
    """softmax(z)_k = e^{z_k - m} / Σ_j e^{z_j - m}, m = max_j z_j (row-wise for (batch, K))."""
    e = xp.exp(z - xp.max(z, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)

