"""Backends under test: every one present on this machine.

numpy and array_api_strict always run (array_api_strict also on its second
device, which catches a creation call without ``device=``); torch and jax run when
importable (JAX with its 64-bit mode on, for the float64 gradient checks), cupy
when a CUDA device is usable -- otherwise they are skipped with the reason.
"""
import os
import re

# SciPy's array-API mode must be chosen before SciPy is first imported; with it, scikit-learn's
# estimator checks include their array-API input check instead of skipping it (tests/test_sklearn.py)
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402

import nnkit  # noqa: E402

try:
    import array_api_strict

    # pin the standard's version so a new array-api-strict release cannot move the ground under us
    array_api_strict.set_array_api_strict_flags(api_version="2024.12")
except ImportError:  # pragma: no cover - it is a test dependency
    array_api_strict = None

try:
    import jax

    jax.config.update("jax_enable_x64", True)  # before any JAX array exists: float64 checks need it
except ImportError:  # pragma: no cover - jax[cpu] is in the test extra
    jax = None


def _probe(name, device=None):
    try:
        nnkit.get_backend(name, device=device)
    except Exception as exc:  # the backend's own message says why
        return str(exc)
    return None


def _backend_params():
    params = [pytest.param(("numpy", None), id="numpy")]
    strict_why = _probe("array_api_strict")
    params.append(pytest.param(("array_api_strict", None), id="array_api_strict",
                               marks=pytest.mark.skipif(bool(strict_why), reason=strict_why or "")))
    dev1 = array_api_strict.Device("device1") if array_api_strict else None
    params.append(pytest.param(("array_api_strict", dev1), id="array_api_strict-device1",
                               marks=pytest.mark.skipif(bool(strict_why), reason=strict_why or "")))
    for name in ("torch", "jax", "cupy"):
        why = _probe(name)
        params.append(pytest.param((name, None), id=name, marks=pytest.mark.skipif(bool(why), reason=why or "")))
    return params


BACKENDS = _backend_params()


@pytest.fixture(params=BACKENDS)
def backend_spec(request):
    """(name, device) of a backend present here."""
    return request.param


@pytest.fixture
def make_backend(backend_spec):
    name, device = backend_spec

    def make(dtype="float64"):
        return nnkit.get_backend(name, device=device, dtype=dtype)

    return make


@pytest.fixture
def jax_reads(monkeypatch):
    """The JAX arrays read back to the host, each once (a read may pass through more than one of these):
    ``float``/``bool``/``int``/``tolist``/``device_get`` go through ``ArrayImpl._value``, NumPy
    conversion through ``__array__``, ``item`` by itself."""
    from jax._src import array as jax_array

    reads = []
    cls = jax_array.ArrayImpl
    value, to_array, item = cls._value, cls.__array__, cls.item

    def counted(fn, kind):
        def read(self, *args, **kwargs):
            if not any(r is self for r in reads):
                reads.append(self)  # kept alive, so identities stay distinct
            return fn(self, *args, **kwargs)
        return read

    monkeypatch.setattr(cls, "_value", property(counted(value.fget, "_value")))
    monkeypatch.setattr(cls, "__array__", counted(to_array, "__array__"))
    monkeypatch.setattr(cls, "item", counted(item, "item"))
    return reads


def pytest_addoption(parser):
    try:
        parser.addoption("--full", action="store_true", default=False,
                         help="run the whole suite (what CI runs); without it, the quick tier: every module touched, "
                              "the slow tests and the extra backends' repeats left out")
    except ValueError:  # benchmarks/conftest.py added it already
        pass


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run them with: pytest -m gpu tests/test_gpu.py)")
    config.addinivalue_line("markers", "slow: left out of the quick tier (plain `pytest`); `pytest --full` runs it")


# -- the quick tier: `pytest` alone runs it; `pytest --full` runs everything ----------------------------------------
QUICK_BACKENDS = {"numpy"}  # a backend-parametrised test runs on NumPy alone in the quick tier


OTHER_LIBRARIES = {"torch", "jax", "cupy", "array_api_strict"}


def _backend_of(item):
    """The backend a parametrised test runs on: the ``backend_spec`` fixture's, or a library named in its id
    ("[jax-True]"); None for a test that is not parametrised by backend."""
    spec = getattr(item, "callspec", None)
    if spec is None:
        return None
    value = spec.params.get("backend_spec")
    if value is not None:
        return value[0] if value[1] is None else "device1"
    named = set(re.split(r"[-\[\]]", spec.id)) & (OTHER_LIBRARIES | {"numpy"})
    return min(named) if named else None


def _quick(item):
    if item.get_closest_marker("slow") or item.get_closest_marker("gpu"):
        return False
    if "benchmarks" in item.path.parts:
        return False
    backend = _backend_of(item)
    return backend is None or backend in QUICK_BACKENDS


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full") or config.getoption("-m") or config.getoption("-k"):
        return  # the whole suite, or the user chose the tests
    chosen = [str(a) for a in config.args]
    if chosen and all(not os.path.isdir(a.split("::")[0]) for a in chosen):
        return  # files or tests named on the command line run whole
    keep, left = [], []
    for item in items:
        (keep if _quick(item) else left).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = keep
        config._nnkit_left_out = len(left)


def skipped_for_torch(report):
    """Whether a skipped test's reason is that PyTorch is not installed (however the test words it)."""
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    return bool(re.search(r"torch|PyTorch", reason) and re.search(r"not installed|could not import|No module",
                                                                    reason))


def pytest_terminal_summary(terminalreporter, config):
    left = getattr(config, "_nnkit_left_out", 0)
    if left:
        terminalreporter.write_line(f"quick tier: {left} slow or repeated tests left out; `pytest --full` runs the "
                                    "whole suite (what CI runs)")
    torch_skips = sum(map(skipped_for_torch, terminalreporter.stats.get("skipped", [])))
    if torch_skips:
        terminalreporter.write_line(f"{torch_skips} tests skipped because PyTorch is not installed "
                                    "(pip install -e \".[test,torch]\" runs them)")
