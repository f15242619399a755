"""Element-wise and row-wise activations, each with its derivative beside it.

A = f(Z) with Z, A of shape (B, n).  ``backward(dA)`` returns
dZ = ∂L/∂Z = f'(Z) ⊙ dA (⊙: element-wise product) — except ``Softmax``, whose
Jacobian couples the units of a row and is applied as a batched
Jacobian-vector product.
"""
from __future__ import annotations

import math
import numbers

from ..backends import functional as F
from .core import Layer, own_torch_class

__all__ = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax", "Identity", "GELU", "SiLU", "ELU", "Softplus",
           "ACTIVATIONS", "get_activation"]


class _Elementwise(Layer):
    """An element-wise activation A = f(Z): its formula and derivative as text (for ``explain``), its ONNX
    operator and its PyTorch module by name; subclasses with settings (α) override the ways out."""

    formula: str | None = None     # "σ(Z)": what explain prints for the forward pass
    derivative: str | None = None  # "σ'(Z) = A ⊙ (1 − A)": and for the backward pass
    onnx_op: str | None = None     # the ONNX operator computing f, when one does
    torch_name: str | None = None  # the torch.nn module computing f, when one does
    keeps_positions = True

    def to_onnx(self, g, x):
        """The operator ``onnx_op`` on x."""
        return g.op(self.onnx_op, [x])

    def to_torch(self, ctx):
        """The ``torch.nn`` module ``torch_name``."""
        return getattr(ctx.nn, self.torch_name)()

    @classmethod
    def torch_classes(cls, nn):
        return (getattr(nn, cls.torch_name),) if cls.torch_name else ()

    @classmethod
    def from_torch(cls, m, ctx):
        return cls(), {}, {}

    def explain_forward(self, report, i, X, Y):
        report.add(f"A{i} = {self.formula} of Z{i - 1}   [{report.tag(i, self)}]", Y, f"A{i}")

    def explain_backward(self, report, i, dY, need_dX):
        """f'(Z) as this backward pass forms it (the backward of ones), then dZ = dA ⊙ f'(Z)."""
        report.add(f"f'(Z) of layer {i}: {self.derivative}", self.backward(self.xp.ones_like(dY), need_dX=True),
                   f"fprime{i}")
        dX = self.backward(dY, need_dX=need_dX)
        report.add(f"dZ{i - 1} = dA{i} ⊙ f'(Z)   [{report.tag(i, self)}]", dX, f"dZ{i - 1}")
        return dX


class _Sloped(_Elementwise):
    """An element-wise activation with one setting α (LeakyReLU, ELU): the forward pass keeps the slope f'(Z), the
    backward pass is dZ = dA ⊙ f'(Z); α goes to the ONNX operator's ``alpha`` and to the PyTorch module (whose
    argument is ``torch_alpha``: ``negative_slope`` for LeakyReLU), and into the config."""

    torch_alpha = "alpha"

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ f'(Z), f'(Z) as the forward pass kept it (the class docstring derives it); shapes (B, n)."""
        return dA * self._cache

    def to_onnx(self, g, x):
        """The operator ``onnx_op`` with ``alpha``."""
        return g.op(self.onnx_op, [x], alpha=self.alpha)

    def to_torch(self, ctx):
        """The ``torch.nn`` module ``torch_name`` with α."""
        return getattr(ctx.nn, self.torch_name)(self.alpha)

    @classmethod
    def from_torch(cls, m, ctx):
        return cls(getattr(m, cls.torch_alpha)), {}, {}

    def config(self):
        return {"type": type(self).__name__, "alpha": self.alpha}


class Sigmoid(_Elementwise):
    """A = σ(Z) = 1/(1+e^{−Z}) (stable for any Z).  Backward: dZ = dA ⊙ A ⊙ (1 − A)."""

    formula, derivative = "σ(Z)", "σ'(Z) = A ⊙ (1 − A)"
    onnx_op = "Sigmoid"
    torch_name = "Sigmoid"

    def forward(self, Z, train=True):
        """A = σ(Z); shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        A = F.sigmoid(self.xp, Z)
        if train:
            self._cache = A
        return A

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ A ⊙ (1 − A), shapes (B, n)."""
        A = self._cache
        return dA * (A * (1.0 - A))


class Tanh(_Elementwise):
    """A = tanh(Z).  Backward: dZ = dA ⊙ (1 − A²)."""

    formula, derivative = "tanh(Z)", "tanh'(Z) = 1 − A²"
    onnx_op = "Tanh"
    torch_name = "Tanh"

    def forward(self, Z, train=True):
        """A = tanh(Z); shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        A = self.xp.tanh(Z)
        if train:
            self._cache = A
        return A

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ (1 − A²), shapes (B, n)."""
        A = self._cache
        return dA * (1.0 - A * A)


class ReLU(_Elementwise):
    """A = max(Z, 0).  Backward: dZ = dA ⊙ [Z > 0] (the subgradient 0 at Z = 0).

    The forward pass keeps only its output A; since A = max(Z, 0), [Z > 0] = [A > 0], formed as 0/1 in A's
    dtype in the backward pass, and dA is multiplied into that fresh array in place.  Measured in the M
    training step (784-1024-1024-10, batch 256; ``benchmarks``) this is ~5% faster on NumPy and ~10% on
    torch than keeping ``astype(Z > 0)`` from the forward pass and forming dA ⊙ mask in a new array: one
    activation-sized array fewer is written, kept and allocated.  (``xp.where`` is ~20× slower on NumPy.)
    """

    formula, derivative = "max(Z, 0)", "[Z > 0]"
    onnx_op = "Relu"
    torch_name = "ReLU"

    def forward(self, Z, train=True):
        """A = max(Z, 0); shapes (B, n).  Keeps A when ``train``."""
        A = self.xp.maximum(Z, 0.0)
        if train:
            self._cache = A
        return A

    def active(self):
        """[Z > 0] = [A > 0] of the last training forward pass, as 0/1 in A's dtype; shape (B, n)."""
        A = self._cache
        return self.xp.astype(A > 0, A.dtype)

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ [Z > 0] = dA ⊙ [A > 0]; shapes (B, n).  Where the backend has this product as one kernel
        (``xp.relu_grad``: PyTorch's ``threshold_backward``, 5–7× faster on the CPU than forming the indicator
        and multiplying), that kernel; the same values (where A ≤ 0 it gives 0 even for a NaN in dA, as PyTorch's
        own ReLU does)."""
        fused = F.own_kernel(self.xp, "relu_grad")
        if fused is not None:
            return fused(dA, self._cache)
        dZ = self.active()
        dZ *= dA  # in the indicator's fresh array
        return dZ


class LeakyReLU(_Sloped):
    """A = Z for Z > 0, α·Z otherwise, i.e. max(Z, α·Z) for 0 ≤ α < 1.

    Backward: dZ = dA ⊙ s with the slope s = α + (1 − α)·[Z > 0] (1 where Z > 0, else α).
    """

    formula, derivative = "max(Z, αZ)", "α + (1 − α)[Z > 0]"
    onnx_op, torch_name, torch_alpha = "LeakyRelu", "LeakyReLU", "negative_slope"

    def __init__(self, alpha=0.01):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha < 1.0:
            raise ValueError(f"LeakyReLU alpha must be a number in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, Z, train=True):
        """A = max(Z, α·Z); shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        xp = self.xp
        if train:
            self._cache = (1.0 - self.alpha) * xp.astype(Z > 0, Z.dtype) + self.alpha
        return xp.maximum(Z, self.alpha * Z)


class Softmax(Layer):
    """A_k = e^{Z_k} / Σ_j e^{Z_j} per row (stable).

    Backward: the Jacobian of one row is ∂A_k/∂Z_j = A_k(δ_kj − A_j), so the
    batched Jacobian-vector product is

        dZ = A ⊙ (dA − Σ_k (dA ⊙ A)_k)      (row sums kept as (B, 1)), shapes (B, n).

    For classification, feed logits to ``CrossEntropy`` instead of ending the
    model in Softmax: the pair's gradient is simply softmax(Z) − y.
    """

    keeps_positions = True

    def to_onnx(self, g, x):
        """``Softmax(axis=−1)``."""
        return g.op("Softmax", [x], axis=-1)

    def to_torch(self, ctx):
        """``nn.Softmax(dim=−1)``."""
        return ctx.nn.Softmax(dim=-1)

    torch_modules = ("Softmax",)

    @classmethod
    def from_torch(cls, m, ctx):
        if m.dim not in (1, -1):
            raise ctx.refuse(f"Softmax over dim={m.dim} (nnkit's is over the features, dim=1)")
        return cls(), {}, {}

    def forward(self, Z, train=True):
        """A = softmax(Z) per row; shapes (B, n), computed in float32 under a mixed policy.  Keeps what the
        backward pass needs when ``train``."""
        A = F.softmax(self.xp, self.storage(Z))
        if train:
            self._cache = A
        return self.compute(A)

    def backward(self, dA, need_dX=True):
        """dZ = A ⊙ (dA − rowsum(dA ⊙ A)), shapes (B, n) (float32 row sums under a mixed policy)."""
        A, dA = self._cache, self.storage(dA)
        return self.compute(A * (dA - self.xp.sum(dA * A, axis=-1, keepdims=True)))


class Identity(_Elementwise):
    """A = Z.  Backward: dZ = dA."""

    formula, derivative = "Z", "1"
    onnx_op = "Identity"
    torch_name = "Identity"

    def forward(self, Z, train=True):
        """A = Z; shapes (B, n).  Keeps what the backward pass needs when ``train``."""
        return Z

    def backward(self, dA, need_dX=True):
        """dZ = dA."""
        return dA


class Abs(_Elementwise):
    r"""A = |Z|, element-wise (a siamese network's |a − b|).

    Backward: dZ = dA ⊙ sign(Z) — with sign(0) = 0, the subgradient PyTorch's autograd takes at the kink.
    """

    formula, derivative = "|Z|", "sign(Z)"
    onnx_op = "Abs"

    def forward(self, Z, train=True):
        """A = |Z|; keeps sign(Z) when ``train``."""
        if train:
            self._cache = self.xp.sign(Z)
        return self.xp.abs(Z)

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ sign(Z)."""
        return dA * self._cache

    @classmethod
    def torch_module(cls, nn):
        """PyTorch has no module for it: ``nnkit.export.pytorch.Abs`` (forward: ``x.abs()``)."""
        return own_torch_class(cls, nn, _abs_torch_class)

    def to_torch(self, ctx):
        return self.torch_module(ctx.nn)()

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)


def _abs_torch_class(nn):
    class Abs(nn.Module):
        """|x|, nnkit's Abs layer."""

        def forward(self, x):
            return x.abs()

    return Abs


class GELU(_Elementwise):
    r"""Gaussian error linear unit (Hendrycks & Gimpel, 2016), in its tanh form:

        A = ½·Z·(1 + t),   t = tanh(u),   u = c·(Z + 0.044715·Z³),   c = √(2/π).

    Backward: dZ = dA ⊙ (½(1 + t) + ½·Z·(1 − t²)·c·(1 + 3·0.044715·Z²)), shapes (B, n).

    Only ``approximate="tanh"`` is offered: the exact form Z·Φ(Z) needs erf, which the Array API
    standard lacks, and an erf written in array-API code would not be exact to float64 round-off
    over the whole line (1 − erf cancels for negative Z), so nnkit does not pretend it is.
    """

    formula, derivative = "½Z(1 + tanh(c(Z + 0.044715Z³)))", "½(1 + t) + ½Z(1 − t²)c(1 + 0.134145Z²)"

    _C, _K = math.sqrt(2.0 / math.pi), 0.044715

    def __init__(self, approximate="tanh"):
        super().__init__()
        if approximate != "tanh":
            raise ValueError(f"GELU(approximate={approximate!r}): only 'tanh' is offered (the exact form needs "
                             "erf, which the Array API standard lacks)")
        self.approximate = approximate

    def forward(self, Z, train=True):
        """A = ½Z(1 + tanh(c(Z + 0.044715Z³))); shapes (B, n).  Keeps Z and t when ``train``."""
        t = self.xp.tanh(self._C * (Z + self._K * (Z * Z * Z)))
        if train:
            self._cache = (Z, t)
        return 0.5 * Z * (1.0 + t)

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ (½(1 + t) + ½Z(1 − t²)c(1 + 3·0.044715Z²)); shapes (B, n)."""
        Z, t = self._cache
        return dA * (0.5 * (1.0 + t) + (0.5 * self._C) * Z * (1.0 - t * t) * (1.0 + (3.0 * self._K) * (Z * Z)))

    def to_onnx(self, g, x):
        """½·x·(1 + tanh(c·(x + 0.044715·x³))): the same operations in the same order as the forward pass."""
        z3 = g.op("Mul", [g.op("Mul", [x, x]), x])
        u = g.op("Mul", [g.const(self._C, "c"), g.op("Add", [x, g.op("Mul", [g.const(self._K, "k"), z3])])])
        t = g.op("Tanh", [u])
        return g.op("Mul", [g.op("Mul", [g.const(0.5, "half"), x]), g.op("Add", [g.const(1.0, "one"), t])], "gelu")

    def to_torch(self, ctx):
        """``nn.GELU(approximate="tanh")``."""
        return ctx.nn.GELU(approximate="tanh")

    @classmethod
    def torch_classes(cls, nn):
        return (nn.GELU,)

    @classmethod
    def from_torch(cls, m, ctx):
        if m.approximate != "tanh":
            raise ctx.refuse("GELU(approximate='none') needs erf; nnkit offers GELU(approximate='tanh') only")
        return cls(), {}, {}

    def config(self):
        return {"type": type(self).__name__, "approximate": self.approximate}


class SiLU(_Elementwise):
    """Sigmoid linear unit (swish): A = Z·σ(Z).  Backward: dZ = dA ⊙ σ(Z)·(1 + Z·(1 − σ(Z)))."""

    formula, derivative = "Z·σ(Z)", "σ(Z)(1 + Z(1 − σ(Z)))"
    torch_name = "SiLU"

    def to_onnx(self, g, x):
        """x·Sigmoid(x)."""
        return g.op("Mul", [x, g.op("Sigmoid", [x])], "silu")

    def forward(self, Z, train=True):
        """A = Z·σ(Z); shapes (B, n).  Keeps Z and σ(Z) when ``train``."""
        sig = F.sigmoid(self.xp, Z)
        if train:
            self._cache = (Z, sig)
        return Z * sig

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ σ(Z)(1 + Z(1 − σ(Z))); shapes (B, n)."""
        Z, sig = self._cache
        return dA * (sig * (1.0 + Z * (1.0 - sig)))


class ELU(_Sloped):
    """Exponential linear unit (Clevert et al., 2016): A = Z for Z > 0, α·(e^Z − 1) otherwise.

    Backward: dZ = dA ⊙ (1 for Z > 0, α·e^Z otherwise); e^Z − 1 is computed as expm1 (exact near 0).
    """

    formula, derivative = "Z if Z > 0 else α(e^Z − 1)", "1 if Z > 0 else A + α"
    onnx_op, torch_name = "Elu", "ELU"

    def __init__(self, alpha=1.0):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1e6 \
                or not math.isfinite(alpha):
            raise ValueError(f"ELU alpha must be a positive number, got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, Z, train=True):
        """A = Z where Z > 0, α·expm1(Z) elsewhere; shapes (B, n)."""
        xp = self.xp
        neg = self.alpha * xp.expm1(xp.minimum(Z, 0.0))  # min(Z, 0): no overflow for large positive Z
        positive = Z > 0
        if train:
            self._cache = xp.where(positive, xp.ones_like(Z), neg + self.alpha)
        return xp.where(positive, Z, neg)


class Softplus(_Elementwise):
    """A = log(1 + e^Z) (stable for any Z).  Backward: dZ = dA ⊙ σ(Z)."""

    formula, derivative = "log(1 + e^Z)", "σ(Z)"

    def to_onnx(self, g, x):
        """Relu(x) + Log(1 + Exp(−|x|)): the stable form the forward pass uses."""
        e = g.op("Exp", [g.op("Neg", [g.op("Abs", [x])])])
        return g.op("Add", [g.op("Relu", [x]), g.op("Log", [g.op("Add", [e, g.const(1.0, "one")])])], "softplus")

    def to_torch(self, ctx):
        """``nn.Softplus()`` (β = 1; PyTorch switches to x above its threshold 20, where the two differ by
        less than 2·10⁻⁹)."""
        return ctx.nn.Softplus()

    @classmethod
    def torch_classes(cls, nn):
        return (nn.Softplus,)

    @classmethod
    def from_torch(cls, m, ctx):
        if m.beta != 1:
            raise ctx.refuse(f"Softplus with beta={m.beta} (nnkit's Softplus has β = 1)")
        return cls(), {}, {}

    def forward(self, Z, train=True):
        """A = softplus(Z) = max(Z, 0) + log1p(e^{−|Z|}); shapes (B, n)."""
        if train:
            self._cache = Z
        return F.softplus(self.xp, Z)

    def backward(self, dA, need_dX=True):
        """dZ = dA ⊙ σ(Z); shapes (B, n)."""
        return dA * F.sigmoid(self.xp, self._cache)


ACTIVATIONS = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "softmax": Softmax,
    "identity": Identity,
    "linear": Identity,
    "gelu": GELU,
    "silu": SiLU,
    "swish": SiLU,
    "elu": ELU,
    "softplus": Softplus,
    "abs": Abs,
}


def get_activation(name):
    """An activation layer from its name (``"relu"``, ``"tanh"``, ...)."""
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}: expected one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None
