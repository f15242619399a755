"""Layers with hand-derived, batched backward passes.

Conventions (batch-first): X is (B, in), W is (in, out), b is (out,),
Z = X·W + b is (B, out).  ``forward`` keeps exactly what ``backward`` needs;
``backward(dY)`` receives ∂L/∂Y (same shape as the output), stores the
parameter gradients in ``self.grads`` and returns ∂L/∂X (or ``None`` when the
model says nobody needs it).
"""
from __future__ import annotations

import numbers

from .init import get_initializer

__all__ = ["Layer", "Dense", "LAYER_TYPES", "layer_from_config", "check_widths"]


def check_size(name, value):
    """A layer size must be a positive integer (``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


LAYER_TYPES = {}  # name -> Layer subclass: every subclass registers itself (see Layer.__init_subclass__)


class Layer:
    """Base class: a differentiable map from (B, in) to (B, out).

    Subclasses set ``param_names`` and implement ``forward``/``backward``.
    ``params`` and ``grads`` map a parameter's name to its array; ``grads`` are those of the
    last ``backward`` (a training step reuses them as scratch space for the update).
    """

    param_names: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LAYER_TYPES.setdefault(cls.__name__, cls)  # checkpoints rebuild layers by this name

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.xp = None
        self._cache = None

    def build(self, backend, rng, in_features):
        """Create parameters on ``backend`` (drawing from host ``rng``); return the output width."""
        self.xp = backend.xp
        return in_features

    def output_features(self, in_features):
        """The output width for an input width (no parameters created)."""
        return in_features

    def param_shapes(self, in_features):
        """``{name: shape}`` of the parameters ``build`` would create for this input width (none here)."""
        return {}

    def forward(self, X, train=True):
        """The layer's output Y (B, out) for X (B, in); with ``train`` it keeps what ``backward`` needs."""
        raise NotImplementedError

    def backward(self, dY, need_dX=True):
        """Given dY = ∂L/∂Y (B, out): store ∂L/∂param in ``grads``, return ∂L/∂X (B, in) (or None)."""
        raise NotImplementedError

    def config(self):
        """Everything needed to rebuild the layer (without its weights)."""
        return {"type": type(self).__name__}

    def __getstate__(self):
        # the namespace is a module (not picklable) and the cache is a training-time scratch value;
        # Sequential.__setstate__ hands the namespace back
        state = dict(self.__dict__)
        state["xp"], state["_cache"] = None, None
        return state

    @property
    def n_params(self):
        return sum(_size(p) for p in self.params.values())

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

    Shapes: X (B, in), W (in, out), b (out,), Z (B, out).

    Backward, for dZ = ∂L/∂Z of shape (B, out) — the batched chain rule
    ∂L/∂W_ij = Σ_n X_ni ∂L/∂Z_nj, written as matrix products:

    * ``dW = Xᵀ·dZ``       (in, out)
    * ``db = Σ_batch dZ``   (out,)   — the bias is broadcast over the batch
    * ``dX = dZ·Wᵀ``        (B, in)  — skipped for the model's first layer

    ``init`` names the weight initialiser (see :mod:`nnkit.init`); ``b`` starts at 0.
    """

    param_names = ("W", "b")

    def __init__(self, in_features, out_features, init="glorot_uniform"):
        super().__init__()
        self.in_features = check_size("in_features", in_features)
        self.out_features = check_size("out_features", out_features)
        self._init_fn = get_initializer(init)
        self.init = init

    def build(self, backend, rng, in_features):
        super().build(backend, rng, in_features)
        W = self._init_fn(rng, self.in_features, self.out_features)
        W = backend.asarray(backend.host_float64(W), dtype=backend.dtype)
        if tuple(W.shape) != (self.in_features, self.out_features):
            raise ValueError(
                f"initializer {self.init!r} returned shape {tuple(W.shape)}, "
                f"expected ({self.in_features}, {self.out_features})"
            )
        b = self.xp.zeros((self.out_features,), dtype=backend.dtype, device=backend.device)
        self.params = {"W": W, "b": b}
        return self.out_features

    def output_features(self, in_features):
        return self.out_features

    def param_shapes(self, in_features):
        return {"W": (self.in_features, self.out_features), "b": (self.out_features,)}

    def forward(self, X, train=True):
        """Z = X·W + b; X (B, in) -> Z (B, out). Keeps X for the backward pass when training."""
        if train:
            self._cache = X
        Z = X @ self.params["W"]
        Z += self.params["b"]  # in place on the fresh product (a rebinding on immutable arrays)
        return Z

    def backward(self, dZ, need_dX=True):
        """dW = Xᵀ·dZ (in×out), db = Σ_batch dZ (out,), returns dX = dZ·Wᵀ (B×in) or None."""
        X = self._cache
        self.grads = {"W": X.T @ dZ, "b": self.xp.sum(dZ, axis=0)}
        return dZ @ self.params["W"].T if need_dX else None

    def __repr__(self):
        init = "" if self.init == "glorot_uniform" else f", init={self.init!r}"
        return f"Dense({self.in_features}, {self.out_features}{init})"

    def config(self):
        cfg = {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features}
        if isinstance(self.init, str):
            cfg["init"] = self.init
        return cfg


def check_widths(layers):
    """(input width, output width) of a stack; a Dense whose input does not fit the previous output is an error."""
    width = None
    first = None
    for i, layer in enumerate(layers):
        in_f = getattr(layer, "in_features", None)
        if in_f is not None:
            if width is not None and in_f != width:
                raise ValueError(
                    f"layer {i} {layer!r} expects {in_f} input features but the layer before it "
                    f"gives {width}"
                )
            if first is None:
                first = in_f
            width = layer.output_features(in_f)
        elif width is not None:
            width = layer.output_features(width)
    if first is None:
        raise ValueError("Sequential needs at least one Dense layer to know its input width")
    return first, width


def layer_from_config(cfg):
    """Rebuild a layer (without weights) from ``layer.config()``."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}: expected one of {', '.join(LAYER_TYPES)}")
    return LAYER_TYPES[kind](**cfg)
