"""Mixed precision (nnkit.precision): where the casts sit, float32 master weights, loss scaling on the device.

The bfloat16/float16 backends here are torch and JAX (CPU); CuPy and the tf32 policy run in
``pytest -m gpu tests/test_gpu.py``.  NumPy and array-api-strict refuse 16-bit policies by name.
"""
import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import nnkit
from nnkit.precision import LossScaler

from helpers import to_np

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
MIXED_BACKENDS = [pytest.param("torch", marks=pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")),
                  pytest.param("jax", marks=pytest.mark.skipif(not HAS_JAX, reason="jax not installed"))]
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")


def _data(n=96, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    return X, y


def _every_layer(d=6, k=3):
    return [nnkit.Dense(d, 32), nnkit.BatchNorm(32), nnkit.GELU(), nnkit.Dense(32, 32), nnkit.LayerNorm(32),
            nnkit.SiLU(), nnkit.Residual([nnkit.Dense(32, 32), nnkit.Tanh()]), nnkit.Dropout(0.0),
            nnkit.Dense(32, 16), nnkit.ELU(), nnkit.Softplus(), nnkit.Sigmoid(), nnkit.Dense(16, k)]


def _rel(a, b):
    a, b = np.asarray(to_np(a), dtype=np.float64), np.asarray(to_np(b), dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


# -- the policy on the model ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", MIXED_BACKENDS)
@pytest.mark.parametrize("precision,compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_policy_names_and_dtypes(backend, precision, compute):
    model = nnkit.Sequential.mlp([6, 8, 3], backend=backend, seed=0, precision=precision)
    assert model.precision == precision and model.compute_dtype == compute and model.dtype == "float32"
    assert f"precision: {precision}" in model.summary() and f"precision={precision}" in repr(model)
    assert (model.loss_scale == 2.0 ** 16) == (precision == "mixed_float16")
    plain = nnkit.Sequential.mlp([6, 8, 3], backend=backend, seed=0)
    assert plain.precision is None and plain.compute_dtype == "float32" and plain.loss_scale is None


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_16_bit_policies_are_refused_where_the_backend_cannot_and_name_one_that_can(backend, precision):
    with pytest.raises(ValueError, match=f"precision='{precision}'.*backend '{backend}'.*backend='torch'"):
        nnkit.Sequential.mlp([6, 8, 3], backend=backend, precision=precision)


@pytest.mark.parametrize("backend", ["numpy"] + MIXED_BACKENDS)
def test_tf32_is_refused_off_cuda_and_bad_policies_are_named(backend):
    with pytest.raises(ValueError, match="tf32.*NVIDIA GPU.*device='cuda'"):
        nnkit.Sequential.mlp([6, 3], backend=backend, precision="tf32")
    with pytest.raises(ValueError, match="unknown precision 'bfloat16'.*mixed_bfloat16"):
        nnkit.Sequential.mlp([6, 3], backend=backend, precision="bfloat16")


@needs_torch
def test_mixed_policy_needs_float32_master_weights():
    with pytest.raises(ValueError, match="float32 master weights.*dtype='float32'"):
        nnkit.Sequential.mlp([6, 3], backend="torch", dtype="float64", precision="mixed_bfloat16")


# -- where the casts sit -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", MIXED_BACKENDS)
def test_weights_moments_and_gradients_stay_float32_and_matmuls_run_in_bfloat16(backend):
    X, y = _data()
    model = nnkit.Sequential(_every_layer(), backend=backend, seed=0, precision="mixed_bfloat16")
    xp = model.xp
    _, grads = model.value_and_grad(X, y, "cross_entropy")
    assert all(g.dtype == xp.float32 for g in grads.values())
    dense = model.layers[0]
    Xc, Wc = dense._cache
    assert Xc.dtype == xp.bfloat16 and Wc.dtype == xp.bfloat16  # the cast weight kept for dX = dZ·W_cᵀ
    assert model.layers[1]._cache[0].dtype == xp.float32  # BatchNorm's x̂ and statistics in float32
    model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=32, verbose=0)
    assert all(p.dtype == xp.float32 for p in {**model.params(), **model.buffers()}.values())
    assert all(v.dtype == xp.float32 for s in model.optimizer.state.values() for n, v in s.items() if n != "t")
    assert model.predict(X).dtype == xp.float32


@needs_torch
def test_each_weight_is_cast_once_per_step():
    import torch

    X, y = _data()
    model = nnkit.Sequential.mlp([6, 16, 16, 3], backend="torch", seed=0, precision="mixed_bfloat16")
    weights = {id(p) for p in model.params().values()}
    casts = []
    real = model.xp.astype

    def spy(x, dtype, **kw):
        if id(x) in weights:
            casts.append(id(x))
        return real(x, dtype, **kw)

    for layer in model.layers:
        layer.xp = type(model.xp)("spy")
        layer.xp.__dict__.update(vars(model.xp))
        layer.xp.astype = spy
    model.train_step(X, y, "cross_entropy", nnkit.optim.SGD(0.1))
    assert sorted(casts) == sorted(weights)  # every weight and bias exactly once
    assert torch.is_tensor(model.params()["0.W"])


@pytest.mark.parametrize("backend", MIXED_BACKENDS)
def test_bfloat16_gradients_agree_with_float32_to_bfloat16_tolerance(backend):
    X, y = _data(n=128)
    ref = nnkit.Sequential(_every_layer(), backend=backend, seed=0)
    mixed = nnkit.Sequential(_every_layer(), backend=backend, seed=0, precision="mixed_bfloat16")
    v32, g32 = ref.value_and_grad(X, y, "cross_entropy")
    v16, g16 = mixed.value_and_grad(X, y, "cross_entropy")
    assert abs(float(to_np(v16)) - float(to_np(v32))) < 2e-2 * abs(float(to_np(v32)))
    # the bias right before BatchNorm has a zero gradient in exact arithmetic: measured on the model's scale
    floor = 1e-2 * max(np.linalg.norm(to_np(g)) for g in g32.values())
    errs = {k: np.linalg.norm(to_np(g16[k]).astype(np.float64) - to_np(g32[k]))
            / max(np.linalg.norm(to_np(g32[k])), floor) for k in g32}
    # bfloat16 keeps 8 significant bits (ε = 2⁻⁸ ≈ 0.4%); a few roundings per path: a few percent at most
    assert max(errs.values()) < 5e-2, errs
    # and a wrong policy would not pass: float16 compute differs from float32 by far less, bfloat16 by more
    assert np.median(list(errs.values())) > 1e-4


@pytest.mark.parametrize("backend", MIXED_BACKENDS)
def test_gradcheck_of_a_mixed_model_checks_its_float64_twin(backend):
    X, y = _data(n=16)
    model = nnkit.Sequential([nnkit.Dense(6, 5), nnkit.LayerNorm(5), nnkit.GELU(), nnkit.Dense(5, 3)],
                             backend=backend, seed=0, precision="mixed_bfloat16")
    assert nnkit.gradcheck(model, X, y, "cross_entropy") < 1e-6
    assert model.precision == "mixed_bfloat16"


# -- loss scaling ------------------------------------------------------------------------------------------
W_SMALL = np.full((4, 1), 1e-4)


def _underflow_problem():
    """Outputs ≈ 6·10⁻⁵ against targets 0 over B = 4096 rows: ∂L/∂out = out/B ≈ 1.5·10⁻⁸, below half of
    float16's smallest subnormal (6·10⁻⁸), so it rounds to zero unless the loss is scaled."""
    rng = np.random.default_rng(1)
    X = rng.uniform(0.1, 0.2, size=(4096, 4))
    return X, np.zeros((4096, 1))


@pytest.mark.parametrize("backend", MIXED_BACKENDS)
def test_float16_gradients_underflow_without_scaling_and_match_float32_with_it(backend):
    X, t = _underflow_problem()
    ref = nnkit.Sequential([nnkit.Dense(4, 1)], backend=backend, seed=0)
    ref.load_state_dict({"0.W": W_SMALL, "0.b": np.zeros(1)})
    _, g32 = ref.value_and_grad(X, t, "mse")
    assert 1e-6 < float(np.abs(to_np(g32["0.W"])).max()) < 1e-4

    unscaled = ref.clone(precision="mixed_float16")
    unscaled.loss_scaler = LossScaler.init(unscaled.backend, scale=1.0)  # no scaling: the gradients flush to zero
    _, g0 = unscaled.value_and_grad(X, t, "mse")
    assert float(np.abs(to_np(g0["0.W"])).max()) == 0.0 and float(np.abs(to_np(g0["0.b"])).max()) == 0.0

    model = ref.clone(precision="mixed_float16")  # 2¹⁶: the same gradients survive
    _, g16 = model.value_and_grad(X, t, "mse")
    assert _rel(g16["0.W"], g32["0.W"]) < 1e-2 and _rel(g16["0.b"], g32["0.b"]) < 1e-2

    # and it trains: with scaling one SGD step moves the weights by −η·g (float32's g), without it nothing moves
    for m in (model, unscaled):
        m.fit(X, t, loss="mse", optimizer=nnkit.optim.SGD(100.0), epochs=1, batch_size=4096, verbose=0,
              shuffle=False)
    assert np.array_equal(to_np(unscaled.params()["0.W"]), W_SMALL.astype(np.float32))
    moved = to_np(model.params()["0.W"]) - W_SMALL.astype(np.float32)
    np.testing.assert_allclose(moved, -100.0 * to_np(g32["0.W"]), rtol=2e-2)


@pytest.mark.parametrize("backend", MIXED_BACKENDS)
@pytest.mark.parametrize("compile", [False, True])
def test_overflowing_step_is_skipped_on_the_device_and_the_scale_follows_gradscaler(backend, compile, monkeypatch):
    X, y = _data(n=64)
    model = nnkit.Sequential.mlp([6, 16, 3], backend=backend, seed=0, precision="mixed_float16")
    opt = nnkit.optim.Adam(1e-2)
    model.loss_scaler = LossScaler.init(model.backend, scale=2.0 ** 40)  # S·∂L/∂out overflows float16: inf
    before = model.state_dict()
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=64, verbose=0, compile=compile)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # skipped: nothing moved
    assert all(float(to_np(s["t"])) == 0 for s in opt.state.values())  # nor the step counts
    assert all(float(np.abs(to_np(s["m"])).max()) == 0 for s in opt.state.values())  # nor the moments
    assert model.loss_scale == 2.0 ** 39
    # finite steps: good counts up, and at the growth interval S doubles (interval shortened to 3 here)
    monkeypatch.setattr(LossScaler, "growth_interval", 3)
    model.loss_scaler = LossScaler.init(model.backend, scale=8.0)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=16, verbose=0)  # 4 finite steps
    assert model.loss_scale == 16.0 and float(to_np(model.loss_scaler["good"])) == 1.0
    assert all(float(to_np(s["t"])) == 4 for s in opt.state.values())
    assert not all(np.array_equal(before[k], model.state_dict()[k]) for k in before)


def test_scaler_rule_matches_torch_gradscaler():
    torch = pytest.importorskip("torch")
    xp = nnkit.get_backend("torch").xp
    ours = LossScaler.init(nnkit.get_backend("torch"), scale=1024.0)
    scale, tracker = torch.full((), 1024.0), torch.zeros((), dtype=torch.int32)
    pattern = [True] * 2500 + [False, True, False] + [True] * 2001
    for ok in pattern:
        ours = LossScaler.update(xp, ours, torch.tensor(ok))
        torch._amp_update_scale_(scale, tracker, torch.tensor(0.0 if ok else 1.0), 2.0, 0.5, 2000)
        assert float(ours["scale"]) == float(scale) and float(ours["good"]) == float(tracker)


# -- everywhere the policy goes ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", MIXED_BACKENDS)
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_compiled_mixed_step_equals_eager(backend, precision):
    X, y = _data()
    runs = []
    for compile in (False, True):
        model = nnkit.Sequential.mlp([6, 16, 3], backend=backend, seed=0, precision=precision, norm="layer")
        model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=3, batch_size=32,
                  verbose=0, compile=compile)
        runs.append(model.state_dict())
    errs = {k: _rel(runs[1][k], runs[0][k]) for k in runs[0]}
    assert max(errs.values()) < 2e-2, errs  # compilers may fuse the casts differently


@pytest.mark.parametrize("backend", MIXED_BACKENDS)
def test_checkpoint_keeps_the_policy_and_the_scale_and_resume_is_bit_identical(backend, tmp_path):
    X, y = _data()

    def fresh():
        return nnkit.Sequential.mlp([6, 16, 3], backend=backend, seed=3, precision="mixed_float16")

    whole = fresh()
    whole.loss_scaler = LossScaler.init(whole.backend, scale=2.0 ** 19)  # the first steps overflow: S moves
    whole.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=4, batch_size=32, verbose=0)
    path = tmp_path / "m.npz"
    part = fresh()
    part.loss_scaler = LossScaler.init(part.backend, scale=2.0 ** 19)
    part.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=32, verbose=0, checkpoint=path)
    loaded = nnkit.load(path, backend=backend)
    assert loaded.precision == "mixed_float16" and loaded.loss_scale == part.loss_scale < 2.0 ** 19
    assert float(to_np(part.optimizer.state["0.W"]["t"])) not in (0, 6)  # some steps were skipped, some were taken
    resumed = fresh()
    resumed.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=4, batch_size=32, verbose=0, checkpoint=path,
                resume=True)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.loss_scale == whole.loss_scale
    with pytest.raises(ValueError, match="backend 'numpy'"):
        nnkit.load(path)  # a float16 policy cannot run on NumPy: said, not silently dropped
    plain = nnkit.load(path, precision=None)  # the weights without the policy (the resumed run saved last)
    assert plain.precision is None and all(np.array_equal(plain.state_dict()[k], b[k]) for k in b)


@pytest.mark.parametrize("backend", MIXED_BACKENDS)
def test_to_and_pickle_keep_the_policy(backend):
    model = nnkit.Sequential.mlp([6, 8, 3], backend=backend, seed=0, precision="mixed_bfloat16")
    twin = pickle.loads(pickle.dumps(model))
    assert twin.precision == "mixed_bfloat16" and twin.layers[0].policy is twin.policy
    X, _ = _data(n=4)
    np.testing.assert_array_equal(to_np(twin.predict(X)), to_np(model.predict(X)))
    other = "jax" if backend == "torch" else "torch"
    if importlib.util.find_spec(other):
        model.to(other)
        assert model.precision == "mixed_bfloat16" and model.backend.name == other
    with pytest.raises(ValueError, match=r"backend 'numpy'.*\.to\('numpy', precision=None\)"):
        model.to("numpy")  # the message says how to move it anyway
    assert model.precision == "mixed_bfloat16"  # refused before anything moved
    model.to("numpy", precision=None)
    assert model.precision is None and model.predict(X).dtype == np.float32


@needs_torch
def test_mixed_float16_step_reads_nothing_on_the_meta_device():
    X, y = _data()
    be = nnkit.get_backend("torch", device="meta", dtype="float32")
    model = nnkit.Sequential.mlp([6, 16, 3], backend=be, seed=0, precision="mixed_float16")
    steps = []
    sgd = nnkit.optim.SGD(0.1, momentum=0.9)
    real_apply = sgd.apply
    sgd.apply = lambda *a, **k: steps.append(1) or real_apply(*a, **k)
    with pytest.raises(NotImplementedError, match="meta"):  # the epoch's one read, after every step
        model.fit(X, y, loss="cross_entropy", optimizer=sgd, epochs=3, batch_size=16, verbose=0)
    assert len(steps) == 6


@pytest.mark.skipif(not HAS_JAX, reason="jax not installed")
@pytest.mark.parametrize("compile", [False, True])
def test_mixed_float16_jax_fit_reads_the_device_once_per_epoch(jax_reads, compile):
    X, y = _data()
    model = nnkit.Sequential.mlp([6, 16, 3], backend="jax", seed=0, precision="mixed_float16")
    jax_reads.clear()
    history = model.fit(X, y, loss="cross_entropy", epochs=3, batch_size=16, verbose=0, compile=compile)
    assert len(history["loss"]) == 3
    assert len(jax_reads) == 3, [tuple(r.shape) for r in jax_reads]


@needs_torch
def test_data_parallel_mixed_fit_agrees_with_one_process(tmp_path):
    from test_distributed import _launch

    env = {"NNKIT_TEST_BACKEND": "torch", "NNKIT_TEST_PRECISION": "mixed_bfloat16"}
    os.environ.update(env)
    try:
        import mpi_worker

        mpi_worker.run(None, tmp_path / "one.npz", 3)
        _launch(2, tmp_path / "two.npz", 3)
    finally:
        for k in env:
            os.environ.pop(k)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for k in one.files:  # each rank's bfloat16 slice rounds on its own: bfloat16 tolerance, not 1e-10
        assert _rel(two[k], one[k]) < 3e-2, k


@needs_torch
def test_digits_in_mixed_bfloat16_reach_float32_accuracy():
    (X, y), (Xt, yt) = nnkit.datasets.load_digits()
    acc = {}
    for precision in (None, "mixed_bfloat16"):
        model = nnkit.Sequential.mlp([64, 128, 10], backend="torch", seed=0, precision=precision)
        model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=20, batch_size=64, verbose=0)
        acc[precision] = model.evaluate(Xt, yt, "cross_entropy")["accuracy"]
    assert acc["mixed_bfloat16"] >= acc[None] - 0.01, acc


@needs_torch
def test_sklearn_estimator_and_cli_take_a_precision(tmp_path):
    pytest.importorskip("sklearn")
    from nnkit.sklearn import MLPClassifier

    X, y = _data()
    kw = dict(hidden_layer_sizes=(16,), backend="torch", max_iter=50, learning_rate_init=1e-2, random_state=0)
    clf = MLPClassifier(precision="mixed_bfloat16", **kw).fit(X, y)
    ref = MLPClassifier(**kw).fit(X.astype(np.float32), y)
    assert clf.model_.precision == "mixed_bfloat16" and clf.score(X, y) >= ref.score(X, y) - 0.05
    with pytest.raises(ValueError, match="backend 'numpy'"):
        MLPClassifier(precision="mixed_bfloat16").fit(X, y)
    with pytest.raises(ValueError, match="precision must be"):
        MLPClassifier(precision="half").fit(X, y)

    from nnkit.tools.cli import main

    out = tmp_path / "m.npz"
    assert main(["train", "--data", "xor", "--hidden", "8", "--epochs", "2", "--backend", "torch",
                 "--precision", "mixed_bfloat16", "--save", str(out), "--quiet"]) in (0, None)
    assert nnkit.load(out, backend="torch").precision == "mixed_bfloat16"
    res = subprocess.run([sys.executable, "-m", "nnkit", "train", "--data", "xor", "--epochs", "1",
                          "--precision", "mixed_bfloat16"], capture_output=True, text=True)
    assert res.returncode == 2 and "backend 'numpy'" in res.stderr and "Traceback" not in res.stderr
