"""Finite-difference check of the hand-derived gradients, reported per parameter."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import data
from ..losses import get_loss

__all__ = ["gradcheck", "GradcheckReport"]


class GradcheckReport(float):
    """The largest relative error of :func:`gradcheck` (a float, so ``gradcheck(...) < 1e-6`` reads as before),
    with every parameter's own: ``errors`` maps ``"{layer}.{name}"`` to its relative error, ``worst`` names the
    parameter with the largest, and ``str(report)`` is a table of them (the failing ones marked).

    ``failing(tol)`` lists the parameters whose error exceeds ``tol``."""

    def __new__(cls, errors, tol=1e-6):
        worst = max(errors.values(), default=0.0)
        self = super().__new__(cls, worst)
        self.errors = dict(errors)
        self.worst = max(errors, key=errors.get) if errors else None
        self.tol = tol
        return self

    def failing(self, tol=None):
        """The parameters whose relative error exceeds ``tol`` (default 1e-6), worst first."""
        tol = self.tol if tol is None else tol
        return sorted((k for k, e in self.errors.items() if not e <= tol), key=lambda k: -self.errors[k])

    def __str__(self):
        width = max((len(k) for k in self.errors), default=9)
        rows = [f"{'parameter'.ljust(width)}  relative error"]
        for key, err in self.errors.items():
            rows.append(f"{key.ljust(width)}  {err:.3e}" + ("   <- above 1e-6" if not err <= self.tol else ""))
        return "\n".join(rows)

    def __repr__(self):
        return f"GradcheckReport({float(self):.3e}, worst={self.worst!r})"

    def __reduce__(self):
        return (GradcheckReport, (self.errors, self.tol))


def gradcheck(model: Any, X: Any, y: Any, loss: Any, eps: float = 1e-6, lengths: Any = None) -> GradcheckReport:
    """The relative error between the backward pass's gradients and central differences, per parameter: a
    :class:`GradcheckReport` — the largest error as a float, each parameter's in ``report.errors``.

    The check runs on a float64 copy of ``model`` on the model's own backend, without its precision
    policy — a mixed-precision model's derivation is checked in float64 (the model itself is not
    touched), in training mode — BatchNorm through its batch
    statistics, Dropout with the same masks in every evaluation.  For every parameter entry θ_i

        g_i ≈ (L(θ + ε e_i) − L(θ − ε e_i)) / 2ε,

    and for each parameter tensor the relative error is
    ‖g_analytic − g_numeric‖ / max(‖g_analytic‖, ‖g_numeric‖, 10⁻²·G) with G the largest
    analytic gradient norm of the model: a gradient that is zero in exact arithmetic (a bias right
    before BatchNorm: ~1e-17 analytically, ~1e-10 of finite-difference noise) is measured on the
    model's scale rather than on its own noise (0 when all are 0).
    Correct gradients give about 1e-8 or less; a wrong derivation gives 1e-2 or more, and
    ``report.worst`` / ``print(report)`` say which parameter it is in and by how much.
    Sequences of different lengths (a list, or padded X with ``lengths``) are checked through their masks, and
    a per-position output through its valid positions, as ``fit`` scores them.
    """
    loss = get_loss(loss)
    twin = model.clone(dtype="float64", precision=None)  # finite differences need float64, whatever the policy
    be = twin.backend
    S = data.sequences(twin, X, lengths)
    Xd, M = S.X, S.M
    T = data.as_target(twin, data.target_sequences(y, S.lengths), Xd.shape[0], loss)

    def same_draws():  # random layers (Dropout) draw the same masks in every evaluation
        twin.random_key = be.random_key(12345) if twin.needs_random else None

    same_draws()
    _, _, grads = twin.loss_and_grads(Xd, T, loss, mask=M)
    analytic = {k: be.to_numpy(g).astype(np.float64) for k, g in grads.items()}

    def loss_at(state):
        twin.load_state_dict(state)  # buffers (running statistics) back to where they started, too
        same_draws()
        rows, t, w = twin.score_rows(twin.forward_batch(Xd, train=True, mask=M), T, None, M)
        return be.to_float(loss.value(rows, t) if w is None else loss.value(rows, t, w))

    base = twin.state_dict()
    # a gradient that is zero in exact arithmetic (a bias right before BatchNorm) is ~1e-17 analytically and
    # ~1e-10 in finite differences: tensors far below the model's largest gradient are compared on its scale
    floor = 1e-2 * max((float(np.linalg.norm(a)) for a in analytic.values()), default=0.0)
    errors = {}
    for key in analytic:
        theta = base[key]
        numeric = np.zeros_like(theta)
        for idx in np.ndindex(theta.shape):
            state = dict(base)
            for sign in (1.0, -1.0):
                bumped = theta.copy()
                bumped[idx] += sign * eps
                state[key] = bumped
                numeric[idx] += sign * loss_at(state)
        numeric /= 2.0 * eps
        a = analytic[key]
        scale = max(float(np.linalg.norm(a)), float(np.linalg.norm(numeric)), floor)
        err = 0.0 if scale == 0.0 else float(np.linalg.norm(a - numeric)) / scale
        errors[key] = err if not math.isnan(err) else math.inf
    return GradcheckReport(errors)
