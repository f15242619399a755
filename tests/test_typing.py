"""The public API carries type hints (``py.typed`` ships with the package) and ``mypy nnkit`` is clean."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_package_is_marked_typed():
    assert os.path.exists(os.path.join(ROOT, "nnkit", "py.typed"))


@pytest.mark.slow
def test_mypy_is_clean():
    pytest.importorskip("mypy")
    if shutil.which("mypy") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "mypy")):
        pytest.skip("mypy is not on the PATH")
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_main_entry_points_are_annotated():
    import inspect

    import nnkit

    for fn in (nnkit.get_backend, nnkit.Sequential.fit, nnkit.Sequential.predict, nnkit.Sequential.evaluate,
               nnkit.load, nnkit.gradcheck, nnkit.lr_find, nnkit.metrics.confusion_matrix):
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, fn.__qualname__
