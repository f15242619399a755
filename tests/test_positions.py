"""Per-position targets: the per-example case (B, K) unchanged bit for bit, losses over positions with weights
that mask equal to PyTorch's, metrics over the valid positions equal to scikit-learn's, a character model's
step equal to PyTorch's."""
import importlib.util
import os
import sys

import numpy as np
import pytest

import nnkit
from tests.helpers import to_np

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
DATA = os.path.join(os.path.dirname(__file__), "data")


def _pinned():
    sys.path.insert(0, DATA)
    try:
        import make_pinned_fits
    finally:
        sys.path.remove(DATA)
    return make_pinned_fits


def test_per_example_fits_are_bit_identical_to_before_per_position_targets():
    """The fits pinned by the code before this change (``tests/data/make_pinned_fits.py``): the same weights and
    logs bit for bit where this machine's BLAS gives the pinned matmul bit for bit, else to 1e-12."""
    mk = _pinned()
    want = np.load(os.path.join(DATA, "pinned_fits.npz"))
    same_blas = np.array_equal(mk.fingerprint(), want["blas"])
    fits = mk.fits()
    checked = 0
    for name, (model, hist) in fits.items():
        got = {f"{name}/param/{k}": to_np(p) for k, p in model.params().items()}
        got.update({f"{name}/log/{k}": np.asarray(v, dtype=np.float64) for k, v in hist.items() if k != "time"})
        assert sorted(got) == sorted(k for k in want.files if k.startswith(name + "/"))
        for key, value in got.items():
            if same_blas:
                np.testing.assert_array_equal(value, want[key], err_msg=key)
            else:  # pragma: no cover - another machine's BLAS sums in another order
                np.testing.assert_allclose(value, want[key], rtol=1e-5 if "float32" in key else 1e-12, err_msg=key)
            checked += 1
    assert checked == len(want.files) - 1


# -- losses over positions: the weighted mean Σ w·ℓ / Σ w over every position --------------------------------
def _position_batch(kind, B=4, T=5, K=3, seed=0):
    """Outputs (B, T, K), targets ((B, T) labels for cross-entropy, else (B, T, K) values) and weights (B, T) that
    mask sequences of lengths 5, 1, 3, 4 and weigh the rest unequally."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((B, T, K)) * 2
    if kind == "cross_entropy":
        y = rng.integers(0, K, size=(B, T))
    elif kind == "cross_entropy_soft":
        y = rng.dirichlet(np.ones(K), size=(B, T))
    elif kind == "binary_cross_entropy":
        y = rng.uniform(0, 1, size=(B, T, K))
    elif kind == "poisson":
        y = rng.poisson(2.0, size=(B, T, K)).astype(np.float64)
    else:
        y = rng.standard_normal((B, T, K))
    lengths = np.array([5, 1, 3, 4])
    w = (np.arange(T)[None, :] < lengths[:, None]) * rng.uniform(0.5, 2.0, size=(B, T))
    return out, y, w


def _torch_per_position(kind, out, y):
    """PyTorch's loss at each position (B, T), nnkit's definition: summed over the K outputs of a position."""
    import torch
    import torch.nn.functional as tF

    z = out
    K = z.shape[-1]
    if kind == "cross_entropy":
        return tF.cross_entropy(z.reshape(-1, K), y.reshape(-1), reduction="none").reshape(y.shape)
    if kind == "cross_entropy_soft":
        return tF.cross_entropy(z.reshape(-1, K), y.reshape(-1, K), reduction="none").reshape(y.shape[:-1])
    if kind == "binary_cross_entropy":
        return tF.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)
    if kind == "poisson":
        return tF.poisson_nll_loss(z, y, log_input=True, full=False, reduction="none").sum(-1)
    return 0.5 * ((z - y) ** 2).sum(-1)


LOSS_NAME = {"cross_entropy": "cross_entropy", "cross_entropy_soft": "cross_entropy", "mse": "mse",
             "binary_cross_entropy": "binary_cross_entropy", "poisson": "poisson"}


@needs_torch
@pytest.mark.parametrize("per", ["position", "sequence", "none"])
@pytest.mark.parametrize("kind", list(LOSS_NAME))
def test_every_loss_over_positions_is_the_weighted_mean_over_tokens_as_pytorch(kind, per):
    """L = Σ w·ℓ / Σ w over the B·T positions and ∂L/∂out (B, T, K), equal to PyTorch's in float64 to 1e-12;
    a per-sequence mean (each sequence's own mean, then the mean over sequences) differs, so it would fail."""
    import torch

    out, y, w = _position_batch(kind)
    if per == "sequence":
        w = w[:, 0] * np.array([1.0, 3.0, 0.5, 2.0])
    loss = nnkit.get_loss(LOSS_NAME[kind])
    W = None if per == "none" else w
    value, grad = loss.value_and_grad(out, y, W)
    zt = torch.from_numpy(out).requires_grad_(True)
    ell = _torch_per_position(kind, zt, torch.from_numpy(y))
    wt = torch.ones_like(ell) if W is None else torch.from_numpy(np.broadcast_to(
        W if W.ndim == 2 else W[:, None], ell.shape).copy())
    ref = (ell * wt).sum() / wt.sum()
    ref.backward()
    assert tuple(grad.shape) == out.shape
    assert abs(float(value) - ref.item()) <= 1e-12 * abs(ref.item())
    np.testing.assert_allclose(to_np(grad), zt.grad.numpy(), rtol=1e-12, atol=1e-15)
    if per == "position":  # the wrong normalisation — per sequence, then over sequences — gives another number
        per_seq = ((ell * wt).sum(1) / wt.sum(1)).mean().item()
        assert abs(per_seq - ref.item()) > 1e-3


@needs_torch
def test_masked_tokens_are_pytorchs_ignore_index():
    """Zero weights at the padding: the mean over the counted tokens, PyTorch's ``ignore_index``."""
    import torch
    import torch.nn.functional as tF

    out, y, w = _position_batch("cross_entropy")
    mask = (w > 0).astype(np.float64)
    value, grad = nnkit.CrossEntropy().value_and_grad(out, y, mask)
    zt = torch.from_numpy(out).requires_grad_(True)
    target = torch.from_numpy(np.where(mask > 0, y, -100))
    ref = tF.cross_entropy(zt.reshape(-1, 3), target.reshape(-1), ignore_index=-100)
    ref.backward()
    assert abs(float(value) - ref.item()) <= 1e-12 * ref.item()
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert np.all(grad[mask == 0] == 0.0)


def test_integer_targets_are_never_one_hot(xp_backend):
    """Per-position class targets stay (B, T) integers on the device: the data path keeps labels, and the loss's
    gradient softmax − onehot is formed at the target index (equal to the one-hot form)."""
    be = xp_backend
    out, y, w = _position_batch("cross_entropy")
    loss = nnkit.CrossEntropy()
    Z = be.asarray(out, dtype=be.dtype)
    labels = be.asarray(y)
    value, grad = loss.value_and_grad(Z, labels, be.asarray(w, dtype=be.dtype))
    onehot = be.asarray(np.eye(3)[y], dtype=be.dtype)
    v1, g1 = loss.value_and_grad(Z, onehot, be.asarray(w, dtype=be.dtype))
    tol = 1e-12 if be.dtype_name == "float64" else 1e-5
    np.testing.assert_allclose(to_np(value), to_np(v1), rtol=tol)
    np.testing.assert_allclose(to_np(grad), to_np(g1), rtol=tol, atol=tol)
    model = nnkit.Sequential([nnkit.Embedding(6, 4), nnkit.GRU(4, 5), nnkit.Dense(5, 3)], backend=be,
                             dtype=be.dtype_name, seed=0)
    X = np.random.default_rng(0).integers(0, 6, size=(4, 5))
    T = nnkit.data.as_target(model, y, 4, loss) if model.output_shape((5,)) else None
    assert tuple(T.shape) == (4, 5)
    assert be.xp.isdtype(T.dtype, "integral")
