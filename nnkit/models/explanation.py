"""The learner's view: one training step of *your* network on *your* batch, with its numbers.

``model.explain(X, y, loss, optimizer=None)`` runs one step on a copy of the model — the same forward,
loss, backward and update code the real step runs — and returns an :class:`Explanation`: for every layer the
forward formula with the actual numbers (Z = X·W + b, A = σ(Z)), the loss and ∂L/∂output, then the backward
pass layer by layer (δ = ∂L/∂Z, dW = Xᵀ·δ, db = Σ δ, dX = δ·Wᵀ, each activation's derivative as used), and the
update (θ − η·∂L/∂θ: descent *subtracts* the gradient).  Shapes are always given; every number for small
arrays (up to ``max_numbers`` entries), a summary (shape, mean, norm, min, max) for larger ones.

``str(report)`` is plain text, ``report.to_markdown()`` Markdown (Jupyter shows it through
``_repr_markdown_``).  The model itself is not changed: the copy's parameters, buffers and optimizer state are
its own.
"""
from __future__ import annotations

import copy

import numpy as np

from ..backends import host_copy
from .. import data
from ..layers.graph import walk_backward, walk_forward
from ..losses import get_loss
from ..training.optim import SGD

__all__ = ["Explanation", "explain"]

class Explanation:
    """One training step, explained: ``sections`` is a list of ``(title, [(formula, value), ...])`` with
    values as NumPy arrays or Python floats; ``values`` maps short names (``"Z0"``, ``"dW0"``, ``"loss"``,
    ``"W0_new"`` ...) to the same numbers, for checks and for learners who want to compute with them."""

    def __init__(self, title, max_numbers=64, digits=9, names=None):
        self.title, self.sections, self.values = title, [], {}
        self.max_numbers, self.digits = max_numbers, digits
        self.names = dict(names or {})  # "{layer}.{param}[i, j]" -> a name for that entry (w5)

    def section(self, title):
        """Start a new section (Forward, Backward, ...)."""
        self.sections.append((title, []))

    def add(self, formula, value=None, name=None, note=None):
        """Add a line: a formula, its value (an array of any backend, copied to the host, or a float; None for
        prose), a short ``name`` for ``values`` and a ``note`` printed under it."""
        if value is not None and not isinstance(value, float):
            value = _host(value)
        self.sections[-1][1].append((formula, value, note))
        if name is not None:
            self.values[name] = value

    @staticmethod
    def tag(i, layer):
        """``layer 3: Dense(4, 8)``: how a line names the layer it comes from."""
        return f"layer {i}: {layer!r}"

    def named(self, key, array, prefix, before=None):
        """"w5 = 0.18 → 0.179270…" notes for the entries of parameter ``key`` that ``names`` names."""
        return _named(self.names, key, array, prefix, before)

    # -- rendering -----------------------------------------------------------------------------------
    def _number(self, v):
        return f"{v:.{self.digits}g}"

    def _render(self, v, indent):
        if v is None:
            return ""
        if isinstance(v, float):
            return " = " + self._number(v)
        shape = "×".join(map(str, v.shape)) if v.ndim else "scalar"
        if v.size <= self.max_numbers:
            if v.ndim == 0:
                return " = " + self._number(float(v))
            body = np.array2string(v, separator=", ", formatter={"float_kind": self._number},
                                   max_line_width=100)
            body = body.replace("\n", "\n" + " " * indent)
            return f"  ({shape}) =\n{' ' * indent}{body}"
        return (f"  ({shape}): mean {self._number(float(v.mean()))}, norm {self._number(float(np.linalg.norm(v)))}, "
                f"min {self._number(float(v.min()))}, max {self._number(float(v.max()))}")

    def __str__(self):
        out = [self.title, "=" * len(self.title)]
        for title, items in self.sections:
            out += ["", title, "-" * len(title)]
            for formula, value, note in items:
                out.append(f"  {formula}{self._render(value, 6)}")
                if note:
                    out.append(f"      ({note})")
        return "\n".join(out)

    def to_markdown(self):
        """The report as Markdown: formulas in code spans, numbers in code blocks."""
        out = [f"## {self.title}"]
        for title, items in self.sections:
            out += ["", f"### {title}", ""]
            for formula, value, note in items:
                text = self._render(value, 0)
                if text.startswith(" = ") or not text:
                    out.append(f"- `{formula}{text}`" + (f" — {note}" if note else ""))
                elif "\n" in text:
                    head, _, body = text.partition("\n")
                    out.append(f"- `{formula}`{head.strip() and ' ' + head.strip()}" + (f" — {note}" if note else ""))
                    out += ["", "```", body, "```", ""]
                else:
                    out.append(f"- `{formula}`{text}" + (f" — {note}" if note else ""))
        return "\n".join(out) + "\n"

    def _repr_markdown_(self):
        return self.to_markdown()

    def __repr__(self):
        return f"<Explanation: {self.title} ({sum(len(i) for _, i in self.sections)} lines)>"


def _host(a):
    return np.asarray(host_copy(a), dtype=np.float64)


def explain(model, X, y, loss, optimizer=None, max_numbers=64, names=None, lengths=None):
    """The :class:`Explanation` of one training step of ``model`` on (X, y) — see the module docstring.

    ``optimizer``: the update to show (default: the model's own optimizer, else ``SGD(0.01)``); its state is
    copied, so neither the model nor the optimizer changes.  ``names`` maps ``"{layer}.{param}[i, j]"`` to
    a name of your own (``{"2.W[0, 0]": "w5"}``) to print beside the numbers.  Sequences of different lengths: a
    list of (T_i, ...) arrays, or padded X with ``lengths`` (n,), as ``fit`` takes them — the padding mask goes
    to the layers that take it and the loss counts the valid positions only; a recurrent layer adds the norm of
    its state and of ∂L/∂h_t at each time step.
    """
    loss = get_loss(loss)
    opt = optimizer if optimizer is not None else (model.optimizer or SGD(0.01))
    opt = copy.deepcopy(opt)
    twin = model.clone()
    twin.random_key = model.random_key
    S = data.sequences(twin, X, lengths)
    Xd, mask = S.X, S.M
    T = data.as_target(twin, data.target_sequences(y, S.lengths), Xd.shape[0], loss)
    rep = Explanation(f"One training step of {len(model.layers)} layers on a batch of {Xd.shape[0]}",
                      max_numbers=max_numbers, names=names)
    rep.section("Input")
    rep.add(f"X  (batch {Xd.shape[0]}, features/shape {tuple(Xd.shape[1:])})", Xd, "X")
    if mask is not None:
        rep.add("lengths  (each sequence's valid steps; the rest of X is padding, mask m_bt = [t < length_b])",
                np.asarray(S.lengths, dtype=np.float64), "lengths")
    rep.add("T  (targets)", T, "T")

    # forward: the model's own walk, node by node (what Model.forward_batch does); each layer says its lines
    A = twin.policy.cast_input(Xd)
    rep.section("Forward")
    A = walk_forward(twin.plan, [A], True, None if mask is None else [mask],
                     each=lambda i, layer, X, Y: layer.explain_forward(rep, i, X, Y))[0]
    out = twin.policy.cast_output(A)
    value, d_out = loss.value_and_grad(out, T, twin.score_weights(out, None, mask))
    per_position = mask is not None and twin.output_mask(mask) is not None
    rep.section(f"Loss: {type(loss).__name__}")
    doc = (type(loss).__doc__ or "").strip().splitlines()[0]
    rep.add(f"L  [{doc}]" + ("  (the mean over the valid positions)" if per_position else ""),
            float(_host(value)), "loss")
    rep.add("∂L/∂output", d_out, "d_out")

    # backward: the model's own walk in reverse, last node first (what Model.backward does: a value read by
    # several nodes gets the sum of their gradients); each layer runs its own backward and says its lines
    rep.section("Backward (the chain rule, last layer first)")
    dY = twin.policy.cast_grad_out(d_out, twin.loss_scaler)
    walk_backward(twin.plan, [dY], each=lambda i, layer, d, need: layer.explain_backward(rep, i, d, need))
    grads = twin.policy.unscale(twin.gather_grads(), twin.loss_scaler)

    # the update: the optimizer's own pure step, on copies
    rep.section(f"Update: {opt!r}")
    before = {k: _host(p) for k, p in twin.params().items()}
    if type(opt) is SGD and not opt.momentum and not opt.weight_decay and opt.clip_norm is None:
        rep.add(f"θ ← θ − η·∂L/∂θ with η = {opt.lr:g}", None, note="descent subtracts the gradient: the step goes "
                "downhill, against the slope")
    else:
        rep.add(f"θ ← {type(opt).__name__}(θ, ∂L/∂θ), learning rate {opt.lr:g}", None,
                note=(type(opt).__doc__ or "").strip().splitlines()[0])
    state = copy.deepcopy(opt.state)
    new, _ = opt.apply(twin.params(), {k: twin.xp.asarray(g, copy=True) for k, g in grads.items()}, state, opt.lr)
    for key, p in new.items():
        i, _, pname = key.partition(".")
        rep.add(f"{pname}{i} ← {pname}{i} − η·d{pname}{i}" if type(opt) is SGD else f"{pname}{i} (new)",
                _host(p), f"{pname}{i}_new", note=rep.named(key, p, "", before[key]))
    return rep


def _named(names, key, array, prefix, before=None):
    """"w5 = 0.18 → 0.179270…" notes for the entries ``names`` names."""
    notes = []
    a = _host(array)
    for spec, label in names.items():
        k, _, idx = spec.partition("[")
        if k != key:
            continue
        index = tuple(int(v) for v in idx.rstrip("]").split(",")) if idx else ()
        v = float(a[index])
        if before is None:
            notes.append(f"{prefix}{label} = {v:.9g}")
        else:
            notes.append(f"{label}: {float(before[index]):.9g} → {v:.9g}")
    return "; ".join(notes) or None
