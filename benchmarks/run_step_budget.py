"""Where a NumPy float32 training step's time goes beyond its matmuls: the work besides the GEMMs, timed.

    python -m benchmarks.run_step_budget [--shape M] [--seconds 3] [--out FILE.md]

A step of a ReLU MLP runs the tight floor's GEMMs (forward X·W, dW = Xᵀ·dZ, dX = dZ·Wᵀ but the first layer's)
and, besides them, work NumPy does on one core while BLAS uses all of them: per hidden layer the bias add, the
ReLU and its indicator, dA ⊙ [A > 0] and db = Σ dZ; the loss; Python.  This script times each of
those pieces in the fastest form NumPy has — in place with ``out=``, the bias as a fill that a GEMM with β = 1
would add to (forms nnkit's layers cannot all use: they see only the Array API) — at the shape's widths, next
to the tight floor and the SGD step, all in one run:

* *hot*: each piece back to back (its arrays in cache), the cheapest it can be;
* *between other work*: the pieces, the floor and the step interleaved in a new order every round
  (``nnkit.tools.bench.measure``, as the report times the step), so each piece finds its arrays where other work
  left them — what the same pieces cost when their data is not in cache.

The hot sum is the least this work can cost a step: it bounds ``step − GEMMs``; and in a step each piece reads
what a GEMM has just written on every core, so it costs nearer its *between other work* time.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import nnkit
from nnkit.tools.bench import SHAPES, Case, measure, output_file, positive_seconds
from nnkit.data.files import atomic_write


def pieces(sizes, batch, rng):
    """``{name: (fn, calls per step)}``: the non-GEMM work of one SGD step of a ReLU MLP of ``sizes``."""
    out = {}
    for h in sorted(set(sizes[1:-1])):  # hidden widths: each layer of that width runs every piece once
        n = sum(1 for s in sizes[1:-1] if s == h)
        Z = rng.standard_normal((batch, h)).astype(np.float32)
        dA = rng.standard_normal((batch, h)).astype(np.float32)
        b = rng.standard_normal(h).astype(np.float32)
        mask = np.empty((batch, h), dtype=bool)
        active = (Z > 0).astype(np.float32)
        out[f"bias fill (B, {h})"] = (lambda Z=Z, b=b: np.copyto(Z, b), n)
        out[f"ReLU max(Z, 0) in place (B, {h})"] = (lambda Z=Z: np.maximum(Z, 0.0, out=Z), n)
        out[f"ReLU indicator A > 0 (B, {h})"] = (lambda Z=Z, mask=mask: np.greater(Z, 0.0, out=mask), n)
        out[f"dA ⊙ [A > 0] in place (B, {h})"] = (lambda dA=dA, a=active: np.multiply(dA, a, out=dA), n)
        out[f"db = Σ dZ (B, {h})"] = (lambda dA=dA: dA.sum(axis=0), n)
    return out


def run(shape="M", seconds=3.0):
    """``(rows, totals)``: per piece ``(name, calls per step, hot s, between-other-work s)``; ``totals`` holds
    the floor, the step and the pieces' sum per step, hot and between other work (seconds)."""
    sizes, batch = SHAPES[shape]
    case = Case("numpy", "float32", sizes, batch)
    tiny = Case("numpy", "float32", [4] * (len(sizes) - 1) + [2], batch)  # the same layers, 4 wide: Python
    work = pieces(sizes, batch, np.random.default_rng(0))
    # Python, the loss and the calls: a whole step of the same layers at width 4 (its arrays are tiny)
    work["a step of the same layers, 4 wide (Python, the loss)"] = (tiny.kernel("train_step"), 1)
    fns = {name: fn for name, (fn, _) in work.items()}
    fns["tight floor"] = case.kernel("matmul_floor_tight")
    fns["SGD step"] = case.kernel("train_step")
    settle = 0.25 if seconds >= 0.5 else 0.0  # BLAS threads spin ~0.1 s after a call; a smoke run skips the wait
    hot = measure({name: {name: fn} for name, fn in fns.items()}, seconds=seconds, settle=settle)
    placed = measure(fns, seconds=seconds, settle=settle)
    rows = [(name, calls, hot[name], placed[name]) for name, (_, calls) in work.items()]
    totals = {"floor hot": hot["tight floor"], "floor": placed["tight floor"], "step hot": hot["SGD step"],
              "step": placed["SGD step"], "bound hot": sum(c * h for _, c, h, _ in rows),
              "bound": sum(c * p for _, c, _, p in rows)}
    return rows, totals


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_step_budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="M", choices=list(SHAPES))
    p.add_argument("--seconds", type=positive_seconds, default=3.0, help="timing per callable (default: %(default)s)")
    p.add_argument("--out", type=output_file, default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    sizes, batch = SHAPES[args.shape]
    rows, t = run(args.shape, args.seconds)
    lines = [f"NumPy float32, shape {args.shape} {'-'.join(map(str, sizes))} ×{batch}; one run; "
             "`python -m benchmarks.run_step_budget " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
             "", "| piece | per step | hot | between other work |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {calls} | {h * 1e6:.1f} µs | {pl * 1e6:.1f} µs |" for name, calls, h, pl in rows]
    lines += ["", "| | hot | between other work |", "|---|---:|---:|",
              f"| tight floor | {t['floor hot'] * 1e3:.3f} ms | {t['floor'] * 1e3:.3f} ms |",
              f"| SGD step | {t['step hot'] * 1e3:.3f} ms | {t['step'] * 1e3:.3f} ms |",
              f"| SGD step / tight floor | {t['step hot'] / t['floor hot']:.3f} | {t['step'] / t['floor']:.3f} |",
              f"| the pieces, per step | {t['bound hot'] * 1e3:.3f} ms | {t['bound'] * 1e3:.3f} ms |",
              f"| 1 + pieces / tight floor | {1 + t['bound hot'] / t['floor hot']:.3f} | "
              f"{1 + t['bound'] / t['floor']:.3f} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
