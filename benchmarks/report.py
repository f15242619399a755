"""python -m benchmarks.report: run the benchmark report and write it where ``--out`` says
(default ``nnkit-bench.md`` and ``.png`` in the current folder; ``--out benchmarks/RESULTS.md`` updates the
tracked report, and only when asked).

The measuring code lives in :mod:`nnkit.bench` so that an installed nnkit can run it too (``nnkit bench``).
"""
import sys

from nnkit.tools.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks.report"))
