"""Architectures: the layer lists of whole networks from a few widths — ``mlp`` and ``cnn`` — which
``Sequential.mlp`` and ``Sequential.cnn`` turn into models."""
from __future__ import annotations

import math

from ..layers import (GRU, LSTM, RNN, BatchNorm, Conv1D, Conv2D, Dense, Dropout, Flatten, LayerNorm, LeakyReLU,
                     MaxPool1D, MaxPool2D, ReLU, Reshape, Residual, get_activation)

__all__ = ["mlp", "cnn", "cnn_input_shape", "rnn", "rnn_input_shape"]


def mlp(sizes, activation="relu", init=None, output_init="glorot_uniform", dropout=0.0, norm=None, residual=False):
    """A multi-layer perceptron: ``Dense`` between consecutive widths, then (for every hidden layer)
    ``norm``, ``activation`` and ``Dropout(dropout)``; the last Dense's output is the logits / linear
    output.

    ``sizes`` = (in, hidden..., out); ``activation`` is a name (``"relu"``, ``"gelu"``, ``"tanh"``, ...)
    or a Layer class; ``init`` is the hidden layers' initialiser (default He uniform after ReLU/leaky
    ReLU, Glorot uniform otherwise), ``output_init`` the last layer's.  ``norm`` is ``"batch"``
    (BatchNorm) or ``"layer"`` (LayerNorm) after each hidden Dense; ``dropout`` the probability of
    a Dropout after each hidden activation (0: none); ``residual=True`` wraps every hidden block whose
    width does not change (Dense(h, h) and what follows it) in a ``Residual`` — Y = X + f(X), as in the
    MNIST-1D paper's MLP.  Returns the list of layers.
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must give at least an input and an output width, got {sizes!r}")
    norms = {None: None, "batch": BatchNorm, "layer": LayerNorm}
    if norm not in norms:
        raise ValueError(f"norm must be 'batch', 'layer' or None, got {norm!r}")
    if init is None:
        init = "he_uniform" if activation in ("relu", "leaky_relu", ReLU, LeakyReLU) else "glorot_uniform"
    new_act = (lambda: get_activation(activation)) if isinstance(activation, str) else activation
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i == len(sizes) - 2:
            layers.append(Dense(a, b, init=output_init))
            break
        block = [Dense(a, b, init=init)] + ([norms[norm](b)] if norm else []) + [new_act()] \
            + ([Dropout(dropout)] if dropout else [])
        layers += [Residual(block)] if residual and a == b else block
    return layers


def cnn(input_shape, channels, hidden=(), n_outputs=10, kernel_size=3, pool=2, activation="relu"):
    """A small convolutional network: for every entry of ``channels`` a convolution (``kernel_size``,
    padding that keeps the size), the activation and a max-pool of ``pool`` (while the positions allow),
    then Flatten, ``hidden`` Dense layers with the activation, and a Dense to ``n_outputs``.

    ``input_shape`` (without the batch): (C, L) signals, (C, H, W) images, or a table width n, which is
    read as a square one-channel image when n is a square (64 → 1×8×8, the bundled digits) and as a
    one-channel signal otherwise (40 → 1×40, MNIST-1D); a ``Reshape`` does that in the model.  Returns the
    list of layers; the model's input shape is :func:`cnn_input_shape` of ``input_shape``.
    """
    shape = cnn_input_shape(input_shape)
    table = len(shape) == 1
    layers = []
    if table:
        side = int(round(shape[0] ** 0.5))
        spatial = (1, side, side) if side * side == shape[0] else (1, shape[0])
        layers.append(Reshape(spatial))
    else:
        spatial = shape
    conv, pooling = (Conv2D, MaxPool2D) if len(spatial) == 3 else (Conv1D, MaxPool1D)
    new_act = (lambda: get_activation(activation)) if isinstance(activation, str) else activation
    c, size = spatial[0], list(spatial[1:])
    for out in channels:
        layers += [conv(c, out, kernel_size, padding=kernel_size // 2), new_act()]
        if kernel_size % 2 == 0:
            size = [n + 1 for n in size]
        if pool and all(n >= pool for n in size):
            layers.append(pooling(pool))
            size = [n // pool for n in size]
        c = out
    layers.append(Flatten())
    width = c * math.prod(size)
    for h in hidden:
        layers += [Dense(width, h), new_act()]
        width = h
    layers.append(Dense(width, n_outputs))
    return layers


def cnn_input_shape(input_shape):
    """The model's input shape (without the batch) for :func:`cnn`'s ``input_shape``: (n,) for a table width
    n, the tuple itself for (C, L) signals and (C, H, W) images."""
    table = isinstance(input_shape, int) or len(tuple(input_shape)) == 1
    return (int(input_shape) if isinstance(input_shape, int) else tuple(input_shape)[0],) if table \
        else tuple(input_shape)


def rnn(input_shape, kind="gru", hidden=(32,), n_outputs=10, bidirectional=False):
    """A recurrent network: one ``kind`` layer (``"rnn"``, ``"gru"``, ``"lstm"``) per width in ``hidden``, the
    inner ones passing every step on, the last one its final state (B, H·directions), then a Dense to
    ``n_outputs``.  ``input_shape``: (T, F) sequences, or a table width n, read as a signal of n steps of one
    feature (a ``Reshape`` does that in the model).  Returns the list of layers; the model's input shape is
    :func:`rnn_input_shape` of ``input_shape``."""
    kinds = {"rnn": RNN, "gru": GRU, "lstm": LSTM}
    if kind not in kinds:
        raise ValueError(f"kind must be 'rnn', 'gru' or 'lstm', got {kind!r}")
    hidden = list(hidden)
    if not hidden:
        raise ValueError("rnn needs at least one hidden width")
    shape = rnn_input_shape(input_shape)
    layers = [Reshape((shape[0], 1))] if len(shape) == 1 else []
    width = 1 if len(shape) == 1 else shape[1]
    for j, h in enumerate(hidden):
        layers.append(kinds[kind](width, h, bidirectional=bidirectional, return_sequences=j < len(hidden) - 1))
        width = h * (2 if bidirectional else 1)
    layers.append(Dense(width, n_outputs))
    return layers


def rnn_input_shape(input_shape):
    """The model's input shape for :func:`rnn`: (n,) for a table width n, the (T, F) of sequences as given."""
    if isinstance(input_shape, int) or len(tuple(input_shape)) == 1:
        return (int(input_shape) if isinstance(input_shape, int) else tuple(input_shape)[0],)
    return tuple(input_shape)


def gpt(vocab_size, block_size, n_embd, n_layer, n_head, dropout=0.0, tie_weights=True):
    """nanoGPT's GPT as layers: token embedding (V, E) and learned positions (block_size, E), dropout, ``n_layer``
    causal pre-norm ``TransformerBlock``s, a final LayerNorm and the head — ``TiedDense(0)`` sharing the token
    embedding's matrix (``tie_weights=True``, nanoGPT's weight tying), else a ``Dense(E, V)``."""
    from ..layers import Embedding, PositionalEmbedding, TiedDense, TransformerBlock

    for name, v in (("vocab_size", vocab_size), ("block_size", block_size), ("n_embd", n_embd),
                    ("n_layer", n_layer), ("n_head", n_head)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"gpt {name} must be a positive integer, got {v!r}")
    layers = [Embedding(vocab_size, n_embd), PositionalEmbedding(block_size, n_embd)]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [TransformerBlock(n_embd, n_head, dropout=dropout, causal=True) for _ in range(n_layer)]
    layers += [LayerNorm(n_embd), TiedDense(0) if tie_weights else Dense(n_embd, vocab_size)]
    return layers


def gpt_init(model, n_layer):
    """nanoGPT's initialisation, drawn from the model's generator: every weight matrix and embedding N(0, 0.02²),
    the residual projections (attention's out_proj, the MLP's proj) N(0, (0.02/√(2·n_layer))²), biases 0,
    LayerNorm γ = 1, β = 0."""
    rng, state = model.rng, {}
    resid = 0.02 / math.sqrt(2 * n_layer)
    for key, value in model.state_dict().items():
        name = key.rsplit(".", 1)[-1]
        shape = tuple(value.shape)
        if name in ("out_proj_weight",) or key.endswith("proj.W"):
            state[key] = rng.normal(0.0, resid, size=shape)
        elif name in ("weight", "in_proj_weight", "W") and len(shape) == 2:
            state[key] = rng.normal(0.0, 0.02, size=shape)
    model.load_state_dict({**model.state_dict(), **state})
    return model
