"""The ways out of nnkit (and back in): ONNX for runtimes nobody here wrote, PyTorch modules both ways.

* :func:`nnkit.export.onnx.to_onnx` — ``model.export("model.onnx")``, ``nnkit export MODEL.npz MODEL.onnx``;
* :func:`nnkit.export.pytorch.to_torch` / :func:`~nnkit.export.pytorch.layers_from_torch` —
  ``model.to_torch()``, ``nnkit.Sequential.from_torch(module)``.

The scikit-learn estimators live in :mod:`nnkit.sklearn`.  ``onnx`` and ``torch`` are imported only when
these functions run (``pip install 'nnkit[onnx]'``; PyTorch as usual).
"""
from .onnx import to_onnx
from .pytorch import to_torch, layers_from_torch

__all__ = ["to_onnx", "to_torch", "layers_from_torch"]
