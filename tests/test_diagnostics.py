"""Gradients you can watch (GradientStats), the pictures (curves with the held-out side, diagnostics, decision
regions)."""
import importlib.util

import numpy as np
import pytest

import nnkit

from helpers import to_np

HAS_JAX = importlib.util.find_spec("jax") is not None


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)


def test_gradient_stats_are_the_real_gradients_updates_and_dead_units(make_backend):
    be = make_backend("float64")
    X, y = _data()
    model = nnkit.Sequential.mlp([5, 8, 8, 3], backend=be, dtype="float64", seed=0)
    W0 = model.state_dict()
    _, grads = model.value_and_grad(X, y, "cross_entropy")
    A1 = np.maximum(X @ W0["0.W"] + W0["0.b"], 0)
    stats = nnkit.GradientStats()
    h = model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.1), epochs=2, batch_size=64,
                  shuffle=False, verbose=0, callbacks=[stats])  # one step an epoch: the stats are that step's
    for k in ("0.W", "2.W", "4.W"):
        assert h[f"grad_norm/{k}"][0] == pytest.approx(np.linalg.norm(to_np(grads[k])), rel=1e-12)
    assert h["relu_inactive/1"][0] == pytest.approx(np.mean(A1 == 0), rel=1e-12)
    assert len(h["weight_norm/0.W"]) == 2 and h["update_ratio/0.W"][0] > 0
    one = nnkit.Sequential.mlp([5, 8, 8, 3], backend=be, dtype="float64", seed=0)
    one.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.1), epochs=1, batch_size=64, shuffle=False,
            verbose=0)
    W_after = one.state_dict()["0.W"]
    ratio = np.linalg.norm(W_after - W0["0.W"]) / np.linalg.norm(W_after)
    assert h["update_ratio/0.W"][0] == pytest.approx(ratio, rel=1e-10)
    assert h["weight_norm/0.W"][0] == pytest.approx(np.linalg.norm(W_after), rel=1e-12)


def test_a_deep_sigmoid_network_shows_vanishing_gradients_and_relu_does_not():
    (X, y), _ = nnkit.datasets.load_digits()
    ratios = {}
    for act in ("sigmoid", "relu"):
        model = nnkit.Sequential.mlp([64] + [32] * 6 + [10], act, seed=0)
        h = model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.1), epochs=2, verbose=0,
                      callbacks=[nnkit.GradientStats()])
        ratios[act] = h["grad_norm/12.W"][-1] / h["grad_norm/0.W"][-1]  # last layer's gradient over the first's
    assert ratios["sigmoid"] > 100 and ratios["relu"] < 20, ratios


@pytest.mark.skipif(not HAS_JAX, reason="jax not installed")
def test_gradient_stats_read_the_device_once_per_epoch(jax_reads):
    X, y = _data()
    model = nnkit.Sequential.mlp([5, 8, 3], backend="jax", seed=0)
    jax_reads.clear()
    model.fit(X, y, loss="cross_entropy", epochs=3, batch_size=16, verbose=0, callbacks=[nnkit.GradientStats()])
    assert len(jax_reads) == 6  # each epoch: the loss and metrics, and the stats


def test_gradient_stats_refuse_a_compiled_step():
    X, y = _data()
    with pytest.raises(ValueError, match="GradientStats"):
        nnkit.Sequential.mlp([5, 3], backend="jax" if HAS_JAX else "numpy", seed=0).fit(
            X, y, loss="cross_entropy", epochs=1, verbose=0, compile=True, callbacks=[nnkit.GradientStats()])


def test_cli_pictures_and_python_decision_regions(tmp_path):
    pytest.importorskip("matplotlib")
    from nnkit.tools.cli import main

    out = {k: tmp_path / f"{k}.png" for k in ("curves", "diag", "regions", "py")}
    assert main(["train", "--data", "spirals", "--hidden", "16", "--epochs", "3", "--quiet", "--plot", str(out["curves"]),
                 "--plot-diagnostics", str(out["diag"]), "--plot-boundary", str(out["regions"])]) == 0
    for k in ("curves", "diag", "regions"):
        assert out[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["train", "--data", "digits", "--epochs", "1", "--quiet", "--plot-boundary", str(out["py"])]) == 2
    X, y = nnkit.datasets.make_spirals(seed=0)
    model = nnkit.Sequential.mlp([2, 16, 3], seed=0)
    model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0)
    nnkit.plots.decision_boundary(model, X, y, out["py"], resolution=50)
    assert out["py"].stat().st_size > 1000
    with pytest.raises(ValueError, match="two features"):
        nnkit.plots.decision_boundary(model, np.zeros((3, 3)), [0, 1, 2], out["py"])


def test_training_curves_show_the_held_out_side_without_a_validation_split(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from nnkit import plots
    from nnkit.tools.cli import main

    seen = {}
    monkeypatch.setattr(plots, "training_curves", lambda h, path, title="", held_out="": seen.update(h=h, held=held_out))
    assert main(["train", "--data", "digits", "--epochs", "2", "--quiet", "--plot", str(tmp_path / "c.png")]) == 0
    assert seen["held"] == "held-out test" and len(seen["h"]["val_loss"]) == 2 and "val_accuracy" in seen["h"]
