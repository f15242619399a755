"""fit: learning, agreement across backends, early stopping, divergence, Ctrl-C, callbacks,
checkpoints (atomic, exact resume, corrupt files) and the no-host-sync rule."""
import os
import signal

import numpy as np
import pytest

import nnkit
from nnkit import optim

from helpers import to_np


def blobs(n=300, d=64, k=10, seed=0):
    """A fixed synthetic classification task: k Gaussian blobs in d dimensions."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 1.5
    y = rng.integers(0, k, size=n)
    return centers[y] + rng.normal(size=(n, d)), y


def mlp(backend="numpy", dtype="float64", seed=0, sizes=(64, 32, 10)):
    layers = [nnkit.Dense(sizes[0], sizes[1]), nnkit.ReLU(), nnkit.Dense(sizes[1], sizes[2])]
    return nnkit.Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def test_network_learns_on_every_backend(make_backend):
    X, y = blobs()
    model = mlp(make_backend())
    h = model.fit(X, y, loss="cross_entropy", optimizer=optim.Adam(1e-2), epochs=15, batch_size=32, verbose=0)
    assert h["loss"][-1] < 0.1 * h["loss"][0]
    assert h["accuracy"][-1] > 0.95
    assert model.evaluate(X, y, "cross_entropy")["accuracy"] > 0.95
    assert len(h["time"]) == 15 and model.epoch == 15


def test_loss_curves_agree_numpy_and_strict():
    X, y = blobs(n=203)  # 203 = 6 batches of 32 + a partial batch of 11
    curves = []
    for backend in ("numpy", "array_api_strict"):
        h = mlp(backend).fit(X, y, loss="cross_entropy", optimizer="adam", epochs=6, batch_size=32,
                             validation_split=0.2, verbose=0)
        curves.append((h["loss"], h["val_loss"], h["accuracy"]))
    for a, b in zip(*curves):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_logistic_regression_reaches_newton_optimum():
    """One Dense unit + BinaryCrossEntropy is logistic regression; Newton's method gives the optimum."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    logits = X @ np.array([1.5, -2.0, 0.5]) + 0.3
    y = (rng.random(400) < 1.0 / (1.0 + np.exp(-logits))).astype(float)
    A = np.hstack([X, np.ones((400, 1))])
    w = np.zeros(4)
    for _ in range(30):  # Newton: w <- w - H^-1 g for the mean log-loss
        p = 1.0 / (1.0 + np.exp(-A @ w))
        g = A.T @ (p - y) / 400
        H = (A * (p * (1 - p))[:, None]).T @ A / 400
        w -= np.linalg.solve(H, g)
    p = 1.0 / (1.0 + np.exp(-A @ w))
    best = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    model = nnkit.Sequential([nnkit.Dense(3, 1, init="zeros")], dtype="float64", seed=0)
    model.fit(X, y, loss="binary_cross_entropy", optimizer=optim.Adam(0.05), epochs=400, batch_size=400,
              shuffle=False, verbose=0)
    got = model.evaluate(X, y, "binary_cross_entropy")["loss"]
    assert got == pytest.approx(best, abs=1e-9)
    state = model.state_dict()
    np.testing.assert_allclose(np.append(state["0.W"][:, 0], state["0.b"]), w, atol=1e-4)


def test_epoch_loss_weights_the_partial_batch_by_its_size():
    X, y = blobs(n=70)
    model = mlp()
    before = model.evaluate(X, y, "cross_entropy")
    h = model.fit(X, y, loss="cross_entropy", optimizer=optim.SGD(lr=1e-300), epochs=1, batch_size=32, verbose=0)
    assert h["loss"][0] == pytest.approx(before["loss"], rel=1e-12)
    assert h["accuracy"][0] == pytest.approx(before["accuracy"], rel=1e-12)


def test_same_shuffles_on_every_backend(make_backend):
    X, y = blobs(n=90)
    ref = mlp().fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, verbose=0)
    got = mlp(make_backend()).fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, verbose=0)
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-10)


def test_early_stopping_restores_best_weights():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(40, 64)), rng.integers(0, 10, size=40)  # pure noise: it over-fits fast
    Xv, yv = rng.normal(size=(40, 64)), rng.integers(0, 10, size=40)
    model = mlp(sizes=(64, 64, 10))
    stopper = nnkit.EarlyStopping(patience=3)
    h = model.fit(X, y, loss="cross_entropy", optimizer=optim.Adam(1e-2), epochs=200, batch_size=8,
                  validation_data=(Xv, yv), early_stopping=stopper, verbose=0)
    assert h.epochs < 200 and h.stopped_epoch == h.epochs - 1
    best = int(np.argmin(h["val_loss"]))
    assert h.epochs == best + 1 + 4  # patience 3: the 4th epoch without improvement stops
    assert model.evaluate(Xv, yv, "cross_entropy")["loss"] == pytest.approx(h["val_loss"][best], rel=1e-9)
    assert h["val_loss"][-1] > h["val_loss"][best]


def test_early_stopping_on_an_unreported_metric_is_an_error():
    X, y = blobs(n=20)
    with pytest.raises(ValueError, match="monitors 'val_loss'"):
        mlp().fit(X, y, loss="cross_entropy", epochs=2, early_stopping=True, verbose=0)


def test_divergence_raises_and_keeps_last_finite_weights():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(64, 4)) * 100
    y = rng.normal(size=(64, 1)) * 100
    model = nnkit.Sequential([nnkit.Dense(4, 16), nnkit.ReLU(), nnkit.Dense(16, 1)], dtype="float64", seed=0)
    snapshots = []

    class Keep(nnkit.Callback):
        def on_epoch_end(self, epoch, logs):
            snapshots.append(self.model.state_dict())

    with pytest.raises(nnkit.TrainingDivergedError, match="epoch .*lower learning rate"), np.errstate(all="ignore"):
        model.fit(X, y, loss="mse", optimizer=optim.SGD(lr=1.0), epochs=50, batch_size=8, verbose=0,
                  callbacks=[Keep()])
    state = model.state_dict()
    assert all(np.all(np.isfinite(v)) for v in state.values())
    if snapshots:
        for k in state:
            np.testing.assert_array_equal(state[k], snapshots[-1][k])


def test_callback_returning_true_stops_and_hooks_run():
    X, y = blobs(n=50)
    calls = []

    class Stop(nnkit.Callback):
        def on_train_begin(self):
            calls.append("begin")

        def on_epoch_end(self, epoch, logs):
            calls.append(epoch)
            assert set(logs) == {"loss", "accuracy"}
            return epoch == 2

        def on_train_end(self):
            calls.append("end")

    h = mlp().fit(X, y, loss="cross_entropy", epochs=10, callbacks=[Stop()], verbose=0)
    assert calls == ["begin", 0, 1, 2, "end"] and h.epochs == 3 and h.stopped_epoch == 2


def test_ctrl_c_stops_after_the_current_step():
    X, y = blobs(n=64)
    steps = []

    class Interrupting(nnkit.CrossEntropy):
        def value_and_grad(self, Z, T):
            steps.append(1)
            if len(steps) == 5:  # Ctrl-C arrives during step 5 of epoch 2
                os.kill(os.getpid(), signal.SIGINT)
            return super().value_and_grad(Z, T)

    model = mlp()
    h = model.fit(X, y, loss=Interrupting(), epochs=10, batch_size=16, verbose=0)
    assert h.interrupted and h.epochs == 1 and len(steps) == 5  # step 5 finished, no 6th
    assert all(np.all(np.isfinite(v)) for v in model.state_dict().values())
    assert model.optimizer.state["0.W"]["t"] == 5  # weights and optimizer agree: 5 updates
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_progress_bar_and_lines(capsys):
    X, y = blobs(n=40)
    mlp().fit(X, y, loss="cross_entropy", epochs=2, verbose=1, validation_split=0.25)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "val_loss=" in err
    mlp().fit(X, y, loss="cross_entropy", epochs=1, verbose=2)
    assert "epoch 1/1  loss=" in capsys.readouterr().err


# -- checkpoints ---------------------------------------------------------------------------

def test_save_and_load_across_backends(make_backend, tmp_path):
    X, y = blobs(n=60)
    model = mlp()
    model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = nnkit.load(path, backend=make_backend())
    assert loaded.epoch == 2 and type(loaded.optimizer) is optim.Adam
    np.testing.assert_allclose(to_np(loaded.predict(X)), to_np(model.predict(X)), rtol=1e-12)
    for k, s in model.optimizer.state.items():
        assert loaded.optimizer.state[k]["t"] == s["t"]
        np.testing.assert_array_equal(to_np(loaded.optimizer.state[k]["m"]), to_np(s["m"]))
    back = tmp_path / "back.npz"
    loaded.save(back)
    again = nnkit.load(back)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)


def test_resume_is_bit_identical(tmp_path):
    X, y = blobs(n=101)
    kw = dict(loss="cross_entropy", optimizer="adam", batch_size=16, validation_split=0.1, verbose=0)
    full = mlp(dtype="float32", seed=7)
    h_full = full.fit(X, y, epochs=6, **kw)
    path = tmp_path / "run.npz"
    first = mlp(dtype="float32", seed=7)
    first.fit(X, y, epochs=3, checkpoint=path, **kw)
    del first  # the process "stops" after epoch 3
    resumed = nnkit.load(path)
    assert resumed.epoch == 3
    h_rest = resumed.fit(X, y, epochs=6, checkpoint=path, resume=True, **kw)
    assert h_rest.epochs == 3
    assert h_rest["loss"] == h_full["loss"][3:]
    for k, v in full.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v)
    lr_run = mlp(dtype="float32", seed=7)  # by name, resume takes the saved hyperparameters too
    lr_run.fit(X, y, epochs=1, checkpoint=tmp_path / "lr.npz", **{**kw, "optimizer": optim.Adam(0.02)})
    lr_run.fit(X, y, epochs=2, checkpoint=tmp_path / "lr.npz", resume=True, **kw)
    assert lr_run.optimizer.lr == 0.02
    fresh = mlp(dtype="float32", seed=7)  # resume=True into a fresh model restores from the file too
    fresh.fit(X, y, epochs=6, checkpoint=path, resume=True, **kw)
    assert fresh.epoch == 6


def test_to_moves_optimizer_state_and_training_goes_on(make_backend):
    X, y = blobs(n=48)
    model = mlp()
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    model.to(make_backend())
    h = model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    assert model.optimizer.state["0.W"]["t"] == 2 * 2 and h.epochs == 1  # 48 rows: 2 batches an epoch
    assert model.backend.owns(model.optimizer.state["0.W"]["m"])


def test_resume_without_a_file_starts_fresh(tmp_path):
    X, y = blobs(n=40)
    model = mlp()
    model.fit(X, y, loss="cross_entropy", epochs=2, checkpoint=tmp_path / "new.npz", resume=True, verbose=0)
    assert model.epoch == 2 and (tmp_path / "new.npz").exists()


def test_interrupted_save_leaves_previous_file(tmp_path, monkeypatch):
    X, y = blobs(n=40)
    model = mlp()
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temp file left behind
    nnkit.load(path)


def test_corrupt_truncated_foreign_and_missing_files(tmp_path):
    model = mlp()
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(os.urandom(500))
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    for name, match in (("trunc.npz", "not a readable nnkit checkpoint"), ("junk.npz", "not a readable"),
                        ("foreign.npz", "not an nnkit checkpoint")):
        with pytest.raises(ValueError, match=match):
            nnkit.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        nnkit.load(tmp_path / "nope.npz")
    other = nnkit.Sequential([nnkit.Dense(64, 10)])
    other.save(tmp_path / "other.npz")
    X, y = blobs(n=20)
    before = model.state_dict()
    with pytest.raises(ValueError, match="another architecture"):
        model.fit(X, y, loss="cross_entropy", epochs=1, checkpoint=tmp_path / "other.npz", resume=True, verbose=0)
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())


def test_checkpoint_holds_no_pickle(tmp_path):
    path = tmp_path / "m.npz"
    mlp().save(path)
    with np.load(path, allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)


# -- the no-sync rule ---------------------------------------------------------------------

def test_no_host_sync_inside_an_epoch(monkeypatch):
    """One device->host read per epoch, whatever the number of steps; and no hidden reads:
    array_api_strict arrays refuse bool()/float()/int() during fit."""
    import array_api_strict

    X, y = blobs(n=200)
    model = mlp("array_api_strict")
    cls = type(array_api_strict.asarray(0.0))

    def refuse(self, *args):
        raise AssertionError("host synchronisation inside fit")

    for dunder in ("__bool__", "__float__", "__int__", "__index__"):  # (to_numpy, counted, uses __array__)
        monkeypatch.setattr(cls, dunder, refuse, raising=False)
    Xd = model.backend.asarray(X)
    before = model.backend.host_transfers
    model.fit(X, y, loss="cross_entropy", epochs=3, batch_size=10, verbose=0, validation_split=0.1,
              metrics=["accuracy", "mae"])
    assert model.backend.host_transfers - before == 3  # 3 epochs x 18 steps: 3 reads
    monkeypatch.undo()
    assert Xd.shape == (200, 64)


# -- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(epochs=0), ValueError, "epochs must be an integer >= 1"),
    (dict(epochs=2.5), ValueError, "epochs"),
    (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1"),
    (dict(validation_split=1.0), ValueError, "validation_split must be a number in"),
    (dict(validation_split=0.999), ValueError, "leaves no training rows"),
    (dict(optimizer="adagrad"), ValueError, "unknown optimizer 'adagrad'"),
    (dict(metrics=["f1_sometimes"]), ValueError, "unknown metric 'f1_sometimes'"),
    (dict(resume=True), ValueError, "needs checkpoint"),
    (dict(early_stopping="yes"), TypeError, "EarlyStopping"),
    (dict(validation_data=(1, 2, 3)), ValueError, "pair"),
])
def test_bad_fit_arguments_change_nothing(kwargs, exc, match):
    X, y = blobs(n=30)
    model = mlp()
    before = model.state_dict()
    args = dict(loss="cross_entropy", epochs=1, verbose=0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        model.fit(X, y, **args)
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
    assert model.epoch == 0 and model.optimizer is None


@pytest.mark.parametrize("which", ["X", "y", "empty"])
def test_bad_fit_data_changes_nothing(which):
    X, y = blobs(n=30)
    y = y.astype(float)
    if which == "X":
        X[3, 3] = np.nan
    elif which == "y":
        y[2] = np.inf
    else:
        X, y = X[:0], y[:0]
    model = mlp()
    before = model.state_dict()
    with pytest.raises(ValueError, match="NaN|empty"):
        model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())
