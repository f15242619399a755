"""The public surface: ``import nnkit`` names what users use, each name at one address, no name hiding a module,
and every address of the days before the package had folders still working (code and pickles)."""
import importlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

import nnkit

# nnkit.__all__ as it stood before the package was laid out by role: every name keeps working
BEFORE = [
    "Backend", "get_backend", "Layer", "Dense", "Dropout", "Residual", "BatchNorm", "LayerNorm", "Conv1D", "Conv2D",
    "ConvTranspose1D", "ConvTranspose2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "GlobalAvgPool",
    "Flatten", "Reshape", "RNN", "GRU", "LSTM", "Embedding", "SequencePool", "MultiHeadAttention",
    "PositionalEmbedding", "TransformerBlock", "TiedDense", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax",
    "Identity", "GELU", "SiLU", "ELU", "Softplus", "Loss", "MSE", "CrossEntropy", "BinaryCrossEntropy", "Poisson",
    "get_loss", "Sequential", "gradcheck", "init", "optim", "functional", "datasets", "History", "Callback",
    "EarlyStopping", "TrainingDivergedError", "GradientStats", "ModelCheckpoint", "ProgbarLogger",
    "LearningRateScheduler", "callbacks", "lr_find", "metrics", "load", "CheckpointError", "Preprocessing",
    "precision", "Perceptron", "plots", "data",
]

# the module addresses of before and where each module lives now
OLD_MODULES = {
    "nnkit.backend": "nnkit.backends", "nnkit.model": "nnkit.models.sequential", "nnkit.optim": "nnkit.training.optim",
    "nnkit.callbacks": "nnkit.training.callbacks", "nnkit.step": "nnkit.training.step",
    "nnkit.checkpoint": "nnkit.training.checkpoint", "nnkit.precision": "nnkit.training.precision",
    "nnkit.distributed": "nnkit.training.distributed", "nnkit.datasets": "nnkit.data.datasets",
    "nnkit.text": "nnkit.data.text", "nnkit.preprocessing": "nnkit.data.preprocessing",
    "nnkit.files": "nnkit.data.files", "nnkit.checks": "nnkit.data.checks", "nnkit.functional":
    "nnkit.backends.functional", "nnkit.init": "nnkit.layers.init", "nnkit.architectures":
    "nnkit.models.architectures", "nnkit.perceptron": "nnkit.models.perceptron", "nnkit.plots": "nnkit.tools.plots",
    "nnkit.lr_finder": "nnkit.tools.lr_finder", "nnkit.explain": "nnkit.tools.explain", "nnkit.bench":
    "nnkit.tools.bench", "nnkit.cli": "nnkit.tools.cli",
}


@pytest.mark.parametrize("name", BEFORE)
def test_every_name_of_before_still_imports(name):
    exec(f"from nnkit import {name}", {})
    assert getattr(nnkit, name) is not None


def test_all_is_what_dir_shows_and_each_name_resolves():
    assert set(nnkit.__all__) >= set(BEFORE)
    assert set(dir(nnkit)) == set(nnkit.__all__) | {"__version__", "sklearn"}
    assert len(nnkit.__all__) == len(set(nnkit.__all__))
    for name in nnkit.__all__:
        getattr(nnkit, name)


def test_no_public_name_hides_a_module():
    """A public name that is also a module path is that module (``nnkit.gradcheck`` is the function and no
    module of that name exists at the top)."""
    for name in nnkit.__all__:
        try:
            spec = importlib.util.find_spec(f"nnkit.{name}")
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            assert importlib.import_module(f"nnkit.{name}") is getattr(nnkit, name), name
    assert callable(nnkit.gradcheck) and importlib.util.find_spec("nnkit.gradcheck") is None


def test_schedules_and_optimizers_have_one_address():
    from nnkit.training import schedules

    assert nnkit.optim.CosineLR is schedules.CosineLR
    assert not hasattr(nnkit.callbacks, "CosineLR")


@pytest.mark.parametrize("old, new", sorted(OLD_MODULES.items()))
def test_old_module_addresses_import_as_the_same_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_old_from_imports_work():
    from nnkit.model import Sequential
    from nnkit.optim import SGD
    from nnkit.training import TrainingDivergedError
    from nnkit.backend import host_copy

    assert Sequential is nnkit.Sequential and SGD is nnkit.optim.SGD
    assert TrainingDivergedError is nnkit.TrainingDivergedError and callable(host_copy)


def test_import_nnkit_loads_no_accelerator_library_nor_the_cli():
    code = ("import sys, nnkit; heavy = [m for m in ('torch', 'jax', 'cupy', 'sklearn', 'matplotlib', "
            "'nnkit.tools.cli', 'nnkit.tools.bench', 'nnkit.tools.sklearn') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _old_pickle(obj):
    """``obj`` pickled as it was before the folders: every class named by its old module (protocol 0 names each
    global as text, so the module can be rewritten)."""
    data = pickle.dumps(obj, protocol=0).decode("latin-1")
    for old, new in OLD_MODULES.items():
        data = data.replace(f"c{new}\n", f"c{old}\n")
    return data.encode("latin-1")


def test_a_model_pickled_under_the_old_addresses_loads():
    X = np.random.default_rng(0).normal(size=(8, 3))
    model = nnkit.Sequential.mlp([3, 5, 2], seed=0, dtype="float64")
    model.fit(X, np.arange(8) % 2, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=1, verbose=0)
    data = _old_pickle(model)
    assert b"cnnkit.model\nSequential" in data and b"nnkit.models" not in data
    again = pickle.loads(data)
    assert type(again) is nnkit.Sequential
    np.testing.assert_array_equal(again.predict(X), model.predict(X))


def test_old_sklearn_pickle_and_pickled_torch_modules_load():
    pytest.importorskip("sklearn")
    from nnkit.sklearn import MLPClassifier

    X = np.random.default_rng(0).normal(size=(20, 3))
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, np.arange(20) % 2)
    data = pickle.dumps(clf, protocol=0).decode("latin-1").replace("cnnkit.tools.sklearn\n", "cnnkit.sklearn\n")
    data = data.replace("cnnkit.models.sequential\n", "cnnkit.model\n").encode("latin-1")
    np.testing.assert_array_equal(pickle.loads(data).predict(X), clf.predict(X))
    torch = pytest.importorskip("torch")
    import io

    model = nnkit.Sequential([nnkit.Dense(3, 4), nnkit.Residual([nnkit.Dense(4, 4), nnkit.ReLU()]),
                              nnkit.Reshape((2, -1)), nnkit.Flatten()], seed=0, dtype="float64")
    module = model.to_torch()
    buf = io.BytesIO()
    torch.save(module, buf)  # its own classes are named nnkit.export.pytorch.Residual/.Reshape, as before
    assert b"nnkit.export.pytorch" in buf.getvalue()
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    x = torch.tensor(np.random.default_rng(1).normal(size=(2, 3)))
    torch.testing.assert_close(again(x), module(x))


def test_the_run_counts_the_tests_skipped_for_want_of_pytorch():
    from types import SimpleNamespace

    from conftest import skipped_for_torch

    reasons = ["torch not installed", "could not import 'torch': No module named 'torch'",
               "backend 'torch' needs PyTorch, which is not installed: pip install torch",
               "backend 'cupy' needs CuPy, which is not installed", "torch-cuda: PyTorch sees no CUDA device"]
    reports = [SimpleNamespace(longrepr=("tests/x.py", 1, f"Skipped: {r}")) for r in reasons]
    assert [skipped_for_torch(r) for r in reports] == [True, True, True, False, False]
