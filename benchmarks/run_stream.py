"""Streaming from disk, measured: peak private memory and throughput of fit on a memory-mapped .npy.

    python -m benchmarks.run_stream [--gb 2.0] [--backends numpy torch] [--out FILE.md]

(``--backends`` defaults to numpy, and torch where PyTorch is installed.)

1. Memory: a float32 .npy of at least ``--gb`` GB (the M network's 784 features; made at run time in a
   temporary folder, deleted after) is trained for one epoch (batch 256, SGD) from ``np.load(mmap_mode="r")``
   with each backend, in a fresh process, and so is a small file (16,384 rows); the peak private (anonymous)
   memory of each run is sampled from /proc/self/status (RssAnon) every 5 ms.  The file's pages are the page
   cache's, not the process's: what counts is that nothing copies the array.
2. Throughput: one epoch of the M network (784-1024-1024-10, batch 256) on 65,536 rows from the memory-mapped
   file against the same rows in memory, in one process, alternating (best of three each).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

FEATURES, CLASSES = 784, 10


def make_file(path, rows, seed=0):
    """A float32 (rows, 784) .npy written block by block (never all in memory), and its labels."""
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, FEATURES))
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((8192, FEATURES)).astype(np.float32)
    for s in range(0, rows, 8192):
        e = min(s + 8192, rows)
        X[s:e] = block[:e - s]
    X.flush()
    del X
    np.save(path + ".labels.npy", (np.arange(rows) % CLASSES).astype(np.int64))


def _rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def child(path, backend):
    """One epoch from the memory-mapped file; prints the peak RssAnon above the start (bytes) as JSON."""
    import nnkit

    X = np.load(path, mmap_mode="r")
    y = np.load(path + ".labels.npy", mmap_mode="r")
    model = nnkit.Sequential.mlp([FEATURES, 1024, 1024, CLASSES], backend=backend, seed=0)
    model.fit(X[:512], y[:512], loss="cross_entropy", optimizer=nnkit.optim.SGD(0.01), epochs=1, batch_size=256,
              verbose=0)  # warm-up: libraries loaded, allocator primed
    base, peak, stop = _rss_anon(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.01), epochs=1, batch_size=256, verbose=0)
    seconds = time.perf_counter() - t0
    stop.set()
    t.join()
    print(json.dumps({"peak": max(peak[0], _rss_anon()) - base, "seconds": seconds, "rows": int(X.shape[0])}))


def throughput(path, rows=65536):
    import nnkit

    Xm = np.load(path, mmap_mode="r")[:rows]
    ym = np.load(path + ".labels.npy", mmap_mode="r")[:rows]
    Xh, yh = np.array(Xm), np.array(ym)
    best = {"memory": float("inf"), "memory-mapped": float("inf")}
    for _ in range(3):
        for name, (X, y) in (("memory", (Xh, yh)), ("memory-mapped", (Xm, ym))):
            model = nnkit.Sequential.mlp([FEATURES, 1024, 1024, CLASSES], seed=0)
            t0 = time.perf_counter()
            model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.01), epochs=1, batch_size=256,
                      verbose=0)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {k: rows / v for k, v in best.items()}


def _output_file(text):
    """``--out``, checked at once (nnkit is imported here, not at the top: a child measures its own import)."""
    from nnkit.tools.bench import output_file

    return output_file(text)


def _gigabytes(text):
    """``--gb``: a finite size in (0, 1024] GB."""
    from nnkit.tools.bench import number_in

    return number_in("a size in GB", 0, 1024, low_open=True)(text)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_stream", description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=_gigabytes, default=2.0, help="size of the big file in GB (default 2)")
    p.add_argument("--backends", nargs="+", default=None,
                   help="backends to stream to (default: numpy, and torch when PyTorch is installed)")
    p.add_argument("--out", type=_output_file, default=None, help="also write the table to this Markdown file")
    p.add_argument("--child", nargs=2, metavar=("PATH", "BACKEND"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    import nnkit

    if args.backends is None:
        import importlib.util

        args.backends = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") is not None else [])
    for name in args.backends:  # each backend asked for, checked before gigabytes are written
        try:
            nnkit.get_backend(name)
        except (ValueError, ImportError, RuntimeError) as exc:
            p.error(f"--backends {name}: {exc}")
    need, free = args.gb * 1e9 * 1.05 + 64e6, shutil.disk_usage(tempfile.gettempdir()).free
    if free < need:
        p.error(f"--gb {args.gb:g} needs about {need / 1e9:.1f} GB free in {tempfile.gettempdir()}, which has "
                f"{free / 1e9:.1f} GB: a smaller --gb, or TMPDIR on a larger disk")
    lines = ["| backend | file | rows | peak private memory over the start | epoch |", "|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as d:
        big, small = os.path.join(d, "big.npy"), os.path.join(d, "small.npy")
        rows = int(args.gb * 1e9 / (4 * FEATURES)) + 1
        make_file(big, rows)
        make_file(small, 16384)
        results = {}
        for backend in args.backends:
            for name, path in (("small", small), (f"{os.path.getsize(big) / 1e9:.2f} GB", big)):
                root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                out = subprocess.run([sys.executable, "-m", "benchmarks.run_stream", "--child", path, backend],
                                     capture_output=True, text=True, check=True, cwd=root).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results[(backend, name)] = r
                lines.append(f"| {backend} | {name} | {r['rows']:,} | {r['peak'] / 2**20:.0f} MiB | "
                             f"{r['seconds']:.1f} s |")
                print(lines[-1], flush=True)
        tp = throughput(big)
        lines += ["", f"Throughput, M network, one epoch of 65,536 rows (best of three): from memory "
                      f"{tp['memory']:,.0f} rows/s, memory-mapped {tp['memory-mapped']:,.0f} rows/s "
                      f"(ratio {tp['memory-mapped'] / tp['memory']:.2f})."]
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        from nnkit.data.files import atomic_write

        atomic_write(args.out, lambda f: f.write(text.encode()))
    sys.stdout.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
