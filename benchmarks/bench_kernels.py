"""The kernel suite: every target present × dtype or precision policy × shape × kernel, plus the batch-size
sweep of M.  A policy a target cannot run (bfloat16 on NumPy, tf32 off CUDA) is skipped with the reason.

Run:    pytest benchmarks/bench_kernels.py --benchmark-enable --benchmark-columns=median,iqr,rounds
Report: python -m benchmarks.report --out benchmarks/RESULTS.md   (the tables and the sweep plot)
CI runs this file once with --benchmark-disable (every callable runs once), so it cannot rot;
no test here asserts a time.
"""
import functools

import pytest

from nnkit.tools import bench as H

ROUNDS = {"S": (200, 20), "M": (20, 3), "L": (5, 1)}  # (rounds, warm-up rounds) per shape


def _targets():
    out = []
    for t in H.TARGETS:
        why = H.why_unavailable(t)
        out.append(pytest.param(t, id=t, marks=pytest.mark.skipif(why is not None, reason=why or "")))
    return out


@functools.lru_cache(maxsize=8)
def case(target, dtype, shape, batch=None):
    sizes, default_batch = H.SHAPES[shape]
    return H.Case(target, dtype, sizes, batch or default_batch)


def _run(benchmark, c, kernel, rounds, warmup):
    fn = c.kernel(kernel)
    benchmark.extra_info.update(target=c.target, dtype=c.dtype, sizes=c.sizes, batch=c.batch,
                                train_step_gflop=c.flops / 1e9)
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)


# a compiled target differs from its eager library only in the step (the layer kernels are the same
# calls); torch.compile takes 10-30 s per shape, so its target is timed on S only
COMPILED_KERNELS = ("train_step", "fit_epoch", "matmul_floor", "matmul_floor_tight")


def _marks(target, dtype, shape="S"):
    """Skip with the reason where the target is missing or cannot run the dtype / precision policy, or — beyond
    the S shape — where the policy is only emulated on this device (:func:`nnkit.tools.bench.why_emulated`)."""
    why = H.why_not(target, dtype)
    if why is None and shape != "S":
        why = H.why_emulated(target, dtype)
    return [pytest.mark.skipif(why is not None, reason=why or "")]


def _cases():
    for t in _targets():
        target = t.values[0]
        for dtype in H.DTYPES:
            for shape in (["S"] if target == "torch-compile" else H.SHAPES):
                marks = _marks(target, dtype, shape)
                for kernel in H.KERNELS:
                    if kernel == "torch_eager_step" or (target in H.COMPILED and kernel not in COMPILED_KERNELS):
                        continue
                    yield pytest.param(target, dtype, shape, kernel, marks=marks,
                                       id=f"{target}-{dtype}-{shape}-{kernel}")


def _peers():
    for t in _targets():
        if t.values[0] in H.PEERS:
            for dtype in H.DTYPES:
                for shape in H.SHAPES:
                    yield pytest.param(t.values[0], dtype, shape, marks=_marks(t.values[0], dtype, shape),
                                       id=f"{t.values[0]}-{dtype}-{shape}")


@pytest.mark.parametrize("target, dtype, shape, kernel", list(_cases()))
def test_kernel(benchmark, target, dtype, shape, kernel):
    benchmark.group = f"{shape}-{dtype}-{kernel}"
    _run(benchmark, case(target, dtype, shape), kernel, *ROUNDS[shape])


@pytest.mark.parametrize("target, dtype, shape", list(_peers()))
def test_torch_eager_peer(benchmark, target, dtype, shape):
    benchmark.group = f"{shape}-{dtype}-train_step"
    _run(benchmark, case(target, dtype, shape), "torch_eager_step", *ROUNDS[shape])


@pytest.mark.parametrize("kernel", ["train_step", "matmul_floor"])
@pytest.mark.parametrize("batch", H.SWEEP)
@pytest.mark.parametrize("target", [p for p in _targets() if p.values[0] != "torch-compile"])
def test_batch_sweep(benchmark, target, batch, kernel):
    benchmark.group = f"sweep-M-{batch}"
    rounds = max(3, 20 * 256 // batch)
    _run(benchmark, case(target, "float32", "M", batch), kernel, rounds, 2)


@functools.lru_cache(maxsize=8)
def conv_case(target, shape):
    return H.ConvCase(target, shape)


def _conv_cases():
    for t in _targets():
        target = t.values[0]
        if target in H.COMPILED:
            continue
        for shape in H.CONV_SHAPES:
            for kernel in H.CONV_KERNELS:
                if kernel.startswith("cnn") and shape != "MNIST-1D" or \
                        kernel in ("cnn_torch_eager_step", "conv_torch_module") and target not in H.PEERS:
                    continue
                yield pytest.param(target, shape, kernel, marks=t.marks, id=f"{target}-{shape}-{kernel}")


@pytest.mark.parametrize("target, shape, kernel", list(_conv_cases()))
def test_conv_kernel(benchmark, target, shape, kernel):
    benchmark.group = f"conv-{shape}-{kernel}"
    c = conv_case(target, shape)
    benchmark.extra_info.update(target=target, shape=shape)
    benchmark.pedantic(c.kernel(kernel), rounds=20, warmup_rounds=3, iterations=1)
