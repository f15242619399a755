"""A small network's epoch against the floor: eager NumPy, JAX's epoch compiled whole, the hand-written one.

    python -m benchmarks.run_epoch [--seconds 2] [--gru] [--out FILE.md]

The S network (64-128-64-10, batch 64, plain SGD), one epoch of 200 batches, per step: the NumPy GEMM floor
(the step's nine GEMMs), nnkit's NumPy ``fit``, the same step written by hand in NumPy as tightly as NumPy
allows (buffers allocated once, ``out=``, in place, no framework), JAX ``fit(compile=True)`` — the epoch as one
compiled loop, and step by step (what a callback asking for every batch gets) — the same epoch written by hand in
JAX and compiled whole (``lax.scan`` over the batches), and PyTorch's own eager loop; every epoch callable alternating with the
others in one run (``nnkit.tools.bench.measure``).

``--gru`` adds the recurrent rows: MNIST-1D's GRU model (bidirectional GRU(1, 6), Dense to 10, batch 100, Adam)
under ``compile=True`` on JAX — the first epoch (which compiles) and the step after — at T = 40 and T = 400,
beside PyTorch's ``nn.GRU`` step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import nnkit
from nnkit.tools.bench import epoch_markdown, output_file, positive_seconds, report, run_epoch_report


def gru_rows(lengths=(40, 400), batch=100, batches=4, epochs=3):
    """``[(T, compile s, nnkit step s, torch step s or None)]``: the GRU model compiled on JAX against nn.GRU."""
    rows = []
    for T in lengths:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((batch * batches, T)).astype(np.float32)
        y = rng.integers(0, 10, batch * batches)
        model = nnkit.Sequential([nnkit.Reshape((T, 1)), nnkit.GRU(1, 6, bidirectional=True), nnkit.Flatten(),
                                  nnkit.Dense(T * 12, 10)], backend="jax", seed=0)
        opt = nnkit.optim.Adam(1e-3)
        kw = dict(loss="cross_entropy", optimizer=opt, batch_size=batch, verbose=0, compile=True, metrics=[])
        t0 = time.perf_counter()
        model.fit(X, y, epochs=1, **kw)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(epochs):
            t0 = time.perf_counter()
            model.fit(X, y, epochs=1, **kw)
            times.append((time.perf_counter() - t0) / batches)
        rows.append((T, compile_s, statistics.median(times), _torch_gru_step(X, y, T, batch, batches, epochs)))
    return rows


def _torch_gru_step(X, y, T, batch, batches, epochs):
    try:
        import torch
    except ImportError:
        return None

    class GRUBase(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(1, 6, batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(T * 12, 10)

        def forward(self, x):
            h, _ = self.gru(x.view(-1, T, 1))
            return self.fc(h.reshape(len(x), -1))

    torch.manual_seed(0)
    net = GRUBase()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def epoch():
        for s in range(0, len(Xt), batch):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(Xt[s:s + batch]), yt[s:s + batch]).backward()
            opt.step()
    epoch()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        epoch()
        times.append((time.perf_counter() - t0) / batches)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_epoch", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=positive_seconds, default=2.0, help="timing per epoch callable (default: 2)")
    p.add_argument("--gru", action="store_true", help="also the compiled GRU at T = 40 and 400 against nn.GRU")
    p.add_argument("--out", type=output_file, default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    lines = epoch_markdown(run_epoch_report(seconds=args.seconds, log=lambda m: print(m, file=sys.stderr)))
    if args.gru:
        lines += ["", "## MNIST-1D's GRU model under compile=True on JAX (batch 100, Adam), beside nn.GRU", "",
                  "| T | first epoch (compiles) s | step ms | PyTorch nn.GRU step ms | nnkit / PyTorch |",
                  "|---:|---:|---:|---:|---:|"]
        for T, c, step, peer in gru_rows():
            lines.append(f"| {T} | {c:.2f} | {step * 1e3:.2f} | " +
                         ("— | — |" if peer is None else f"{peer * 1e3:.2f} | {step / peer:.2f} |"))
    command = "python -m benchmarks.run_epoch " + " ".join(argv if argv is not None else sys.argv[1:])
    report("\n".join(lines + ["", f"Command: `{command.strip()}`"]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
