"""python -m benchmarks.report: run the benchmark report and write benchmarks/RESULTS.md and RESULTS.png.

The measuring code lives in :mod:`nnkit.bench` so that an installed nnkit can run it too (``nnkit bench``).
"""
import os
import sys

from nnkit.bench import main

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    sys.exit(main(default_out=os.path.join(HERE, "RESULTS.md"), prog="python -m benchmarks.report"))
