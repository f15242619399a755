"""Each optimizer's first three updates against a float64 NumPy transcription of its published formula;
clipping, penalties and schedules."""
import math

import numpy as np
import pytest

import nnkit
from nnkit import optim

from helpers import to_np

P0 = np.array([[0.5, -1.2], [0.3, 2.0]])
GRADS = [np.array([[0.1, -0.4], [1.5, 0.02]]), np.array([[-0.3, 0.2], [0.7, -0.9]]),
         np.array([[0.05, 0.6], [-1.1, 0.4]])]


def reference(kind, **hp):
    """Three updates of the published formulas, written out in float64 NumPy."""
    p = P0.copy()
    out = []
    if kind == "sgd":
        lr, mu, wd, nest = hp["lr"], hp.get("momentum", 0.0), hp.get("weight_decay", 0.0), hp.get("nesterov", False)
        v = np.zeros_like(p)
        for g in GRADS:
            g = g + wd * p
            v = mu * v + g
            p = p - lr * ((g + mu * v) if nest else (v if mu else g))
            out.append(p.copy())
    elif kind in ("adam", "adamw"):
        lr, (b1, b2), eps, wd = hp["lr"], hp.get("betas", (0.9, 0.999)), hp.get("eps", 1e-8), hp["weight_decay"]
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, g in enumerate(GRADS, start=1):
            if kind == "adam":
                g = g + wd * p
            else:
                p = p - lr * wd * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            out.append(p.copy())
    elif kind == "rmsprop":
        lr, a, eps, mu, wd = hp["lr"], hp.get("alpha", 0.99), hp.get("eps", 1e-8), hp.get("momentum", 0.0), \
            hp.get("weight_decay", 0.0)
        s = np.zeros_like(p)
        b = np.zeros_like(p)
        for g in GRADS:
            g = g + wd * p
            s = a * s + (1 - a) * g * g
            u = g / (np.sqrt(s) + eps)
            if mu:
                b = mu * b + u
                u = b
            p = p - lr * u
            out.append(p.copy())
    return out


CASES = [
    ("sgd", optim.SGD, dict(lr=0.1)),
    ("sgd", optim.SGD, dict(lr=0.1, momentum=0.9)),
    ("sgd", optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", optim.Adam, dict(lr=0.01, weight_decay=0.0)),
    ("adam", optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adamw", optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    ("rmsprop", optim.RMSprop, dict(lr=0.01)),
    ("rmsprop", optim.RMSprop, dict(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.05)),
]


@pytest.mark.parametrize("kind,cls,hp", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_first_three_updates_match_published_formula(make_backend, kind, cls, hp):
    be = make_backend()
    opt = cls(**hp)
    p = be.asarray(P0, dtype=be.dtype)
    for g, want in zip(GRADS, reference(kind, **hp)):
        p = opt.step({"0.W": p}, {"0.W": be.asarray(g, dtype=be.dtype)})["0.W"]
        np.testing.assert_allclose(to_np(p), want, rtol=1e-13, atol=1e-15)
    assert opt.state["0.W"]["t"] == 3


@pytest.mark.parametrize("lr_kind", ["float", "0-d array"])
def test_the_training_steps_plain_sgd_update_matches_the_formula(make_backend, lr_kind):
    """The update the training step runs (``scratch_grads=True``: the namespace's one-kernel θ − lr·g where it has
    one, ``xp.sub_scaled``), with the learning rate as a float and as a 0-d array (a compiled step's)."""
    be = make_backend()
    opt = optim.SGD(0.1)
    lr = 0.1 if lr_kind == "float" else be.asarray(0.1, dtype=be.dtype)
    p, state = {"0.W": be.asarray(P0, dtype=be.dtype)}, {}
    for g, want in zip(GRADS, reference("sgd", lr=0.1)):
        p, state = opt.apply(p, {"0.W": be.asarray(g, dtype=be.dtype)}, state, lr, scratch_grads=True)
        np.testing.assert_allclose(to_np(p["0.W"]), want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("bad", [
    lambda: optim.SGD(lr=-0.1), lambda: optim.SGD(lr=0), lambda: optim.Adam(lr="big"),
    lambda: optim.Adam(betas=(1.0, 0.9)), lambda: optim.Adam(eps=0), lambda: optim.SGD(momentum=-1),
    lambda: optim.SGD(nesterov=True), lambda: optim.RMSprop(alpha=1.5), lambda: optim.AdamW(weight_decay=-1),
    lambda: optim.SGD(clip_norm=0),
])
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        bad()


def test_clip_by_global_norm_without_host_sync(make_backend):
    be = make_backend()
    grads = {"a": be.asarray(np.array([3.0, 0.0]), dtype=be.dtype), "b": be.asarray(np.array([[4.0]]), dtype=be.dtype)}
    clipped = optim.clip_by_global_norm(grads, 1.0)  # norm 5 -> scaled by 1/5
    np.testing.assert_allclose(to_np(clipped["a"]), [0.6, 0.0], rtol=1e-12)
    np.testing.assert_allclose(to_np(clipped["b"]), [[0.8]], rtol=1e-12)
    same = optim.clip_by_global_norm(grads, 10.0)
    np.testing.assert_allclose(to_np(same["a"]), [3.0, 0.0], rtol=1e-12)
    opt = optim.SGD(lr=1.0, clip_norm=1.0)
    new = opt.step({"a": grads["a"] * 0.0}, {"a": grads["a"]})
    np.testing.assert_allclose(to_np(new["a"]), [-1.0, 0.0], rtol=1e-12)


@pytest.mark.parametrize("reg", [optim.L2(0.3), optim.L1(0.2)], ids=["L2", "L1"])
def test_penalties_add_to_loss_and_gradient(make_backend, reg):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, size=5)
    model = nnkit.Sequential([nnkit.Dense(3, 4), nnkit.Tanh(), nnkit.Dense(4, 2)], backend=make_backend(),
                             dtype="float64", seed=0)
    plain, g0 = model.value_and_grad(X, y, "cross_entropy")
    value, g = model.value_and_grad(X, y, "cross_entropy", regularizer=reg)
    W = model.state_dict()
    omega = sum((0.5 * reg.lam * (w * w).sum()) if type(reg) is optim.L2 else reg.lam * np.abs(w).sum()
                for k, w in W.items() if k.endswith(".W"))
    assert float(to_np(value)) == pytest.approx(float(to_np(plain)) + omega, rel=1e-12)
    for k in W:
        extra = (reg.lam * W[k] if type(reg) is optim.L2 else reg.lam * np.sign(W[k])) if k.endswith(".W") else 0.0
        np.testing.assert_allclose(to_np(g[k]), to_np(g0[k]) + extra, rtol=1e-12, atol=1e-15)


def _run_schedule(schedule, epochs, lr=1.0, losses=None):
    opt = optim.SGD(lr=lr)
    schedule.optimizer = opt
    schedule.on_train_begin()
    seen = [opt.lr]
    for e in range(epochs):
        schedule.on_epoch_end(e, {"val_loss": (losses or [1.0] * epochs)[e]})
        seen.append(opt.lr)
    return seen


def test_schedules():
    assert _run_schedule(optim.StepLR(2, gamma=0.5), 4) == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert _run_schedule(optim.ExponentialLR(0.9), 2) == pytest.approx([1.0, 0.9, 0.81])
    cos = _run_schedule(optim.CosineLR(total=5, warmup=1, min_lr=0.1), 5)
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.1)
    assert cos[1] == pytest.approx(1.0) and cos[3] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    plateau = _run_schedule(optim.ReduceLROnPlateau(factor=0.5, patience=1), 5, losses=[1, 0.5, 0.6, 0.6, 0.6])
    assert plateau == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
