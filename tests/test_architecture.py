"""One place for each thing: a backend class per library, layers that carry their own ways out, the model
that holds the model — and a layer of the user's own that exports, explains and checks like a built-in."""
import ast
import importlib.util
import os
import pickle

import numpy as np
import pytest

import nnkit
from nnkit.backends import Backend, backend_classes
from tests.helpers import to_np

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nnkit")
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")


# -- a layer of the user's own: Y = X ⊙ s + t, s and t of shape (n,) -------------------------------------
class Affine(nnkit.Layer):
    """Y = X ⊙ s + t per feature (s, t of shape (n,)).  Backward: ds = Σ_batch dY ⊙ X, dt = Σ_batch dY,
    dX = dY ⊙ s."""

    param_names = ("s", "t")

    def __init__(self, n):
        super().__init__()
        self.n = n

    def build(self, backend, rng):
        super().build(backend, rng)
        s = backend.asarray(1.0 + 0.5 * rng.standard_normal(self.n), dtype=backend.dtype)
        self.params = {"s": s, "t": self.xp.zeros((self.n,), dtype=backend.dtype, device=backend.device)}

    def param_shapes(self):
        return {"s": (self.n,), "t": (self.n,)}

    def forward(self, X, train=True):
        if train:
            self._cache = X
        return X * self.params["s"] + self.params["t"]

    def backward(self, dY, need_dX=True):
        X = self._cache
        self.grads = {"s": self.xp.sum(dY * X, axis=0), "t": self.xp.sum(dY, axis=0)}
        return dY * self.params["s"] if need_dX else None

    def config(self):
        return {"type": "Affine", "n": self.n}

    # its ways out, declared here beside its forward and backward
    def to_onnx(self, g, x):
        return g.op("Add", [g.op("Mul", [x, g.param(self, "s")]), g.param(self, "t")], "affine")

    @classmethod
    def torch_module(cls, nn):
        if "_torch_class" not in cls.__dict__:
            class TorchAffine(nn.Module):
                def __init__(self, n):
                    super().__init__()
                    self.s = nn.Parameter(__import__("torch").ones(n))
                    self.t = nn.Parameter(__import__("torch").zeros(n))

                def forward(self, x):
                    return x * self.s + self.t

            cls._torch_class = TorchAffine
        return cls._torch_class

    def to_torch(self, ctx):
        m = self.torch_module(ctx.nn)(self.n).to(ctx.dtype)
        ctx.load(m.s, self.params["s"])
        ctx.load(m.t, self.params["t"])
        return m

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        return cls(m.s.shape[0]), {"s": ctx.array(m.s), "t": ctx.array(m.t)}, {}

    def explain_forward(self, report, i, X, Y):
        report.add(f"Y{i} = X ⊙ s{i} + t{i}   [{report.tag(i, self)}]", Y, f"Y{i}")

    def explain_backward(self, report, i, dY, need_dX):
        dX = self.backward(dY, need_dX)
        report.add(f"ds{i} = Σ_batch dY ⊙ X", self.grads["s"], f"ds{i}")
        if dX is not None:
            report.add(f"dX = dY ⊙ s{i}", dX, f"dX{i}")
        return dX


class Plain(nnkit.Layer):
    """Y = 2X, declaring no way out."""

    def forward(self, X, train=True):
        return 2.0 * X

    def backward(self, dY, need_dX=True):
        return 2.0 * dY


def _model(layer, backend="numpy", dtype="float64"):
    return nnkit.Sequential([nnkit.Dense(4, 5), layer, nnkit.Tanh(), nnkit.Dense(5, 3)], backend=backend,
                            dtype=dtype, seed=0)


X = np.random.default_rng(0).standard_normal((6, 4))
Y = np.array([0, 1, 2, 0, 1, 2])


def test_a_users_own_layer_is_registered_and_gradchecked_on_every_backend(make_backend):
    model = nnkit.Sequential([nnkit.Dense(4, 5), Affine(5), nnkit.Tanh(), nnkit.Dense(5, 3)],
                             backend=make_backend("float64"), seed=0)
    report = nnkit.gradcheck(model, X, Y, "cross_entropy")
    assert report < 1e-6 and set(report.errors) == {"0.W", "0.b", "1.s", "1.t", "3.W", "3.b"}
    assert nnkit.layers.LAYER_TYPES["Affine"] is Affine


def test_a_users_own_layer_exports_to_onnx_like_a_built_in():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _model(Affine(5))
    proto = model.export(None)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": X})[0]
    np.testing.assert_allclose(got, to_np(model.predict(X)), rtol=1e-12, atol=1e-12)
    assert any(n.op_type == "Mul" for n in proto.graph.node)


@needs_torch
def test_a_users_own_layer_goes_to_pytorch_and_back():
    import torch

    model = _model(Affine(5))
    net = model.to_torch()
    np.testing.assert_allclose(net(torch.from_numpy(X)).detach().numpy(), to_np(model.predict(X)), rtol=1e-12)
    back = nnkit.Sequential.from_torch(net, dtype="float64")
    assert isinstance(back.layers[1], Affine)
    np.testing.assert_allclose(to_np(back.predict(X)), to_np(model.predict(X)), rtol=1e-12)


def test_a_users_own_layer_explains_its_step_in_its_own_words():
    report = _model(Affine(5)).explain(X, Y, "cross_entropy")
    text = str(report)
    assert "Y1 = X ⊙ s1 + t1" in text and "ds1 = Σ_batch dY ⊙ X" in text
    np.testing.assert_allclose(report.values["ds1"], report.values["ds1"])  # a number kept for learners
    assert report.values["ds1"].shape == (5,)


def test_a_layer_without_ways_out_gets_a_clear_error_and_the_generic_explanation():
    model = _model(Plain())
    if importlib.util.find_spec("onnx") is not None:
        with pytest.raises(ValueError, match=r"layer 1 Plain\(\) cannot be exported to ONNX: Plain declares no ONNX "
                                             r"form .*exportable: Dense"):
            model.export(None)
    if HAS_TORCH:
        with pytest.raises(ValueError, match=r"layer 1 Plain\(\) has no PyTorch counterpart"):
            model.to_torch()
    text = str(model.explain(X, Y, "cross_entropy"))
    assert "Y1 = Plain(…)" in text and "dX of layer 1 = J1ᵀ·dY" in text


def test_an_inner_layer_without_an_onnx_form_is_named_by_its_path():
    pytest.importorskip("onnx")
    model = nnkit.Sequential([nnkit.Dense(4, 5), nnkit.Residual([nnkit.Dense(5, 5), Plain()]), nnkit.Dense(5, 3)],
                             dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"layer 1\.1 Plain\(\) cannot be exported"):
        model.export(None)


def test_every_built_in_layer_declares_its_ways_out():
    for name, cls in nnkit.layers.LAYER_TYPES.items():
        if cls.__module__.startswith("nnkit."):
            assert cls.to_onnx is not None and cls.to_torch is not None, name
            if HAS_TORCH:
                import torch

                assert cls.torch_classes(torch.nn), f"{name} takes no PyTorch module back"


def test_export_and_explain_do_not_dispatch_on_layer_type_names():
    """Exporters and explain ask the layer: nowhere do they compare a class name or test a layer's class."""
    layer_classes = set(nnkit.layers.LAYER_TYPES)
    for rel in ("export/onnx.py", "export/pytorch.py", "models/explanation.py"):
        tree = ast.parse(open(os.path.join(PKG, rel), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = any(isinstance(n, ast.Attribute) and n.attr == "__name__" for n in ast.walk(node))
                assert not names, f"{rel}:{node.lineno} compares a class name"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                used = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} | \
                    {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                assert not used & layer_classes, f"{rel}:{node.lineno} tests a layer's class"


# -- backends: a class per library --------------------------------------------------------------------------
def test_each_library_is_one_class_in_one_file():
    classes = backend_classes()
    for name in ("numpy", "cupy", "torch", "jax", "array_api_strict"):
        assert name in classes and issubclass(classes[name], Backend)
    files = {cls.__module__ for cls in classes.values()}
    assert len(files) == len(classes)  # one library a file
    assert type(nnkit.get_backend("numpy")).__name__ == "NumpyBackend"
    assert type(nnkit.get_backend(np)) is classes["numpy"]
    import array_api_strict

    assert type(nnkit.get_backend(array_api_strict)) is classes["array_api_strict"]


def test_no_branch_on_the_library_name_outside_the_factory():
    """``backend.name == "torch"`` and friends: nowhere in nnkit (the factory looks classes up by name)."""
    names = set(backend_classes())
    for folder, _, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            tree = ast.parse(open(path, encoding="utf-8").read())
            for node in ast.walk(tree):
                if not isinstance(node, ast.Compare):
                    continue
                sides = [node.left, *node.comparators]
                named = any(isinstance(s, ast.Attribute) and s.attr == "name" for s in sides)
                consts = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)}
                assert not (named and consts & names), f"{os.path.relpath(path, PKG)}:{node.lineno} branches on " \
                                                      "a backend's name"


def test_a_library_of_ones_own_is_one_subclass():
    import array_api_strict

    class StrictTwin(Backend):
        """array-api-strict under another name: all the base class's generic behaviour."""

        name = "strict_twin"

        @classmethod
        def load(cls, device, dtype):
            return cls(array_api_strict, array_api_strict.Device("CPU_DEVICE"), dtype, "CPU_DEVICE")

    model = nnkit.Sequential([nnkit.Dense(4, 3)], backend="strict_twin", seed=0, dtype="float64")
    ref = nnkit.Sequential([nnkit.Dense(4, 3)], backend="numpy", seed=0, dtype="float64")
    np.testing.assert_allclose(to_np(model.predict(X)), ref.predict(X), rtol=1e-12)
    assert "strict_twin" in backend_classes()


def test_backends_pickle_as_their_class_and_device():
    for name in ("numpy", "array_api_strict") + (("torch",) if HAS_TORCH else ()):
        be = nnkit.get_backend(name, dtype="float64")
        again = pickle.loads(pickle.dumps(be))
        assert type(again) is type(be) and again.device == be.device and again.dtype_name == "float64"


# -- the fused update is gone; one place writes parameters back -----------------------------------------
def test_no_fused_update_anywhere():
    for folder, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(folder, f), encoding="utf-8").read()
                assert "ctypes" not in text and "/proc/self/maps" not in text and "fused_update" not in text, f
    assert not hasattr(nnkit.optim.SGD(0.1), "fused_momentum")


def test_one_layer_object_twice_in_a_model_is_refused():
    """A layer keeps its own forward cache and gradients: the same object twice would give the second use's
    gradient only, silently.  Refused, naming both places."""
    shared = nnkit.Dense(4, 4)
    with pytest.raises(ValueError, match=r"layer 2 is the same Dense object as layer 0"):
        nnkit.Sequential([shared, nnkit.Tanh(), shared])
    with pytest.raises(ValueError, match=r"layer 1\.0 is the same Dense object as layer 0"):
        nnkit.Sequential([shared, nnkit.Residual([shared, nnkit.Tanh()])])


# -- the model holds the model ---------------------------------------------------------------------------------
def test_no_module_but_the_model_reaches_into_its_private_state():
    """The step, the loop, the data door, checkpoints, explain, gradcheck and the estimators go through the model's
    public names (``step_state``/``load_step_state``, ``forward_batch``, ``check_batch_shape``, ...)."""
    private = {n for n in vars(nnkit.Sequential) if n.startswith("_") and not n.startswith("__")}
    private |= {"_slots", "_buffer_slots", "_scaler", "_random_key", "_batch_shapes", "_out_shape", "_last_out",
                "_first_param_layer", "_ties", "_compiled_steps"}
    for folder, _, files in os.walk(PKG):
        for f in files:
            path = os.path.join(folder, f)
            if not f.endswith(".py") or os.path.relpath(path, PKG) == os.path.join("models", "sequential.py"):
                continue
            tree = ast.parse(open(path, encoding="utf-8").read())
            for node in ast.walk(tree):  # model._x, twin._x, self.model._x, cb.model._x ...
                if isinstance(node, ast.Attribute) and node.attr in private and (
                        isinstance(node.value, ast.Name) and node.value.id in ("model", "twin", "net", "clone")
                        or isinstance(node.value, ast.Attribute) and node.value.attr in ("model", "model_")):
                    raise AssertionError(f"{os.path.relpath(path, PKG)}:{node.lineno} reaches into the model "
                                         f"({node.attr})")


def test_public_names_keep_working():
    assert nnkit.optim.CosineLR is nnkit.training.schedules.CosineLR  # one public address: nnkit.optim
    assert issubclass(nnkit.optim.StepLR, nnkit.Callback)
    model = nnkit.Sequential.mlp([4, 8, 3], seed=0)
    assert [type(l).__name__ for l in model.layers] == ["Dense", "ReLU", "Dense"]
    cnn = nnkit.Sequential.cnn(64, [4], seed=0)
    assert cnn.input_shape == (64,) and type(cnn.layers[0]).__name__ == "Reshape"
    assert nnkit.backends.get_backend is nnkit.get_backend


def test_gradcheck_names_the_parameter_that_fails():
    class WrongBias(nnkit.Dense):
        """A Dense whose db is off by a factor of 2."""

        def backward(self, dZ, need_dX=True):
            dX = super().backward(dZ, need_dX)
            self.grads["b"] = 2.0 * self.grads["b"]
            return dX

    model = nnkit.Sequential([nnkit.Dense(4, 5), nnkit.Tanh(), WrongBias(5, 3)], dtype="float64", seed=0)
    report = nnkit.gradcheck(model, X, Y, "cross_entropy")
    assert report > 0.1 and report.worst == "2.b" and report.failing() == ["2.b"]
    assert report.errors["2.W"] < 1e-6 and "2.b" in str(report) and "above 1e-6" in str(report)


# -- nothing is lost: what version 0.1 wrote loads ------------------------------------------------------------------
def test_checkpoints_and_pickles_written_before_load():
    from nnkit.sklearn import MLPClassifier  # noqa: F401  (the pickle names it)

    want = np.load(os.path.join(DATA, "legacy_0.1_expected.npz"))
    with open(os.path.join(DATA, "legacy_0.1_sequential.pkl"), "rb") as f:
        model = pickle.load(f)
    np.testing.assert_allclose(to_np(model.predict(want["X"])), want["seq"], rtol=1e-6)
    loaded = nnkit.load(os.path.join(DATA, "legacy_0.1_checkpoint.npz"))
    np.testing.assert_allclose(to_np(loaded.predict(want["X"])), want["seq"], rtol=1e-6)
    assert loaded.epoch == 2 and loaded.optimizer.momentum == 0.9
    loaded.fit(want["X"], (want["X"][:, 0] > 0).astype(int), loss="cross_entropy", epochs=1, verbose=0)
    with open(os.path.join(DATA, "legacy_0.1_mlpclassifier.pkl"), "rb") as f:
        clf = pickle.load(f)
    np.testing.assert_allclose(clf.predict_proba(want["X"]), want["clf"], rtol=1e-6)


def test_a_schedule_that_ends_at_a_learning_rate_of_zero_saves_and_loads(tmp_path):
    model = nnkit.Sequential.mlp([4, 5, 3], seed=0)
    model.fit(X, Y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.1), epochs=2, verbose=0,
              callbacks=[nnkit.optim.CosineLR(2)])
    assert model.optimizer.lr == 0.0
    model.save(tmp_path / "m.npz")
    assert nnkit.load(tmp_path / "m.npz").optimizer.lr == 0.0
    with pytest.raises(ValueError, match="lr must lie in"):
        nnkit.optim.SGD(0.0)  # a user's own zero is still refused
