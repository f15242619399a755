"""array-api-strict: the Array API standard and nothing more."""
from __future__ import annotations

import numpy as np

from .base import Backend

__all__ = ["StrictBackend"]


class StrictBackend(Backend):
    """array-api-strict: the standard and nothing more — the test bed for every layer (its second device
    catches a missing ``device=``).  Draws on the host with NumPy's generator (the same numbers as NumPy)."""

    name = "array_api_strict"
    listed = 3  # its place in BACKEND_NAMES
    namespace_test = "is_array_api_strict_namespace"

    @classmethod
    def load(cls, device, dtype):
        try:
            import array_api_strict as xp
        except ImportError as exc:
            raise RuntimeError(
                "backend 'array_api_strict' needs array-api-strict: pip install array-api-strict") from exc
        dev = device if device is not None else xp.Device("CPU_DEVICE")
        return cls(xp, dev, dtype, dev)

    @classmethod
    def holds(cls, x):
        return type(x).__module__.startswith("array_api_strict")

    @staticmethod
    def host_copy_of(x):
        cpu = type(x.device)("CPU_DEVICE")
        return np.array(np.asarray(x.to_device(cpu)), copy=True)

    def low_precision_refusal(self, dtype_name):
        return "the Array API standard has no 16-bit floats"
