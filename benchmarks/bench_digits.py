"""Issue 3's yardstick: scikit-learn's 8x8 digits, a 64-128-64-10 ReLU MLP, Adam (lr 1e-3),
batch 64, 50 epochs -- nnkit's ``fit`` against a plain PyTorch CPU training loop on the same setup.

Run:  pytest benchmarks/bench_digits.py --benchmark-enable -s
Accuracy is checked (>= 97.5% on the 20% stratified test split); times are reported, never asserted.
"""
import time

import numpy as np
import pytest

import nnkit

EPOCHS, BATCH, LR = 50, 64, 1e-3


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn", reason="scikit-learn is needed for the digits benchmark")
    return _digits()


def nnkit_fit(Xtr, ytr, seed=0):
    model = nnkit.Sequential([nnkit.Dense(64, 128, init="he_uniform"), nnkit.ReLU(),
                              nnkit.Dense(128, 64, init="he_uniform"), nnkit.ReLU(), nnkit.Dense(64, 10)],
                             dtype="float32", seed=seed)
    model.fit(Xtr, ytr, loss="cross_entropy", optimizer=nnkit.optim.Adam(LR), epochs=EPOCHS, batch_size=BATCH,
              verbose=0)
    return model


def torch_fit(Xtr, ytr, seed=0):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    X, y = torch.from_numpy(Xtr), torch.from_numpy(ytr.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        order = torch.randperm(X.shape[0], generator=gen)
        for s in range(0, X.shape[0], BATCH):
            idx = order[s:s + BATCH]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(X[idx]), y[idx])
            loss.backward()
            opt.step()
    return net


def test_digits_nnkit_fit(benchmark, digits):
    Xtr, ytr, Xte, yte = digits
    model = benchmark.pedantic(nnkit_fit, args=(Xtr, ytr), rounds=3, iterations=1, warmup_rounds=0)
    acc = model.evaluate(Xte, yte, "cross_entropy")["accuracy"]
    benchmark.extra_info["test_accuracy"] = acc
    assert acc >= 0.975


def test_digits_torch_cpu_loop(benchmark, digits):
    torch = pytest.importorskip("torch", reason="PyTorch is the peer; not installed")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    Xtr, ytr, Xte, yte = digits
    net = benchmark.pedantic(torch_fit, args=(Xtr, ytr), rounds=3, iterations=1, warmup_rounds=0)
    with torch.no_grad():
        acc = float((net(torch.from_numpy(Xte)).argmax(1).numpy() == yte).mean())
    benchmark.extra_info["test_accuracy"] = acc
    assert acc >= 0.95


def main():
    """python -m benchmarks.bench_digits: accuracy over 5 seeds and best-of-3 times, side by side."""
    from sklearn.datasets import load_digits  # noqa: F401  (fail early with a clear ImportError)

    Xtr, ytr, Xte, yte = _digits()
    accs = [nnkit_fit(Xtr, ytr, seed=s).evaluate(Xte, yte, "cross_entropy")["accuracy"] for s in range(5)]
    t_nn = min(_timed(nnkit_fit, Xtr, ytr) for _ in range(3))
    print(f"nnkit  test accuracy over 5 seeds: mean {np.mean(accs):.4f}, min {np.min(accs):.4f}")
    print(f"nnkit  fit, 50 epochs: {t_nn:.3f} s")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch not installed: no peer timing")
        return
    t_pt = min(_timed(torch_fit, Xtr, ytr) for _ in range(3))
    print(f"torch  CPU loop, 50 epochs: {t_pt:.3f} s   (threads: {torch.get_num_threads()})")
    print(f"ratio nnkit / torch: {t_nn / t_pt:.2f}")


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    scaler = StandardScaler().fit(Xtr)
    return scaler.transform(Xtr).astype(np.float32), ytr, scaler.transform(Xte).astype(np.float32), yte


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
