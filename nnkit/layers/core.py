"""Layers with hand-derived, batched backward passes: the base class, Dense, Residual and Dropout.

Conventions (batch-first): every layer maps X of shape (B, *in_shape) to Y of shape (B, *out_shape) —
tables (B, features), signals (B, C, L), images (B, C, H, W).  For Dense, X is (B, in), W is (in, out),
b is (out,), Z = X·W + b is (B, out).  ``forward`` keeps exactly what ``backward`` needs;
``backward(dY)`` receives ∂L/∂Y (same shape as the output), stores the parameter gradients in
``self.grads`` and returns ∂L/∂X (or ``None`` when the model says nobody needs it).

A layer's parameters are fixed by its arguments (a Dense by its widths, a Conv1D by its channels and
kernel), never by the data: ``param_shapes()`` and ``build`` need no input shape.  Shapes are checked by
``output_shape(in_shape)`` (sizes not known yet are None), which the model runs on its declared
``input_shape`` and on every new batch shape, naming the layer where they disagree.
"""
from __future__ import annotations

import numbers
from typing import Any

from ..backends import functional as F
from ..backends.functional import Array
from .init import get_initializer
from .graph import ShapeError, call_layer, fmt_shape  # noqa: F401  (ShapeError, fmt_shape: re-exported)

__all__ = ["Layer", "Dense", "Residual", "Dropout", "LAYER_TYPES", "layer_from_config", "infer_shapes",
           "ShapeError", "check_input_shape", "fmt_shape"]


def check_size(name, value):
    """A layer size must be a positive integer (``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


LAYER_TYPES: dict[str, type] = {}  # name -> Layer subclass: every subclass registers itself (see Layer.__init_subclass__)


def own_torch_class(owner, nn, make):
    """``owner``'s PyTorch module class — for a layer PyTorch has no module of — built once by ``make(nn)`` (torch is
    imported only when asked) and named ``nnkit.export.pytorch.<name>``, so a pickled module unpickles by name."""
    if "_torch_class" not in owner.__dict__:
        made = make(nn)
        made.__module__, made.__qualname__ = "nnkit.export.pytorch", made.__name__
        owner._torch_class = made
    return owner._torch_class


class Layer:
    """Base class: a differentiable map from (B, *in_shape) to (B, *out_shape).

    Subclasses set ``param_names`` (trained) and ``buffer_names`` (carried, saved and moved with the
    model, never trained: running statistics) and implement ``forward``/``backward``.
    ``params``, ``buffers`` and ``grads`` map a name to its array; ``grads`` are those of the last
    ``backward`` (a training step reuses them as scratch space for the update).

    Training and inference are told apart by ``forward(X, train=...)``: ``fit`` and ``train_step`` pass
    True, ``predict``, ``evaluate`` and validation pass False.  A layer that draws random numbers in
    training (``Dropout``) sets ``needs_random`` and calls ``self.random(shape)``, which the model wires
    to its device generator.
    """

    param_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()
    needs_random = False
    trainable = True  # False (on an instance): its parameters get no update and no optimizer moments
    takes_mask = False  # forward(X, train, mask=M) takes the padding mask M (B, T) of variable-length sequences
    keeps_positions = False  # the output keeps the input's positions (B, T, ...) one to one (last-axis layers)
    # Why this layer cannot take variable-length sequences' padding, and what to use instead: the refusal's
    # reason when the padding mask would reach it (None: the generic one, which says where the mask may go).
    padding_refusal: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):  # shared bases (_Conv, _Pool, ...) are not layers of their own
            LAYER_TYPES.setdefault(cls.__name__, cls)  # checkpoints rebuild layers by this name

    def __init__(self):
        self.params = {}
        self.buffers = {}
        self.grads = {}
        self.xp = None
        self._cache = None
        self.random = None
        self.policy = None  # the model's precision policy (nnkit.precision), wired by the model

    def __call__(self, inputs):
        """Build a graph: this layer called on symbolic tensors (``nnkit.Input(...)``, or another call's output;
        a list for a merge layer) records a node and returns its output tensor (:mod:`nnkit.layers.graph`).
        Calling it at several nodes shares its parameters."""
        return call_layer(self, inputs)

    # -- precision: the two casts a layer may make (see nnkit.precision) ---------------------------------
    def compute(self, a):
        """``a`` in the model's compute dtype (bfloat16 under ``mixed_bfloat16``); unchanged without a policy."""
        p = self.policy
        if p is None or not p.casts or a.dtype == p.compute_dtype:
            return a
        return self.xp.astype(a, p.compute_dtype)

    def storage(self, a):
        """``a`` in the model's storage dtype (float32 under a mixed policy): where digits would be lost."""
        p = self.policy
        if p is None or not p.casts or a.dtype == p.storage_dtype:
            return a
        return self.xp.astype(a, p.storage_dtype)

    # -- what the model sees of a layer: its slots, its children's prefixed with their names ("attn.W") -------
    def children(self):
        """``[(name, layer)]``: the layers inside this one, for a composite layer (a block built of layers:
        ``Residual``'s "0", "1", ...; ``TransformerBlock``'s "ln_1", "attn", ...); none for a plain layer.
        Everything the model does with parameters — slots, freezing, building, shapes, checkpoints, moves,
        clones — walks these, so a composite layer needs no code of its own for it."""
        return []

    def slots(self):
        """``[(name, owner, kind, key)]``: every parameter (kind ``"params"``) and buffer (``"buffers"``)
        of this layer and the layers inside it (``"{child}.{name}"``), ``owner.<kind>[key]`` holding the array."""
        own = [(n, self, "params", n) for n in self.param_names] + \
            [(n, self, "buffers", n) for n in self.buffer_names]
        return own + [(f"{c}.{n}", owner, kind, key) for c, child in self.children()
                      for n, owner, kind, key in child.slots()]

    def sublayers(self):
        """This layer and every layer inside it."""
        return [self] + [s for _, child in self.children() for s in child.sublayers()]

    def frozen_names(self):
        """The names (as in :meth:`slots`) of the parameters that get no update: all of them when this layer
        is frozen (``trainable = False``), else those of its frozen children."""
        if not self.trainable:
            return {n for n, _, kind, _ in self.slots() if kind == "params"}
        return {f"{c}.{n}" for c, child in self.children() for n in child.frozen_names()}

    def reset(self, xp):
        """Forget the training scratch (cache, gradients) and use namespace ``xp`` (after a move or unpickling)."""
        for layer in self.sublayers():
            layer.xp, layer._cache, layer.grads = xp, None, {}
            layer.policy = None

    def build(self, backend, rng):
        """Create parameters on ``backend`` (drawing from host ``rng``); a composite layer's children are built
        here, in order."""
        self.xp = backend.xp
        for _, child in self.children():
            child.build(backend, rng)

    def input_shape(self):
        """The input shape (without the batch) this layer's arguments fix — ``(in,)`` for Dense(in, out),
        ``(C, None)`` for a Conv1D on C channels — or None when they fix nothing (element-wise layers)."""
        return None

    def output_shape(self, in_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """The output shape (without the batch) for input shape ``in_shape`` (a tuple; None for a size not
        known yet); a ShapeError when this layer cannot take it.  Creates nothing."""
        return tuple(in_shape)

    def param_shapes(self):
        """``{name: shape}`` of the parameters and buffers ``build`` creates (fixed by the arguments); a
        composite layer's children's, prefixed with their names."""
        return {f"{c}.{n}": shape for c, child in self.children() for n, shape in child.param_shapes().items()}

    def output_mask(self, mask):
        """The padding mask (B, T) of this layer's output, given its input's: the same for a layer that keeps
        positions (``keeps_positions``: Dense, the activations, LayerNorm, Dropout, Embedding, a recurrent layer
        that returns sequences), None when the output has no positions left (a pooled or final state, a flattened
        sequence).  A layer that moves positions (a convolution over time) also returns None; a per-position
        loss after it is refused rather than scored on padding."""
        return mask if self.keeps_positions else None

    def forward(self, X: Array, train: bool = True) -> Array:
        """The layer's output Y (B, *out_shape) for X (B, *in_shape); with ``train`` it keeps what
        ``backward`` needs."""
        raise NotImplementedError

    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        """Given dY = ∂L/∂Y (B, *out_shape): store ∂L/∂param in ``grads``, return ∂L/∂X (B, *in_shape)
        (or None)."""
        raise NotImplementedError

    # -- the ways out: each layer declares its ONNX nodes, its PyTorch module (both directions) and what
    # ``explain`` prints for it; nnkit.export and nnkit.models.explanation walk the model and ask each layer ---
    to_onnx = None
    # ``to_onnx(self, g, x) -> name``: emit this layer applied to the ONNX tensor named ``x`` into the graph ``g``
    # (``nnkit.export.onnx.Graph``: ``g.op``, ``g.const``, ``g.param``, ``g.buffer``, ``g.layer`` for inner
    # layers) and return the output tensor's name.  None: the layer has no ONNX form (export refuses the model).

    to_torch = None
    # ``to_torch(self, ctx) -> torch.nn.Module``: PyTorch's module computing this layer, with its weights
    # (``nnkit.export.pytorch.ToTorch``: ``ctx.nn``, ``ctx.dtype``, ``ctx.rank`` (the input's rank without
    # the batch), ``ctx.load(tensor, array)``, ``ctx.module`` for inner layers).  None: no PyTorch counterpart.

    torch_modules: tuple[str, ...] = ()  # the names in ``torch.nn`` that ``from_torch`` takes into this layer

    @classmethod
    def torch_classes(cls, nn):
        """The PyTorch module classes :meth:`from_torch` takes (default: ``torch_modules`` looked up in ``nn``)."""
        return tuple(getattr(nn, name) for name in cls.torch_modules)

    @classmethod
    def from_torch(cls, m, ctx):
        """``(layer, params, buffers)`` for the PyTorch module ``m`` (one of :meth:`torch_classes`): the layer
        without weights and its host arrays keyed by parameter and buffer name.  ``ctx``
        (``nnkit.export.pytorch.FromTorch``): ``ctx.nn``, ``ctx.array(tensor)``, ``ctx.refuse(why)`` for a
        setting nnkit cannot express, ``ctx.layer(child)`` for inner modules."""
        raise NotImplementedError

    def explain_forward(self, report, i, X, Y):
        """Add this layer's forward lines to the explanation ``report`` (``report.add(formula, value, name)``):
        layer ``i`` took X and gave Y.  By default the first line of the class's docstring and Y."""
        doc = (type(self).__doc__ or "").strip().splitlines()
        report.add(f"Y{i} = {type(self).__name__}(…)   [{report.tag(i, self)}: {doc[0] if doc else ''}]", Y, f"A{i}")

    def explain_backward(self, report, i, dY, need_dX):
        """Run this layer's backward pass on dY = ∂L/∂Y for the explanation ``report``, add its lines and
        return dX.  By default every parameter gradient and dX = Jᵀ·dY."""
        dX = self.backward(dY, need_dX=need_dX)
        for name, owner, kind, key in self.slots():  # a composite layer's parts' gradients too ("dattn.W")
            g = owner.grads.get(key) if kind == "params" else None
            if g is not None:
                report.add(f"d{name} of layer {i}", g, f"d{name}{i}")
        if dX is not None:
            report.add(f"dX of layer {i} = J{i}ᵀ·dY   [{report.tag(i, self)}]", dX, f"dX{i}")
        return dX

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the layer (without its weights)."""
        return {"type": type(self).__name__}

    def __getstate__(self):
        # the namespace is a module (not picklable) and the cache is a training-time scratch value;
        # Sequential.__setstate__ hands the namespace back
        state = dict(self.__dict__)
        state["xp"], state["_cache"], state["random"], state["policy"] = None, None, None, None
        return state

    @property
    def n_params(self):
        """Trained numbers in this layer (and the layers inside it)."""
        return sum(_size(owner.params[key]) for _, owner, kind, key in self.slots() if kind == "params")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


def _size(a):
    n = 1
    for s in a.shape:
        n *= s

    return n


class Dense(Layer):
    r"""Fully connected layer: Z = X·W + b.

    Shapes: X (B, in), W (in, out), b (out,), Z (B, out); on sequences X (B, T, in) → Z (B, T, out), the
    same map at every position (the rows of dW's product are then all B·T positions).

    Backward, for dZ = ∂L/∂Z of shape (B, out) — the batched chain rule
    ∂L/∂W_ij = Σ_n X_ni ∂L/∂Z_nj, written as matrix products:

    * ``dW = Xᵀ·dZ``       (in, out)
    * ``db = Σ_batch dZ``   (out,)   — the bias is broadcast over the batch
    * ``dX = dZ·Wᵀ``        (B, in)  — skipped for the model's first layer

    ``init`` names the weight initialiser (see :mod:`nnkit.init`); ``b`` starts at 0.
    """

    param_names = ("W", "b")
    keeps_positions = True

    def __init__(self, in_features, out_features, init="glorot_uniform"):
        super().__init__()
        self.in_features = check_size("in_features", in_features)
        self.out_features = check_size("out_features", out_features)
        self._init_fn = get_initializer(init)
        self.init = init

    def build(self, backend, rng):
        super().build(backend, rng)
        W = self._init_fn(rng, self.in_features, self.out_features)
        W = backend.asarray(backend.host_float64(W), dtype=backend.dtype)
        if tuple(W.shape) != (self.in_features, self.out_features):
            raise ValueError(
                f"initializer {self.init!r} returned shape {tuple(W.shape)}, "
                f"expected ({self.in_features}, {self.out_features})"
            )
        b = self.xp.zeros((self.out_features,), dtype=backend.dtype, device=backend.device)
        self.params = {"W": W, "b": b}

    def input_shape(self):
        return (self.in_features,)

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if not in_shape or in_shape[-1] not in (None, self.in_features):
            hint = (f" on its last axis, (B, ..., {self.in_features}) (a Flatten() before it makes rows of all the "
                    "features)") if len(in_shape) > 1 else ""
            raise ShapeError(f"expects {self.in_features} input features{hint}")
        return in_shape[:-1] + (self.out_features,)

    def param_shapes(self):
        return {"W": (self.in_features, self.out_features), "b": (self.out_features,)}

    def forward(self, X, train=True):
        """Z = X·W_c + b_c; X (B, in) -> Z (B, out) — or (B, ..., in) -> (B, ..., out) on the last axis, every
        position alike — W_c, b_c the weights in the compute dtype (one cast per step under a mixed policy,
        kept for the backward pass).  Keeps X and W_c when training."""
        W = self.compute(self.params["W"])
        if train:
            self._cache = (X, W)
        return F.affine(self.xp, X, W, self.compute(self.params["b"]))

    def backward(self, dZ, need_dX=True):
        """dW = Xᵀ·dZ (in×out), db = Σ_batch dZ (out,), returns dX = dZ·W_cᵀ (B×in) or None.  Under a
        mixed policy these are computed in the compute dtype (the libraries accumulate 16-bit products and
        sums in float32 and round once); the model casts dW and db to float32 before anything reads them."""
        X, W = self._cache
        dX = dZ @ W.T if need_dX else None
        if X.ndim > 2:  # (B, ..., in): every position is a row of the product, dW = Σ_rows xᵀ·dz
            X, dZ = self.xp.reshape(X, (-1, self.in_features)), self.xp.reshape(dZ, (-1, self.out_features))
        self.grads = {"W": F.matmul_tn(self.xp, X, dZ), "b": self.xp.sum(dZ, axis=0)}  # Xᵀ·dZ
        return dX

    def to_onnx(self, g, x):
        """``MatMul(X, W) + b`` (W is (in, out), as nnkit stores it)."""
        return g.op("Add", [g.op("MatMul", [x, g.param(self, "W")]), g.param(self, "b")], "dense")

    def to_torch(self, ctx):
        """``nn.Linear(in, out)`` with ``weight`` = Wᵀ (PyTorch stores (out, in))."""
        m = ctx.nn.Linear(self.in_features, self.out_features, dtype=ctx.dtype)
        ctx.load(m.weight, self.params["W"], transpose=True)
        ctx.load(m.bias, self.params["b"])
        return m

    torch_modules = ("Linear",)

    @classmethod
    def from_torch(cls, m, ctx):
        if m.bias is None:
            raise ctx.refuse("a Linear without bias (nnkit's Dense always has one)")
        return cls(m.in_features, m.out_features), {"W": ctx.array(m.weight).T, "b": ctx.array(m.bias)}, {}

    def explain_forward(self, report, i, X, Y):
        a = f"A{i - 1}" if i else "X"
        report.add(f"Z{i} = {a}·W{i} + b{i}   [{report.tag(i, self)}]", Y, f"Z{i}")

    def explain_backward(self, report, i, dY, need_dX):
        dX = self.backward(dY, need_dX=need_dX)
        a = f"A{i - 1}" if i else "X"
        report.add(f"δ{i} = ∂L/∂Z{i}", dY, f"delta{i}")
        report.add(f"dW{i} = {a}ᵀ·δ{i}", self.grads["W"], f"dW{i}", note=report.named(f"{i}.W", self.grads["W"], "∂L/∂"))
        report.add(f"db{i} = Σ_batch δ{i}", self.grads["b"], f"db{i}")
        if dX is not None:
            report.add(f"d{a} = δ{i}·W{i}ᵀ", dX, f"dA{i - 1}")
        return dX

    def __repr__(self):
        init = "" if self.init == "glorot_uniform" else f", init={self.init!r}"
        return f"Dense({self.in_features}, {self.out_features}{init})"

    def config(self):
        cfg = {"type": type(self).__name__, "in_features": self.in_features, "out_features": self.out_features}
        if isinstance(self.init, str):
            cfg["init"] = self.init
        return cfg


def _residual_torch_class(nn):
    """The PyTorch module class of nnkit's Residual (``nnkit.export.pytorch.Residual``)."""
    class Residual(nn.Module):
        """y = x + f(x), f an ``nn.Sequential`` (nnkit's Residual block)."""

        def __init__(self, *layers):
            super().__init__()
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            """x + f(x)."""
            return x + self.body(x)

    return Residual


class Residual(Layer):
    r"""A residual block: Y = X + f(X), f the given layers applied in order (output width = input width).

    Backward: with dY = ∂L/∂Y (B, n), the skip path passes dY unchanged and f's path backpropagates
    it through the inner layers, so

        dX = dY + J_f(X)ᵀ·dY      (B, n)   — the inner layers' backward passes, last to first.

    Parameters and buffers nest: the inner layer j's ``W`` is ``"{i}.{j}.W"`` in the model's state dict.
    """

    def __init__(self, layers):
        super().__init__()
        layers = [layer_from_config(l) if isinstance(l, dict) else l for l in layers]
        if not layers:
            raise ValueError("Residual needs at least one layer (e.g. Residual([Dense(64, 64), ReLU()]))")
        for j, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Residual layer {j} is {layer!r}, not an nnkit Layer")
        self.layers = layers

    def children(self):
        return [(str(j), layer) for j, layer in enumerate(self.layers)]

    def input_shape(self):
        return self.layers[0].input_shape()

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        shape = infer_shapes(self.layers, in_shape, where="Residual: inner layer ")[-1]
        if len(shape) != len(in_shape) or any(a is not None and b is not None and a != b
                                               for a, b in zip(shape, in_shape)):
            raise ShapeError(f"needs its layers to keep the width and shape (Y = X + f(X)); they map {fmt_shape(in_shape)} "
                             f"to {fmt_shape(shape)}")
        return in_shape

    @property
    def takes_mask(self):
        return any(layer.takes_mask for layer in self.layers)

    def output_mask(self, mask):
        """The inner layers' mask: a block keeps positions when each of its layers does."""
        return mask_through(self.layers, mask)

    def forward(self, X, train=True, mask=None):
        """Y = X + f(X); X, Y of the same shape (B, n) or (B, C, *spatial); the padding mask, if any, passed to
        the inner layers that take one."""
        return X + forward_through(self.layers, X, train, mask)

    def backward(self, dY, need_dX=True):
        """dX = dY + J_f(X)ᵀ·dY: dY through the inner layers (last to first), plus the skip path."""
        dF = dY
        for layer in reversed(self.layers):
            dF = layer.backward(dF, need_dX=True)
        return dY + dF

    def to_onnx(self, g, x):
        """The inner layers, then ``Add(X, f(X))``."""
        f = x
        for j, inner in enumerate(self.layers):
            f = g.layer(inner, f, str(j))
        return g.op("Add", [x, f], "residual")

    @classmethod
    def torch_module(cls, nn):
        """PyTorch has no residual container: ``nnkit.export.pytorch.Residual``, y = x + f(x) with f an
        ``nn.Sequential`` of the inner layers' modules (built once, on first use)."""
        return own_torch_class(cls, nn, _residual_torch_class)

    def to_torch(self, ctx):
        """The inner layers' modules inside :meth:`torch_module` (x + f(x))."""
        inner = []
        for j, layer in enumerate(self.layers):
            inner.append(ctx.module(layer, str(j)))
        return self.torch_module(ctx.nn)(*inner)

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        inner = [ctx.layer(c, str(j)) for j, c in enumerate(m.body)]
        params = {f"{j}.{k}": v for j, (_, p, _) in enumerate(inner) for k, v in p.items()}
        buffers = {f"{j}.{k}": v for j, (_, _, b) in enumerate(inner) for k, v in b.items()}
        return cls([layer for layer, _, _ in inner]), params, buffers

    def config(self):
        return {"type": type(self).__name__, "layers": [layer.config() for layer in self.layers]}

    def __repr__(self):
        return f"Residual([{', '.join(map(repr, self.layers))}])"


class Dropout(Layer):
    r"""Inverted dropout: in training Y = X ⊙ M / (1 − p) with M_ij ~ Bernoulli(1 − p); in inference Y = X.

    Backward (training): dX = dY ⊙ M / (1 − p)  (B, n) — the same mask, so the expected output and its
    gradient keep their scale and inference needs no rescaling.

    The mask is drawn **on the device**, from the model's device generator (``Backend.uniform``), with no
    host transfer per step.  That generator is seeded from the model's seed at the start of every epoch
    (a number drawn from the model's host generator, which checkpoints save), so a run resumed from a
    checkpoint draws the same masks as the uninterrupted run.  The same seed gives the same masks on
    NumPy and array-api-strict (both draw with NumPy's generator); PyTorch (per device), CuPy and JAX
    each use their own generator: reproducible there, but other masks than NumPy's.
    """

    needs_random = True
    keeps_positions = True

    def __init__(self, p=0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, X, train=True):
        """Training: Y = X ⊙ M/(1−p), M = [U ≥ p], U ~ Uniform[0, 1); inference: Y = X.  Shapes (B, n)."""
        if not train:
            return X
        if self.p == 0.0:
            self._cache = None
            return X
        xp = self.xp
        keep = xp.astype(self.random(tuple(X.shape), X.dtype) >= self.p, X.dtype)
        self._cache = keep * (1.0 / (1.0 - self.p))
        return X * self._cache

    def backward(self, dY, need_dX=True):
        """dX = dY ⊙ M/(1−p) (the forward pass's mask); shapes (B, n)."""
        return dY if self._cache is None else dY * self._cache

    def to_onnx(self, g, x):
        """``Identity`` (inference)."""
        return g.op("Identity", [x])

    def to_torch(self, ctx):
        """``nn.Dropout(p)``."""
        return ctx.nn.Dropout(self.p)

    torch_modules = ("Dropout",)

    @classmethod
    def from_torch(cls, m, ctx):
        return cls(m.p), {}, {}

    def config(self):
        return {"type": type(self).__name__, "p": self.p}


def infer_shapes(layers, in_shape, where="layer "):
    """``[in_shape, shape after layer 0, shape after layer 1, ...]`` (without the batch); a ValueError naming
    the layer (``where`` + its index) that cannot take the shape it gets."""
    shapes = [tuple(in_shape)]
    for i, layer in enumerate(layers):
        try:
            shapes.append(tuple(layer.output_shape(shapes[-1])))
        except ShapeError as exc:
            before = f"the layer before it gives {fmt_shape(shapes[-1])}" if i else \
                f"the input is {fmt_shape(shapes[-1])}"
            raise ShapeError(f"{where}{i} {layer!r} {exc}, but {before}") from None

    return shapes


def forward_through(layers, X, train, mask=None, each=None):
    """``layers`` applied in order to X; the padding mask (B, T) of variable-length sequences, when given, handed
    to the layers that take it (``takes_mask``) as each layer passes it on (:meth:`Layer.output_mask`).
    ``each(i, layer, X, Y)``, when given, sees every layer's input and output (``nnkit.models.explanation``)."""
    for i, layer in enumerate(layers):
        Y = layer.forward(X, train=train, mask=mask) if mask is not None and layer.takes_mask \
            else layer.forward(X, train=train)
        if each is not None:
            each(i, layer, X, Y)
        X = Y
        if mask is not None:
            mask = layer.output_mask(mask)

    return X


def mask_through(layers, mask):
    """The padding mask of ``layers``' output for an input mask: kept while each layer keeps positions, None once
    one does not (a pooled or final state, a flattened sequence)."""
    for layer in layers:
        if mask is None:
            return None
        mask = layer.output_mask(mask)

    return mask


def reads_padding(layers, in_shape):
    """The first of ``layers`` that would read the padding of variable-length sequences (B, T, ...) as data, or
    None when the padding mask reaches a layer that takes it (``takes_mask``: a recurrent layer, a pooling) or
    the output (a per-position output, scored at its valid positions) through layers that keep positions on an
    axis of their own.  Refused: a layer that moves or mixes positions without the mask (a flatten, a
    convolution over time), and a last-axis layer whose last axis is the positions ((B, T) floats into
    ``Dense``; token ids (B, T) go into a layer that ``takes_ids``)."""
    passed = object()
    shape = tuple(in_shape)
    for layer in layers:  # shape by shape, so that a layer refused here is refused before its shape check
        inner = getattr(layer, "layers", None)
        if inner is not None:  # a block: its own layers, in turn
            bad = reads_padding(inner, shape)
            if bad is not None:
                return bad
        elif not layer.takes_mask and (layer.output_mask(passed) is None
                                       or (len(shape) < 2 and not getattr(layer, "takes_ids", False))):
            return layer
        if layer.output_mask(passed) is None:  # taken: the padding ends here
            return None
        shape = infer_shapes([layer], shape)[-1]

    return None


def resolve_ties(layers):
    """Give every layer that shares another's weight (``tie_source``: a path such as "0" or "2.emb") that layer,
    and return ``[("{path}.weight", the sharing layer)]``; the source must come first (its backward runs last, after
    the sharer's share is formed)."""
    order, found = {}, {}

    def walk(named, prefix):
        for name, layer in named:
            path = f"{prefix}{name}"
            order[id(layer)], found[path] = len(order), layer
            walk(layer.children(), f"{path}.")

    walk(((str(i), layer) for i, layer in enumerate(layers)), "")
    ties = []
    for path, layer in found.items():
        src = getattr(layer, "tie_source", None)
        if src is None:
            continue
        source = found.get(src)
        if source is None or order[id(source)] >= order[id(layer)]:
            raise ValueError(f"layer {path} {layer!r} shares the weight of layer {src!r}, which is "
                             f"{'not a layer of this model' if source is None else 'not before it'}: name a layer "
                             "that comes first (e.g. the Embedding at 0)")
        layer.tie(source)
        ties.append((f"{src}.weight", layer))

    return ties


def check_input_shape(shape, layers):
    """The model's input shape (without the batch) as a tuple of positive ints and None (a size the data
    decides): ``shape`` when given (an int n means (n,)), else what the first layer's arguments fix (None when
    they fix nothing: the first batch decides).  A TypeError/ValueError for anything else."""
    if shape is None:
        return layers[0].input_shape() if layers else None
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool) and 0 < d <= 2**31)
            for d in shape):
        raise ValueError(f"input_shape must be a tuple of positive sizes without the batch, e.g. (64,) or "
                         f"(1, 40), got {shape!r}")
    return tuple(None if d is None else int(d) for d in shape)


def layer_from_config(cfg):
    """Rebuild a layer (without weights) from ``layer.config()``."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}: expected one of {', '.join(LAYER_TYPES)}")
    return LAYER_TYPES[kind](**cfg)
