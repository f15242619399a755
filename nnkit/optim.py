"""Optimizers: a small step that computes new parameter values from gradients.

An optimizer never writes into the model: ``step(params, grads)`` returns the
new values keyed like ``model.state_dict()``, and the model writes them back
in one place (so immutable arrays work too).  Per-parameter state (moments,
step counts) lives in ``optimizer.state[key]``.
"""
from __future__ import annotations

import numbers

__all__ = ["Optimizer", "SGD", "get_optimizer", "OPTIMIZERS"]


def check_hyper(name, value, low=0.0, high=None, low_open=False, high_open=True):
    """A real hyperparameter within [low, high) (bounds configurable), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    bad_low = value <= low if low_open else value < low
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high or value != value:
        lo = "(" if low_open else "["
        hi = ("inf)" if high is None else (f"{high})" if high_open else f"{high}]"))
        raise ValueError(f"{name} must lie in {lo}{low}, {hi}, got {value!r}")
    return value


class Optimizer:
    """Base class: ``step(params, grads) -> new params``; subclasses implement ``update``."""

    def __init__(self, lr):
        self.lr = check_hyper("lr", lr, low=0.0, low_open=True)
        self.state = {}

    def step(self, params, grads):
        """New values for every parameter in ``grads`` (dicts keyed ``"{layer}.{name}"``)."""
        return {key: self.update(key, params[key], g) for key, g in grads.items()}

    def update(self, key, p, g):
        raise NotImplementedError

    def hyperparameters(self):
        return {"lr": self.lr}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Plain gradient descent: θ ← θ − lr·∂L/∂θ (descent subtracts the gradient)."""

    def update(self, key, p, g):
        return p - self.lr * g


OPTIMIZERS = {"sgd": SGD}


def get_optimizer(optimizer, **defaults):
    """An :class:`Optimizer` from an instance or a name (``"sgd"``, ...)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    try:
        cls = OPTIMIZERS[optimizer]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown optimizer {optimizer!r}: expected one of {', '.join(repr(k) for k in OPTIMIZERS)} "
            "or an Optimizer instance"
        ) from None
    return cls(**defaults)
