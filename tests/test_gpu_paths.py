"""The GPU paths, proven without a GPU wherever a CPU can show it; JAX as a backend; no host read in a step.

* communicators only ever see the model's arrays (a recording communicator, numpy and torch);
* torch: no tensor is built from a Python scalar inside a step (the blocking host-to-device copy on CUDA);
* torch's ``meta`` device (every data read raises) runs ``train_step`` and a whole ``fit`` epoch's steps;
* JAX: exactly one device-to-host read per epoch of ``fit``; ``to``, pickling, float64, ``ready``;
* devices normalised once (indices, ``cuda``/``cuda:N``), node-local ranks, the cuBLAS probe, the MPI
  staging rule, writable host copies, scikit-learn's ``score``/``predict`` with device inputs.
"""
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

import nnkit
from nnkit.backends import torch as torch_backend
from nnkit.training import distributed
from nnkit.backends import cuda_index, host_copy, local_rank

from helpers import to_np

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None
try:
    import jax
except ImportError:  # pragma: no cover
    jax = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
needs_jax = pytest.mark.skipif(jax is None, reason="JAX is not installed (pip install 'jax[cpu]')")


def _data(n=96, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y


# -- communicators receive the model's arrays only -------------------------------------------------
class RecordingComm(distributed.Communicator):
    """Rank 0 of 2 whose partner contributes nothing: records every array and refuses foreign ones."""

    rank, size = 0, 2

    def __init__(self, backend):
        self.backend, self.seen = backend, []

    def _check(self, x, what):
        if not self.backend.owns(x):
            raise TypeError(f"{what} got a {type(x).__module__}.{type(x).__name__}, not a {self.backend.name} array")
        self.seen.append((what, type(x)))

    def allreduce(self, x):
        self._check(x, "allreduce")
        return x

    def broadcast(self, x, root=0):
        self._check(x, "broadcast")
        return x

    def barrier(self):
        pass


@pytest.mark.parametrize("name", ["numpy", pytest.param("torch", marks=needs_torch)])
def test_communicators_receive_only_the_models_arrays(name):
    X, y = _data()
    model = nnkit.Sequential.mlp([5, 8, 3], backend=name, dtype="float64", seed=0)
    comm = RecordingComm(model.backend)
    model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=32, verbose=0, comm=comm,
              validation_split=0.25)
    kinds = {w for w, _ in comm.seen}
    assert kinds == {"allreduce", "broadcast"}
    assert len(comm.seen) > 6


# -- torch: no tensor from a host scalar inside a step ----------------------------------------------
@needs_torch
def test_torch_step_builds_no_tensor_from_a_python_scalar():
    from torch.overrides import TorchFunctionMode

    factories = {"asarray", "tensor", "as_tensor", "scalar_tensor", "full", "from_numpy"}

    class Record(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in factories:
                self.made.append(func.__name__)
            return func(*args, **(kwargs or {}))

    X, y = _data()
    be = nnkit.get_backend("torch", dtype="float32")
    Xt = be.asarray(X, dtype=be.dtype)
    for loss, layers, target in (
        ("cross_entropy", [nnkit.Dense(5, 8), nnkit.ReLU(), nnkit.Dense(8, 3)], None),
        ("binary_cross_entropy", [nnkit.Dense(5, 8), nnkit.LeakyReLU(0.1), nnkit.Dense(8, 1)], "bce"),
    ):
        model = nnkit.Sequential(layers, backend=be, seed=0)
        T = nnkit.data.as_target(model, y if target is None else (y > 0).astype(np.float32), X.shape[0], nnkit.get_loss(loss))
        opt = nnkit.optim.Adam(1e-2, clip_norm=1.0)
        model.train_step(Xt, T, loss, opt, check_input=False, regularizer=nnkit.optim.L2(1e-3))  # warm-up
        with Record() as rec:
            for _ in range(3):
                model.train_step(Xt, T, loss, opt, check_input=False, regularizer=nnkit.optim.L2(1e-3))
        assert rec.made == [], f"{loss}: tensors built from host data inside a step: {rec.made}"


# -- torch meta device: any data read raises ---------------------------------------------------------
@needs_torch
def test_train_step_and_fit_epoch_steps_run_on_the_meta_device():
    X, y = _data()
    be = nnkit.get_backend("torch", device="meta", dtype="float32")
    model = nnkit.Sequential.mlp([5, 16, 3], backend=be, seed=0)
    Xm = be.asarray(X, dtype=be.dtype)
    T = nnkit.data.as_target(model, y, X.shape[0], nnkit.CrossEntropy())
    opt = nnkit.optim.Adam(1e-2, clip_norm=5.0)
    for _ in range(3):
        value = model.train_step(Xm, T, "cross_entropy", opt, check_input=False)
    assert value.device.type == "meta"
    with pytest.raises(NotImplementedError, match="meta"):
        be.to_numpy(value)  # the device really refuses reads

    steps = []
    sgd = nnkit.optim.SGD(0.1, momentum=0.9)
    real_apply = sgd.apply
    sgd.apply = lambda *a, **k: steps.append(1) or real_apply(*a, **k)
    with pytest.raises(NotImplementedError, match="meta"):  # the epoch's one read, after every step
        model.fit(X, y, loss="cross_entropy", optimizer=sgd, epochs=3, batch_size=16, verbose=0)
    assert len(steps) == 6  # 96 rows / 16: all of the first epoch's steps ran without reading anything


# -- JAX ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_jax
def test_jax_fit_reads_the_device_once_per_epoch(jax_reads):
    X, y = _data()
    model = nnkit.Sequential.mlp([5, 16, 3], backend="jax", seed=0)
    jax_reads.clear()
    history = model.fit(X, y, loss="cross_entropy", epochs=4, batch_size=16, verbose=0, validation_split=0.2)
    assert len(history["loss"]) == 4
    assert len(jax_reads) == 4, [tuple(r.shape) for r in jax_reads]


@needs_jax
def test_jax_model_moves_pickles_and_trains_again():
    X, y = _data()
    model = nnkit.Sequential.mlp([5, 8, 3], backend="jax", dtype="float64", seed=0)
    model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=32, verbose=0)
    twin = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(to_np(twin.predict(X)), to_np(model.predict(X)))
    model.to("numpy")  # optimizer moments must arrive writable
    model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=1, batch_size=32, verbose=0)
    for state in model.optimizer.state.values():
        for name, v in state.items():
            if name != "t":
                assert isinstance(v, np.ndarray) and v.flags.writeable


@needs_jax
def test_jax_trains_like_numpy_and_resumes(tmp_path):
    X, y = _data()
    curves, weights = {}, {}
    for name in ("numpy", "jax"):
        model = nnkit.Sequential.mlp([5, 8, 3], backend=name, dtype="float64", seed=0)
        h = model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=3, batch_size=32, verbose=0,
                      checkpoint=tmp_path / f"{name}.npz")
        curves[name], weights[name] = h["loss"], model.state_dict()
        again = nnkit.load(tmp_path / f"{name}.npz", backend=name)
        again.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=5, batch_size=32, verbose=0,
                  checkpoint=tmp_path / f"{name}.npz", resume=True)
        weights[name + "-resumed"] = again.state_dict()
    np.testing.assert_allclose(curves["jax"], curves["numpy"], rtol=1e-12)
    for k in weights["numpy"]:
        np.testing.assert_allclose(weights["jax"][k], weights["numpy"][k], rtol=0, atol=1e-12)
        np.testing.assert_allclose(weights["jax-resumed"][k], weights["numpy-resumed"][k], rtol=0, atol=1e-12)


@needs_jax
def test_jax_ready_takes_the_fast_path_and_names_resolve():
    be = nnkit.get_backend("jax", dtype="float32")
    x = be.asarray(np.ones((2, 3)), dtype=be.dtype)
    assert be.ready(x)
    assert nnkit.get_backend(jax.numpy).name == "jax" and nnkit.get_backend(jax).name == "jax"
    assert nnkit.get_backend("jax", device="cpu:0").device == be.device


@needs_jax
def test_jax_float64_without_64_bit_mode_is_refused():
    code = ("import nnkit\n"
            "try:\n"
            "    nnkit.Sequential.mlp([2, 3], backend='jax', dtype='float64')\n"
            "except ValueError as e:\n"
            "    print('refused:', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "refused:" in out.stdout and "jax_enable_x64" in out.stdout, out.stdout + out.stderr


@needs_jax
def test_jax_sklearn_estimator_agrees_with_numpy():
    pytest.importorskip("sklearn")
    from nnkit.sklearn import MLPClassifier

    X, y = _data(120)
    preds = {}
    for name in ("numpy", "jax"):
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0, backend=name)
        with pytest.warns(Warning):
            clf.fit(X, y)
        preds[name] = clf.predict_proba(X)
    np.testing.assert_allclose(preds["jax"], preds["numpy"], rtol=0, atol=1e-10)


@pytest.mark.slow
@needs_jax
def test_cli_trains_on_jax(tmp_path, capsys):
    from nnkit.tools.cli import main

    assert main(["train", "--data", "xor", "--hidden", "8", "--epochs", "3", "--backend", "jax", "-q"]) == 0
    assert "on jax" in capsys.readouterr().out


# -- devices, ranks, probes ------------------------------------------------------------------------------
def test_cuda_device_specs_are_normalised_once():
    current = lambda: 1  # noqa: E731
    assert cuda_index(None, current) == 1
    assert cuda_index("cuda", current) == 1
    assert cuda_index("cuda:0", current) == 0
    assert cuda_index("gpu:2", current, 4) == 2
    assert cuda_index(3, current) == 3
    assert cuda_index(types.SimpleNamespace(id=2), current) == 2
    for bad in ("cpu", "cuda:x", True, -1):
        with pytest.raises(ValueError):
            cuda_index(bad, current)
    with pytest.raises(ValueError, match="does not exist"):
        cuda_index("cuda:2", current, 2)


@needs_torch
def test_torch_cuda_device_gets_its_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torch_backend.torch_device("cuda") == torch.device("cuda:0")
    assert torch_backend.torch_device(1) == torch.device("cuda:1")
    assert torch_backend.torch_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="does not exist"):
        torch_backend.torch_device("cuda:5")


def test_node_local_rank_comes_from_the_launcher():
    assert local_rank(5, 4, {"OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == 1
    assert local_rank(5, 4, {"SLURM_LOCALID": "3"}) == 3
    assert local_rank(5, 4, {"MPI_LOCALRANKID": "0"}) == 0
    assert local_rank(5, 4, {}) == 1  # rank mod GPUs per node


def test_cupy_without_cublas_fails_at_construction(monkeypatch):
    class Device:
        def __init__(self, i=0):
            self.id = i

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def ones(*a, **k):
        raise OSError("libcublas.so.12: cannot open shared object file")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDevice=lambda: 0))
    fake.ones, fake.float32 = ones, "float32"
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(RuntimeError, match=r"cannot run a matrix product.*libcublas.*pip install"):
        nnkit.get_backend("cupy")


def test_mpi_staging_rule():
    class FakeComm:
        def __init__(self):
            self.buffers = []

        def Allreduce(self, _inplace, buf, op):
            self.buffers.append(type(buf))
            buf *= 2

        def Bcast(self, buf, root):
            self.buffers.append(type(buf))

    comm = distributed.MPICommunicator.__new__(distributed.MPICommunicator)
    comm.MPI = types.SimpleNamespace(IN_PLACE=None, SUM="sum")
    comm.comm, comm.cuda_aware, comm.rank, comm.size = FakeComm(), True, 0, 2
    out = comm.allreduce(np.ones(3))
    assert comm.comm.buffers[-1] is np.ndarray and np.all(out == 2)
    if torch is not None:  # torch tensors are staged through NumPy even on a CUDA-aware MPI
        t = comm.allreduce(torch.ones(3, dtype=torch.float64))
        assert comm.comm.buffers[-1] is np.ndarray
        assert isinstance(t, torch.Tensor) and torch.all(t == 2)


@pytest.mark.parametrize("make", ["torch", "jax", "strict"])
def test_host_copies_are_writable(make):
    if make == "torch":
        if torch is None:
            pytest.skip("PyTorch is not installed")
        x = torch.arange(3.0)
    elif make == "jax":
        if jax is None:
            pytest.skip("JAX is not installed")
        x = jax.numpy.arange(3.0)
    else:
        import array_api_strict as xps

        x = xps.arange(3.0, device=xps.Device("device1"))
    h = host_copy(x)
    assert isinstance(h, np.ndarray) and h.flags.writeable
    h[0] = 7.0
    assert to_np(x)[0] == 0.0  # a copy, not a view


# -- scikit-learn with device inputs -----------------------------------------------------------------
def test_sklearn_score_and_string_predict_with_device_inputs():
    pytest.importorskip("sklearn")
    import array_api_strict as xps
    from nnkit.sklearn import MLPClassifier, MLPRegressor

    X, y = _data(120)
    dev = xps.Device("device1")  # arrays there refuse np.asarray, as CuPy arrays and CUDA tensors do
    be = nnkit.get_backend("array_api_strict", device=dev, dtype="float64")
    Xd = xps.asarray(X, device=dev)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0, backend=be)
    with pytest.warns(Warning):
        clf.fit(Xd, xps.asarray(y, device=dev))
    score = clf.score(Xd, xps.asarray(y, device=dev))
    assert score == pytest.approx(np.mean(to_np(clf.predict(Xd)) == y))
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=30, random_state=0, backend=be)
    with pytest.warns(Warning):
        reg.fit(Xd, xps.asarray(X[:, 0], device=dev))
    from sklearn.metrics import r2_score

    r2 = reg.score(Xd, xps.asarray(X[:, 0], device=dev))
    assert r2 == pytest.approx(r2_score(X[:, 0], to_np(reg.predict(Xd))))

    names = np.array(["cat", "dog", "emu"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0, backend=be)
    with pytest.warns(Warning):
        clf.fit(Xd, names)
    pred = clf.predict(Xd)
    assert isinstance(pred, np.ndarray) and set(pred) <= {"cat", "dog", "emu"}
    assert clf.score(Xd, names) == pytest.approx(np.mean(pred == names))
