"""Models: the layers put together and trained.

* :mod:`.sequential` — :class:`Model` (a graph of layer calls: several inputs and outputs, shared layers) and
  :class:`Sequential`, its chain (``fit``, ``predict``, ``save``, ``export``), and :func:`load`;
* :mod:`.architectures` — the ready-made stacks behind ``Sequential.mlp``, ``.cnn``, ``.rnn``, ``.gpt``;
* :mod:`.explanation` — ``model.explain(...)``: one step of your model on your batch, with its numbers;
* :mod:`.perceptron` — Rosenblatt's perceptron, the one model without backprop.
"""
from .sequential import Model, Sequential, load
from .perceptron import Perceptron

__all__ = ["Model", "Sequential", "load", "Perceptron"]
