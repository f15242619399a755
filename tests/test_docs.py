"""The public API documents itself: every public class, function and method has a docstring."""
import inspect
import pydoc

import nnkit
import nnkit.export.onnx
import nnkit.export.pytorch
from nnkit.models import explanation, perceptron
from nnkit.tools import explain
from nnkit.training import schedules

MODULES = [nnkit, nnkit.optim, nnkit.datasets, nnkit.init, nnkit.functional, nnkit.metrics, nnkit.precision,
           nnkit.layers, nnkit.export.onnx, nnkit.export.pytorch, nnkit.plots, explanation, explain, perceptron,
           nnkit.callbacks, schedules, nnkit.text]


def _public():
    for mod in MODULES:
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            yield f"{mod.__name__}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and callable(member):
                        yield f"{mod.__name__}.{name}.{attr}", getattr(obj, attr)


def test_every_public_object_has_a_docstring():
    missing = [name for name, obj in _public() if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, f"no docstring: {missing}"


def test_help_dense_shows_the_backward_formulas():
    text = pydoc.render_doc(nnkit.Dense, renderer=pydoc.plaintext)
    for formula in ("Z = X·W + b", "dW = Xᵀ·dZ", "db = Σ_batch dZ", "dX = dZ·Wᵀ"):
        assert formula in text
