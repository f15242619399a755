"""MNIST-1D and the bundled digits: the MNIST-1D paper's MLP against a modern variant, three seeds each.

    pip install mnist1d && python -m benchmarks.run_mnist1d [--seeds 0 1 2] [--epochs 150] [--out FILE.md]
        [--backend torch --precisions none mixed_bfloat16] [--variants paper modern cnn gru] [--data mnist1d]

MNIST-1D (Greydanus & Kobak, 2024) is generated offline by its package (4,000 training and 1,000 test
sequences of 40 values, 10 classes).  The paper's MLP: 40-100-100-10, ReLU, the second hidden layer
residual, Adam (lr 1e-2), batch 100, 6,000 steps (150 epochs); ``cnn`` and ``gru`` add the paper's ConvBase and
the reference GRUBase (a bidirectional GRU of hidden size 6 over the 40 samples, Dense(480, 10)), each beside
PyTorch's same network trained in the same run.  The modern variant keeps the widths and
the optimizer and adds LayerNorm, GELU and dropout 0.1 (``Sequential.mlp(..., norm="layer",
activation="gelu", dropout=0.1, residual=True)``).  Both also train on the bundled 8×8 digits (64 inputs).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import nnkit
from nnkit.tools.bench import number_in, output_file, report
from nnkit.precision import get_policy

VARIANTS = {
    "paper MLP (ReLU, residual)": dict(activation="relu", residual=True),
    "modern (LayerNorm, GELU, dropout 0.1, residual)": dict(activation="gelu", norm="layer", dropout=0.1,
                                                           residual=True),
}


def convbase():
    """The MNIST-1D paper's ConvBase on a (B, 40) row: three convolutions of 25 channels, then a Dense to 10."""
    return [nnkit.Reshape((1, 40)), nnkit.Conv1D(1, 25, 5, stride=2, padding=1), nnkit.ReLU(),
            nnkit.Conv1D(25, 25, 3, stride=2, padding=1), nnkit.ReLU(),
            nnkit.Conv1D(25, 25, 3, stride=2, padding=1), nnkit.ReLU(), nnkit.Flatten(), nnkit.Dense(125, 10)]


def _run_layers(layers, data, seed, epochs, backend, precision):
    """(test accuracy, training seconds) of ``layers`` on a (B, 40) row, Adam 1e-2, batch 100."""
    X, y, Xt, yt = data
    model = nnkit.Sequential(layers, seed=seed, backend=backend, precision=precision, input_shape=(40,))
    t0 = time.perf_counter()
    model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=epochs, batch_size=100,
              verbose=0)
    seconds = time.perf_counter() - t0
    return model.evaluate(Xt, yt, "cross_entropy")["accuracy"], seconds


def run_cnn(data, seed, epochs, backend="numpy", precision=None):
    return _run_layers(convbase(), data, seed, epochs, backend, precision)


def _torch_convbase():
    nn = __import__("torch").nn
    return nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, 25, 5, 2, 1), nn.ReLU(), nn.Conv1d(25, 25, 3, 2, 1),
                         nn.ReLU(), nn.Conv1d(25, 25, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(125, 10))


def run_torch_cnn(data, seed, epochs):
    """The same ConvBase in plain PyTorch."""
    return run_torch(_torch_convbase, data, seed, epochs)


def grubase():
    """The MNIST-1D reference GRUBase on a (B, 40) row: the 40 samples as 40 steps of one feature through a
    bidirectional GRU of hidden size 6, all 40 outputs (40 × 12) flattened into a Dense to 10."""
    return [nnkit.Reshape((40, 1)), nnkit.GRU(1, 6, bidirectional=True), nnkit.Flatten(), nnkit.Dense(480, 10)]


def run_gru(data, seed, epochs, backend="numpy", precision=None):
    return _run_layers(grubase(), data, seed, epochs, backend, precision)


class _TorchGRUBase:
    """The reference notebook's GRUBase in plain PyTorch: ``nn.GRU(1, 6, batch_first, bidirectional)`` then
    ``nn.Linear(480, 10)`` on the flattened outputs."""

    def __new__(cls):
        import torch

        class GRUBase(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.gru = torch.nn.GRU(1, 6, batch_first=True, bidirectional=True)
                self.linear = torch.nn.Linear(480, 10)

            def forward(self, x):
                out, _ = self.gru(x.unsqueeze(-1))
                return self.linear(out.flatten(1))

        return GRUBase()


def run_torch(net_fn, data, seed, epochs):
    """A network of ``net_fn()`` trained in plain PyTorch (its own initialisation, Adam 1e-2, batch 100,
    shuffled each epoch); (test accuracy, seconds)."""
    import torch

    X, y, Xt, yt = data
    torch.manual_seed(seed)
    net = net_fn()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(tX), generator=gen)
        for s in range(0, len(tX), 100):
            idx = perm[s:s + 100]
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(tX[idx]), ty[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = (net(torch.from_numpy(Xt)).argmax(1) == torch.from_numpy(yt)).double().mean().item()
    return acc, seconds


def mnist1d_data(seed=42):
    """(X, y, X_test, y_test) of MNIST-1D with the paper's default arguments."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise SystemExit("MNIST-1D needs its generator: pip install mnist1d") from None
    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)
    return (d["x"].astype(np.float32), d["y"].astype(np.int64), d["x_test"].astype(np.float32),
            d["y_test"].astype(np.int64))


def digits_data():
    (X, y), (Xt, yt) = nnkit.datasets.load_digits()
    return X, y, Xt, yt


def run(data, kwargs, seed, epochs, hidden=100, backend="numpy", precision=None):
    X, y, Xt, yt = data
    model = nnkit.Sequential.mlp([X.shape[1], hidden, hidden, int(y.max()) + 1], seed=seed, backend=backend,
                                 precision=precision, **kwargs)
    t0 = time.perf_counter()
    model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=epochs, batch_size=100,
              verbose=0)
    seconds = time.perf_counter() - t0
    return model.evaluate(Xt, yt, "cross_entropy")["accuracy"], seconds


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_mnist1d", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=number_in("a seed", 0, 2**32 - 1, kind=int), nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=number_in("a number of epochs", 1, 100_000, kind=int), default=150,
                   help="epochs (150 = the paper's 6,000 steps of 100)")
    p.add_argument("--out", type=output_file, default=None, help="also write the table to this Markdown file")
    p.add_argument("--backend", default="numpy", help="nnkit backend (default numpy)")
    p.add_argument("--precisions", nargs="+", default=["none"],
                   choices=["none", "mixed_bfloat16", "mixed_float16", "tf32"],
                   help="precision policies to compare, each on the same seeds (default: none)")
    p.add_argument("--variants", nargs="+", choices=["paper", "modern", "cnn", "gru"],
                   default=["paper", "modern"],
                   help="the MLPs (paper, modern), the paper's ConvBase CNN (cnn) and the reference GRUBase (gru: "
                        "with PyTorch's same network in the same run, when PyTorch is installed)")
    p.add_argument("--data", nargs="+", choices=["mnist1d", "digits"], default=["mnist1d", "digits"])
    args = p.parse_args(argv)
    try:  # the backend and every precision asked for, checked before any data is made or model trained
        backend = nnkit.get_backend(args.backend)
        for prec in args.precisions:
            get_policy(None if prec == "none" else prec, backend)
    except (ValueError, ImportError, RuntimeError) as exc:
        p.error(str(exc))
    sets = {"MNIST-1D": mnist1d_data} if "mnist1d" in args.data else {}
    if "digits" in args.data:
        sets["digits (bundled)"] = digits_data
    variants = {n: kw for n, kw in VARIANTS.items() if n.split()[0] in args.variants}
    lines = ["| data | model | precision | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | train s/run |",
             "|---|---|---|" + "---:|" * (len(args.seeds) + 2)]
    for data_name, make in sets.items():
        data = make()
        for (name, kwargs), prec in ((v, p) for v in variants.items() for p in args.precisions):
            precision = None if prec == "none" else prec
            accs, secs = zip(*(run(data, kwargs, s, args.epochs, backend=args.backend, precision=precision)
                               for s in args.seeds))
            lines.append(f"| {data_name} | {name} | {prec} ({args.backend}) | "
                         + " | ".join(f"{100 * a:.1f}%" for a in accs)
                         + f" | {100 * statistics.mean(accs):.1f}% | {statistics.mean(secs):.1f} |")
            print(lines[-1], flush=True)
        for variant, label, ours, theirs in (("cnn", "ConvBase CNN", run_cnn, run_torch_cnn),
                                             ("gru", "GRUBase (bidirectional GRU 6)", run_gru,
                                              lambda d, s, e: run_torch(_TorchGRUBase, d, s, e))):
            if variant not in args.variants or data_name != "MNIST-1D":
                continue
            rows = [(f"{prec} ({args.backend})", lambda s, p=prec, f=ours: f(data, s, args.epochs, args.backend,
                                                                             None if p == "none" else p))
                    for prec in args.precisions]
            try:
                import torch  # noqa: F401

                rows.append(("PyTorch eager, float32 (same run)", lambda s, f=theirs: f(data, s, args.epochs)))
            except ImportError:
                pass
            for name, fn in rows:
                accs, secs = zip(*(fn(s) for s in args.seeds))
                lines.append(f"| {data_name} | {label} | {name} | " + " | ".join(f"{100 * a:.1f}%" for a in accs)
                             + f" | {100 * statistics.mean(accs):.1f}% | {statistics.mean(secs):.1f} |")
                print(lines[-1], flush=True)
    print()
    report("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
