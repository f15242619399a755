"""The torch step as CUDA graphs (``fit(..., compile=True)`` on a CUDA device): what can be checked on a CPU.

``nnkit.backends.torch.GraphedFunction`` keeps static inputs per signature, copies each call's arguments into
them, replays, and hands back copies of the outputs that are not its own inputs.  On the CPU the graph mechanism
is replaced by :class:`ReplayingGraphs`, which does what a graph does with memory — a capture records without
changing any argument, a replay writes the same output tensors again — by running the function: so everything
around the graph (signatures, static buffers, learning rates as copies, the last short batch, parameters never
copied, outputs that outlive a replay) is checked here.  The capture itself runs in ``tests/test_gpu.py``
(``test_torch_cuda_graphed_fit_equals_the_eager_fit``) on a GPU.
"""
import contextlib

import numpy as np
import pytest

import nnkit
from nnkit.backends import torch as torch_backend
from nnkit.functional import tree_flatten
from tests.helpers import to_np

torch = pytest.importorskip("torch")


def _tensors(tree):
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


class ReplayingGraphs:
    """CudaGraphs' stand-in on the CPU.  ``capture`` runs ``fn`` once and puts every argument tensor back as it
    was (a capture records; nothing runs); ``replay`` runs ``fn`` again on the same static arguments and writes
    each new output into the tensor the capture returned (a graph's outputs live at fixed addresses)."""

    def __init__(self):
        self.replays, self.generators = 0, []

    def side_stream(self):
        return contextlib.nullcontext()

    def capture(self, fn, args, generators):
        self.generators += generators
        saved = [(x, x.clone()) for x in _tensors(args)]
        out = fn(*args)
        for x, before in saved:
            x.copy_(before)
        return (fn, args, out), out

    def replay(self, graph):
        fn, args, out = graph
        self.replays += 1
        for old, new in zip(_tensors(out), _tensors(fn(*args))):
            if old is not new:
                old.copy_(new)


@pytest.fixture
def graphs(monkeypatch):
    """``compile=True`` on torch-CPU runs the graphed step with :class:`ReplayingGraphs` (not torch.compile)."""
    made = []

    def compile(self, fn):
        g = torch_backend.GraphedFunction(fn, ReplayingGraphs())
        made.append(g)
        return g
    monkeypatch.setattr(torch_backend.TorchBackend, "compile", compile)
    return made


def _data(n=203, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.3), rng.uniform(0.2, 2.0, size=n)


def _model(norm=True):
    return nnkit.Sequential([nnkit.Dense(6, 16)] + [nnkit.BatchNorm(16)] * norm + [nnkit.ReLU(), nnkit.Dense(16, 3)],
                            backend="torch", seed=0)


def _fit(model, X, y, w, optimizer, **kw):
    return model.fit(X, y, loss="cross_entropy", optimizer=optimizer, epochs=4, batch_size=64, verbose=0,
                     regularizer=nnkit.optim.L2(1e-4), validation_split=0.2, sample_weight=w,
                     metrics=["accuracy"], callbacks=[nnkit.optim.StepLR(1, 0.5)], **kw)


@pytest.mark.parametrize("optimizer, norm", [(lambda: nnkit.optim.SGD(0.05, momentum=0.9, clip_norm=1.0), True),
                                             (lambda: nnkit.optim.Adam(0.01), False)], ids=["sgd-momentum", "adam"])
def test_a_graphed_fit_equals_the_eager_fit(graphs, optimizer, norm):
    """162 training rows, batch 64: two signatures (64 rows, and the last 34), each warmed up twice, captured once
    and replayed from then on; BatchNorm's statistics, the moments and step counts, a learning rate halved every
    epoch (a copy into the graph, not a new capture), L2, sample weights and the metrics as in the eager fit.
    (Adam without BatchNorm: before a BatchNorm a bias's true gradient is 0, and Adam turns its round-off — here
    the step count as a device array instead of a Python int — into steps of size lr.)"""
    X, y, w = _data()
    eager, graphed = _model(norm), _model(norm)
    h_eager = _fit(eager, X, y, w, optimizer())
    h_graphed = _fit(graphed, X, y, w, optimizer(), compile=True)
    (g,) = graphs
    assert g.captures == 2 and len(g.entries) == 2
    assert g.graphs.replays == 3 * 4 - 2 * g.warmup  # 3 steps an epoch: 12, less the warm-ups, 2 per shape
    for k in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(h_graphed[k], h_eager[k], rtol=2e-5, atol=1e-6, err_msg=k)
    for k, v in eager.state_dict().items():
        np.testing.assert_allclose(to_np(graphed.state_dict()[k]), to_np(v), rtol=1e-4, atol=2e-6, err_msg=k)


def test_parameters_are_the_graphs_own_tensors_and_are_never_copied(graphs):
    """After the capture the model holds the graph's static parameter tensors (the step updates them in place), so
    a replay copies the batch in and nothing else: the learning rate is a fill, the parameters stay put."""
    X, y, w = _data()
    model, opt = _model(), nnkit.optim.SGD(0.1)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=64, verbose=0, compile=True,
              shuffle=False)
    (g,) = graphs
    entry = next(e for e in g.entries.values() if e["graph"] is not None and e["static"][-5].shape[0] == 64)
    own = entry["own"]
    for p in model.params().values():
        assert id(p) in own
    copies = []
    for x in entry["static"]:
        if isinstance(x, torch.Tensor):
            real = x.copy_
            x.copy_ = lambda src, real=real, x=x: copies.append(x) or real(src)
    before = {k: to_np(p).copy() for k, p in model.params().items()}
    model.fit(X[:128], y[:128], loss="cross_entropy", optimizer=opt, epochs=1, batch_size=64, verbose=0,
              compile=True, shuffle=False)
    # two batches: X, its targets and BatchNorm's two running statistics (new arrays each step) copied in; the
    # parameters and the step counts (updated in place) never
    copied = {id(x) for x in copies}
    assert len(copies) == 2 * 4 and len(copied) == 4
    assert {id(entry["static"][-5]), id(entry["static"][-4])} <= copied
    assert copied.isdisjoint({id(p) for p in model.params().values()})
    assert copied.isdisjoint({id(s["t"]) for s in opt.state.values()})
    assert all(not np.array_equal(to_np(p), before[k]) for k, p in model.params().items())


def test_dropout_draws_from_a_generator_the_graph_registers(graphs):
    """A model that draws (Dropout) hands its torch.Generator to the capture, which registers it with the graph so
    that each replay draws new masks; the graphed fit trains."""
    X, y, _ = _data()
    model = nnkit.Sequential([nnkit.Dense(6, 32), nnkit.ReLU(), nnkit.Dropout(0.3), nnkit.Dense(32, 3)],
                             backend="torch", seed=0)
    h = model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(0.01), epochs=8, batch_size=64,
                  verbose=0, compile=True)
    (g,) = graphs
    assert g.captures == 2 and g.graphs.generators == [model.random_key] * 2
    assert h["loss"][-1] < 0.8 * h["loss"][0]


def test_outputs_outlive_the_next_replay_and_floats_are_inputs():
    """An output that is not one of the graph's inputs is handed back as a copy (the next replay overwrites the
    graph's own); a Python float is an input tensor the graph reads, so a new value needs no new capture."""
    def fn(p, x, lr):
        p -= lr * x  # in place: the returned p is the graph's own input
        return p, {"sum": (p * x).sum()}

    g = torch_backend.GraphedFunction(fn, ReplayingGraphs())
    p = torch.zeros(3)
    outs = []
    for i in range(5):
        p, stats = g(p, torch.full((3,), float(i)), 0.5 + i)
        outs.append(stats["sum"])
    assert g.captures == 1 and len(g.entries) == 1
    expected, q = [], np.zeros(3)
    for i in range(5):
        q = q - (0.5 + i) * i
        expected.append(float((q * i).sum()))
    np.testing.assert_allclose([float(o) for o in outs], expected)
    assert p is g.entries[next(iter(g.entries))]["static"][0]  # the step's state is the graph's own tensor


def test_a_step_that_cannot_be_captured_runs_eagerly_with_a_warning():
    class Refuses(ReplayingGraphs):
        def capture(self, fn, args, generators):
            raise RuntimeError("operation not permitted when stream is capturing")

    g = torch_backend.GraphedFunction(lambda x, a: x * a, Refuses())
    with pytest.warns(RuntimeWarning, match="could not be captured as a CUDA graph"):
        results = [float(g(torch.ones(()), float(i))) for i in range(5)]
    assert results == [0.0, 1.0, 2.0, 3.0, 4.0] and g.captures == 0


def test_the_cuda_backend_compiles_to_graphs_and_the_cpu_to_torch_compile():
    be = nnkit.get_backend("torch")
    assert not isinstance(be.compile(lambda x: x), torch_backend.GraphedFunction)
    meta = nnkit.get_backend("torch", device="meta")
    assert not isinstance(meta.compile(lambda x: x), torch_backend.GraphedFunction)


def test_the_cuda_calls_it_makes_exist_in_this_torch():
    """What CudaGraphs calls on a GPU, checked against the installed PyTorch's API (the GPU run itself is in
    tests/test_gpu.py): the capture context with its error mode, generator registration, generator state."""
    import inspect

    assert "capture_error_mode" in inspect.signature(torch.cuda.graph).parameters
    if torch.backends.cuda.is_built():  # a CPU-only build's CUDAGraph is an empty stand-in
        for name in ("register_generator_state", "replay"):
            assert callable(getattr(torch.cuda.CUDAGraph, name, None)), name
    for name in ("get_state", "set_state"):
        assert callable(getattr(torch.Generator, name, None)), name
    assert callable(torch.cuda.Stream) and callable(torch.ops.aten.threshold_backward)
