"""``Embedding``: integer token ids to learned vectors, with its backward as a scatter-add written as a product."""
from __future__ import annotations

from typing import Any

from ..backends.functional import Array, device_of
from .core import Layer, ShapeError, check_size

__all__ = ["Embedding", "TiedDense"]


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


class TiedDense(Layer):
    r"""An output head that shares another layer's matrix — GPT's head tied to its token embedding:
    Y = X·Eᵀ (+ b), X (B, ..., D) → Y (B, ..., V), E (V, D) the ``weight`` of the layer at ``source`` in the same
    model (its index, or a path such as ``"0"`` or ``"2.emb"``), which must come before this one.

    The matrix is one parameter used in two places, so it receives the sum of both uses' gradients: the model adds
    this layer's share to the source's own (``Sequential.backward``),

        dE = dE_source + Σ_rows dYᵀ·X   (V, D),   db = Σ_rows dY   (V,),   dX = dY·E   (B, ..., D).

    Only ``b`` (with ``bias=True``) is this layer's own parameter; E is saved, loaded and updated once, as the
    source's.
    """

    keeps_positions = True

    def __init__(self, source: int | str = 0, bias: bool = False) -> None:
        super().__init__()
        if isinstance(source, bool) or not isinstance(source, (int, str)) or not str(source):
            raise TypeError(f"TiedDense source must be the index (or path, '2.emb') of the layer whose weight it "
                            f"shares, got {source!r}")
        self.tie_source = str(source)
        self.bias = bool(bias)
        self.param_names = ("b",) if self.bias else ()
        self.source: Any = None  # the layer holding E: set by the model (Sequential resolves tie_source)

    def tie(self, layer):
        """Share ``layer``'s ``weight`` (V, D): called by the model that holds both."""
        W = layer.param_shapes().get("weight")
        if W is None or len(W) != 2:
            raise ValueError(f"TiedDense source {self.tie_source!r} is {layer!r}, which has no (V, D) weight to share "
                             "(an Embedding has)")
        self.source = layer

    def _shape(self):
        if self.source is None:
            raise ShapeError(f"shares the weight of layer {self.tie_source!r} of its model: put it in a Sequential "
                             "with that layer first")
        return self.source.param_shapes()["weight"]

    def param_shapes(self):
        return {"b": (self._shape()[0],)} if self.bias else {}

    def build(self, backend, rng):
        super().build(backend, rng)
        if self.bias:
            self.params = {"b": self.xp.zeros((self._shape()[0],), dtype=backend.dtype, device=backend.device)}

    def input_shape(self):
        return None

    def output_shape(self, in_shape):
        V, D = self._shape()
        in_shape = tuple(in_shape)
        if not in_shape or in_shape[-1] not in (None, D):
            raise ShapeError(f"expects {D} features on the last axis (the width of layer {self.tie_source!r}'s weight)")
        return in_shape[:-1] + (V,)

    def forward(self, X: Array, train: bool = True) -> Array:
        """Y = X·Eᵀ (+ b), E read from the source layer (the same array it uses)."""
        E = self.compute(self.source.params["weight"])
        if train:
            self._cache = (X, E)
        Y = X @ E.T
        return Y + self.compute(self.params["b"]) if self.bias else Y

    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        """This use's share of dE = Σ_rows dYᵀ·X (in ``grads["weight"]``, summed into E's by the model), db, dX."""
        xp = self.xp
        X, E = self._cache
        V, D = E.shape
        dY2, X2 = xp.reshape(dY, (-1, V)), xp.reshape(X, (-1, D))
        self.grads = {"weight": dY2.T @ X2}
        if self.bias:
            self.grads["b"] = xp.sum(dY2, axis=0)
        return dY @ E if need_dX else None

    def to_onnx(self, g, x):
        """``MatMul(x, Eᵀ)`` (+ b)."""
        y = g.op("MatMul", [x, g.const(self.xp.permute_dims(self.source.params["weight"], (1, 0)), "E_T")], "tied")
        return g.op("Add", [y, g.param(self, "b")], "tied_bias") if self.bias else y

    def to_torch(self, ctx):
        """``nn.Linear(D, V)`` whose weight is the source's (``to_torch`` shares the Parameter when the source is a
        layer of the model's top level)."""
        V, D = self._shape()
        m = ctx.nn.Linear(D, V, bias=self.bias, dtype=ctx.dtype)
        ctx.load(m.weight, self.source.params["weight"])
        if self.bias:
            ctx.load(m.bias, self.params["b"])
        return m

    @classmethod
    def torch_classes(cls, nn):
        """``nn.Linear`` — when its weight is an earlier module's Parameter (:meth:`tied_from_torch`); a Linear of its
        own is a ``Dense``."""
        return (nn.Linear,)

    @classmethod
    def tied_from_torch(cls, m, shared, ctx):
        """A ``Linear`` whose ``weight`` is the Parameter of the module at index ``shared["weight"]``; else None."""
        if type(m) is not ctx.nn.Linear or set(shared) != {"weight"}:
            return None
        bias = m.bias is not None
        return cls(shared["weight"], bias=bias), ({"b": ctx.array(m.bias)} if bias else {}), {}

    @classmethod
    def from_torch(cls, m, ctx):
        raise ctx.refuse("a Linear of its own is a Dense; a TiedDense is a Linear whose weight is an earlier "
                         "module's")

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "source": self.tie_source, "bias": self.bias}

    def __repr__(self):
        return f"TiedDense({self.tie_source!r}" + (", bias=True)" if self.bias else ")")
