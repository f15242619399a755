"""nnkit's attention layer and Transformer block against PyTorch's, alternating calls in one run.

    python -m benchmarks.run_attention [--rounds 50] [--out FILE]

Forward + backward (dX included) at a small GPT's shape (B 12, T 64, E 128, 4 heads, causal, float32), NumPy
against PyTorch eager (``nn.MultiheadAttention``; ``nn.TransformerEncoderLayer(norm_first=True)``); the report
gives each median and the ratio nnkit / PyTorch (the goal for the attention layer: ≤ 1.1).
"""
from __future__ import annotations

import argparse

from nnkit.tools.bench import alternating_medians, number_in, report

from .bench_attention import B, E, HEADS, T, nnkit_step, torch_step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=number_in("--rounds", 3, 10_000, int), default=50)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    rows = [f"B {B}, T {T}, E {E}, {HEADS} heads, causal, float32, forward + backward",
            "", "| layer | nnkit NumPy ms | PyTorch ms | nnkit / PyTorch |", "|---|---:|---:|---:|"]
    for kind in ("attention", "block"):
        m = alternating_medians({"nnkit": nnkit_step(kind), "torch": torch_step(kind)}, args.rounds)
        a, b = m["nnkit"], m["torch"]
        rows.append(f"| {kind} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.2f} |")
    report("\n".join(rows), args.out)


if __name__ == "__main__":
    main()
