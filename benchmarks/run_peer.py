"""nnkit's training step on the torch backend against PyTorch's own eager step, the two alone, alternating.

    python -m benchmarks.run_peer [--shape M] [--dtype float32] [--rounds 40] [--runs 5] [--out FILE.md]

The report (``python -m benchmarks.report``) times the step, its two GEMM floors and the peer alternating together;
this times only the pair — ``nnkit.tools.bench.Case(...).kernel("train_step")`` against ``kernel("torch_eager_step")``
(autograd and ``torch.optim.SGD``; under ``mixed_bfloat16`` inside ``torch.autocast``), both skipping the first
layer's dX — call by call, ``--rounds`` times per run, ``--runs`` runs one after the other, and gives each run's
medians and ratio, and the median ratio over the runs.
"""
from __future__ import annotations

import argparse
import statistics

from nnkit.tools.bench import SHAPES, Case, alternating_medians, number_in, output_file, report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="M", choices=list(SHAPES))
    parser.add_argument("--dtype", default="float32", choices=["float32", "mixed_bfloat16"])
    parser.add_argument("--rounds", type=number_in("--rounds", 3, 10_000, int), default=40)
    parser.add_argument("--runs", type=number_in("--runs", 1, 100, int), default=5)
    parser.add_argument("--out", type=output_file, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    sizes, batch = SHAPES[args.shape]
    case = Case("torch", args.dtype, sizes, batch)
    fns = {"nnkit": case.kernel("train_step"), "peer": case.kernel("torch_eager_step")}
    rows = [f"{args.shape} {'-'.join(map(str, sizes))} ×{batch}, {args.dtype}, torch backend against PyTorch eager, "
            f"{args.rounds} alternating rounds a run", "", "| run | nnkit ms | PyTorch eager ms | nnkit / PyTorch |",
            "|---:|---:|---:|---:|"]
    ratios = []
    for run in range(1, args.runs + 1):
        m = alternating_medians(fns, args.rounds)
        ratios.append(m["nnkit"] / m["peer"])
        rows.append(f"| {run} | {m['nnkit'] * 1e3:.3f} | {m['peer'] * 1e3:.3f} | {ratios[-1]:.3f} |")
    rows += ["", f"median ratio over {args.runs} runs: {statistics.median(ratios):.3f} "
                 f"(range {min(ratios):.3f}–{max(ratios):.3f})"]
    report("\n".join(rows), args.out)


if __name__ == "__main__":
    main()
