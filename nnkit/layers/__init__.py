"""Layers, one family a module — each forward pass with its hand-derived backward pass beside it.

* :mod:`.core` — the ``Layer`` base class (parameters, buffers, the precision casts), ``Dense``,
  ``Residual``, ``Dropout``, and the registry checkpoints rebuild layers from;
* :mod:`.activations` — element-wise and row-wise activations with their derivatives;
* :mod:`.normalization` — ``BatchNorm`` and ``LayerNorm``.

Every name is re-exported here and at ``nnkit`` (``nnkit.Dense``, ``nnkit.ReLU``, ...).
"""
from .core import Layer, Dense, Residual, Dropout, LAYER_TYPES, layer_from_config, check_widths, check_size
from .activations import (Sigmoid, Tanh, ReLU, LeakyReLU, Softmax, Identity, GELU, SiLU, ELU, Softplus,
                          ACTIVATIONS, get_activation)
from .normalization import BatchNorm, LayerNorm

__all__ = ["Layer", "Dense", "Residual", "Dropout", "LAYER_TYPES", "layer_from_config", "check_widths",
           "check_size", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax", "Identity", "GELU", "SiLU", "ELU",
           "Softplus", "ACTIVATIONS", "get_activation", "BatchNorm", "LayerNorm"]
