"""The training core's design: one step for every path, callbacks around a short loop, compiled steps,
no import circles."""
import ast
import os

import numpy as np
import pytest

import nnkit
from nnkit.training import loop as training
from nnkit.training import step as step_module

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nnkit")

try:
    import jax
except ImportError:  # pragma: no cover
    jax = None
needs_jax = pytest.mark.skipif(jax is None, reason="JAX is not installed (pip install 'jax[cpu]')")


# The package's folders, bottom to top: a module imports only modules of its own level or below, at the top of
# the file or inside a function, and the whole graph has no circle.  "" is the package root (nnkit/__init__.py).
LEVELS = [("backends",), ("layers",), ("losses", "metrics"), ("data",), ("training",), ("export",), ("models",),
          ("tools",), ("", "__main__")]


def level_of(module):
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LEVELS) if top in names)


def _modules(pkg=PKG):
    """``{dotted name: path}`` of every nnkit module, subpackages included ("" is nnkit/__init__.py,
    "layers" a package's __init__, "layers.core" a module in it)."""
    out = {}
    for folder, _, files in os.walk(pkg):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), pkg)[:-3].replace(os.sep, ".")
                out[rel[:-len("__init__")].rstrip(".") if rel.endswith("__init__") else rel] = os.path.join(folder, f)
    return out


def _imports(name, path, modules):
    """The nnkit modules module ``name`` imports, at the top or inside functions (lazy imports count too), the
    package root included ("from .. import load" imports nnkit/__init__.py)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "nnkit" or (node.module or "").startswith("nnkit."):
                stem = node.module[len("nnkit."):] if node.module != "nnkit" else ""
            else:
                continue
            for a in node.names:  # "from .layers import activations" names a module; "from .x import f" does not
                sub = f"{stem}.{a.name}" if stem else a.name
                targets.add(sub if sub in modules else stem)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "nnkit" or a.name.startswith("nnkit."):
                    targets.add(a.name[len("nnkit."):] if a.name != "nnkit" else "")
    return {t for t in targets if t in modules and t != name}


def import_graph(pkg=PKG):
    modules = _modules(pkg)
    return {m: _imports(m, path, modules) for m, path in modules.items()}


def upward_imports(graph):
    """``[(module, imported module)]`` for every import of a module on a higher level than the importer's."""
    return sorted((m, t) for m, targets in graph.items() for t in targets if level_of(t) > level_of(m))


def import_circle(graph):
    """The first import circle found, as a list of modules, or None."""
    state = {}

    def visit(m, path):
        if state.get(m) == "open":
            return path[path.index(m):] + [m]
        if state.get(m) == "done":
            return None
        state[m] = "open"
        for d in sorted(graph[m]):
            found = visit(d, path + [m])
            if found:
                return found
        state[m] = "done"
        return None

    for m in sorted(graph):
        found = visit(m, [])
        if found:
            return found
    return None


def test_every_module_has_a_level():
    for m in _modules():
        level_of(m)  # StopIteration for a top-level entry missing from LEVELS


def test_imports_run_downward_and_in_no_circle():
    graph = import_graph()
    assert upward_imports(graph) == []
    assert import_circle(graph) is None


def test_a_planted_upward_import_or_circle_is_caught(tmp_path):
    import shutil

    copy = tmp_path / "nnkit"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "*.npz"))
    core = copy / "layers" / "core.py"
    core.write_text(core.read_text(encoding="utf-8") + "\n\ndef _planted():\n    from ..models import Sequential\n",
                    encoding="utf-8")
    assert upward_imports(import_graph(str(copy))) == [("layers.core", "models")]
    root_use = copy / "tools" / "plots.py"  # a tool reaching for the package root is upward too
    root_use.write_text(root_use.read_text(encoding="utf-8") + "\n\ndef _planted():\n    import nnkit\n",
                        encoding="utf-8")
    assert ("tools.plots", "") in upward_imports(import_graph(str(copy)))
    sibling = copy / "losses.py"  # same level, but a circle: losses -> metrics -> losses
    metrics = copy / "metrics.py"
    sibling.write_text(sibling.read_text(encoding="utf-8") + "\n\ndef _a():\n    from . import metrics\n",
                       encoding="utf-8")
    metrics.write_text(metrics.read_text(encoding="utf-8") + "\n\ndef _b():\n    from . import losses\n",
                       encoding="utf-8")
    assert import_circle(import_graph(str(copy))) is not None


def test_the_top_of_the_package_has_at_most_a_dozen_entries():
    entries = sorted(e for e in os.listdir(PKG) if e != "__pycache__")
    assert len(entries) <= 12, entries


def test_every_module_says_its_place_in_its_first_line():
    for name, path in sorted(_modules().items()):
        if name != "__main__":
            doc = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read()))
            assert doc and len(doc.splitlines()[0]) > 20, name


def _data(n=203, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.3)


def test_no_function_of_the_training_loop_is_over_fifty_lines_and_fit_settings_travel_as_one_object():
    import ast
    import inspect

    from nnkit.training import loop
    from nnkit.training.settings import FitSettings

    with open(os.path.join(PKG, "training", "loop.py")) as f:
        tree = ast.parse(f.read())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50]
    assert not long, long
    fit_options = [p for p in inspect.signature(nnkit.Sequential.fit).parameters if p not in ("self", "X", "y")]
    assert fit_options == [f.name for f in __import__("dataclasses").fields(FitSettings)]  # one object, every option
    assert list(inspect.signature(loop._Run.__init__).parameters) == ["self", "model", "X", "y", "settings"]
    with pytest.raises(ValueError, match="validation_split must be a number in"):
        FitSettings(loss="mse", validation_split=1.5).checked()
    checked = FitSettings(loss="mse", early_stopping=True, callbacks=(nnkit.EarlyStopping(),)).checked()
    assert isinstance(checked.early_stopping, nnkit.EarlyStopping) and isinstance(checked.callbacks, list)
    assert checked.loss.name == "mse" and checked.log_every_n_steps == 0


def test_the_training_state_is_one_object_that_the_step_the_loop_checkpoints_and_ranks_share(tmp_path):
    import pickle

    from nnkit.training.state import ModelState

    model = nnkit.Sequential([nnkit.Dense(3, 4), nnkit.Dropout(0.5), nnkit.Dense(4, 2)], seed=0)
    assert isinstance(model.state, ModelState)
    X, y = np.random.default_rng(0).standard_normal((16, 3)), np.arange(16) % 2
    model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0)
    state = model.state
    assert state.epoch == model.epoch == 2 and state.optimizer is model.optimizer and state.rng is model.rng
    assert state.random_key is not None  # Dropout's device generator, reseeded each epoch
    assert set(state.params()) == set(model.state_dict()) - set(state.buffers())
    twin = pickle.loads(pickle.dumps(model))
    assert twin.state.random_key is None and twin.state.compiled == {} and twin.state.epoch == 2
    # the modules of training read and write the model's training state only through model.state
    for name in ("step.py", "loop.py", "checkpoint.py", "distributed.py"):
        tree = ast.parse(open(os.path.join(PKG, "training", name), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("rng", "epoch", "optimizer", "random_key",
                                                                 "loss_scaler", "compiled_steps") \
                    and isinstance(node.value, ast.Name) and node.value.id == "model":
                raise AssertionError(f"training/{name}:{node.lineno} reads model.{node.attr}, not model.state")


def test_train_step_fit_and_parallel_fit_share_one_step(monkeypatch):
    calls = []
    real = step_module.train_step

    def counted(*args, **kwargs):
        calls.append(kwargs.get("comm"))
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "train_step", counted)
    X, y = _data()
    model = nnkit.Sequential.mlp([6, 8, 3], seed=0)
    model.train_step(X[:10], y[:10], "cross_entropy", nnkit.optim.SGD(0.1))
    model.fit(X, y, loss="cross_entropy", epochs=1, batch_size=64, verbose=0)
    from test_gpu_paths import RecordingComm

    model.fit(X, y, loss="cross_entropy", epochs=1, batch_size=64, verbose=0, comm=RecordingComm(model.backend))
    assert len(calls) == 1 + 4 + 4 and calls[-1] is not None


def test_callbacks_can_be_passed_or_replaced(tmp_path, capsys):
    X, y = _data()
    events = []

    class Spy(nnkit.Callback):
        def on_train_begin(self):
            events.append("begin")

        def on_epoch_begin(self, epoch):
            events.append(f"epoch{epoch}")

        def on_batch_end(self):
            events.append("batch")

        def on_train_end(self):
            events.append("end")

    model = nnkit.Sequential.mlp([6, 8, 3], seed=0)
    ckpt = nnkit.ModelCheckpoint(tmp_path / "m.npz")
    halve = nnkit.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    quiet = nnkit.ProgbarLogger(verbose=0)  # replaces fit's own bar: nothing printed despite verbose=2
    model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.1), epochs=2, batch_size=64, verbose=2,
              callbacks=[Spy(), ckpt, halve, quiet])
    assert events == ["begin", "epoch0"] + ["batch"] * 4 + ["epoch1"] + ["batch"] * 4 + ["end"]
    assert nnkit.load(tmp_path / "m.npz").epoch == 2
    assert model.optimizer.lr == pytest.approx(0.05)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@needs_jax
def test_compiled_jax_step_equals_eager_traces_twice_and_schedules_act(monkeypatch):
    made = []
    real = training.make_step
    monkeypatch.setattr(training, "make_step", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    X, y = _data()  # 203 rows, batch 64: three full batches and a last one of 11
    weights, curves = {}, {}
    for compiled in (False, True):
        model = nnkit.Sequential.mlp([6, 16, 3], backend="jax", seed=0)
        h = model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2, clip_norm=1.0), epochs=4,
                      batch_size=64, verbose=0, compile=compiled, regularizer=nnkit.optim.L2(1e-4),
                      callbacks=[nnkit.optim.StepLR(1, 0.3)])
        weights[compiled], curves[compiled] = model.state_dict(), h["loss"]
    assert made[1].compiled and made[1].traces == 2  # full batch and last batch, once each, for all 4 epochs
    np.testing.assert_allclose(curves[True], curves[False], rtol=2e-5)
    for k in weights[False]:
        np.testing.assert_allclose(weights[True][k], weights[False][k], rtol=0, atol=2e-5)
    # a learning rate frozen at trace time would give other weights
    frozen = nnkit.Sequential.mlp([6, 16, 3], backend="jax", seed=0)
    frozen.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2, clip_norm=1.0), epochs=4,
               batch_size=64, verbose=0, compile=True, regularizer=nnkit.optim.L2(1e-4))
    assert max(np.max(np.abs(frozen.state_dict()[k] - weights[True][k])) for k in weights[True]) > 1e-3


@needs_jax
def test_compiled_jax_fit_reads_once_per_epoch_and_resumes(jax_reads, tmp_path):
    X, y = _data()
    model = nnkit.Sequential.mlp([6, 16, 3], backend="jax", seed=0)
    jax_reads.clear()
    model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=3, batch_size=64, verbose=0, compile=True)
    assert len(jax_reads) == 3
    model.save(tmp_path / "m.npz")  # step counts carried as arrays by the compiled step save as integers
    again = nnkit.load(tmp_path / "m.npz", backend="jax")
    assert {s["t"] for s in again.optimizer.state.values()} == {12}
    again.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=1, batch_size=64, verbose=0, compile=True)


def test_compile_elsewhere_runs_eagerly():
    X, y = _data()
    a, b = (nnkit.Sequential.mlp([6, 8, 3], seed=0) for _ in range(2))
    a.fit(X, y, loss="cross_entropy", epochs=2, verbose=0)
    b.fit(X, y, loss="cross_entropy", epochs=2, verbose=0, compile=True)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])


@pytest.mark.slow
def test_compiled_torch_step_equals_eager():
    pytest.importorskip("torch")
    X, y = _data(70)
    weights = {}
    for compiled in (False, True):
        model = nnkit.Sequential.mlp([6, 8, 3], backend="torch", seed=0)
        model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=3, batch_size=32,
                  verbose=0, compile=compiled, callbacks=[nnkit.optim.StepLR(1, 0.5)])
        weights[compiled] = model.state_dict()
    for k in weights[False]:
        np.testing.assert_allclose(weights[True][k], weights[False][k], rtol=0, atol=2e-5)
