"""Optimizers, gradient clipping and penalties — and, at the same address, the learning-rate schedules
(``nnkit.optim.CosineLR``; they are callbacks, written in :mod:`nnkit.training.schedules`).

An optimizer never writes into the model: ``step(params, grads)`` returns the
new values keyed like ``model.state_dict()``, and the model writes them back in
one place (so immutable arrays work too).  Per-parameter state (moments and the
step count t) lives in ``optimizer.state[key]`` and is saved with the model.

Notation: θ a parameter, g = ∂L/∂θ, lr the learning rate, λ the weight decay.
"""
from __future__ import annotations

from typing import Any

from ..data.checks import check_hyper
from ..backends.functional import namespace_of, sub_scaled
from .schedules import StepLR, ExponentialLR, CosineLR, ReduceLROnPlateau  # noqa: F401 (their public address)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "get_optimizer", "OPTIMIZERS",
           "clip_by_global_norm", "L1", "L2", "StepLR", "ExponentialLR", "CosineLR", "ReduceLROnPlateau"]


def clip_by_global_norm(grads, max_norm):
    """Scale all gradients by min(1, max_norm / ‖g‖) with ‖g‖ = √(Σ_params Σ g²).

    The scale is a 0-d device array: no host synchronisation.
    """
    gs = list(grads.values())
    xp = namespace_of(gs[0])
    total = xp.sqrt(sum(xp.sum(g * g) for g in gs))
    scale = xp.minimum(max_norm / (total + 1e-12), 1.0)
    return {k: g * scale for k, g in grads.items()}


class Optimizer:
    """Base class: ``step(params, grads) -> new params``; subclasses implement ``update``.

    ``clip_norm`` (optional) clips the gradients by their global norm first.
    """

    def __init__(self, lr, clip_norm=None) -> None:
        self.lr = check_hyper("lr", lr, low=0.0, low_open=True)
        self.clip_norm = None if clip_norm is None else check_hyper("clip_norm", clip_norm, low_open=True)
        self.state: dict[str, dict[str, Any]] = {}

    def step(self, params, grads, *, scratch_grads=False):
        """New values for every parameter in ``grads`` (dicts keyed ``"{layer}.{name}"``), with this
        optimizer's own ``state`` and learning rate ``lr`` (see :meth:`apply`)."""
        return self.apply(params, grads, self.state, self.lr, scratch_grads)[0]

    def apply(self, params, grads, state, lr, scratch_grads=False):
        """``(new_params, state)``: one update of every parameter in ``grads`` — the pure form.

        ``state`` maps each key to its per-parameter state (moments and the step count ``t``, a
        Python int or a 0-d array); entries are created on first use and updated in the dict given,
        which is returned.  ``lr`` is the learning rate as a *value* (a float or a 0-d array), so a
        compiled step receives the schedule's current rate instead of freezing one at trace time.
        ``scratch_grads=True`` lets the update reuse the gradient arrays as scratch space (the
        training step passes gradients it computed and will not read again); it saves one
        parameter-sized temporary per update where an optimizer can use it.  On NumPy, CuPy and torch
        the parameters and moments are updated in place; on immutable arrays new ones are returned.
        """
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        new, update = {}, self.update
        for key in grads:
            s = state.get(key)
            if s is None:
                s = state[key] = self.init_state(params[key])
            s["t"] += 1
            new[key] = update(params[key], grads[key], s, lr, scratch_grads)
        return new, state

    def init_state(self, p):
        """The per-parameter state before the first step (the step count t; subclasses add moments)."""
        return {"t": 0}

    def init_states(self, state, params, backend):
        """Create every parameter's state in ``state`` now, with its step count t as a 0-d device array (a
        compiled or loss-scaled step updates t on the device)."""
        for name, p in params.items():
            s = state.setdefault(name, self.init_state(p))
            if isinstance(s["t"], int):
                s["t"] = backend.xp.asarray(float(s["t"]), dtype=backend.dtype, device=backend.device)

    def snapshot_state(self):
        """A copy of ``state`` whose arrays are not touched by later (in-place) steps."""
        return {k: {n: v if isinstance(v, int) else namespace_of(v).asarray(v, copy=True) for n, v in s.items()}
                for k, s in self.state.items()}

    def update(self, p, g, state, lr, scratch_grads=False):
        """θ's new value from θ = ``p``, g = ``g``, the parameter's ``state`` (updated here) and the
        learning rate ``lr``."""
        raise NotImplementedError

    def hyperparameters(self):
        """The constructor arguments as plain data (saved in checkpoints)."""
        hp = {"lr": self.lr}
        if self.clip_norm is not None:
            hp["clip_norm"] = self.clip_norm
        return hp

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (PyTorch's formulation).

    g ← g + λθ;   v ← μv + g;   step = g + μv (Nesterov) or v;   θ ← θ − lr·step.
    With μ = 0 this is θ ← θ − lr·g: descent subtracts the gradient.
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 clip_norm: float | None = None) -> None:
        super().__init__(lr, clip_norm)
        self.momentum = check_hyper("momentum", momentum, high=1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.weight_decay = check_hyper("weight_decay", weight_decay)

    def init_state(self, p):
        state = {"t": 0}
        if self.momentum:
            state["v"] = namespace_of(p).zeros_like(p)
        return state

    def update(self, p, g, state, lr, scratch_grads=False):
        if self.weight_decay:
            g = g + self.weight_decay * p
        elif scratch_grads and not self.momentum:
            return sub_scaled(p, g, lr)  # θ ← θ − lr·g in place, g free to be overwritten
        if self.momentum:
            v = state["v"]
            v *= self.momentum
            v += g
            state["v"] = v
            g = g + self.momentum * v if self.nesterov else v
        p -= lr * g
        return p

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), with L2 weight decay added to the gradient.

    g ← g + λθ;  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
    m̂ = m/(1−β₁ᵗ);  v̂ = v/(1−β₂ᵗ);  θ ← θ − lr·m̂/(√v̂ + ε).
    """

    decoupled = False
    decay = "all"  # which parameters weight decay shrinks: "all", or "matrices" (AdamW's option)

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
        super().__init__(lr, clip_norm)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (check_hyper("beta1", b1, high=1.0), check_hyper("beta2", b2, high=1.0))
        self.eps = check_hyper("eps", eps, low_open=True)
        self.weight_decay = check_hyper("weight_decay", weight_decay)

    def init_state(self, p):
        xp = namespace_of(p)
        return {"t": 0, "m": xp.zeros_like(p), "v": xp.zeros_like(p)}

    def update(self, p, g, state, lr, scratch_grads=False):
        xp = namespace_of(p)
        b1, b2 = self.betas
        t = state["t"]
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p
        m, v = state["m"], state["v"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        state["m"], state["v"] = m, v
        m_hat_scale = 1.0 / (1.0 - b1 ** t)
        v_hat_scale = 1.0 / (1.0 - b2 ** t)
        denom = xp.sqrt(v * v_hat_scale)
        denom += self.eps
        step = (lr * m_hat_scale) * m
        step /= denom
        if self.weight_decay and self.decoupled and (self.decay == "all" or p.ndim >= 2):
            p *= 1.0 - lr * self.weight_decay
        p -= step
        return p

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    θ ← θ − lr·λ·θ, then the Adam step on the undecayed gradient (default λ = 0.01).  ``decay="matrices"``
    shrinks only the parameters of two or more dimensions — weight matrices and embeddings, not biases or
    LayerNorm's γ and β — as nanoGPT and GPT-2 train.
    """

    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, clip_norm=None, decay="all"):
        super().__init__(lr, betas, eps, weight_decay, clip_norm)
        if decay not in ("all", "matrices"):
            raise ValueError(f"AdamW decay must be 'all' or 'matrices' (weights of 2+ dimensions only), got {decay!r}")
        self.decay = decay

    def hyperparameters(self):
        hp = super().hyperparameters()
        if self.decay != "all":
            hp["decay"] = self.decay
        return hp


class RMSprop(Optimizer):
    """RMSprop (Hinton, 2012; PyTorch's formulation).

    g ← g + λθ;  s ← αs + (1−α)g²;  u = g/(√s + ε);  with momentum μ: b ← μb + u, u = b;  θ ← θ − lr·u.
    """

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 weight_decay: float = 0.0, clip_norm: float | None = None) -> None:
        super().__init__(lr, clip_norm)
        self.alpha = check_hyper("alpha", alpha, high=1.0)
        self.eps = check_hyper("eps", eps, low_open=True)
        self.momentum = check_hyper("momentum", momentum, high=1.0)
        self.weight_decay = check_hyper("weight_decay", weight_decay)

    def init_state(self, p):
        xp = namespace_of(p)
        state = {"t": 0, "s": xp.zeros_like(p)}
        if self.momentum:
            state["b"] = xp.zeros_like(p)
        return state

    def update(self, p, g, state, lr, scratch_grads=False):
        xp = namespace_of(p)
        if self.weight_decay:
            g = g + self.weight_decay * p
        s = state["s"]
        s *= self.alpha
        s += (1.0 - self.alpha) * (g * g)
        state["s"] = s
        denom = xp.sqrt(s)
        denom += self.eps
        u = g / denom
        if self.momentum:
            b = state["b"]
            b *= self.momentum
            b += u
            u = state["b"] = b
        p -= lr * u
        return p

    def hyperparameters(self):
        return {**super().hyperparameters(), "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum, "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get_optimizer(optimizer, **kwargs):
    """An :class:`Optimizer` from an instance or a name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    key = optimizer.lower() if isinstance(optimizer, str) else optimizer
    try:
        cls = OPTIMIZERS[key]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown optimizer {optimizer!r}: expected one of {', '.join(repr(k) for k in OPTIMIZERS)} "
            "or an Optimizer instance"
        ) from None
    return cls(**kwargs)


# -- penalties ------------------------------------------------------------------------
class L2:
    """Ω(Θ) = (λ/2) Σ_W ‖W‖² over the weight matrices (biases are not penalised).

    Adds Ω to the loss and λ·W to each ∂L/∂W.  ``per_batch=True`` divides the penalty by each batch's
    size (or sum of sample weights), as scikit-learn's MLP does with ``alpha``: Ω_b = (λ/2B) Σ‖W‖².
    """

    def __init__(self, lam, per_batch=False) -> None:
        self.lam = check_hyper("lam", lam)
        self.per_batch = bool(per_batch)

    def value_and_grad(self, W):
        """(Ω(W), ∂Ω/∂W) for one weight matrix: ((λ/2)‖W‖², λW)."""
        xp = namespace_of(W)
        return (0.5 * self.lam) * xp.sum(W * W), self.lam * W

    def add_to(self, params, value, grads, scale=None):
        """``(L + Ω, grads + ∂Ω/∂W)``: the penalty of every weight matrix (keys ending in ``".W"``) added to
        the loss ``value`` and to its gradient in ``grads`` (a new dict), each times ``scale`` when given."""
        grads = dict(grads)
        for key in grads:
            if key.endswith(".W"):
                omega, d_omega = self.value_and_grad(params[key])
                if scale is not None:
                    omega, d_omega = omega * scale, d_omega * scale
                value = value + omega
                grads[key] = grads[key] + d_omega
        return value, grads

    def __repr__(self):
        return f"{type(self).__name__}({self.lam!r}" + (", per_batch=True)" if self.per_batch else ")")


class L1(L2):
    """Ω(Θ) = λ Σ_W Σ|W_ij| over the weight matrices.  Adds Ω to the loss and λ·sign(W) to ∂L/∂W."""

    def value_and_grad(self, W):
        """(Ω(W), ∂Ω/∂W) for one weight matrix: (λΣ|W|, λ·sign(W))."""
        xp = namespace_of(W)
        return self.lam * xp.sum(xp.abs(W)), self.lam * xp.sign(W)
