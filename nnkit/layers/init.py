"""Weight initialisers: Glorot/Xavier (Var W = 2/(fan_in + fan_out)) and its relatives.

Every initialiser draws on the host from a ``numpy.random.Generator`` in
float64 and returns host data; the model casts and transfers it to its
backend.  So the same seed gives bit-identical initial weights on every
backend and dtype cast.

For a weight matrix W of shape (fan_in, fan_out):

========================  ===============================================
``glorot_uniform``        U(−l, l), l = √(6 / (fan_in + fan_out))  (default)
``glorot_normal``         N(0, σ²), σ = √(2 / (fan_in + fan_out))
``he_uniform``            U(−l, l), l = √(6 / fan_in)        (for ReLU)
``he_normal``             N(0, σ²), σ = √(2 / fan_in)        (for ReLU)
``lecun_normal``          N(0, σ²), σ = √(1 / fan_in)
``zeros``                 0
========================  ===============================================

``xavier_uniform``/``xavier_normal`` are aliases of the Glorot names.
Biases always start at zero.
"""
from __future__ import annotations

import math

__all__ = ["INITIALIZERS", "get_initializer", "glorot_uniform", "glorot_normal",
           "he_uniform", "he_normal", "lecun_normal", "zeros"]


def glorot_uniform(rng, fan_in, fan_out):
    """U(−l, l) with l = √(6 / (fan_in + fan_out)): keeps activation variance for tanh/sigmoid (Glorot & Bengio, 2010)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def glorot_normal(rng, fan_in, fan_out):
    """N(0, σ²) with σ = √(2 / (fan_in + fan_out))."""
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


def he_uniform(rng, fan_in, fan_out):
    """U(−l, l) with l = √(6 / fan_in): for ReLU layers (He et al., 2015)."""
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def he_normal(rng, fan_in, fan_out):
    """N(0, σ²) with σ = √(2 / fan_in): for ReLU layers."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def lecun_normal(rng, fan_in, fan_out):
    """N(0, σ²) with σ = √(1 / fan_in)."""
    return rng.normal(0.0, math.sqrt(1.0 / fan_in), size=(fan_in, fan_out))


def zeros(rng, fan_in, fan_out):
    """All zeros (draws nothing from ``rng``)."""
    # draws nothing, so the generator's stream is the same with or without it
    return [[0.0] * fan_out for _ in range(fan_in)]


INITIALIZERS = {
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "lecun_normal": lecun_normal,
    "zeros": zeros,
}


def get_initializer(init):
    """A name from ``INITIALIZERS`` or a callable ``(rng, fan_in, fan_out) -> (fan_in, fan_out)`` array."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown initializer {init!r}: expected one of {', '.join(sorted(INITIALIZERS))} "
            "or a callable (rng, fan_in, fan_out) -> array"
        ) from None
