"""Layers, one family a module — each forward pass with its hand-derived backward pass beside it.

* :mod:`.core` — the ``Layer`` base class (parameters, buffers, the precision casts), ``Dense``,
  ``Residual``, ``Dropout``, and the registry checkpoints rebuild layers from;
* :mod:`.activations` — element-wise and row-wise activations with their derivatives;
* :mod:`.normalization` — ``BatchNorm`` and ``LayerNorm``;
* :mod:`.convolutional` — ``Conv1D``, ``Conv2D`` (im2col and its adjoint, whose kernels each backend may replace:
  :mod:`nnkit.backends.conv`), ``ConvTranspose1D/2D`` (the adjoint);
* :mod:`.pooling` — ``MaxPool1D/2D``, ``AvgPool1D/2D``, ``GlobalAvgPool``;
* :mod:`.reshaping` — ``Flatten``, ``Reshape``;
* :mod:`.recurrent` — ``RNN``, ``GRU``, ``LSTM`` (backprop through time);
* :mod:`.embedding` — ``Embedding`` (token ids to vectors) and ``TiedDense`` (the output layer sharing its weight);
* :mod:`.sequence` — ``SequencePool`` (a padded sequence's mean or max);
* :mod:`.attention` — ``MultiHeadAttention`` (self-attention, causal and key-padded), ``PositionalEmbedding``
  (learned or sinusoidal positions) and ``TransformerBlock`` (pre-norm attention and MLP, each residual);
* :mod:`.merge` — ``Add``, ``Subtract``, ``Multiply``, ``Concatenate``: several tensors into one, in a graph;
* :mod:`.graph` — ``Input`` and the nodes a layer call on symbolic tensors records (what ``nnkit.Model`` walks);
* :mod:`.init` — the initialisers (Glorot, He, LeCun; drawn on the host from the model's generator).

Every name is re-exported here and at ``nnkit`` (``nnkit.Dense``, ``nnkit.ReLU``, ...).
"""
from .core import (Layer, Dense, Residual, Dropout, LAYER_TYPES, ShapeError, layer_from_config, infer_shapes,
                   check_input_shape, check_size, fmt_shape)
from .activations import (Sigmoid, Tanh, ReLU, LeakyReLU, Softmax, Identity, GELU, SiLU, ELU, Softplus, Abs,
                          ACTIVATIONS, get_activation)
from .normalization import BatchNorm, LayerNorm
from .convolutional import Conv1D, Conv2D, ConvTranspose1D, ConvTranspose2D
from .pooling import MaxPool1D, MaxPool2D, AvgPool1D, AvgPool2D, GlobalAvgPool
from .reshaping import Flatten, Reshape
from .recurrent import RNN, GRU, LSTM
from .embedding import Embedding, TiedDense
from .sequence import SequencePool
from .attention import MultiHeadAttention, PositionalEmbedding, TransformerBlock
from .merge import Add, Subtract, Multiply, Concatenate
from .graph import Input, SymbolicTensor

__all__ = ["Layer", "Dense", "Residual", "Dropout", "LAYER_TYPES", "ShapeError", "layer_from_config",
           "infer_shapes", "check_input_shape", "check_size", "fmt_shape", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax", "Identity", "GELU", "SiLU", "ELU",
           "Softplus", "ACTIVATIONS", "get_activation", "BatchNorm", "LayerNorm", "Conv1D", "Conv2D", "ConvTranspose1D", "ConvTranspose2D", "MaxPool1D", "MaxPool2D", "AvgPool1D",
           "AvgPool2D", "GlobalAvgPool", "Flatten", "Reshape", "RNN", "GRU", "LSTM", "Embedding",
           "SequencePool", "MultiHeadAttention", "PositionalEmbedding", "TransformerBlock", "TiedDense",
           "Add", "Subtract", "Multiply", "Concatenate", "Input", "SymbolicTensor", "Abs"]
