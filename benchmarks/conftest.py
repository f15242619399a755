"""The benchmark suite times float64 on JAX too, which needs JAX's 64-bit mode (set before any JAX array)."""
try:
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # JAX is optional: its targets skip with the reason
    pass


def pytest_addoption(parser):
    """``--full`` as in tests/conftest.py (``pytest benchmarks --full`` is the benchmarks as CI runs them: all)."""
    try:
        parser.addoption("--full", action="store_true", default=False,
                         help="run the whole suite (what CI runs); without it, the quick tier")
    except ValueError:  # tests/conftest.py added it already
        pass
