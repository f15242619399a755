"""The generic backend: any other library that follows the Array API standard, passed as ``backend=module``."""
from __future__ import annotations

from .base import Backend

__all__ = ["GenericBackend"]


class GenericBackend(Backend):
    """Any array-API module nnkit has no subclass for: the base class as it is, named after the module
    (random numbers drawn on the host and transferred, eager steps, copies through DLPack)."""

    @classmethod
    def load_module(cls, module, device, dtype):
        """The backend of an imported array-API module (``backend=module``)."""
        if not hasattr(module, "__array_api_version__"):
            return None
        return cls(module, device, dtype, device, getattr(module, "__name__", str(module)))
