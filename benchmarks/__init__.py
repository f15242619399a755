"""nnkit's benchmark suite (pytest-benchmark). Run with: pytest benchmarks --benchmark-enable"""
