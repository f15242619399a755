"""The masked recurrent step against the unmasked one at the same T, alternating calls in one run.

    python -m benchmarks.run_masked_step [--rounds 60] [--out FILE]

Two shapes, NumPy float32, a bidirectional GRU, lengths drawn uniformly from 1..T (seed 0): MNIST-1D's GRUBase
(B 100, T 40, F 1, H 6) and the character model's (B 32, T 64, F 64, H 128).  Each round times one forward
(``train=True``) and one backward (``need_dX=False``) of the layer without the mask and then with it; the report
gives the medians over the rounds and the ratio masked / unmasked (the goal: ≤ 1.1).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import nnkit
from nnkit.tools.bench import number_in, report

SHAPES = {"GRUBase": (100, 40, 1, 6), "char": (32, 64, 64, 128)}


def measure(B, T, F, H, rounds):
    """Median seconds of forward and backward, unmasked and masked: {"forward": (plain, masked), ...}."""
    model = nnkit.Sequential([nnkit.layers.GRU(F, H, bidirectional=True)], dtype="float32", seed=0)
    gru, xp, rng = model.layers[0], model.xp, np.random.default_rng(0)
    X = model.backend.asarray(rng.standard_normal((B, T, F)), dtype=model.backend.dtype)
    mask = nnkit.data.mask_of(model, rng.integers(1, T + 1, B), T)
    dY = xp.ones((B, T, 2 * H), dtype=model.backend.dtype)
    times = {(k, m): [] for k in ("forward", "backward") for m in (False, True)}
    for _ in range(rounds):
        for masked in (False, True):
            t0 = time.perf_counter()
            gru.forward(X, train=True, mask=mask if masked else None)
            t1 = time.perf_counter()
            gru.backward(dY, need_dX=False)
            t2 = time.perf_counter()
            times["forward", masked].append(t1 - t0)
            times["backward", masked].append(t2 - t1)
    return {k: (statistics.median(times[k, False]), statistics.median(times[k, True])) for k in ("forward", "backward")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=number_in("--rounds", 3, 10_000, int), default=60)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    rows = ["| shape (B, T, F, H) | pass | unmasked ms | masked ms | masked / unmasked |", "|---|---|---:|---:|---:|"]
    for name, shape in SHAPES.items():
        for kind, (plain, masked) in measure(*shape, args.rounds).items():
            rows.append(f"| {name} {shape} | {kind} | {plain * 1e3:.3f} | {masked * 1e3:.3f} | {masked / plain:.3f} |")
    report("\n".join(rows), args.out)


if __name__ == "__main__":
    main()
