"""Checks of the numbers users pass (learning rates, patience, epochs): a clear ValueError naming the argument
and the range it must lie in."""
from __future__ import annotations

import math
import numbers

__all__ = ["check_hyper", "check_int"]


def check_hyper(name, value, low=0.0, high=None, low_open=False, high_open=True):
    """A real hyperparameter within [low, high) (bounds configurable), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    bad_low = value <= low if low_open else value < low
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high or not math.isfinite(value):
        lo = "(" if low_open else "["
        hi = ("inf)" if high is None else (f"{high})" if high_open else f"{high}]"))
        raise ValueError(f"{name} must lie in {lo}{low}, {hi} and be finite, got {value!r}")
    return value


def check_int(name, value, low):
    """An integer hyperparameter >= ``low``, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)
