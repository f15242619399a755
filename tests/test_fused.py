"""The fused SGD step: plain SGD updates a Dense weight in the backward pass, W ← W − lr·Xᵀ·dZ on one GEMM
(``Backend.descent_update``), and must end where the plain step (dW formed, then the update) ends."""
import numpy as np
import pytest

import nnkit
from nnkit import step
from nnkit.backend import _numpy_gemm
from nnkit.optim import SGD

from helpers import to_np

FUSES = ("numpy", "torch")  # the libraries with an in-place matrix product


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

    def descent_update(self, lr):
        update = make(self, lr)
        if update is None:
            return None

        def counted(P, A, B):
            done = update(P, A, B)
            calls.append(done)
            return done

        return counted

    monkeypatch.setattr(type(backend), "descent_update", descent_update)
    return calls


def test_fused_step_ends_where_the_plain_step_ends(make_backend, monkeypatch):
    be = make_backend("float64")
    calls = _spy(monkeypatch, be)
    fused = _steps(_net(be), SGD(0.1), fused=True)
    assert calls == ([True] * 9 if be.name in FUSES else []), "three Dense weights, three steps"
    plain_opt = SGD(0.1)
    plain = _steps(_net(be), plain_opt, fused=False)
    assert len(calls) == (9 if be.name in FUSES else 0), "fused=False never fuses"
    for key, p in plain.params().items():
        np.testing.assert_allclose(to_np(fused.params()[key]), to_np(p), rtol=1e-12, atol=1e-14, err_msg=key)
    for key, b in plain.buffers().items():
        np.testing.assert_allclose(to_np(fused.buffers()[key]), to_np(b), rtol=1e-12, atol=1e-14, err_msg=key)


def test_fused_step_keeps_step_counts_and_state_order():
    be = nnkit.get_backend("numpy", dtype="float64")
    a, b = SGD(0.05), SGD(0.05)
    _steps(_net(be), a, fused=True)
    _steps(_net(be), b, fused=False)
    assert list(a.state) == list(b.state)
    assert all(a.state[k]["t"] == b.state[k]["t"] == 3 for k in a.state)


@pytest.mark.parametrize("name", FUSES)
def test_fused_step_in_float32(name):
    pytest.importorskip(name)
    be = nnkit.get_backend(name, dtype="float32")
    fused = _steps(_net(be), SGD(0.1), fused=True)
    plain = _steps(_net(be), SGD(0.1), fused=False)
    for key, p in plain.params().items():  # one rounding of lr·g fewer: float32 ulps, not more
        np.testing.assert_allclose(to_np(fused.params()[key]), to_np(p), rtol=1e-5, atol=1e-6, err_msg=key)


def test_fused_step_under_mixed_bfloat16(monkeypatch):
    pytest.importorskip("torch")
    be = nnkit.get_backend("torch", dtype="float32")
    calls = _spy(monkeypatch, be)
    fused = _steps(_net(be, "mixed_bfloat16"), SGD(0.1), fused=True)
    assert calls == [True] * 9
    plain = _steps(_net(be, "mixed_bfloat16"), SGD(0.1), fused=False)
    for key, p in plain.params().items():
        f = fused.params()[key]
        assert str(f.dtype) == "torch.float32", "master weights stay float32"
        np.testing.assert_allclose(to_np(f), to_np(p), rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case", ["momentum", "weight_decay", "clip_norm", "regularizer", "watcher", "fused=False"])
def test_no_fusion_where_the_gradient_itself_is_read(monkeypatch, case):
    be = nnkit.get_backend("numpy", dtype="float64")
    calls = _spy(monkeypatch, be)
    opt = {"momentum": SGD(0.1, momentum=0.9), "weight_decay": SGD(0.1, weight_decay=1e-3),
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
    model.train_step(X, y, "cross_entropy", SGD(0.1))
    assert calls == [True] * 9


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
    C = rng.standard_normal((7, 3)).astype(dtype)
    want = C.astype(np.float64) - 0.25 * (A.astype(np.float64) @ B.astype(np.float64))
    before = C.ctypes.data
    assert gemm(C, A, B, -0.25) is True
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
