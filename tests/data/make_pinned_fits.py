"""Writes ``pinned_fits.npz``: small per-example fits (weights and logs) made by the code before per-position
targets (commit 7fc2c05), which ``tests/test_positions.py`` requires the current code to reproduce bit for bit.

    python tests/data/make_pinned_fits.py    # run from a checkout of the commit to pin
"""
import os

import numpy as np

import nnkit


def fits():
    """name -> (model, History) of each pinned fit (float64 and float32, plain and weighted, three losses)."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((50, 6))
    labels = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)
    w = rng.uniform(0.2, 2.0, size=50)
    out = {}
    for dtype in ("float64", "float32"):
        for kind, loss, y, k in (("ce", "cross_entropy", labels, 3), ("mse", "mse", X[:, :2] * 0.5, 2),
                                 ("bce", "binary_cross_entropy", (X[:, :1] > 0).astype(np.float64), 1)):
            for weighted in (False, True):
                model = nnkit.Sequential([nnkit.Dense(6, 8), nnkit.Tanh(), nnkit.Dense(8, k)], dtype=dtype, seed=3)
                hist = model.fit(X, y, loss=loss, optimizer=nnkit.optim.SGD(0.1, momentum=0.9), epochs=3,
                                 batch_size=16, verbose=0, validation_split=0.2, metrics=["accuracy", "mse"]
                                 if kind == "ce" else ["mae"], sample_weight=w if weighted else None)
                out[f"{kind}_{dtype}_{'w' if weighted else 'u'}"] = (model, hist)
    return out


def fingerprint():
    """A matmul of this machine's BLAS: the pinned weights are bit-identical only where it is the same."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((16, 8))
    return A @ rng.standard_normal((8, 8))


def blas_kernel():
    """The kernel family NumPy's BLAS runs (OpenBLAS's core type: "Haswell", "Sandybridge", ... — it changes with
    ``OPENBLAS_CORETYPE``), "" where it cannot be told: two kernels can agree on :func:`fingerprint`'s small product
    and still differ in the last bit of a fit's."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ""
    return ",".join(sorted({f"{i['internal_api']}:{i.get('architecture')}" for i in threadpool_info()
                            if i.get("user_api") == "blas"}))


if __name__ == "__main__":
    arrays = {"blas": fingerprint(), "blas_kernel": np.array(blas_kernel())}
    for name, (model, hist) in fits().items():
        for key, p in model.params().items():
            arrays[f"{name}/param/{key}"] = np.asarray(p)
        for key, values in hist.items():
            if key == "time":
                continue
            arrays[f"{name}/log/{key}"] = np.asarray(values, dtype=np.float64)
    np.savez(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pinned_fits.npz"), **arrays)
    print(len(arrays), "arrays")
