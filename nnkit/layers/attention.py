r"""Attention: multi-head self-attention, positional embeddings and the pre-norm Transformer block, every
gradient derived by hand.

Attention is batched matrix calculus.  For one head, with Q, K, V (T, d) and the scale s = 1/√d:

    S = s·Q·Kᵀ + mask   (T, T),   P = softmax_rows(S),   O = P·V   (T, d).

Backward, from dO = ∂L/∂O:

    dV = Pᵀ·dO,   dP = dO·Vᵀ,   dS = P ⊙ (dP − rowsum(dP ⊙ P)),   dQ = s·dS·K,   dK = s·dSᵀ·Q.

(The softmax row's Jacobian is diag(p) − p·pᵀ, so dS_i = p_i ⊙ dP_i − p_i (p_i·dP_i).)  A masked entry has
P = 0, so it receives no gradient.  Every product above runs batched over (B, heads).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from ..backends.functional import Array, device_of
from .activations import GELU
from .core import Dense, Dropout, Layer, ShapeError, check_size, own_torch_class
from .normalization import LayerNorm

__all__ = ["MultiHeadAttention", "PositionalEmbedding", "TransformerBlock"]


def _check_rate(name, p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
    return float(p)


def softmax_rows_backward(xp, P, dP):
    """dS = P ⊙ (dP − rowsum(dP ⊙ P)): the gradient through P = softmax(S) over the last axis, row by row (the
    Jacobian diag(p) − p·pᵀ applied to dP)."""
    return P * (dP - xp.sum(dP * P, axis=-1, keepdims=True))


def _causal(g, x):
    """The (T, T) bool tensor ``key ≤ query`` for the sequences x (B, T, ·) of the graph, T read from x."""
    steps = g.op("Gather", [g.op("Shape", [x], "shape"), g.ints(1, "time_axis")], "steps")
    t = g.op("Range", [g.ints(0, "zero"), steps, g.ints(1, "one")], "t")
    return g.op("LessOrEqual", [g.op("Unsqueeze", [t, g.ints([0], "axes")], "keys"),
                                g.op("Unsqueeze", [t, g.ints([1], "axes")], "queries")], "causal")


def _torch_masks(x, causal, lengths):
    """PyTorch's boolean masks for self-attention over x (B, T, ·): (T, T) True above the diagonal (a later key)
    when ``causal``, and (B, T) True at each sequence's padded keys when ``lengths`` is given (else None)."""
    import torch

    T = x.shape[1]
    upper = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1) if causal else None
    pad = None if lengths is None else torch.arange(T, device=x.device)[None, :] >= lengths.to(x.device)[:, None]
    return upper, pad


def _self_attention_class(nn):
    class SelfAttention(nn.Module):
        """y = mha(x, x, x) (``nn.MultiheadAttention``, batch_first), the causal mask when ``causal``, the key
        padding from ``lengths`` when given (nnkit's MultiHeadAttention)."""

        takes_lengths = True

        def __init__(self, mha, causal=False):
            super().__init__()
            self.mha, self.causal = mha, bool(causal)

        def forward(self, x, lengths=None):
            """Self-attention over x (B, T, E)."""
            causal, pad = _torch_masks(x, self.causal, lengths)
            return self.mha(x, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=False)[0]

    return SelfAttention


class MultiHeadAttention(Layer):
    r"""Multi-head self-attention on sequences X (B, T, E) → Y (B, T, E), PyTorch's ``nn.MultiheadAttention``
    (``batch_first=True``, query = key = value = X) with its parameters, names and layout:
    ``in_proj_weight`` W (3E, E) (the rows of W_q, W_k, W_v stacked), ``in_proj_bias`` b (3E,),
    ``out_proj_weight`` W_o (E, E), ``out_proj_bias`` b_o (E,); h heads of width d = E/h.

    Forward, with X as rows (N = B·T, E):

        [Q | K | V] = X·Wᵀ + b   (B, T, 3E), each split into heads (B, h, T, d),
        S = Q·Kᵀ/√d + M   (B, h, T, T),   P = softmax(S) over the keys,   O = P·V   (B, h, T, d),
        Y = O'·W_oᵀ + b_o   (B, T, E),   O' the heads side by side (B, T, E),

    M = −∞ where a query may not look: a later key with ``causal=True`` (key j > query i), a padded key of a
    variable-length sequence (the padding mask (B, T), ``takes_mask``).  With ``dropout`` p > 0, training uses
    P ⊙ D/(1 − p) in place of P (D ~ Bernoulli(1 − p), drawn on the device), as PyTorch drops attention weights.

    Backward, from dY (B, T, E):

        dW_o = Σ_rows dYᵀ·O'  (E, E),   db_o = Σ dY,   dO' = dY·W_o,
        dV = Pᵀ·dO,   dP = dO·Vᵀ,   dS = P ⊙ (dP − rowsum(dP ⊙ P)),   dQ = dS·K/√d,   dK = dSᵀ·Q/√d,
        d[Q|K|V] (B, T, 3E):   dW = Σ_rows d[Q|K|V]ᵀ·X  (3E, E),   db = Σ d[Q|K|V],   dX = d[Q|K|V]·W.

    Memory: P (and with dropout its mask) is kept for the backward pass, B·h·T² numbers — 12·4·64² ≈ 197 k for a
    small GPT's batch, 4·T² per example and head in general.  Under a mixed precision policy the projections run
    in the compute dtype; the scores, the softmax and its row sums run in float32 (a 16-bit exp and row sum lose
    the small weights), P goes into P·V in the compute dtype.  Initialised as PyTorch's: W Glorot-uniform over
    (3E, E), W_o U(−1/√E, 1/√E), both biases zero.
    """

    param_names: tuple[str, ...] = ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias")
    takes_mask = True
    keeps_positions = True

    def __init__(self, embed_dim: int, num_heads: int, causal: bool = False, bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dim = check_size("embed_dim", embed_dim)
        self.num_heads = check_size("num_heads", num_heads)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}): each head "
                             "takes embed_dim/num_heads of the width")
        self.causal, self.bias = bool(causal), bool(bias)
        self.dropout = _check_rate("dropout", dropout)
        self.needs_random = self.dropout > 0.0
        if not self.bias:
            self.param_names = ("in_proj_weight", "out_proj_weight")

    @property
    def head_dim(self):
        return self.embed_dim // self.num_heads

    def param_shapes(self):
        E = self.embed_dim
        shapes = {"in_proj_weight": (3 * E, E), "in_proj_bias": (3 * E,), "out_proj_weight": (E, E),
                  "out_proj_bias": (E,)}
        return {k: shapes[k] for k in self.param_names}

    def build(self, backend, rng):
        super().build(backend, rng)
        E = self.embed_dim
        a, c = math.sqrt(6.0 / (4 * E)), 1.0 / math.sqrt(E)
        W, Wo = rng.uniform(-a, a, size=(3 * E, E)), rng.uniform(-c, c, size=(E, E))
        params = {"in_proj_weight": backend.asarray(backend.host_float64(W), dtype=backend.dtype),
                  "out_proj_weight": backend.asarray(backend.host_float64(Wo), dtype=backend.dtype)}
        for name, n in (("in_proj_bias", 3 * E), ("out_proj_bias", E)):
            params[name] = self.xp.zeros((n,), dtype=backend.dtype, device=backend.device)
        self.params = {k: params[k] for k in self.param_names}

    def input_shape(self):
        return (None, self.embed_dim)

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 2 or in_shape[1] not in (None, self.embed_dim):
            raise ShapeError(f"expects sequences (B, T, {self.embed_dim})")
        return in_shape

    # -- forward ---------------------------------------------------------------------------------------------
    def _heads(self, A, B, T):
        """(B, T, E) → (B, h, T, d)."""
        return self.xp.permute_dims(self.xp.reshape(A, (B, T, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def _merge(self, A, B, T):
        """(B, h, T, d) → (B, T, E): the heads side by side."""
        return self.xp.reshape(self.xp.permute_dims(A, (0, 2, 1, 3)), (B, T, self.embed_dim))

    def _allowed(self, T, mask, device):
        """Where a query may look, broadcastable to (B, h, T, T): key ≤ query (causal) and key not padding;
        None when every key may be seen."""
        xp, allowed = self.xp, None
        if self.causal:
            t = xp.arange(T, device=device)
            allowed = t[None, :] <= t[:, None]  # (T, T): row = query, column = key
        if mask is not None:
            keys = (mask > 0)[:, None, None, :]  # (B, 1, 1, T)
            allowed = keys if allowed is None else xp.logical_and(allowed[None, None, :, :], keys)
        return allowed

    def forward(self, X: Array, train: bool = True, mask: Array | None = None) -> Array:
        """Y (B, T, E) for X (B, T, E); ``mask`` (B, T): 1 at a sequence's steps, 0 at its padding (those keys
        are never attended).  Keeps X, Q, K, V, P (and the dropout mask) when ``train``."""
        xp = self.xp
        B, T, E = X.shape
        W = self.compute(self.params["in_proj_weight"])
        QKV = X @ W.T  # (B, T, 3E)
        if self.bias:
            QKV = QKV + self.compute(self.params["in_proj_bias"])
        Q, K, V = (self._heads(QKV[:, :, k * E:(k + 1) * E], B, T) for k in range(3))
        Q = Q * (1.0 / math.sqrt(self.head_dim))  # the scale on Q (B, h, T, d): fewer numbers than S (B, h, T, T)
        S = self.storage(Q @ xp.permute_dims(K, (0, 1, 3, 2)))  # (B, h, T, T), float32 or wider
        allowed = self._allowed(T, mask, device_of(X))
        if allowed is not None:
            S = xp.where(allowed, S, xp.asarray(-xp.inf, dtype=S.dtype, device=device_of(S)))
        S = S - xp.max(S, axis=-1, keepdims=True)  # every row keeps key 0: its maximum is finite
        P = xp.exp(S)
        P = P / xp.sum(P, axis=-1, keepdims=True)
        D = None
        if train and self.dropout > 0.0:
            D = xp.astype(self.random(tuple(P.shape), P.dtype) >= self.dropout, P.dtype) * (1.0 / (1.0 - self.dropout))
        Pc = self.compute(P if D is None else P * D)
        O = self._merge(Pc @ V, B, T)  # (B, T, E)
        Wo = self.compute(self.params["out_proj_weight"])
        Y = O @ Wo.T
        if self.bias:
            Y = Y + self.compute(self.params["out_proj_bias"])
        if train:
            self._cache = (X, W, Q, K, V, P, D, O, Wo)
        return Y

    # -- backward --------------------------------------------------------------------------------------------
    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        """The derivation in the class docstring, step by step; shapes (B, T, E) in and out, (B, h, T, ·) inside."""
        xp = self.xp
        X, W, Q, K, V, P, D, O, Wo = self._cache
        B, T, E = X.shape
        rows = B * T
        dY2 = xp.reshape(dY, (rows, E))
        grads = {"out_proj_weight": dY2.T @ xp.reshape(O, (rows, E))}  # dW_o = Σ dYᵀ·O'  (E, E)
        dO = self._heads(dY @ Wo, B, T)  # dO' = dY·W_o, split into heads (B, h, T, d)
        Pd = P if D is None else P * D
        dV = xp.permute_dims(self.compute(Pd), (0, 1, 3, 2)) @ dO  # dV = Pᵀ·dO
        dP = self.storage(dO @ xp.permute_dims(V, (0, 1, 3, 2)))  # dP = dO·Vᵀ  (B, h, T, T), float32 or wider
        if D is not None:
            dP = dP * D  # through the dropped weights: P·D/(1−p)
        dS = self.compute(softmax_rows_backward(xp, P, dP))
        dQ = (dS @ K) * (1.0 / math.sqrt(self.head_dim))  # dQ = dS·K/√d
        dK = xp.permute_dims(dS, (0, 1, 3, 2)) @ Q  # dK = dSᵀ·Q/√d (Q kept already scaled)
        dQKV = xp.concat([self._merge(dQ, B, T), self._merge(dK, B, T), self._merge(dV, B, T)], axis=2)
        dQKV2 = xp.reshape(dQKV, (rows, 3 * E))
        grads["in_proj_weight"] = dQKV2.T @ xp.reshape(X, (rows, E))  # dW = Σ d[Q|K|V]ᵀ·X  (3E, E)
        if self.bias:
            grads["in_proj_bias"] = xp.sum(dQKV2, axis=0)
            grads["out_proj_bias"] = xp.sum(dY2, axis=0)
        self.grads = grads
        return dQKV @ W if need_dX else None  # dX = d[Q|K|V]·W

    # -- explain: the attention weights of each head -------------------------------------------------------------
    def explain_forward(self, report, i, X, Y):
        """The formula, the output and P, the attention weights of each head (B, h, T, T): row = query, column =
        key; ``report.values["P{i}"]`` holds them for a table or a picture (``nnkit.plots.attention``)."""
        report.add(f"Y{i} = softmax(Q·Kᵀ/√{self.head_dim}{' + causal mask' if self.causal else ''})·V, heads "
                   f"merged, ·W_oᵀ + b_o   [{report.tag(i, self)}]", Y, f"A{i}")
        report.add(f"P{i}: the attention weights (batch, head, query, key); each row sums to 1", self._cache[5],
                   f"P{i}")

    # -- the ways out: ONNX and PyTorch --------------------------------------------------------------------------
    def to_onnx(self, g, x):
        """MatMul, Softmax (axis −1) and the masks as ``Where(allowed, S, −∞)``: the causal one built from the
        input's T, the key padding from the graph's ``lengths`` (``g.mask``)."""
        E, h, d, xp = self.embed_dim, self.num_heads, self.head_dim, self.xp
        W = self.params["in_proj_weight"]
        heads = []
        for k, hint in enumerate(("q", "k", "v")):
            a = g.op("MatMul", [x, g.const(xp.permute_dims(W[k * E:(k + 1) * E, :], (1, 0)), f"W_{hint}T")], hint)
            if self.bias:
                a = g.op("Add", [a, g.const(self.params["in_proj_bias"][k * E:(k + 1) * E], f"b_{hint}")], hint)
            a = g.op("Reshape", [a, g.ints([0, 0, h, d])], f"{hint}_heads")
            heads.append(g.op("Transpose", [a], f"{hint}_bh", perm=[0, 2, 3, 1] if hint == "k" else [0, 2, 1, 3]))
        q, kt, v = heads
        S = g.op("Mul", [g.op("MatMul", [q, kt], "qk"), g.const(1.0 / math.sqrt(d), "scale")], "scores")
        minus_inf = g.const(float("-inf"), "minus_inf")
        if self.causal:
            S = g.op("Where", [_causal(g, x), S, minus_inf], "causal_scores")
        if g.mask is not None:
            keys = g.op("Unsqueeze", [g.mask, g.ints([1, 2], "axes")], "key_mask")  # (B, 1, 1, T)
            S = g.op("Where", [keys, S, minus_inf], "padded_scores")
        P = g.op("Softmax", [S], "attention", axis=-1)
        O = g.op("Transpose", [g.op("MatMul", [P, v], "pv")], "o_bthd", perm=[0, 2, 1, 3])
        O = g.op("Reshape", [O, g.ints([0, 0, E])], "o")
        Y = g.op("MatMul", [O, g.const(xp.permute_dims(self.params["out_proj_weight"], (1, 0)), "W_oT")], "out")
        return g.op("Add", [Y, g.param(self, "out_proj_bias")], "attn_out") if self.bias else Y

    onnx_lengths = True  # reads the graph's padding mask (export(lengths=True))

    @classmethod
    def torch_module(cls, nn):
        """``nnkit.export.pytorch.SelfAttention``: ``nn.MultiheadAttention`` called on (x, x, x) with the masks."""
        return own_torch_class(MultiHeadAttention, nn, _self_attention_class)

    def to_torch(self, ctx):
        """``nn.MultiheadAttention(E, h, batch_first=True)`` with these weights, in :meth:`torch_module`."""
        mha = ctx.nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout, bias=self.bias,
                                        batch_first=True, dtype=ctx.dtype)
        ctx.load(mha.in_proj_weight, self.params["in_proj_weight"])
        ctx.load(mha.out_proj.weight, self.params["out_proj_weight"])
        if self.bias:
            ctx.load(mha.in_proj_bias, self.params["in_proj_bias"])
            ctx.load(mha.out_proj.bias, self.params["out_proj_bias"])
        return self.torch_module(ctx.nn)(mha, self.causal)

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        mha = m.mha
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or not mha.batch_first:
            raise ctx.refuse("nnkit's MultiHeadAttention is self-attention with one in_proj_weight, batch_first=True, "
                             "no bias_k/bias_v and no add_zero_attn")
        bias = mha.in_proj_bias is not None
        layer = cls(mha.embed_dim, mha.num_heads, causal=m.causal, bias=bias, dropout=mha.dropout)
        params = {"in_proj_weight": ctx.array(mha.in_proj_weight), "out_proj_weight": ctx.array(mha.out_proj.weight)}
        if bias:
            params.update(in_proj_bias=ctx.array(mha.in_proj_bias), out_proj_bias=ctx.array(mha.out_proj.bias))
        return layer, params, {}

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "causal": self.causal, "bias": self.bias, "dropout": self.dropout}

    def __repr__(self):
        extra = (", causal=True" if self.causal else "") + ("" if self.bias else ", bias=False") + \
            (f", dropout={self.dropout:g}" if self.dropout else "")
        return f"MultiHeadAttention({self.embed_dim}, {self.num_heads}{extra})"


def _positions_class(nn):
    class PositionalEmbedding(nn.Module):
        """y = x + P[:T] (nnkit's PositionalEmbedding): ``weight`` a parameter (learned) or ``table`` a buffer."""

        def __init__(self, table, learned=True):
            super().__init__()
            self.learned = bool(learned)
            if self.learned:
                self.weight = nn.Parameter(table)
            else:
                self.register_buffer("table", table)

        def forward(self, x):
            """x (B, T, dim) plus the first T rows."""
            return x + (self.weight if self.learned else self.table)[:x.shape[1]]

    return PositionalEmbedding


def _block_class(nn):
    class TransformerBlock(nn.Module):
        """``nn.TransformerEncoderLayer(norm_first=True, batch_first=True)`` with GELU's tanh form, called with the
        causal mask when ``causal`` and the key padding from ``lengths`` (nnkit's TransformerBlock)."""

        takes_lengths = True

        def __init__(self, layer, causal=False):
            super().__init__()
            self.layer, self.causal = layer, bool(causal)

        def forward(self, x, lengths=None):
            """The block on x (B, T, E)."""
            causal, pad = _torch_masks(x, self.causal, lengths)
            return self.layer(x, src_mask=causal, src_key_padding_mask=pad, is_causal=self.causal)

    return TransformerBlock


class PositionalEmbedding(Layer):
    r"""Adds a vector per position to sequences: Y[b, t] = X[b, t] + P[t], X, Y (B, T, dim), T ≤ ``max_len``.

    * ``kind="learned"`` (GPT's ``wpe``): ``weight`` P (max_len, dim), drawn from N(0, 0.02²) as nanoGPT
      draws it.  Backward: dX = dY, and every example adds its row: dP[t] = Σ_b dY[b, t] for t < T, 0 after.
    * ``kind="sinusoidal"`` (Vaswani et al., 2017): P[t, 2i] = sin(t/10000^(2i/dim)), P[t, 2i+1] =
      cos(t/10000^(2i/dim)), a buffer (saved and moved with the model, never trained); dX = dY.
    """

    keeps_positions = True

    def __init__(self, max_len: int, dim: int, kind: str = "learned") -> None:
        super().__init__()
        self.max_len, self.dim = check_size("max_len", max_len), check_size("dim", dim)
        if kind not in ("learned", "sinusoidal"):
            raise ValueError(f"PositionalEmbedding kind must be 'learned' or 'sinusoidal', got {kind!r}")
        self.kind = kind
        self.param_names, self.buffer_names = (("weight",), ()) if kind == "learned" else ((), ("table",))

    def param_shapes(self):
        return {"weight" if self.kind == "learned" else "table": (self.max_len, self.dim)}

    def build(self, backend, rng):
        super().build(backend, rng)
        if self.kind == "learned":
            P = rng.normal(0.0, 0.02, size=(self.max_len, self.dim))
            self.params = {"weight": backend.asarray(backend.host_float64(P), dtype=backend.dtype)}
            return
        xp = self.xp
        t = xp.astype(xp.arange(self.max_len, device=backend.device), backend.dtype)[:, None]
        i2 = xp.astype(xp.arange(0, self.dim, 2, device=backend.device), backend.dtype)[None, :]
        angle = t * xp.exp(i2 * (-math.log(10000.0) / self.dim))  # (max_len, ⌈dim/2⌉)
        table = xp.reshape(xp.stack([xp.sin(angle), xp.cos(angle)], axis=2), (self.max_len, -1))[:, :self.dim]
        self.buffers = {"table": table}

    def input_shape(self):
        return (None, self.dim)

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 2 or in_shape[1] not in (None, self.dim):
            raise ShapeError(f"expects sequences (B, T, {self.dim})")
        if in_shape[0] is not None and in_shape[0] > self.max_len:
            raise ShapeError(f"holds {self.max_len} positions (max_len), fewer than the sequences' {in_shape[0]} "
                             "steps: crop the sequences or build it with a larger max_len")
        return in_shape

    def _table(self):
        return self.params["weight"] if self.kind == "learned" else self.buffers["table"]

    def forward(self, X: Array, train: bool = True) -> Array:
        """Y = X + P[:T] (broadcast over the batch)."""
        T = X.shape[1]
        if T > self.max_len:
            raise ValueError(f"PositionalEmbedding holds {self.max_len} positions (max_len), fewer than the "
                             f"sequences' {T} steps: crop them to {self.max_len} or build it with a larger max_len")
        if train:
            self._cache = (T, X.shape[0])
        return X + self.compute(self._table()[:T, :])

    def backward(self, dY: Array, need_dX: bool = True) -> Array:
        """dX = dY; learned: dP[:T] = Σ_batch dY, zero beyond T."""
        if self.kind == "learned":
            xp, (T, _) = self.xp, self._cache
            dP = self.storage(xp.sum(dY, axis=0))  # (T, dim)
            if T < self.max_len:
                dP = xp.concat([dP, xp.zeros((self.max_len - T, self.dim), dtype=dP.dtype,
                                             device=device_of(dP))], axis=0)
            self.grads = {"weight": dP}
        return dY if need_dX else None

    def to_onnx(self, g, x):
        """``Add(x, Slice(P, 0, T))``, T read from the input."""
        steps = g.op("Slice", [g.op("Shape", [x], "shape"), g.ints([1], "start"), g.ints([2], "end")], "steps")
        rows = g.op("Slice", [g.const(self._table(), "positions"), g.ints([0], "zero"), steps, g.ints([0], "axis")],
                    "rows")
        return g.op("Add", [x, rows], "positioned")

    @classmethod
    def torch_module(cls, nn):
        """``nnkit.export.pytorch.PositionalEmbedding`` (PyTorch has no such module)."""
        return own_torch_class(PositionalEmbedding, nn, _positions_class)

    def to_torch(self, ctx):
        """:meth:`torch_module` holding P (a Parameter when learned, a buffer when sinusoidal)."""
        table = ctx.torch.zeros(self.max_len, self.dim, dtype=ctx.dtype)
        ctx.load(table, self._table())
        return self.torch_module(ctx.nn)(table, self.kind == "learned")

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        table = m.weight if m.learned else m.table
        layer = cls(table.shape[0], table.shape[1], "learned" if m.learned else "sinusoidal")
        return layer, ({"weight": ctx.array(table)} if m.learned else {}), \
            ({} if m.learned else {"table": ctx.array(table)})

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "max_len": self.max_len, "dim": self.dim, "kind": self.kind}

    def __repr__(self):
        return f"PositionalEmbedding({self.max_len}, {self.dim}" + \
            (", kind='sinusoidal')" if self.kind == "sinusoidal" else ")")


class TransformerBlock(Layer):
    r"""The pre-norm Transformer block (GPT-2's, nanoGPT's ``Block``, PyTorch's
    ``nn.TransformerEncoderLayer(norm_first=True)``) on X, Y (B, T, E):

        H = X + Drop(MHA(LN₁(X))),     Y = H + Drop(W₂·GELU(W₁·LN₂(H) + b₁) + b₂),

    with W₁ (E, r·E), W₂ (r·E, E), r = ``mlp_ratio``; GELU in its tanh form (nnkit's ``GELU``; the exact
    erf form is not offered, see ``GELU``).

    Backward, from dY: the two residual sums pass their gradient straight on and add their branch's,

        dH = dY + J_MLP(LN₂(H))ᵀ·dY,     dX = dH + J_MHA(LN₁(X))ᵀ·dH,

    each branch the backward passes of its layers, last to first.  The block is a composite layer: its parts
    are its ``children()`` — ``ln_1``, ``attn``, ``drop_1``, ``ln_2``, ``fc``, ``act``, ``proj``, ``drop_2`` —
    so their parameters are ``"{i}.attn.in_proj_weight"``, ``"{i}.fc.W"``, ... in the model's state dict and
    checkpoints, freezing, moves and clones see them without code of the block's own.
    """

    keeps_positions = True
    takes_mask = True  # the attention's key padding

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0,
                 causal: bool = False) -> None:
        super().__init__()
        E = check_size("embed_dim", embed_dim)
        self.mlp_ratio = check_size("mlp_ratio", mlp_ratio)
        self.dropout, self.causal = _check_rate("dropout", dropout), bool(causal)
        self.parts: dict[str, Any] = {
            "ln_1": LayerNorm(E), "attn": MultiHeadAttention(E, num_heads, causal=causal),
            "drop_1": Dropout(self.dropout), "ln_2": LayerNorm(E), "fc": Dense(E, self.mlp_ratio * E), "act": GELU(),
            "proj": Dense(self.mlp_ratio * E, E), "drop_2": Dropout(self.dropout)}

    @property
    def embed_dim(self):
        return self.parts["attn"].embed_dim

    @property
    def num_heads(self):
        return self.parts["attn"].num_heads

    def children(self):
        return list(self.parts.items())

    def input_shape(self):
        return (None, self.embed_dim)

    def output_shape(self, in_shape):
        return self.parts["attn"].output_shape(in_shape)

    def forward(self, X: Array, train: bool = True, mask: Array | None = None) -> Array:
        """H = X + Drop(MHA(LN₁(X))), Y = H + Drop(proj(GELU(fc(LN₂(H))))); the padding mask to the attention."""
        p = self.parts
        A = p["drop_1"].forward(p["attn"].forward(p["ln_1"].forward(X, train), train, mask=mask), train)
        H = X + A
        M = H
        for name in ("ln_2", "fc", "act", "proj", "drop_2"):
            M = p[name].forward(M, train)
        return H + M

    def backward(self, dY: Array, need_dX: bool = True) -> Array:
        """dH = dY + (the MLP branch's backward of dY); dX = dH + (the attention branch's backward of dH)."""
        p = self.parts
        d = dY
        for name in ("drop_2", "proj", "act", "fc", "ln_2"):
            d = p[name].backward(d, need_dX=True)
        dH = dY + d
        d = dH
        for name in ("drop_1", "attn", "ln_1"):
            d = p[name].backward(d, need_dX=True)
        return dH + d

    def explain_forward(self, report, i, X, Y):
        """The block's two residual sums, its output and its attention's weights P (batch, head, query, key)."""
        report.add(f"Y{i} = H + MLP(LN₂(H)),  H = X + MHA(LN₁(X))   [{report.tag(i, self)}]", Y, f"A{i}")
        report.add(f"P{i}: the attention weights (batch, head, query, key); each row sums to 1",
                   self.parts["attn"]._cache[5], f"P{i}")

    def to_onnx(self, g, x):
        """The parts' own nodes and the two residual ``Add``s."""
        a = x
        for name in ("ln_1", "attn", "drop_1"):
            a = g.layer(self.parts[name], a, name)
        h = g.op("Add", [x, a], "residual_1")
        m = h
        for name in ("ln_2", "fc", "act", "proj", "drop_2"):
            m = g.layer(self.parts[name], m, name)
        return g.op("Add", [h, m], "residual_2")

    onnx_lengths = True  # the attention reads the graph's padding mask

    @classmethod
    def torch_module(cls, nn):
        """``nnkit.export.pytorch.TransformerBlock``: ``nn.TransformerEncoderLayer`` with the masks."""
        return own_torch_class(TransformerBlock, nn, _block_class)

    def to_torch(self, ctx):
        """``nn.TransformerEncoderLayer(E, h, r·E, dropout, GELU(tanh), batch_first, norm_first)`` with these weights."""
        import functools

        p, nn, E = self.parts, ctx.nn, self.embed_dim
        gelu = functools.partial(nn.functional.gelu, approximate="tanh")  # not nn.GELU: no exact-GELU fast path
        layer = nn.TransformerEncoderLayer(E, self.num_heads, dim_feedforward=self.mlp_ratio * E,
                                           dropout=self.dropout, activation=gelu, batch_first=True, norm_first=True,
                                           layer_norm_eps=p["ln_1"].eps, dtype=ctx.dtype)
        attn = p["attn"].params
        for mod, name in ((layer.self_attn, "in_proj_weight"), (layer.self_attn, "in_proj_bias"),
                          (layer.self_attn.out_proj, "out_proj_weight"), (layer.self_attn.out_proj, "out_proj_bias")):
            ctx.load(getattr(mod, name.replace("out_proj_", "")), attn[name])
        for mod, part in ((layer.linear1, "fc"), (layer.linear2, "proj")):
            ctx.load(mod.weight, p[part].params["W"], transpose=True)
            ctx.load(mod.bias, p[part].params["b"])
        for mod, part in ((layer.norm1, "ln_1"), (layer.norm2, "ln_2")):
            ctx.load(mod.weight, p[part].params["gamma"])
            ctx.load(mod.bias, p[part].params["beta"])
        return self.torch_module(nn)(layer, self.causal)

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        layer = m.layer
        act = layer.activation
        tanh_gelu = getattr(act, "func", None) is ctx.nn.functional.gelu and \
            getattr(act, "keywords", {}).get("approximate") == "tanh"
        if not (layer.norm_first and tanh_gelu and layer.self_attn.batch_first and layer.linear1.bias is not None
                and layer.norm1.eps == layer.norm2.eps):
            raise ctx.refuse("nnkit's TransformerBlock is pre-norm (norm_first=True), batch_first, with biases and "
                             "GELU's tanh form")
        E = layer.self_attn.embed_dim
        ff = layer.linear1.out_features
        if ff % E:
            raise ctx.refuse(f"dim_feedforward ({ff}) must be a multiple of the width ({E})")
        block = cls(E, layer.self_attn.num_heads, mlp_ratio=ff // E, dropout=layer.dropout.p, causal=m.causal)
        for part in ("ln_1", "ln_2"):
            block.parts[part].eps = layer.norm1.eps
        a = layer.self_attn
        params = {"attn.in_proj_weight": ctx.array(a.in_proj_weight), "attn.in_proj_bias": ctx.array(a.in_proj_bias),
                  "attn.out_proj_weight": ctx.array(a.out_proj.weight),
                  "attn.out_proj_bias": ctx.array(a.out_proj.bias),
                  "fc.W": ctx.array(layer.linear1.weight).T, "fc.b": ctx.array(layer.linear1.bias),
                  "proj.W": ctx.array(layer.linear2.weight).T, "proj.b": ctx.array(layer.linear2.bias),
                  "ln_1.gamma": ctx.array(layer.norm1.weight), "ln_1.beta": ctx.array(layer.norm1.bias),
                  "ln_2.gamma": ctx.array(layer.norm2.weight), "ln_2.beta": ctx.array(layer.norm2.bias)}
        return block, params, {}

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "dropout": self.dropout, "causal": self.causal}

    def __repr__(self):
        extra = (f", mlp_ratio={self.mlp_ratio}" if self.mlp_ratio != 4 else "") + \
            (f", dropout={self.dropout:g}" if self.dropout else "") + (", causal=True" if self.causal else "")
        return f"TransformerBlock({self.embed_dim}, {self.num_heads}{extra})"
