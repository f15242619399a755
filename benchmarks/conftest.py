"""The benchmark suite times float64 on JAX too, which needs JAX's 64-bit mode (set before any JAX array)."""
try:
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # JAX is optional: its targets skip with the reason
    pass
