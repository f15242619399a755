"""Small test helpers: host copies happen only here, in tests."""
import numpy as np

import nnkit


def to_np(x):
    """Any backend's array -> NumPy (tests only)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    import array_api_compat

    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_array_api_strict_namespace(array_api_compat.array_namespace(x)):
        import array_api_strict

        return np.asarray(x.to_device(array_api_strict.Device("CPU_DEVICE")))
    return np.from_dlpack(x)


def assert_on_backend(x, backend, shape=None):
    """x is an array of ``backend``'s library, on its device, of its dtype (and shape)."""
    assert backend.owns(x), f"expected a {backend.name} array, got {type(x)}"
    import array_api_compat

    assert array_api_compat.device(x) == backend.device
    assert x.dtype == backend.dtype
    if shape is not None:
        assert tuple(x.shape) == tuple(shape)


def mlp(layers, backend, seed=0):
    return nnkit.Sequential(layers, backend=backend, dtype=backend.dtype_name, seed=seed)
