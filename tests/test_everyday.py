"""What users reach for every day: best checkpoints, honest schedules, monitors that refuse a typo, frozen
layers."""
import numpy as np
import pytest

import nnkit
from tests.helpers import to_np

rng = np.random.default_rng(0)
X = rng.standard_normal((200, 6))
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
Xv, Yv = X[150:], Y[150:]


def _model(seed=0):
    return nnkit.Sequential.mlp([6, 16, 2], seed=seed, dtype="float64")


# -- best checkpoints -------------------------------------------------------------------------------------
def test_save_best_only_keeps_the_best_epoch_in_the_file(tmp_path):
    path = tmp_path / "best.npz"
    model = _model()
    ckpt = nnkit.ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    hist = model.fit(X[:150], Y[:150], loss="cross_entropy", optimizer=nnkit.optim.SGD(2.0), epochs=12,
                     validation_data=(Xv, Yv), callbacks=[ckpt], verbose=0)
    best = int(np.argmin(hist["val_loss"]))
    loaded = nnkit.load(path)
    assert loaded.epoch == best + 1
    assert loaded.evaluate(Xv, Yv, "cross_entropy")["loss"] == pytest.approx(hist["val_loss"][best], rel=1e-9)


def test_a_checkpoint_after_early_stopping_holds_the_model_fit_leaves(tmp_path):
    path = tmp_path / "m.npz"
    model = _model()
    hist = model.fit(X[:150], Y[:150], loss="cross_entropy", optimizer=nnkit.optim.SGD(3.0), epochs=40,
                     validation_data=(Xv, Yv), early_stopping=nnkit.EarlyStopping(patience=2), checkpoint=path,
                     verbose=0)
    assert hist.stopped_epoch is not None
    in_memory = model.evaluate(Xv, Yv, "cross_entropy")["loss"]
    assert in_memory == pytest.approx(min(hist["val_loss"]), rel=1e-9)
    assert nnkit.load(path).evaluate(Xv, Yv, "cross_entropy")["loss"] == pytest.approx(in_memory, rel=1e-12)


def test_max_mode_for_accuracy(tmp_path):
    ckpt = nnkit.ModelCheckpoint(tmp_path / "acc.npz", monitor="val_accuracy", save_best_only=True)
    assert ckpt.watch.mode == "max"
    assert nnkit.ModelCheckpoint(tmp_path / "l.npz", monitor="val_loss", save_best_only=True).watch.mode == "min"
    assert nnkit.EarlyStopping(monitor="val_auc").watch.mode == "max"


# -- honest schedules ------------------------------------------------------------------------------------------
def _plateau_run(schedule, values, key="val_accuracy"):
    opt = nnkit.optim.SGD(1.0)
    schedule.optimizer = opt
    schedule.on_train_begin()
    seen = []
    for e, v in enumerate(values):
        schedule.on_epoch_end(e, {"loss": 1.0, key: v})
        seen.append(opt.lr)
    return seen


def test_reduce_on_plateau_knows_an_accuracy_rises():
    rising = [0.31, 0.40, 0.48, 0.55, 0.60, 0.64]
    assert _plateau_run(nnkit.optim.ReduceLROnPlateau(monitor="val_accuracy", patience=0, factor=0.5),
                        rising) == [1.0] * 6
    flat = [0.5, 0.5, 0.5, 0.5]
    assert _plateau_run(nnkit.optim.ReduceLROnPlateau(monitor="val_accuracy", patience=0, factor=0.5),
                        flat) == [1.0, 0.5, 0.25, 0.125]
    # mode="min" on an accuracy is what the user said: every rise is "no improvement"
    assert _plateau_run(nnkit.optim.ReduceLROnPlateau(monitor="val_accuracy", patience=0, factor=0.5, mode="min"),
                        rising)[-1] == 0.5 ** 5


def test_reduce_on_plateau_cools_down():
    flat = [1.0] * 7
    seen = _plateau_run(nnkit.optim.ReduceLROnPlateau(monitor="val_loss", patience=0, factor=0.5, cooldown=2),
                        flat, key="val_loss")
    assert seen == [1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


@pytest.mark.parametrize("make", [
    lambda: nnkit.optim.ReduceLROnPlateau(monitor="val_los"),
    lambda: nnkit.EarlyStopping(monitor="val_los"),
    lambda: nnkit.ModelCheckpoint("unused.npz", monitor="val_los", save_best_only=True),
], ids=["ReduceLROnPlateau", "EarlyStopping", "ModelCheckpoint"])
def test_a_mistyped_monitor_is_refused_before_training_naming_the_logs(make):
    model = _model()
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"monitors 'val_los', which fit does not report \(it reports accuracy, "
                                         r"loss, val_accuracy, val_loss\)"):
        model.fit(X[:150], Y[:150], loss="cross_entropy", epochs=2, validation_data=(Xv, Yv), verbose=0,
                  callbacks=[make()])
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # refused before the first step


def test_bad_modes_are_refused():
    for make in (lambda: nnkit.optim.ReduceLROnPlateau(mode="up"), lambda: nnkit.EarlyStopping(mode="up"),
                 lambda: nnkit.ModelCheckpoint("x.npz", save_best_only=True, mode="up")):
        with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
            make()


# -- frozen layers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_a_frozen_layer_gets_no_update_and_no_moments(make_backend, optimizer):
    model = nnkit.Sequential.mlp([6, 8, 8, 2], backend=make_backend("float64"), seed=0)
    model.layers[0].trainable = False
    before = model.state_dict()
    model.fit(X, Y, loss="cross_entropy", optimizer=optimizer, epochs=2, verbose=0)
    after = model.state_dict()
    np.testing.assert_array_equal(after["0.W"], before["0.W"])
    np.testing.assert_array_equal(after["0.b"], before["0.b"])
    assert not np.allclose(after["2.W"], before["2.W"])
    assert "0.W" not in model.optimizer.state and "2.W" in model.optimizer.state


def test_freeze_nested_and_summary_counts(tmp_path):
    model = nnkit.Sequential([nnkit.Dense(6, 8), nnkit.Residual([nnkit.Dense(8, 8), nnkit.Tanh()]),
                              nnkit.Dense(8, 2)], seed=0, dtype="float64")
    model.freeze(1)
    assert model.frozen_keys() == {"1.0.W", "1.0.b"}
    assert model.n_trainable == model.n_params - 72
    text = model.summary()
    assert "total params: 146 (trainable 74, frozen 72)" in text and "(frozen)" in text
    before = model.state_dict()
    model.fit(X, Y, loss="cross_entropy", epochs=1, verbose=0, checkpoint=tmp_path / "m.npz")
    np.testing.assert_array_equal(model.state_dict()["1.0.W"], before["1.0.W"])
    loaded = nnkit.load(tmp_path / "m.npz")
    assert loaded.frozen_keys() == {"1.0.W", "1.0.b"}  # the state is saved with the model
    loaded.unfreeze()
    assert loaded.frozen_keys() == set()
    with pytest.raises(ValueError, match="freeze/unfreeze take layer indices"):
        model.freeze(7)


def test_a_frozen_layer_stays_frozen_under_compile_and_loss_scaling():
    pytest.importorskip("jax")
    model = nnkit.Sequential.mlp([6, 8, 2], backend="jax", seed=0)
    model.freeze(0)
    before = model.state_dict()
    model.fit(X.astype(np.float32), Y, loss="cross_entropy", epochs=2, verbose=0, compile=True)
    np.testing.assert_array_equal(model.state_dict()["0.W"], before["0.W"])
    assert not np.allclose(model.state_dict()["2.W"], before["2.W"])


def test_pickled_and_cloned_models_keep_their_frozen_layers():
    import pickle

    model = _model().freeze(0)
    assert pickle.loads(pickle.dumps(model)).frozen_keys() == {"0.W", "0.b"}
    assert model.clone().frozen_keys() == {"0.W", "0.b"}
    twin = to_np(model.clone().predict(X))
    np.testing.assert_allclose(twin, to_np(model.predict(X)))


# -- run records ---------------------------------------------------------------------------------------------
def test_csv_logger_writes_one_row_per_epoch_and_appends_on_resume(tmp_path):
    import csv

    path, ckpt = tmp_path / "log.csv", tmp_path / "m.npz"
    model = _model()
    model.fit(X, Y, loss="cross_entropy", epochs=2, verbose=0, validation_split=0.2, checkpoint=ckpt,
              callbacks=[nnkit.callbacks.CSVLogger(path)])
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    hist = model.fit(X, Y, loss="cross_entropy", epochs=3, verbose=0, validation_split=0.2, checkpoint=ckpt,
                     resume=True, callbacks=[nnkit.callbacks.CSVLogger(path, append=True)])
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["val_loss"]) == pytest.approx(hist["val_loss"][-1], rel=1e-12)
    with pytest.raises(ValueError, match="has the columns"):
        model.fit(X, Y, loss="cross_entropy", epochs=1, verbose=0, callbacks=[nnkit.callbacks.CSVLogger(path, append=True)])


def test_batch_logs_every_n_steps_and_none_between():
    seen = []

    class Watch(nnkit.Callback):
        def on_batch_end(self, batch, logs):
            seen.append((batch, logs))

    model = _model()
    be = model.backend
    model.fit(X, Y, loss="cross_entropy", epochs=1, batch_size=20, verbose=0, callbacks=[Watch()],
              log_every_n_steps=4, metrics=["accuracy"])
    assert [b for b, _ in seen] == list(range(10))
    logged = [(b, logs) for b, logs in seen if logs is not None]
    assert [b for b, _ in logged] == [3, 7]
    assert set(logged[0][1]) == {"loss", "accuracy"} and 0.0 <= logged[0][1]["accuracy"] <= 1.0
    reads = be.host_transfers
    model.fit(X, Y, loss="cross_entropy", epochs=1, batch_size=20, verbose=0, callbacks=[Watch()])
    assert be.host_transfers - reads <= 2  # without logging steps: the epoch's read only

    class Old(nnkit.Callback):  # written for on_batch_end(self): still called
        calls = 0

        def on_batch_end(self):
            Old.calls += 1

    model.fit(X, Y, loss="cross_entropy", epochs=1, batch_size=50, verbose=0, callbacks=[Old()], log_every_n_steps=1)
    assert Old.calls == 4


def test_tensorboard_event_files_are_read_back(tmp_path):
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    model = _model()
    tb = nnkit.callbacks.TensorBoard(tmp_path / "tb", every_n_steps=5, histograms=True)
    model.fit(X, Y, loss="cross_entropy", epochs=3, batch_size=20, verbose=0, validation_split=0.2,
              callbacks=[nnkit.GradientStats(), tb])
    acc = ea.EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"epoch/loss", "epoch/val_loss", "epoch/accuracy", "epoch/lr", "step/loss", "grad_norm/0.W"} <= \
        set(tags["scalars"])
    assert [e.step for e in acc.Scalars("epoch/loss")] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("step/loss")] == [5, 10, 15, 20]  # 8 steps an epoch, 24 in all
    assert {"weights/0.W", "gradients/0.W", "weights/2.W"} <= set(tags["histograms"])
    loss = [e.value for e in acc.Scalars("epoch/val_loss")]
    assert len(loss) == 3 and all(np.isfinite(loss))


def test_cli_log_dir(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    from nnkit.tools.cli import main

    assert main(["train", "--data", "moons", "--epochs", "2", "--quiet", "--log-dir", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].startswith("epoch,loss")
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run").iterdir())
    (tmp_path / "file").write_text("x")
    assert main(["train", "--data", "moons", "--epochs", "1", "--quiet", "--log-dir", str(tmp_path / "file")]) == 2
    assert "--log-dir" in capsys.readouterr().err


# -- training controls ---------------------------------------------------------------------------------------------
def test_class_weight_equals_the_same_sample_weights():
    y3 = (X[:, 0] > 0).astype(int) + (X[:, 1] > 1).astype(int)
    cw = {0: 0.5, 2: 3.0}
    a = nnkit.Sequential.mlp([6, 8, 3], seed=0, dtype="float64")
    b = nnkit.Sequential.mlp([6, 8, 3], seed=0, dtype="float64")
    a.fit(X, y3, loss="cross_entropy", epochs=2, verbose=0, class_weight=cw, shuffle=False)
    b.fit(X, y3, loss="cross_entropy", epochs=2, verbose=0, sample_weight=np.array([cw.get(c, 1.0) for c in y3]),
          shuffle=False)
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v, b.state_dict()[k], rtol=1e-12)
    from sklearn.utils.class_weight import compute_sample_weight

    np.testing.assert_allclose(nnkit.data.class_weights(y3, "balanced"), compute_sample_weight("balanced", y3))
    with pytest.raises(ValueError, match="class_weight names class 7"):
        a.fit(X, y3, loss="cross_entropy", epochs=1, verbose=0, class_weight={7: 1.0})
    with pytest.raises(ValueError, match="one class label per example"):
        a.fit(X, np.c_[X[:, :3]], loss="mse", epochs=1, verbose=0, class_weight="balanced")


def test_class_weight_balanced_in_the_classifier_estimator():
    from nnkit.sklearn import MLPClassifier

    ys = np.where(X[:, 0] > 0.8, "rare", "common")
    w = nnkit.data.class_weights((ys == "rare").astype(int), "balanced")
    a = MLPClassifier((5,), max_iter=3, random_state=0, class_weight="balanced", shuffle=False).fit(X, ys)
    b = MLPClassifier((5,), max_iter=3, random_state=0, shuffle=False).fit(X, ys, sample_weight=w)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-10)
    assert a.get_params()["class_weight"] == "balanced"
    c = MLPClassifier((5,), max_iter=3, random_state=0, class_weight={"rare": 4.0}, shuffle=False).fit(X, ys)
    d = MLPClassifier((5,), max_iter=3, random_state=0, shuffle=False).fit(X, ys, sample_weight=np.where(ys == "rare", 4.0, 1.0))
    np.testing.assert_allclose(c.predict_proba(X), d.predict_proba(X), rtol=1e-10)


@pytest.mark.parametrize("optimizer", [lambda: nnkit.optim.SGD(0.1, momentum=0.9, weight_decay=1e-3),
                                       lambda: nnkit.optim.Adam(1e-2, clip_norm=0.5), lambda: nnkit.optim.AdamW(1e-2),
                                       lambda: nnkit.optim.RMSprop(1e-2)], ids=["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("weighted", [False, True])
def test_accumulating_n_batches_is_one_step_on_an_n_times_batch(make_backend, optimizer, weighted):
    be = make_backend("float64")
    w = rng.uniform(0.2, 2.0, size=len(Y)) if weighted else None
    small = nnkit.Sequential.mlp([6, 8, 2], backend=be, seed=0, norm="layer")
    large = nnkit.Sequential.mlp([6, 8, 2], backend=be, seed=0, norm="layer")
    small.fit(X, Y, loss="cross_entropy", optimizer=optimizer(), epochs=2, batch_size=16, accumulate=4, shuffle=False,
              verbose=0, sample_weight=w, regularizer=nnkit.optim.L2(1e-3))
    large.fit(X, Y, loss="cross_entropy", optimizer=optimizer(), epochs=2, batch_size=64, shuffle=False, verbose=0,
              sample_weight=w, regularizer=nnkit.optim.L2(1e-3))
    for k, v in small.state_dict().items():  # 200 rows: three groups of 64 and a last one of 8, each epoch
        np.testing.assert_allclose(v, large.state_dict()[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_accumulate_is_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="accumulate must be an integer >= 1"):
        _model().fit(X, Y, loss="cross_entropy", epochs=1, verbose=0, accumulate=0)
    pytest.importorskip("jax")
    m = nnkit.Sequential.mlp([6, 8, 2], backend="jax", seed=0)
    with pytest.raises(ValueError, match="accumulate > 1 runs eagerly"):
        m.fit(X.astype(np.float32), Y, loss="cross_entropy", epochs=1, verbose=0, accumulate=2, compile=True)


def test_lr_find_leaves_the_model_alone_and_reads_once(tmp_path):
    model = _model()
    before, be = model.state_dict(), model.backend
    reads = be.host_transfers
    nnkit.lr_find(model, X, Y, "cross_entropy", steps=10, batch_size=16)
    few = be.host_transfers - reads
    result = nnkit.lr_find(model, X, Y, "cross_entropy", steps=60, batch_size=16)
    assert be.host_transfers - reads - few == few  # no read per step: the same reads for 10 steps and 60
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    rng_state = model.rng.bit_generator.state
    nnkit.lr_find(model, X, Y, "cross_entropy", steps=5, batch_size=16)
    assert model.rng.bit_generator.state == rng_state  # the model's shuffles are not drawn either
    assert len(result.lrs) == len(result.losses) == 60 and result.lrs[0] == pytest.approx(1e-7)
    assert result.lrs[-1] == pytest.approx(10.0) and np.all(np.diff(result.lrs) > 0)
    assert result.suggestion is None or 1e-7 <= result.suggestion <= 10.0
    fig = result.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 1000 and fig.axes
    with pytest.raises(ValueError, match="end_lr must be larger"):
        nnkit.lr_find(model, X, Y, "cross_entropy", start_lr=1.0, end_lr=0.1)


def test_lr_find_suggests_where_a_known_curve_falls():
    from nnkit.tools.lr_finder import _suggest

    lrs = np.logspace(-6, 1, 50)
    curve = np.r_[np.full(20, 1.0), np.linspace(1.0, 0.2, 20), np.linspace(0.2, 5.0, 10)]
    s = _suggest(lrs, curve, 4.0)
    assert lrs[20] <= s <= lrs[39]  # inside the falling stretch
    assert _suggest(lrs, np.linspace(1, 2, 50), 4.0) is None  # never falls


def test_plots_return_figures_and_leave_matplotlib_alone(tmp_path):
    mpl = pytest.importorskip("matplotlib")
    backend = mpl.get_backend()
    model = _model()
    hist = model.fit(X, Y, loss="cross_entropy", epochs=2, verbose=0, validation_split=0.2)
    fig = nnkit.plots.training_curves(hist)  # no path: nothing written
    assert isinstance(fig, mpl.figure.Figure) and not list(tmp_path.iterdir())
    nnkit.plots.training_curves(hist, tmp_path / "c.png")
    assert (tmp_path / "c.png").exists() and mpl.get_backend() == backend


def test_cli_lr_find(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from nnkit.tools.cli import main

    assert main(["train", "--data", "moons", "--lr-find", "--optimizer", "sgd", "--plot", str(tmp_path / "lr.png"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "lr-find:" in out and (tmp_path / "lr.png").exists()


# -- notebooks ------------------------------------------------------------------------------------------------------
def test_history_to_dataframe():
    pd = pytest.importorskip("pandas")
    hist = _model().fit(X, Y, loss="cross_entropy", epochs=3, verbose=0, validation_split=0.2)
    df = hist.to_dataframe()
    assert isinstance(df, pd.DataFrame) and list(df.index) == [1, 2, 3]
    assert {"loss", "val_loss", "accuracy", "time"} <= set(df.columns)
    assert df["val_loss"].tolist() == hist["val_loss"]


def test_progress_bar_in_a_notebook_is_tqdms(monkeypatch):
    pytest.importorskip("tqdm")
    import sys
    import types

    from nnkit import callbacks as cb

    class ZMQInteractiveShell:  # what IPython's get_ipython() returns inside a Jupyter kernel
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert cb._in_notebook()
    bar = cb._Progress(1, 10, 2)
    assert bar.tqdm is not None and not bar.text_bar  # a bar although stderr is no terminal
    monkeypatch.setitem(sys.modules, "IPython", None)
    assert not cb._in_notebook()


# -- cluster-friendly -----------------------------------------------------------------------------------------------
_SIGTERM_SCRIPT = r'''
import os, signal, sys
import numpy as np
import nnkit

rng = np.random.default_rng(0)
X = rng.standard_normal((200, 6)); Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
mode, path = sys.argv[1], sys.argv[2]

class Term(nnkit.Callback):  # SLURM's SIGTERM, mid-epoch: epoch 2, batch 4
    def on_epoch_begin(self, epoch):
        self.epoch = epoch
    def on_batch_end(self, batch, logs):
        if self.epoch == 2 and batch == 4:
            os.kill(os.getpid(), signal.SIGTERM)

model = nnkit.Sequential.mlp([6, 16, 16, 2], dropout=0.2, seed=3, dtype="float64")
callbacks = [Term()] if mode == "term" else []
model.fit(X, Y, loss="cross_entropy", optimizer="adam", epochs=5, batch_size=16, verbose=0,
          checkpoint=None if mode == "plain" else path, resume=mode == "resume", callbacks=callbacks)
np.save(path + "." + mode + ".npy", np.concatenate([v.ravel() for v in model.state_dict().values()]))
'''


def test_sigterm_checkpoints_and_resume_continues_bit_identically(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(_SIGTERM_SCRIPT)
    path = str(tmp_path / "run.npz")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}

    def run(mode):
        return subprocess.run([sys.executable, str(script), mode, path], capture_output=True, text=True, env=env,
                              timeout=300)

    term = run("term")
    assert term.returncode == 143, term.stderr
    assert "SIGTERM" in term.stderr and "holds epoch 2" in term.stderr and "resume=True" in term.stderr
    assert nnkit.load(path).epoch == 2
    assert run("resume").returncode == 0
    assert run("plain").returncode == 0
    resumed, plain = np.load(path + ".resume.npy"), np.load(path + ".plain.npy")
    np.testing.assert_array_equal(resumed, plain)


# -- precision on the wrong CPU --------------------------------------------------------------------------------------
def test_a_16_bit_policy_slower_than_float32_warns_once_naming_both_speeds(monkeypatch):
    pytest.importorskip("torch")
    from nnkit import precision as P

    calls = []

    def fake(backend, dtype_name, n):
        calls.append(dtype_name)
        return {"float32": 77.0, "bfloat16": 0.9}[dtype_name]

    monkeypatch.setattr(P, "_gflops", fake)
    monkeypatch.setattr(P, "_SPEEDS", {})
    with pytest.warns(P.SlowPrecisionWarning, match=r"bfloat16 matmuls run at 0\.9 GFLOP/s .* against 77 GFLOP/s in "
                                                     r"float32 .*use precision=None"):
        nnkit.Sequential.mlp([4, 8, 2], backend="torch", precision="mixed_bfloat16")
    nnkit.Sequential.mlp([4, 8, 2], backend="torch", precision="mixed_bfloat16")
    assert calls == ["float32", "bfloat16"]  # timed once per device and dtype, then cached


def test_the_report_says_a_precision_is_slower_than_float32():
    from nnkit.tools.bench import precision_against_float32

    steps = [{"shape": "M", "target": "torch", "dtype": "float32", "step": 0.010},
             {"shape": "M", "target": "torch", "dtype": "mixed_bfloat16", "step": 0.480}]
    text = "\n".join(precision_against_float32(steps))
    assert "| M | torch | mixed_bfloat16 | 48.00 | **slower than float32 here** |" in text


def test_one_model_one_answer_through_every_door(tmp_path):
    """A model carrying a Preprocessing takes raw rows by every door: predict, predict_labels, predict_proba,
    evaluate, the command line and ONNX Runtime give the same numbers for the same raw rows; labels may be
    class names; the ONNX file names its classes and features."""
    import json

    rng = np.random.default_rng(0)
    X = rng.normal(50.0, 30.0, size=(400, 3))
    X[::9, 2] = np.nan
    names = np.array(["low", "mid", "high"])
    y = np.digitize(np.nan_to_num(X[:, 0], nan=50.0), [40.0, 60.0])
    pre = nnkit.Preprocessing.fit(X, feature_names=["a", "b", "c"], impute="median", classes=list(names),
                                  label="grade")
    model = nnkit.Sequential.mlp([3, 16, 3], seed=0)
    model.preprocessing = pre
    model.fit(X, names[y], loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=30, verbose=0,
              class_weight={"high": 1.5})
    model.save(tmp_path / "m.npz")
    loaded = nnkit.load(tmp_path / "m.npz")
    raw = X[:40]
    out = to_np(loaded.predict(raw))
    np.testing.assert_allclose(out, to_np(model.predict(raw)), rtol=1e-6)
    proba = loaded.predict_proba(raw)
    np.testing.assert_allclose(proba, np.exp(out) / np.exp(out).sum(axis=1, keepdims=True), rtol=1e-5)
    labels = loaded.predict_labels(raw)
    assert list(labels) == list(names[out.argmax(axis=1)])
    by_name = loaded.evaluate(X, names[y], "cross_entropy")
    by_index = loaded.evaluate(X, y, "cross_entropy")
    assert by_name == by_index and by_name["accuracy"] > 0.9
    np.testing.assert_allclose(by_name["loss"], float(np.mean(-np.log(loaded.predict_proba(X)[np.arange(400), y]))),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="label 'top' in row 1 is not one of the model's classes"):
        loaded.evaluate(X[:2], np.array(["low", "top"]), "cross_entropy")
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"grade": names[y[:40]], "c": raw[:, 2], "a": raw[:, 0], "b": raw[:, 1]})  # by name
    assert list(loaded.predict_labels(frame)) == list(labels)
    ort = pytest.importorskip("onnxruntime")
    proto = loaded.export(tmp_path / "m.onnx")
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == list(names) and json.loads(meta["feature_names"]) == ["a", "b", "c"]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got, p_onnx = sess.run(None, {"input": raw.astype(np.float32)})
    np.testing.assert_allclose(got, out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p_onnx, proba, rtol=1e-4, atol=1e-5)
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b,c,grade\n" + "\n".join(
        f"{r[0]:.17g},{r[1]:.17g},{'' if np.isnan(r[2]) else format(r[2], '.17g')},{g}"
        for r, g in zip(raw, names[y[:40]])) + "\n")
    from nnkit.tools.cli import main

    assert main(["predict", str(tmp_path / "m.npz"), str(csv), "--out", str(tmp_path / "p.csv")]) == 0
    cli = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert cli == list(labels)


def test_a_classifier_without_preprocessing_exports_its_probabilities(tmp_path):
    pytest.importorskip("onnx")
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 1, 8)), rng.integers(0, 3, 60)
    cnn = nnkit.Sequential([nnkit.Conv1D(1, 4, 3), nnkit.ReLU(), nnkit.GlobalAvgPool(), nnkit.Dense(4, 3)], seed=0)
    cnn.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    names = [o.name for o in cnn.export(tmp_path / "c.onnx").graph.output]
    assert names == ["output", "probabilities"]
    multi = nnkit.Sequential.mlp([8, 4, 2], seed=0)
    multi.fit(X[:, 0], np.stack([y == 0, y == 1], axis=1).astype(float), loss="binary_cross_entropy", epochs=1,
              verbose=0)
    proto = multi.export(None)
    assert [o.name for o in proto.graph.output] == ["output", "probabilities"]
    assert {p.key: p.value for p in proto.metadata_props}["probabilities"] == "sigmoid"
    assert any(n.op_type == "Sigmoid" for n in proto.graph.node)
