"""The fused SGD step: SGD updates a Dense weight in the backward pass — W ← W − lr·Xᵀ·dZ on one GEMM, or with
momentum v ← μv + Xᵀ·dZ on one GEMM, then W ← W − lr·v (``Backend.descent_update``) — and must end where the
plain step (dW formed, then the update) ends."""
import numpy as np
import pytest

import nnkit
from nnkit import step
from nnkit.backend import _numpy_gemm
from nnkit.optim import SGD

from helpers import to_np

FUSES = ("numpy", "torch")  # the libraries with an in-place matrix product
NUMPY_FUSE_MIN = (nnkit.backend._FUSE_MIN_ENTRIES, nnkit.backend._FUSE_MIN_MACS)


@pytest.fixture(autouse=True)
def fuse_small_products(monkeypatch):
    """These nets are small: NumPy fuses every product here (by default only large ones, see the last tests)."""
    monkeypatch.setattr(nnkit.backend, "_FUSE_MIN_ENTRIES", 0)
    monkeypatch.setattr(nnkit.backend, "_FUSE_MIN_MACS", 0)


def _net(backend, precision=None, seed=0):
    layers = [nnkit.Dense(6, 16), nnkit.ReLU(), nnkit.Residual([nnkit.Dense(16, 16), nnkit.Tanh()]),
              nnkit.BatchNorm(16), nnkit.Dense(16, 3)]
    return nnkit.Sequential(layers, backend=backend, dtype=backend.dtype_name, seed=seed, precision=precision)


def _batch(model, n=20, seed=1):
    rng = np.random.default_rng(seed)
    X = model._as_input(rng.standard_normal((n, 6)))
    T = model._as_target(rng.integers(0, 3, n), n, nnkit.CrossEntropy())
    return X, T


def _steps(model, opt, fused, n=3, **kw):
    X, T = _batch(model)
    loss = nnkit.CrossEntropy()
    for _ in range(n):
        with model.policy.activate():
            _, _, state = step.train_step(model, step.StepState.of(model, opt), X, T, opt.lr, loss=loss,
                                          optimizer=opt, fused=fused, **kw)
        opt.state = state.opt
    return model


def _spy(monkeypatch, backend):
    """Counts the weights a fused update really changed in place."""
    calls = []
    make = type(backend).descent_update

    def descent_update(self, lr, momentum=0.0, largest=None):
        update = make(self, lr, momentum, largest)
        if update is None:
            return None

        def counted(P, A, B, V=None):
            done = update(P, A, B, V)
            calls.append(done)
            return done

        return counted

    monkeypatch.setattr(type(backend), "descent_update", descent_update)
    return calls


def _assert_same(fused, plain, rtol, atol):
    for key, p in plain.params().items():
        np.testing.assert_allclose(to_np(fused.params()[key]), to_np(p), rtol=rtol, atol=atol, err_msg=key)
    for key, b in plain.buffers().items():
        np.testing.assert_allclose(to_np(fused.buffers()[key]), to_np(b), rtol=rtol, atol=atol, err_msg=key)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fused_step_ends_where_the_plain_step_ends(make_backend, monkeypatch, momentum):
    be = make_backend("float64")
    calls = _spy(monkeypatch, be)
    fused_opt = SGD(0.1, momentum=momentum)
    fused = _steps(_net(be), fused_opt, fused=True)
    assert calls == ([True] * 9 if be.name in FUSES else []), "three Dense weights, three steps"
    plain_opt = SGD(0.1, momentum=momentum)
    plain = _steps(_net(be), plain_opt, fused=False)
    assert len(calls) == (9 if be.name in FUSES else 0), "fused=False never fuses"
    _assert_same(fused, plain, 1e-12, 1e-14)
    if momentum:  # the velocities too: a resumed run continues from them
        for key, s in plain_opt.state.items():
            np.testing.assert_allclose(to_np(fused_opt.state[key]["v"]), to_np(s["v"]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fused_step_keeps_step_counts_and_state_order(momentum):
    be = nnkit.get_backend("numpy", dtype="float64")
    a, b = SGD(0.05, momentum=momentum), SGD(0.05, momentum=momentum)
    _steps(_net(be), a, fused=True)
    _steps(_net(be), b, fused=False)
    assert list(a.state) == list(b.state)
    assert all(a.state[k]["t"] == b.state[k]["t"] == 3 for k in a.state)
    assert all(sorted(a.state[k]) == sorted(b.state[k]) for k in a.state)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("name", FUSES)
def test_fused_step_in_float32(name, momentum):
    pytest.importorskip(name)
    be = nnkit.get_backend(name, dtype="float32")
    fused = _steps(_net(be), SGD(0.1, momentum=momentum), fused=True)
    plain = _steps(_net(be), SGD(0.1, momentum=momentum), fused=False)
    _assert_same(fused, plain, 1e-5, 1e-6)  # one rounding of lr·g fewer: float32 ulps, not more


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fused_step_under_mixed_bfloat16(monkeypatch, momentum):
    pytest.importorskip("torch")
    be = nnkit.get_backend("torch", dtype="float32")
    calls = _spy(monkeypatch, be)
    opt = SGD(0.1, momentum=momentum)
    fused = _steps(_net(be, "mixed_bfloat16"), opt, fused=True)
    assert calls == [True] * 9
    plain = _steps(_net(be, "mixed_bfloat16"), SGD(0.1, momentum=momentum), fused=False)
    _assert_same(fused, plain, 1e-5, 1e-6)
    assert all(str(p.dtype) == "torch.float32" for p in fused.params().values()), "master weights stay float32"
    if momentum:
        assert all(str(s["v"].dtype) == "torch.float32" for s in opt.state.values()), "velocities too"


@pytest.mark.parametrize("case", ["nesterov", "weight_decay", "clip_norm", "regularizer", "watcher", "fused=False"])
def test_no_fusion_where_the_gradient_itself_is_read(monkeypatch, case):
    be = nnkit.get_backend("numpy", dtype="float64")
    calls = _spy(monkeypatch, be)
    opt = {"nesterov": SGD(0.1, momentum=0.9, nesterov=True), "weight_decay": SGD(0.1, weight_decay=1e-3),
           "clip_norm": SGD(0.1, clip_norm=1.0)}.get(case, SGD(0.1))
    kw = {"regularizer": nnkit.optim.L2(1e-3)} if case == "regularizer" else {}
    if case == "watcher":
        kw["grad_hooks"] = [lambda grads, params: None]
    _steps(_net(be), opt, fused=case != "fused=False", **kw)
    assert calls == []


def test_no_fusion_under_loss_scaling(monkeypatch):
    pytest.importorskip("torch")
    be = nnkit.get_backend("torch", dtype="float32")
    calls = _spy(monkeypatch, be)
    _steps(_net(be, "mixed_float16"), SGD(0.1), fused=True)
    assert calls == [], "an inf/NaN step must be undone: the gradient is read first"


def test_fit_and_train_step_use_the_fused_step(monkeypatch):
    be = nnkit.get_backend("numpy", dtype="float32")
    calls = _spy(monkeypatch, be)
    model = _net(be)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    model.fit(X, y, loss="cross_entropy", optimizer=SGD(0.1), epochs=1, batch_size=20, verbose=0)
    model.train_step(X, y, "cross_entropy", SGD(0.1, momentum=0.5))
    assert calls == [True] * 9


def test_other_optimizers_are_not_fused(monkeypatch):
    be = nnkit.get_backend("numpy", dtype="float64")
    calls = _spy(monkeypatch, be)
    for opt in (nnkit.optim.Adam(1e-3), nnkit.optim.AdamW(1e-3), nnkit.optim.RMSprop(1e-3, momentum=0.9)):
        _steps(_net(be), opt, fused=True, n=1)
    assert calls == []


# -- the BLAS call behind NumPy's fused update ------------------------------------------------------------
gemm = _numpy_gemm()
needs_gemm = pytest.mark.skipif(gemm is None, reason="this NumPy links a BLAS nnkit does not call directly "
                                                    "(the plain update runs instead)")


@needs_gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_order,b_order", [("C", "C"), ("C", "F"), ("F", "C"), ("F", "F")])
def test_gemm_adds_the_scaled_product_in_place(dtype, a_order, b_order):
    rng = np.random.default_rng(0)
    A = np.asarray(rng.standard_normal((7, 5)), dtype=dtype, order=a_order)
    B = np.asarray(rng.standard_normal((5, 3)), dtype=dtype, order=b_order)
    for beta in (1.0, 0.9):
        C = rng.standard_normal((7, 3)).astype(dtype)
        want = beta * C.astype(np.float64) - 0.25 * (A.astype(np.float64) @ B.astype(np.float64))
        before = C.ctypes.data
        assert gemm(C, A, B, -0.25, beta) is True
        assert C.ctypes.data == before
        np.testing.assert_allclose(C, want, rtol=1e-5 if dtype == np.float32 else 1e-13)


@needs_gemm
def test_gemm_refuses_what_blas_cannot_read_and_leaves_it_alone():
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((6, 4)), rng.standard_normal((4, 3))
    C = rng.standard_normal((6, 3))
    kept = C.copy()
    refused = [
        (C, A[::2], B[:, :]),                     # A (3, 4) from strided rows: no row-major view
        (C[:, ::1], A, B.astype(np.float32)),     # mixed dtypes
        (np.asfortranarray(C), A, B),             # C not row-major
        (C, A.astype(np.int64), B),               # not a floating dtype
        (C, A, B[:3]),                            # shapes do not chain
    ]
    for args in refused:
        assert gemm(*args, -1.0) is False
    np.testing.assert_array_equal(C, kept)
    big = rng.standard_normal((6, 6))
    assert gemm(big[:, :3], big[:, 3:], np.eye(3), -1.0) is False  # C not contiguous
    M = rng.standard_normal((4, 4))
    assert gemm(M, M.T, np.eye(4), -1.0) is False  # the product reads what it writes
    ro = C.copy()
    ro.flags.writeable = False
    assert gemm(ro, A, B, -1.0) is False
    assert gemm(C, np.zeros((6, 0)), np.zeros((0, 3)), -1.0) is True  # an empty sum: C unchanged
    np.testing.assert_array_equal(C, kept)
    assert gemm(C, np.zeros((6, 0)), np.zeros((0, 3)), -1.0, 0.5) is True  # … or β·C
    np.testing.assert_array_equal(C, 0.5 * kept)


@needs_gemm
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpy_adds_in_place_and_refuses_what_it_cannot_take(dtype):
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((2, 5, 4)).astype(dtype)
    want = Y.astype(np.float64) - 0.3 * X.astype(np.float64)
    assert gemm.axpy(Y, X, -0.3) is True
    np.testing.assert_allclose(Y, want, rtol=1e-6 if dtype == np.float32 else 1e-14)
    kept = Y.copy()
    big = rng.standard_normal((5, 8)).astype(dtype)
    for args in [(Y, X.astype(np.float16)), (Y, X[:, :3]), (Y, big[:, ::2]), (Y, Y), (np.asfortranarray(Y), X)]:
        assert gemm.axpy(*args, 1.0) is False
    ro = Y.copy()
    ro.flags.writeable = False
    assert gemm.axpy(ro, X, 1.0) is False
    np.testing.assert_array_equal(Y, kept)


def test_the_fused_step_benchmark_runs_small(tmp_path, capsys):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import benchmarks.run_fused as rf

    out = tmp_path / "fused.md"
    assert rf.main(["--targets", "numpy", "--precisions", "none", "mixed_bfloat16", "--shape", "S",
                    "--seconds", "0.02", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| numpy | none | SGD |" in text and "| numpy | none | SGD momentum 0.9 |" in text
    assert "mixed_bfloat16 | SGD" not in text and "skipped" in capsys.readouterr().err  # NumPy has no bfloat16


def test_the_step_budget_benchmark_runs_small(tmp_path):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import benchmarks.run_step_budget as sb

    # every hidden layer of a width runs each piece once per step; the pieces do what their names say
    work = sb.pieces((8, 16, 16, 5, 3), 4, np.random.default_rng(0))
    assert {name: calls for name, (_, calls) in work.items() if name.startswith("bias")} == {
        "bias fill (B, 5)": 1, "bias fill (B, 16)": 2}
    relu = work["ReLU max(Z, 0) in place (B, 16)"][0]
    A = relu()
    assert A.shape == (4, 16) and A.min() >= 0 and (A == 0).any()
    out = tmp_path / "budget.md"
    assert sb.main(["--shape", "S", "--seconds", "0.02", "--out", str(out)]) == 0
    text = out.read_text()
    for h in (128, 64):
        assert f"| db = Σ dZ (B, {h}) | 1 |" in text
    assert "| SGD step / tight floor |" in text and "| 1 + pieces / tight floor |" in text


def test_numpy_fuses_only_products_large_enough_to_gain(monkeypatch):
    """Below 2¹⁴ entries of W or 2²⁰ multiply-adds the ctypes call costs more than it saves: the plain update."""
    monkeypatch.setattr(nnkit.backend, "_FUSE_MIN_ENTRIES", NUMPY_FUSE_MIN[0])
    monkeypatch.setattr(nnkit.backend, "_FUSE_MIN_MACS", NUMPY_FUSE_MIN[1])
    be = nnkit.get_backend("numpy", dtype="float32")
    update = be.descent_update(0.1)
    if _numpy_gemm() is None:
        assert update is None
        return
    rng = np.random.default_rng(0)

    def case(batch, n_in, n_out):
        W = rng.standard_normal((n_in, n_out)).astype(np.float32)
        X = rng.standard_normal((batch, n_in)).astype(np.float32)
        dZ = rng.standard_normal((batch, n_out)).astype(np.float32)
        return W, X.T, dZ

    for shape, fuses in [((256, 64, 128), False),   # 8192 entries
                         ((256, 1024, 10), False),  # 10240 entries
                         ((16, 128, 128), False),   # 16384 entries, 2.6e5 multiply-adds
                         ((64, 128, 128), True),    # 16384 entries, 2²⁰ multiply-adds
                         ((16, 256, 256), True)]:   # 65536 entries, 2²⁰ multiply-adds
        W, A, B = case(*shape)
        want = W - np.float32(0.1) * (A @ B)
        kept = W.copy()
        assert update(W, A, B) is fuses, shape
        np.testing.assert_allclose(W, want if fuses else kept, rtol=1e-5, atol=1e-5)
        if not fuses:
            np.testing.assert_array_equal(W, kept)  # untouched: the caller forms A·B
    assert be.descent_update(0.1, 0.9, largest=2 ** 14 - 1) is None  # no weight large enough: no machinery
    assert be.descent_update(0.1, 0.9, largest=2 ** 14) is not None
    with_momentum = be.descent_update(0.1, 0.9)
    W, A, B = case(256, 64, 128)
    V = np.ones_like(W)
    assert with_momentum(W, A, B, V) is False and (V == 1).all()


def test_torch_on_the_cpu_runs_small_nets_plain(monkeypatch):
    """torch on the CPU: a net without a weight of 2¹⁴ entries gets no fused update (its op calls cost more)."""
    pytest.importorskip("torch")
    monkeypatch.setattr(nnkit.backend, "_FUSE_MIN_ENTRIES", NUMPY_FUSE_MIN[0])
    be = nnkit.get_backend("torch", dtype="float32")
    assert be.descent_update(0.1, 0.9, largest=2 ** 14 - 1) is None
    assert be.descent_update(0.1, 0.9, largest=2 ** 14) is not None
    assert be.descent_update(0.1) is not None  # no size given: the caller decides
