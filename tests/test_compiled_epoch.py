"""The epoch compiled whole (``fit(..., compile=True)`` on JAX): an epoch's full batches run as one compiled loop
on the device, equal to the eager epoch to float32 round-off, with schedules, metrics, validation, callbacks,
checkpoints and resume as before; a callback that needs every batch makes the loop run step by step; nothing
traced is left in the model."""
import numpy as np
import pytest

import nnkit
from nnkit.training import step as step_module
from tests.helpers import to_np

jax = pytest.importorskip("jax")


def _data(n=203, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.3), rng.uniform(0.2, 2.0, size=n)


def _model():
    return nnkit.Sequential([nnkit.Dense(6, 16), nnkit.BatchNorm(16), nnkit.ReLU(), nnkit.Dropout(0.2),
                             nnkit.Dense(16, 3)], backend="jax", seed=0)


def _spy(monkeypatch):
    """Counts of the compiled step's calls: whole epochs and single steps."""
    calls = {"epoch": 0, "step": 0}
    epoch, call = step_module.CompiledStep.epoch, step_module.CompiledStep.__call__
    monkeypatch.setattr(step_module.CompiledStep, "epoch",
                        lambda self, *a: calls.__setitem__("epoch", calls["epoch"] + 1) or epoch(self, *a))
    monkeypatch.setattr(step_module.CompiledStep, "__call__",
                        lambda self, *a, **k: calls.__setitem__("step", calls["step"] + 1) or call(self, *a, **k))
    return calls


def _fit(model, X, y, w, **kw):
    # SGD with momentum, not Adam: after BatchNorm the Dense bias's true gradient is 0, and Adam would turn its
    # round-off into steps of size lr (the running mean follows the bias)
    args = dict(loss="cross_entropy", optimizer=nnkit.optim.SGD(0.05, momentum=0.9, clip_norm=1.0), epochs=3, batch_size=64,
                verbose=0, regularizer=nnkit.optim.L2(1e-4), validation_split=0.2, sample_weight=w,
                metrics=["accuracy", "f1_macro"], callbacks=[nnkit.optim.StepLR(1, 0.5)])
    args.update(kw)
    return model.fit(X, y, **args)


def _close(a, b):
    np.testing.assert_allclose(a[0]["loss"], b[0]["loss"], rtol=2e-5)
    for k in ("val_loss", "accuracy", "val_f1_macro"):
        np.testing.assert_allclose(a[0][k], b[0][k], rtol=2e-5, atol=1e-6, err_msg=k)
    for k, v in b[1].items():
        np.testing.assert_allclose(a[1][k], v, rtol=1e-4, atol=2e-5, err_msg=k)


@pytest.mark.slow
def test_a_compiled_epoch_is_one_loop_and_equals_the_eager_epoch(monkeypatch):
    """162 training rows, batch 64: two full batches in one compiled loop and the last (34 rows) as one step —
    2 calls an epoch instead of 3 — with BatchNorm's statistics, dropout's key, SGD with momentum and clipping, L2,
    sample weights, a per-epoch schedule, validation and metrics all carried as in the eager epoch."""
    X, y, w = _data()
    calls = _spy(monkeypatch)
    runs = []
    for compile_ in (False, True):
        model = _model()
        h = _fit(model, X, y, w, compile=compile_)
        runs.append((h, {k: to_np(v) for k, v in model.state_dict().items()}))
    assert calls == {"epoch": 3, "step": 3}, calls  # per epoch: the loop over the full batches, the last batch
    _close(runs[1], runs[0])
    assert runs[1][0]["loss"][-1] < runs[1][0]["loss"][0]


@pytest.mark.slow
def test_a_callback_that_needs_every_batch_makes_the_compiled_epoch_run_step_by_step(monkeypatch):
    X, y, w = _data()
    seen = []

    class EveryBatch(nnkit.Callback):
        def on_batch_end(self, batch=None, logs=None):
            seen.append(batch)

    calls = _spy(monkeypatch)
    eager, per_step = _model(), _model()
    runs = [(_fit(eager, X, y, w), eager), (_fit(per_step, X, y, w, compile=True, callbacks=[
        nnkit.optim.StepLR(1, 0.5), EveryBatch()]), per_step)]
    assert calls == {"epoch": 0, "step": 9} and seen == [0, 1, 2] * 3
    _close(*[(h, {k: to_np(v) for k, v in m.state_dict().items()}) for h, m in runs[::-1]])
    # a per-step cosine schedule needs every batch; a per-epoch one does not
    assert nnkit.optim.CosineLR(10, steps_per_epoch=3).needs_every_batch()
    assert not nnkit.optim.CosineLR(10).needs_every_batch() and not nnkit.ProgbarLogger().needs_every_batch()


def test_nothing_traced_is_left_in_the_model():
    X, y, w = _data()
    model = _model()
    _fit(model, X, y, w, compile=True)

    def traced(obj, depth=0):
        if isinstance(obj, jax.core.Tracer):
            return True
        if depth > 4:
            return False
        if isinstance(obj, dict):
            return any(traced(v, depth + 1) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return any(traced(v, depth + 1) for v in obj)
        return False

    for layer in model.layers:
        for sub in layer.sublayers():
            assert not traced(vars(sub)), type(sub).__name__
    assert not traced(vars(model))
    model.predict(X)  # and the model still works


@pytest.mark.slow
@pytest.mark.parametrize("compile_", [False, True])
def test_compiled_epochs_resume_from_a_checkpoint_as_an_uninterrupted_run(tmp_path, compile_):
    X, y, w = _data()
    path = tmp_path / "run.npz"
    straight = _model()
    h_all = _fit(straight, X, y, w, compile=compile_, epochs=4, callbacks=[])
    first = _model()
    _fit(first, X, y, w, compile=compile_, epochs=2, callbacks=[], checkpoint=path)
    resumed = nnkit.load(path, backend="jax")
    h_rest = _fit(resumed, X, y, w, compile=compile_, epochs=4, callbacks=[], checkpoint=path, resume=True)
    assert h_rest["loss"] == h_all["loss"][2:]  # bit for bit
    for k, v in straight.state_dict().items():
        np.testing.assert_array_equal(to_np(resumed.state_dict()[k]), to_np(v), err_msg=k)


def test_the_progress_bar_moves_to_each_compiled_epochs_end(capsys, monkeypatch):
    X, y, w = _data()
    monkeypatch.setattr("nnkit.callbacks._isatty", lambda stream: True)
    monkeypatch.setattr("nnkit.callbacks._tqdm", lambda notebook: None)
    _fit(_model(), X, y, w, compile=True, verbose=1, epochs=2)
    err = capsys.readouterr().err
    assert "6/6" in err and "loss=" in err


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_a_compiled_epoch_under_mixed_precision_equals_the_compiled_steps(monkeypatch, precision):
    """The loss scale (mixed_float16) and the casts (both policies) are carried through the loop as through the
    steps one by one: the same numbers."""
    import warnings

    X, y, w = _data()

    class EveryBatch(nnkit.Callback):
        def on_batch_end(self, batch=None, logs=None):
            pass

    runs = []
    for hooks in ([], [EveryBatch()]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no fast float16/bfloat16 unit on this CPU: said, not an error
            model = nnkit.Sequential.mlp([6, 16, 3], backend="jax", seed=0, precision=precision)
        h = model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=3, batch_size=64,
                      verbose=0, compile=True, callbacks=hooks)
        runs.append((h["loss"], {k: to_np(v) for k, v in model.state_dict().items()}, model.loss_scale))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for k, v in runs[1][1].items():
        np.testing.assert_allclose(runs[0][1][k], v, rtol=1e-4, atol=1e-5, err_msg=k)
    assert runs[0][2] == runs[1][2]
