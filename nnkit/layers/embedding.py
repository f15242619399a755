"""``Embedding``: integer token ids to learned vectors, with its backward as a scatter-add written as a product."""
from __future__ import annotations

from typing import Any

from ..functional import Array, device_of
from .core import Layer, ShapeError, check_size

__all__ = ["Embedding"]


class Embedding(Layer):
    r"""A lookup table: Y[b, t] = W[ids[b, t]] — ids (B, T) integers in [0, num_embeddings) → Y (B, T, dim)
    (or (B,) → (B, dim)).  ``weight`` W (num_embeddings, embedding_dim), drawn from N(0, 1) as PyTorch's
    ``nn.Embedding``; with ``padding_idx`` that row starts at zero and never changes (its gradient is zero).

    Backward: every position adds its dY row to the row of W it read — a scatter-add, which the Array API has
    not, written as the product of the one-hot matrix of the ids with dY:

        dW = onehot(ids)ᵀ · dY     (num_embeddings, dim), onehot (B·T, num_embeddings), dY as (B·T, dim),

    so a token seen k times in the batch receives the sum of its k rows (the same numbers a scatter-add gives,
    up to the order of the sum); no dX (ids are not differentiable).  The one-hot matrix is B·T × num_embeddings
    floats: fine for characters and small vocabularies; large vocabularies want a backend's own scatter-add.
    """

    param_names = ("weight",)
    takes_ids = True  # the data path keeps the model's input as integer ids for this first layer
    keeps_positions = True

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings = check_size("num_embeddings", num_embeddings)
        self.embedding_dim = check_size("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or \
                    not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be an id in [0, {self.num_embeddings}) or None, got {padding_idx!r}")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx

    def build(self, backend, rng):
        super().build(backend, rng)
        W = rng.standard_normal((self.num_embeddings, self.embedding_dim))
        if self.padding_idx is not None:
            W[self.padding_idx] = 0.0
        self.params = {"weight": backend.asarray(W, dtype=backend.dtype)}

    def param_shapes(self):
        return {"weight": (self.num_embeddings, self.embedding_dim)}

    def input_shape(self):
        return (None,)

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) > 1:
            raise ShapeError("takes (B, T) token ids (one integer per position)")
        return in_shape + (self.embedding_dim,)

    def forward(self, X: Array, train: bool = True) -> Array:
        """Y = W[ids]: (B, T) ids → (B, T, dim), by one ``take`` of the flattened ids; keeps the ids."""
        xp = self.xp
        flat = xp.reshape(X, (-1,))
        if train:
            self._cache = (flat, tuple(X.shape))
        Y = xp.take(self.compute(self.params["weight"]), flat, axis=0)
        return xp.reshape(Y, tuple(X.shape) + (self.embedding_dim,))

    def backward(self, dY: Array, need_dX: bool = True) -> None:
        """dW = onehot(ids)ᵀ·dY (num_embeddings × dim); the padding row's gradient is zero; no dX."""
        xp = self.xp
        flat, shape = self._cache
        dY2 = xp.reshape(self.storage(dY), (-1, self.embedding_dim))
        rows = xp.arange(self.num_embeddings, device=device_of(flat))
        onehot = xp.astype(flat[:, None] == rows[None, :], dY2.dtype)  # (B·T, num)
        dW = onehot.T @ dY2
        if self.padding_idx is not None:
            keep = xp.astype(rows != self.padding_idx, dW.dtype)
            dW = dW * keep[:, None]
        self.grads = {"weight": dW}
        return None

    def to_onnx(self, g, x):
        """``Gather(W, ids)``."""
        return g.op("Gather", [g.param(self, "weight"), x], "embedding", axis=0)

    def to_torch(self, ctx):
        """``nn.Embedding(num, dim, padding_idx)`` with these weights."""
        m = ctx.nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx, dtype=ctx.dtype)
        ctx.load(m.weight, self.params["weight"])
        return m

    torch_modules = ("Embedding",)

    @classmethod
    def from_torch(cls, m, ctx):
        if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
            raise ctx.refuse("nnkit's Embedding has no max_norm, scale_grad_by_freq or sparse gradients")
        return cls(m.num_embeddings, m.embedding_dim, m.padding_idx), {"weight": ctx.array(m.weight)}, {}

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "padding_idx": self.padding_idx}

    def __repr__(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad})"
