"""nnkit.sklearn.MLPClassifier against scikit-learn's MLPClassifier on the 8×8 digits, same settings.

Settings: hidden_layer_sizes=(100,), adam, learning_rate_init=1e-3, batch_size="auto" (200),
max_iter=200, tol=1e-4, n_iter_no_change=10 (scikit-learn's defaults), features scaled to [0, 1],
the bundled digits' 80/20 stratified split, float64 on both sides.

Run:  python -m benchmarks.bench_sklearn     (five seeds: mean accuracy and median fit time of each)
      pytest benchmarks/bench_sklearn.py --benchmark-enable
"""
import time
import warnings

import numpy as np
import pytest

import nnkit

SETTINGS = dict(hidden_layer_sizes=(100,), solver="adam", learning_rate_init=1e-3, max_iter=200)


def _fit(cls, seed, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when max_iter is reached
        t0 = time.perf_counter()
        est = cls(random_state=seed, **SETTINGS).fit(X, y)
        return est, time.perf_counter() - t0


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return nnkit.datasets.load_digits()


@pytest.mark.parametrize("which", ["nnkit", "sklearn"])
def test_digits_mlp_classifier(benchmark, digits, which):
    from sklearn.neural_network import MLPClassifier as SK

    from nnkit.sklearn import MLPClassifier as NK

    (X, y), (Xt, yt) = digits
    cls = NK if which == "nnkit" else SK
    est, _ = benchmark.pedantic(_fit, args=(cls, 0, X, y), rounds=3, iterations=1, warmup_rounds=0)
    acc = est.score(Xt, yt)
    benchmark.extra_info["test_accuracy"] = acc
    assert acc > 0.95


def main():
    from sklearn.neural_network import MLPClassifier as SK

    from nnkit.sklearn import MLPClassifier as NK

    (X, y), (Xt, yt) = nnkit.datasets.load_digits()
    X, Xt = X.astype(np.float64), Xt.astype(np.float64)
    rows = {}
    for name, cls in (("nnkit", NK), ("scikit-learn", SK)):
        accs, times, iters = [], [], []
        for seed in range(5):
            est, seconds = _fit(cls, seed, X, y)
            accs.append(est.score(Xt, yt))
            times.append(seconds)
            iters.append(est.n_iter_)
        rows[name] = (accs, times, iters)
        print(f"{name:13s} accuracy per seed {[round(a, 4) for a in accs]}  mean {np.mean(accs):.4f}   "
              f"fit s per seed {[round(t, 2) for t in times]}  median {np.median(times):.3f}   epochs {iters}")
    (a1, t1, _), (a2, t2, _) = rows["nnkit"], rows["scikit-learn"]
    print(f"accuracy difference (nnkit - scikit-learn): {100 * (np.mean(a1) - np.mean(a2)):+.2f} points; "
          f"fit time ratio (median): {np.median(t1) / np.median(t2):.2f}")


if __name__ == "__main__":
    main()
