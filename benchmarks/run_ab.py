"""This checkout's training step against another checkout's, alternating, in one run on one machine.

    git worktree add /tmp/before <commit>
    python -m benchmarks.run_ab /tmp/before [--shapes S M] [--rounds 7] [--seconds 2]

Each round times, in a fresh subprocess per checkout and in alternating order, the median ``train_step`` of the
benchmark MLPs (``nnkit.tools.bench.SHAPES``: S 64-128-64-10 batch 64, M 784-1024-1024-10 batch 256; NumPy float32,
SGD, cross-entropy on integer labels, device arrays, ``check_input=False``) over ``--seconds`` of calls; the
report gives each checkout's median over the rounds and the ratio this / other.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
import numpy as np
import nnkit
try:
    from nnkit.tools import bench as H
except ImportError:  # the other checkout predates the package's folders
    from nnkit import bench as H
shape, seconds = sys.argv[1], float(sys.argv[2])
sizes, batch = H.SHAPES[shape]
model = nnkit.Sequential.mlp(list(sizes), "relu", dtype="float32", seed=0)
rng = np.random.default_rng(0)
X = model.backend.asarray(rng.standard_normal((batch, sizes[0])).astype(np.float32))
y = rng.integers(0, sizes[-1], size=batch)
T = nnkit.data.as_target(model, y, batch, nnkit.get_loss("cross_entropy"))
opt = nnkit.optim.SGD(1e-3)
for _ in range(5):
    model.train_step(X, T, "cross_entropy", opt, check_input=False)
times, end = [], time.perf_counter() + seconds
while time.perf_counter() < end or len(times) < 10:
    t0 = time.perf_counter()
    model.train_step(X, T, "cross_entropy", opt, check_input=False)
    times.append(time.perf_counter() - t0)
print(json.dumps({"median": statistics.median(times), "n": len(times), "nnkit": nnkit.__file__}))
"""


def time_step(checkout, shape, seconds):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    out = subprocess.run([sys.executable, "-c", CHILD, shape, str(seconds)], env=env, capture_output=True,
                         text=True, check=True, cwd=os.path.abspath(checkout))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["nnkit"].startswith(os.path.abspath(checkout)):
        raise SystemExit(f"{checkout}: the child imported {result['nnkit']}, not this checkout's nnkit")
    return result["median"]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_ab", description=__doc__.splitlines()[0])
    p.add_argument("other", help="the other checkout (a git worktree of the commit to compare with)")
    p.add_argument("--shapes", nargs="+", default=["S", "M"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=2.0)
    a = p.parse_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    for shape in a.shapes:
        mine, other = [], []
        for r in range(a.rounds):
            order = [(here, mine), (a.other, other)] if r % 2 == 0 else [(a.other, other), (here, mine)]
            for checkout, into in order:
                into.append(time_step(checkout, shape, a.seconds))
        m, o = statistics.median(mine), statistics.median(other)
        rows.append(f"| {shape} | {1e6 * o:.0f} | {1e6 * m:.0f} | {m / o:.3f} |")
        print(rows[-1], file=sys.stderr)
    print("| shape | other µs/step | this µs/step | this / other |\n|---|---:|---:|---:|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
