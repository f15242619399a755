"""Finite-difference check of the hand-derived gradients."""
from __future__ import annotations

import math

import numpy as np

from . import data
from .losses import get_loss

__all__ = ["gradcheck"]


def gradcheck(model, X, y, loss, eps=1e-6):
    """Largest relative error between ``value_and_grad`` and central differences.

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
    Returns the largest of these as a Python float.  Correct gradients give
    about 1e-8 or less; a wrong derivation gives 1e-2 or more.
    """
    loss = get_loss(loss)
    twin = model.clone(dtype="float64", precision=None)  # finite differences need float64, whatever the policy
    be = twin.backend
    Xd = data.as_input(twin, X)
    T = data.as_target(twin, y, Xd.shape[0], loss)

    def same_draws():  # random layers (Dropout) draw the same masks in every evaluation
        twin._random_key = be.random_key(12345) if twin.needs_random else None

    same_draws()
    _, _, grads = twin.loss_and_grads(Xd, T, loss)
    analytic = {k: be.to_numpy(g).astype(np.float64) for k, g in grads.items()}

    def loss_at(state):
        twin.load_state_dict(state)  # buffers (running statistics) back to where they started, too
        same_draws()
        return be.to_float(loss.value(twin._forward(Xd, train=True), T))

    base = twin.state_dict()
    # a gradient that is zero in exact arithmetic (a bias right before BatchNorm) is ~1e-17 analytically and
    # ~1e-10 in finite differences: tensors far below the model's largest gradient are compared on its scale
    floor = 1e-2 * max((float(np.linalg.norm(a)) for a in analytic.values()), default=0.0)
    worst = 0.0
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
        worst = max(worst, err if not math.isnan(err) else math.inf)
    return worst
