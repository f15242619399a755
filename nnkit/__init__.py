"""nnkit: a small neural-network trainer with hand-derived, batched backprop, written once against the Python
Array API standard and run on NumPy, CuPy, PyTorch, JAX or any array library array-api-compat wraps
(``backend=``).

The public names are the ones below, each at one address: the layers, :class:`Sequential` and :func:`load`,
the losses, the callbacks, and the modules ``nnkit.optim`` (optimizers and learning-rate schedules),
``nnkit.metrics``, ``nnkit.datasets``, ``nnkit.data``, ``nnkit.text``, ``nnkit.precision``, ``nnkit.init``,
``nnkit.functional``, ``nnkit.plots``, ``nnkit.export`` and ``nnkit.sklearn`` (scikit-learn estimators,
imported when first used).  The package's folders, bottom to top (each imports only those below it):
``backends`` → ``layers`` → ``losses``, ``metrics`` → ``data`` → ``training`` → ``export`` → ``models`` →
``tools``.
"""
import importlib
import importlib.abc
import importlib.util
import sys

from .backends import Backend, get_backend
from .backends import functional
from .backends.threads import set_threads
from .layers import (Layer, Dense, Dropout, Residual, BatchNorm, LayerNorm, Sigmoid, Tanh, ReLU, LeakyReLU, Softmax,
                     Identity, GELU, SiLU, ELU, Softplus, Conv1D, Conv2D, ConvTranspose1D, ConvTranspose2D, MaxPool1D,
                     MaxPool2D, AvgPool1D, AvgPool2D, GlobalAvgPool, Flatten, Reshape, RNN, GRU, LSTM, Embedding,
                     SequencePool, MultiHeadAttention, PositionalEmbedding, TransformerBlock, TiedDense,
                     Add, Subtract, Multiply, Concatenate, Input, Abs)
from .layers import init
from .losses import Loss, MSE, CrossEntropy, BinaryCrossEntropy, Poisson, get_loss
from . import metrics, data
from .data import datasets, text
from .data.files import VERSION as __version__
from .data.preprocessing import Preprocessing
from .training import optim, callbacks, precision
from .training.callbacks import (History, Callback, EarlyStopping, ModelCheckpoint, ProgbarLogger,
                                 LearningRateScheduler, GradientStats)
from .training.checkpoint import CheckpointError
from .training.loop import TrainingDivergedError
from . import export
from .models import Model, Sequential, load, Perceptron
from .tools import plots
from .tools.gradcheck import gradcheck
from .tools.lr_finder import lr_find

__all__ = [
    # the backend switch, and the CPU threads under it
    "Backend", "get_backend", "set_threads",
    # layers
    "Layer", "Dense", "Dropout", "Residual", "BatchNorm", "LayerNorm", "Conv1D", "Conv2D", "ConvTranspose1D",
    "ConvTranspose2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "GlobalAvgPool", "Flatten", "Reshape",
    "RNN", "GRU", "LSTM", "Embedding", "SequencePool", "MultiHeadAttention", "PositionalEmbedding",
    "TransformerBlock", "TiedDense", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax", "Identity", "GELU", "SiLU",
    "ELU", "Softplus",
    # graphs: inputs and the merge layers
    "Input", "Add", "Subtract", "Multiply", "Concatenate", "Abs",
    # losses
    "Loss", "MSE", "CrossEntropy", "BinaryCrossEntropy", "Poisson", "get_loss",
    # models, loading, checking
    "Model", "Sequential", "load", "CheckpointError", "Perceptron", "gradcheck", "lr_find", "TrainingDivergedError",
    # callbacks
    "History", "Callback", "EarlyStopping", "GradientStats", "ModelCheckpoint", "ProgbarLogger",
    "LearningRateScheduler",
    # preprocessing
    "Preprocessing",
    # modules: optimizers and schedules, metrics, data, precision, initialisers, array helpers, plots, export
    "optim", "callbacks", "metrics", "datasets", "data", "text", "precision", "init", "functional", "plots",
    "export",
]

# -- the addresses modules had before the package had folders ----------------------------------------------------
# ``import nnkit.optim``, ``from nnkit.model import Sequential`` and pickles that name a class by its old module
# (``nnkit.model.Sequential``, ``nnkit.backend.get_backend``, ``nnkit.sklearn.MLPClassifier``) still work: each old
# name is the module at its new place, imported when first asked for (the scikit-learn estimators and the command
# line stay unimported until then).
_MOVED = {
    "backend": "backends", "architectures": "models.architectures", "bench": "tools.bench", "callbacks":
    "training.callbacks", "checkpoint": "training.checkpoint", "checks": "data.checks", "cli": "tools.cli",
    "datasets": "data.datasets", "distributed": "training.distributed", "explain": "tools.explain",
    "files": "data.files", "functional": "backends.functional", "init": "layers.init", "lr_finder":
    "tools.lr_finder", "model": "models.sequential", "optim": "training.optim", "perceptron": "models.perceptron",
    "plots": "tools.plots", "precision": "training.precision", "preprocessing": "data.preprocessing", "sklearn":
    "tools.sklearn", "step": "training.step", "text": "data.text",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``nnkit.<old name>`` and loads it as the module at its new address (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        # the import system returns whatever sys.modules holds under the name once this returns: the real module
        sys.modules[module.__name__] = importlib.import_module(f"{__name__}.{_MOVED[module.__name__.rpartition('.')[2]]}")


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())


def __getattr__(name):
    """``nnkit.sklearn`` (and the other old module names) imported when first asked for."""
    if name in _MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__ + ["__version__", "sklearn"])
