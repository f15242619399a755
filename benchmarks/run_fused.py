"""The fused SGD step, measured: one train step with the update in the backward pass against the plain step.

    python -m benchmarks.run_fused [--targets numpy torch] [--precisions none mixed_bfloat16] [--shape M]
                                   [--seconds 4] [--out FILE.md]

For each target and precision, SGD and SGD with momentum 0.9, each as the plain step (dW formed, then the
optimizer's update: ``nnkit.step.train_step(..., fused=False)``) and the fused one (``fused=True``, what ``fit``
and ``train_step`` run), on one model and batch, timed with ``nnkit.bench.measure`` (the callables alternate
in a new order every round), next to the tight matmul floor.
"""
from __future__ import annotations

import argparse
import sys

import nnkit
from nnkit import step
from nnkit.bench import SHAPES, Case, measure, output_file, positive_seconds
from nnkit.files import atomic_write
from nnkit.optim import SGD

OPTIMIZERS = {"SGD": {}, "SGD momentum 0.9": {"momentum": 0.9}}


def time_target(target, precision, shape, seconds):
    """``{(optimizer, "plain"|"fused"): seconds}`` and the tight floor, for one target and precision."""
    sizes, batch = SHAPES[shape]
    case = Case(target, "float32" if precision == "none" else precision, sizes, batch)
    model, X, T, loss = case.model, case.X, case.T, case.loss

    def one_step(opt, fused):
        def run():
            with model.policy.activate():
                _, _, state = step.train_step(model, step.StepState.of(model, opt), X, T, opt.lr, loss=loss,
                                              optimizer=opt, fused=fused)
            opt.state = state.opt
            return state.params

        return run

    fns = {(name, kind): one_step(SGD(1e-4, **hp), kind == "fused")
           for name, hp in OPTIMIZERS.items() for kind in ("plain", "fused")}
    fns["floor"] = case.kernel("matmul_floor_tight")
    return measure(fns, seconds=seconds)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_fused", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", default=["numpy", "torch"], choices=["numpy", "torch", "torch-cuda"])
    p.add_argument("--precisions", nargs="+", default=["none", "mixed_bfloat16"],
                   choices=["none", "mixed_bfloat16", "mixed_float16", "tf32"])
    p.add_argument("--shape", default="M", choices=list(SHAPES))
    p.add_argument("--seconds", type=positive_seconds, default=4.0, help="timing per callable (default: %(default)s)")
    p.add_argument("--out", type=output_file, default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    sizes, batch = SHAPES[args.shape]
    lines = [f"Shape {args.shape} {'-'.join(map(str, sizes))} ×{batch}; one run; `python -m benchmarks.run_fused "
             + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
             "| target | precision | optimizer | plain step | fused step | fused / plain | fused / tight floor |",
             "|---|---|---|---:|---:|---:|---:|"]
    for target in args.targets:
        for precision in args.precisions:
            try:
                times = time_target(target, precision, args.shape, args.seconds)
            except (ValueError, RuntimeError, ImportError) as exc:  # a precision or target this machine cannot run
                print(f"{target} {precision}: skipped ({exc})", file=sys.stderr)
                continue
            for name in OPTIMIZERS:
                plain, fused = times[(name, "plain")], times[(name, "fused")]
                lines.append(f"| {target} | {precision} | {name} | {plain * 1e3:.3f} ms | {fused * 1e3:.3f} ms | "
                             f"{fused / plain:.2f} | {fused / times['floor']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
