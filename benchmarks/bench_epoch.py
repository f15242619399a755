"""A small network's epoch (S: 64-128-64-10, batch 64, plain SGD): nnkit's NumPy fit, the same step written by hand
in NumPy as tightly as NumPy allows, JAX's epoch compiled whole and step by step, the hand-written ``lax.scan``
epoch, PyTorch's own loop and the NumPy GEMM floor — the rows of
``python -m benchmarks.run_epoch`` (which times them alternating, in one run, and gives the ratios).

Run:  pytest benchmarks/bench_epoch.py --benchmark-enable
Times are reported, never asserted; CI runs each once (``--benchmark-disable``) so they cannot rot.
"""
import pytest

from nnkit.tools import bench

ROWS = {}


def _callables():
    if not ROWS:  # built once: each is one fit of bench.EPOCHS epochs (or the same work by hand)
        for fns in bench.epoch_callables(log=lambda m: None).values():
            ROWS.update(fns)
    return ROWS


@pytest.mark.parametrize("what", ["GEMM floor", "nnkit fit, NumPy", "NumPy step written by hand",
                                  "compile=True (the epoch compiled whole)",
                                  "compile=True, step by step", "hand-written", "PyTorch"])
def test_small_network_epoch(benchmark, what):
    rows = {name: fn for name, fn in _callables().items() if what in name}
    if not rows:
        pytest.skip(f"{what}: its library is not installed")
    benchmark.pedantic(next(iter(rows.values())), rounds=3, warmup_rounds=1)
