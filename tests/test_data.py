"""Data beyond memory (nnkit.data): memory-mapped files, datasets and loaders, checked batch by batch."""
import importlib.util
import time
import tracemalloc

import numpy as np
import pytest

import nnkit
from nnkit import data

from helpers import to_np

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(403, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return X, y, np.load(tmp_path / "X.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")


class Rows:
    """A dataset: len() rows, [index array] -> (X, y)."""

    def __init__(self, X, y):
        self.X, self.y, self.reads = X, y, 0

    def __len__(self):
        return len(self.X)

    def __getitem__(self, idx):
        self.reads += 1
        return self.X[idx], self.y[idx]


def _fit(X, y=None, backend="numpy", norm="batch", **kw):
    model = nnkit.Sequential.mlp([6, 16, 3], backend=backend, seed=0, norm=norm)
    history = model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=3, batch_size=32, verbose=0, **kw)
    return model, history


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_memmap_and_dataset_train_bit_identically_to_memory(files):
    X, y, Xm, ym = files
    ref, h = _fit(X, y, validation_split=0.25)
    mm, hm = _fit(Xm, ym, validation_split=0.25)
    assert _same(ref, mm) and {k: v for k, v in h.items() if k != "time"} == {k: v for k, v in hm.items() if k != "time"}
    ds, _ = _fit(Rows(X[:302], y[:302]), validation_data=Rows(X[302:], y[302:]))
    assert _same(ref, ds)
    for model in (mm, ds):
        np.testing.assert_array_equal(to_np(model.predict(Xm)), to_np(ref.predict(X)))
        assert model.evaluate(Xm, ym, "cross_entropy") == pytest.approx(ref.evaluate(X, y, "cross_entropy"), rel=1e-6)
    assert ref.evaluate(Rows(X, y), None, "cross_entropy") == pytest.approx(ref.evaluate(X, y, "cross_entropy"), rel=1e-6)


def test_memmap_streams_on_every_backend(files, make_backend):
    X, y, Xm, ym = files
    be = make_backend("float64")
    a, _ = _fit(X.astype(np.float64), y, backend=be)
    b, _ = _fit(Xm, ym, backend=be)
    assert _same(a, b) or be.name not in ("numpy", "array_api_strict")
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(b.state_dict()[k], v, rtol=1e-6, atol=1e-6, err_msg=k)


def test_batches_from_lists_functions_generators_and_loaders(files):
    X, y, _, _ = files
    batches = [(X[i:i + 50], y[i:i + 50]) for i in range(0, 403, 50)]
    a, h = _fit(batches)
    b, _ = _fit(lambda: iter(batches))
    assert _same(a, b) and len(h["loss"]) == 3
    one = nnkit.Sequential.mlp([6, 16, 3], seed=0)
    one.fit(iter(batches), loss="cross_entropy", epochs=1, verbose=0)  # a generator feeds one epoch
    with pytest.raises(ValueError, match="one-shot generator.*function that returns a new generator"):
        one.fit((b for b in batches), loss="cross_entropy", epochs=2, verbose=0)
    weighted = [(Xb, yb, np.ones(len(yb))) for Xb, yb in batches]
    c, _ = _fit(weighted)
    for k, v in a.state_dict().items():
        if k != "0.b":
            np.testing.assert_allclose(c.state_dict()[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_a_pytorch_dataloader_feeds_fit_on_any_backend(files):
    import torch

    X, y, _, _ = files
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y)),
                                         batch_size=50, shuffle=False)
    a, _ = _fit([(X[i:i + 50], y[i:i + 50]) for i in range(0, 403, 50)], norm=None)
    b, _ = _fit(loader, norm=None)  # torch tensors into a NumPy model: copied to the host batch by batch
    assert _same(a, b)
    c, _ = _fit(loader, backend="torch", norm=None)
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(c.state_dict()[k], v, rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("bad,match", [
    (lambda X, y: (X[:, :5], y), "batch 3 .*5 features but the model expects 6"),
    (lambda X, y: (X, y[:-1]), "batch 3 .*same length"),
    (lambda X, y: (np.where(X > 1.5, np.nan, X), y), "batch 3 .*NaN"),
    (lambda X, y: (X.astype(str), y), "batch 3 .*numeric"),
    (lambda X, y: (X, y + 7), r"batch 3 .*\[0, 2\]"),
])
def test_a_bad_batch_mid_stream_is_named_and_the_epoch_is_undone(files, bad, match):
    X, y, _, _ = files
    batches = [(X[i:i + 50], y[i:i + 50]) for i in range(0, 403, 50)]
    batches[3] = bad(*batches[3])
    model = nnkit.Sequential.mlp([6, 16, 3], seed=0)
    opt = nnkit.optim.Adam(1e-2)
    model.fit(batches[:3], loss="cross_entropy", optimizer=opt, epochs=1, verbose=0)
    before, moments = model.state_dict(), {k: to_np(s["m"]).copy() for k, s in opt.state.items()}
    with pytest.raises(data.BatchError, match=match):
        model.fit(batches, loss="cross_entropy", optimizer=opt, epochs=2, verbose=0)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    assert all(np.array_equal(moments[k], to_np(s["m"])) for k, s in opt.state.items())


def test_an_exception_in_the_users_loader_is_named(files):
    X, y, _, _ = files

    class Broken(Rows):
        def __getitem__(self, idx):
            if self.reads == 2:
                raise OSError("disk went away")
            return super().__getitem__(idx)

    with pytest.raises(data.BatchError, match="batch 2 of the stream could not be read: OSError: disk went away"):
        _fit(Broken(X, y))


def test_a_memory_mapped_file_is_never_copied_whole(tmp_path):
    rows, width = 65536, 256  # a 64 MiB float32 file
    Xm = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(rows, width))
    Xm[:] = np.random.default_rng(0).normal(size=(1024, width)).astype(np.float32)[np.arange(rows) % 1024]
    Xm.flush()
    del Xm
    Xm = np.load(tmp_path / "big.npy", mmap_mode="r")
    y = (np.arange(rows) % 3).astype(np.int64)
    model = nnkit.Sequential([nnkit.Dense(width, 4), nnkit.ReLU(), nnkit.Dense(4, 3)], seed=0)
    tracemalloc.start()
    model.fit(Xm, y, loss="cross_entropy", optimizer="sgd", epochs=1, batch_size=1024, verbose=0, validation_split=0.1)
    model.predict(Xm, batch_size=4096)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 64 MiB file"


def test_prefetch_reads_ahead_at_most_two_batches_and_passes_errors_in_order():
    events = []

    def produce():
        for i in range(6):
            events.append(("read", i))
            yield i
        raise RuntimeError("after six")

    got = []
    with pytest.raises(RuntimeError, match="after six"):
        for item in data.prefetch(produce(), depth=2):
            time.sleep(0.02)
            events.append(("step", item))
            got.append(item)
    assert got == list(range(6))
    for i in range(6):  # batch i + 1 was read before step i finished, and never more than 3 ahead
        step = events.index(("step", i))
        assert ("read", min(i + 1, 5)) in events[:step]
        assert all(j <= i + 3 for kind, j in events[:step] if kind == "read")


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_streamed_fit_reads_nothing_inside_the_epoch_on_the_meta_device(files):
    X, y, Xm, ym = files
    be = nnkit.get_backend("torch", device="meta", dtype="float32")
    model = nnkit.Sequential.mlp([6, 16, 3], backend=be, seed=0)
    steps = []
    sgd = nnkit.optim.SGD(0.1)
    real = sgd.apply
    sgd.apply = lambda *a, **k: steps.append(1) or real(*a, **k)
    with pytest.raises(NotImplementedError, match="meta"):  # the epoch's one read, after every step
        model.fit(Xm, ym, loss="cross_entropy", optimizer=sgd, epochs=2, batch_size=32, verbose=0)
    assert len(steps) == 13


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_streamed_jax_fit_reads_the_device_once_per_epoch(files, jax_reads):
    _, _, Xm, ym = files
    model = nnkit.Sequential.mlp([6, 16, 3], backend="jax", seed=0)
    jax_reads.clear()
    model.fit(Xm, ym, loss="cross_entropy", epochs=3, batch_size=64, verbose=0)
    assert len(jax_reads) == 3


@pytest.mark.slow
def test_the_stream_benchmark_runs_small(tmp_path, capsys):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import benchmarks.run_stream as rs

    assert rs.main(["--gb", "0.02", "--backends", "numpy", "--out", str(tmp_path / "s.md")]) == 0
    text = (tmp_path / "s.md").read_text()
    assert "| numpy | small |" in text and "ratio" in text


# -- the command line streams too ---------------------------------------------------------------------------------
def test_cli_trains_from_a_memory_mapped_npy_and_predicts_in_chunks(tmp_path, capsys):
    from nnkit.tools.cli import main

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "Xy.npy", np.column_stack([X, y]).astype(np.float32))
    model_path = tmp_path / "m.npz"
    assert main(["train", "--data", str(tmp_path / "X.npy"), "--label-file", str(tmp_path / "y.npy"), "--hidden", "16",
                 "--epochs", "5", "--lr", "0.01", "--validation-split", "0.1", "--save", str(model_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy: ")[1].split("%")[0])
    assert acc > 90
    assert main(["train", "--data", str(tmp_path / "Xy.npy"), "--hidden", "8", "--epochs", "1", "--quiet"]) == 0
    model = nnkit.load(model_path)
    # predictions from the .npy, in chunks, equal the model's on the whole array
    assert main(["predict", str(model_path), str(tmp_path / "X.npy"), "--out", str(tmp_path / "p.csv"),
                 "--chunk-rows", "300"]) == 0
    got = np.loadtxt(tmp_path / "p.csv", skiprows=1, dtype=int)
    np.testing.assert_array_equal(got, model.predict_labels(X))
    # a CSV read in chunks of 7 rows writes what one read of the whole file writes, the accuracy line too
    csv = tmp_path / "d.csv"
    csv.write_text("x0,x1,x2,x3,x4,label\n" + "\n".join(",".join(f"{v:.6g}" for v in row) + f",{t}"
                                                         for row, t in zip(X[:100], y[:100])) + "\n")
    capsys.readouterr()
    for chunk in ("7", "65536"):
        assert main(["predict", str(model_path), str(csv), "--chunk-rows", chunk, "--proba"]) == 0
        captured = capsys.readouterr()
        if chunk == "7":
            first = captured
    assert first.out == captured.out and first.err == captured.err and "accuracy against" in captured.err


@pytest.mark.parametrize("bad,match", [("short", "expected 2000 numeric labels"), ("1d", "2-D numeric"),
                                       ("nan", "NaN or infinity")])
def test_cli_streaming_mistakes_are_one_line(tmp_path, capsys, bad, match):
    from nnkit.tools.cli import main

    X = np.random.default_rng(0).normal(size=(2000, 4)).astype(np.float32)
    labels = np.zeros(2000)
    labels[::2] = 1
    if bad == "short":
        labels = labels[:10]
    if bad == "1d":
        X = X[:, 0]
    if bad == "nan":
        labels[5] = np.nan
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", labels)
    assert main(["train", "--data", str(tmp_path / "X.npy"), "--label-file", str(tmp_path / "y.npy"),
                 "--epochs", "1", "--quiet"]) == 2
    assert match in capsys.readouterr().err
