"""GPU runs: everything here needs a CUDA GPU and skips with the reason without one.

Run them on a GPU machine with::

    pytest -m gpu tests/test_gpu.py

* a torch-CUDA ``fit`` under ``torch.cuda.set_sync_debug_mode("error")`` (any synchronising call raises);
* ``compile=True`` on torch-CUDA: the step captured as CUDA graphs, equal to the eager fit, its replays never
  synchronising (times printed); the epoch table's CUDA rows (printed);
* a CuPy ``fit`` on the *last* visible GPU, with every parameter, gradient and optimizer moment checked to
  live on that GPU;
* a one-rank NCCL ``fit``; the MPI path with CuPy buffers (two ranks sharing the GPU, equal to one process);
* ``nnkit bench`` writing its GPU rows (float32, mixed_bfloat16, mixed_float16 and tf32);
* mixed precision: torch-CUDA ``mixed_bfloat16``/``mixed_float16``/``tf32`` steps under the sync debug mode,
  CuPy float16 (and bfloat16 where CuPy has it, else the clear error) and tf32 fits;
* convolution: a CuPy and a torch-CUDA CNN fit (the digits as 8×8 images), equal to NumPy's;
* recurrent layers: CuPy and torch-CUDA bidirectional GRU and LSTM fits equal to NumPy's;
* streaming: a CuPy and a torch-CUDA fit from a memory-mapped file equal to the in-memory fit, and on
  torch-CUDA no synchronisation inside the streamed epoch (sync debug mode "error");
* the backend classes on CUDA: TorchBackend pickled by class and device, its TF32 switch restored, side-stream
  copies complete; a CUDA model's ``to_torch()`` and ``explain()``.
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import nnkit

pytestmark = pytest.mark.gpu
HERE = os.path.dirname(os.path.abspath(__file__))


def _cupy():
    try:
        nnkit.get_backend("cupy")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    import cupy

    return cupy


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


def _float64_gpu(target):
    """The float64 backend of ``target`` ("cupy" or "torch-cuda"), or a skip with the reason."""
    if target == "cupy":
        _cupy()
        return nnkit.get_backend("cupy", dtype="float64")
    _torch_cuda()
    return nnkit.get_backend("torch", device="cuda", dtype="float64")


def _data(n=512, d=20, k=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, :k] @ rng.normal(size=(k,)) > 0).astype(np.int64) + (X[:, k] > 0.5)
    return X, y


def test_torch_cuda_fit_never_synchronises_inside_an_epoch():
    torch = _torch_cuda()
    X, y = _data()
    model = nnkit.Sequential.mlp([20, 64, 64, 3], backend=nnkit.get_backend("torch", device="cuda"), seed=0)
    be = model.backend
    Xd, Td = be.asarray(X, dtype=be.dtype), nnkit.data.as_target(model, y, X.shape[0], nnkit.CrossEntropy())
    opt = nnkit.optim.Adam(1e-3, clip_norm=1.0)
    model.train_step(Xd, Td, "cross_entropy", opt, check_input=False)  # warm-up: lazy CUDA initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            model.train_step(Xd, Td, "cross_entropy", opt, check_input=False, regularizer=nnkit.optim.L2(1e-4))
    finally:
        torch.cuda.set_sync_debug_mode("default")

    class SyncsAreErrors(nnkit.Callback):  # after fit's input checks, before the first step
        def on_train_begin(self):
            torch.cuda.set_sync_debug_mode("error")

    steps = []
    real = opt.apply
    opt.apply = lambda *a, **k: steps.append(1) or real(*a, **k)
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):  # the epoch's one read is the first sync
            model.fit(Xd, Td, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=64, verbose=0,
                      shuffle=False, callbacks=[SyncsAreErrors()])
    finally:
        torch.cuda.set_sync_debug_mode("default")
        del opt.apply
    assert len(steps) == 512 // 64
    history = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=3, batch_size=64, verbose=0)
    assert history["loss"][-1] < history["loss"][0]


def test_torch_cuda_graphed_fit_equals_the_eager_fit():
    """``compile=True`` on CUDA: the step captured as CUDA graphs (two: the full batches and the last), no capture
    refused, the fit equal to the eager one; per-step times of both printed (the S network, batch 64)."""
    import warnings

    from nnkit.backends.torch import GraphedFunction

    torch = _torch_cuda()
    X, y = _data(n=12800, d=64, k=10)
    be = nnkit.get_backend("torch", device="cuda")

    def fit(compile, epochs):
        model = nnkit.Sequential([nnkit.Dense(64, 128), nnkit.BatchNorm(128), nnkit.ReLU(), nnkit.Dense(128, 64),
                                  nnkit.ReLU(), nnkit.Dense(64, 10)], backend=be, seed=0)
        opt = nnkit.optim.SGD(0.05, momentum=0.9)
        Xd, yd = be.asarray(X, dtype=be.dtype), be.asarray(y)
        kw = dict(loss="cross_entropy", optimizer=opt, batch_size=64, verbose=0, compile=compile, metrics=[],
                  shuffle=False)
        model.fit(Xd[:1000], yd[:1000], epochs=3, **kw)  # warm-ups and captures (64 rows and the last 40)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        h = model.fit(Xd, yd, epochs=epochs, **kw)
        torch.cuda.synchronize()
        return model, h, (time.perf_counter() - t0) / (epochs * 200)

    eager, h_eager, t_eager = fit(False, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        graphed, h_graphed, t_graphed = fit(True, 3)
    steps = [s for s in graphed.compiled_steps.values()]
    assert len(steps) == 1 and isinstance(steps[0]._step, GraphedFunction) and steps[0]._step.captures == 2
    g, replays = steps[0]._step, []
    real = g.graphs.replay
    g.graphs.replay = lambda graph: replays.append(1) or real(graph)

    class SyncsAreErrors(nnkit.Callback):  # after fit's input checks, before the first step
        def on_train_begin(self):
            torch.cuda.set_sync_debug_mode("error")
    try:  # the replays never synchronise: the epoch's one read of the loss is the first sync
        with pytest.raises(RuntimeError, match="synchroniz"):
            graphed.fit(be.asarray(X, dtype=be.dtype), be.asarray(y), loss="cross_entropy",
                        optimizer=graphed.optimizer, batch_size=64, epochs=1, verbose=0, compile=True, metrics=[],
                        shuffle=False, callbacks=[SyncsAreErrors()])
    finally:
        torch.cuda.set_sync_debug_mode("default")
        g.graphs.replay = real
    assert len(replays) == 200
    print(f"S step on CUDA: eager {t_eager * 1e6:.0f} us, CUDA graphs {t_graphed * 1e6:.0f} us "
          f"({t_eager / t_graphed:.1f}x)")
    np.testing.assert_allclose(h_graphed["loss"], h_eager["loss"], rtol=1e-4)
    for k, v in eager.state_dict().items():
        np.testing.assert_allclose(graphed.state_dict()[k], v, rtol=1e-3, atol=1e-5, err_msg=k)


def test_the_epoch_table_has_the_cuda_rows():
    """``nnkit bench``'s epoch table on a CUDA machine: nnkit's torch fit eager and as CUDA graphs beside PyTorch's
    own loop there (printed)."""
    _torch_cuda()
    from nnkit.tools.bench import epoch_markdown, run_epoch_report

    rows = run_epoch_report(seconds=0.05, log=lambda *a: None)
    assert {"nnkit fit, torch CUDA, eager", "nnkit fit, torch CUDA, compile=True (CUDA graphs)",
            "PyTorch's own eager loop, CUDA"} <= {r["what"] for r in rows}
    print(epoch_markdown(rows))


def test_cupy_fit_on_the_last_gpu_keeps_everything_there():
    cupy = _cupy()
    last = cupy.cuda.runtime.getDeviceCount() - 1
    X, y = _data()
    with cupy.cuda.Device(0):  # the current device is another one (when there are two or more)
        model = nnkit.Sequential.mlp([20, 64, 64, 3], backend=nnkit.get_backend("cupy", device=last), seed=0)
        model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=64, verbose=0,
                  regularizer=nnkit.optim.L2(1e-4))
        value, grads = model.value_and_grad(X[:64], y[:64], "cross_entropy")
    arrays = {"loss": value, **{f"param {k}": p for k, p in model.params().items()},
              **{f"grad {k}": g for k, g in grads.items()},
              **{f"moment {k}.{n}": v for k, s in model.optimizer.state.items() for n, v in s.items() if n != "t"}}
    for name, a in arrays.items():
        assert isinstance(a, cupy.ndarray), name
        assert a.device.id == last, f"{name} is on GPU {a.device.id}, expected {last}"
    probs = model.predict(X)
    assert probs.device.id == last
    assert model.evaluate(X, y, "cross_entropy")["accuracy"] > 0.5


def test_one_rank_nccl_fit_equals_the_plain_fit():
    _cupy()
    from nnkit.training.distributed import NCCLCommunicator

    try:
        comm = NCCLCommunicator(1, 0, port=29512)
    except Exception as exc:  # NCCL missing from this CuPy build
        pytest.skip(f"NCCL unavailable: {exc}")
    X, y = _data()
    results = []
    for c in (None, comm):
        model = nnkit.Sequential.mlp([20, 32, 3], backend="cupy", dtype="float64", seed=0)
        h = model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=64, verbose=0, comm=c)
        results.append((h["loss"], model.state_dict()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12)


def test_mpi_with_cupy_buffers_equals_one_process(tmp_path):
    cupy = _cupy()
    try:
        from nnkit.training.distributed import MPICommunicator
        comm = MPICommunicator()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    x = cupy.arange(4, dtype=cupy.float64)
    assert isinstance(comm.allreduce(x), cupy.ndarray) and isinstance(comm.broadcast(x), cupy.ndarray)
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = exe if os.path.exists(exe) else shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec")
    env = dict(os.environ, NNKIT_TEST_BACKEND="cupy", PYTHONPATH=os.path.dirname(HERE))
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"r{n}.npz"
        res = subprocess.run([exe, "-n", str(n), sys.executable, os.path.join(HERE, "mpi_worker.py"), str(out), "3"],
                             capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        outs[n] = np.load(out)
    for k in outs[1].files:
        np.testing.assert_allclose(outs[2][k], outs[1][k], rtol=0, atol=1e-10, err_msg=k)


def test_bench_writes_gpu_rows(tmp_path):
    _cupy()
    from nnkit.tools.bench import main

    out = tmp_path / "RESULTS.md"
    assert main(["--quick", "--no-sweep", "--shapes", "S", "--dtypes", "float32", "--out", str(out)]) in (0, None)
    text = out.read_text()
    assert "| cupy |" in text


# -- mixed precision on the GPU (nnkit.precision) ------------------------------------------------------------
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16", "tf32"])
def test_torch_cuda_mixed_precision_fit_never_synchronises_inside_an_epoch(precision):
    torch = _torch_cuda()
    X, y = _data()
    model = nnkit.Sequential.mlp([20, 64, 64, 3], backend=nnkit.get_backend("torch", device="cuda"), seed=0,
                                 precision=precision, norm="layer")
    be = model.backend
    Xd, Td = be.asarray(X, dtype=be.dtype), nnkit.data.as_target(model, y, X.shape[0], nnkit.CrossEntropy())
    opt = nnkit.optim.Adam(1e-3)
    model.train_step(Xd, Td, "cross_entropy", opt, check_input=False)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            model.train_step(Xd, Td, "cross_entropy", opt, check_input=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.params().values())
    assert (model.loss_scale is not None) == (precision == "mixed_float16")
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=5, batch_size=64, verbose=0)
    assert model.evaluate(X, y, "cross_entropy")["accuracy"] > 0.8


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16", "tf32"])
def test_cupy_mixed_precision_fit(precision):
    cupy = _cupy()
    X, y = _data()
    be = nnkit.get_backend("cupy")
    try:
        model = nnkit.Sequential.mlp([20, 64, 64, 3], backend=be, seed=0, precision=precision)
    except ValueError as exc:  # bfloat16 where this CuPy has none: the clear error, naming torch/JAX
        assert precision == "mixed_bfloat16" and "backend='torch' or 'jax'" in str(exc)
        return
    model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=5, batch_size=64, verbose=0)
    assert all(isinstance(p, cupy.ndarray) and p.dtype == cupy.float32 for p in model.params().values())
    ref = nnkit.Sequential.mlp([20, 64, 64, 3], backend=be, seed=0)
    ref.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=5, batch_size=64, verbose=0)
    acc, acc32 = (m.evaluate(X, y, "cross_entropy")["accuracy"] for m in (model, ref))
    assert acc >= acc32 - 0.02, (acc, acc32)


def test_bench_gpu_precision_rows(tmp_path):
    _torch_cuda()
    from nnkit.tools.bench import main

    out = tmp_path / "gpu.md"
    main(["--quick", "--targets", "torch-cuda", "--dtypes", "float32", "mixed_bfloat16", "mixed_float16", "tf32",
          "--no-sweep", "--out", str(out)])
    text = out.read_text()
    for d in ("mixed_bfloat16", "mixed_float16", "tf32"):
        assert f"| {d} | torch-cuda |" in text


# -- convolution on the GPU ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cupy", "torch-cuda"])
def test_cnn_fit_on_the_gpu_equals_numpy(target):
    be = _float64_gpu(target)
    (X, y), (Xt, yt) = nnkit.datasets.load_digits()
    runs = []
    for backend in (be, nnkit.get_backend("numpy", dtype="float64")):
        model = nnkit.Sequential.cnn(64, [8, 16], hidden=[32], backend=backend, dtype="float64", seed=0)
        model.fit(X[:512], y[:512], loss="cross_entropy", optimizer="adam", epochs=2, batch_size=64, verbose=0)
        runs.append(model)
    a, b = runs[0].state_dict(), runs[1].state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-8, atol=1e-10, err_msg=k)
    if target == "torch-cuda":
        assert all(p.is_cuda for p in runs[0].params().values())
        del torch


# -- recurrent layers on the GPU ----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cupy", "torch-cuda"])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_recurrent_fit_on_the_gpu_equals_numpy(target, kind):
    be = _float64_gpu(target)
    X, y = _data(n=256)
    runs = []
    for backend in (be, nnkit.get_backend("numpy", dtype="float64")):
        model = nnkit.Sequential.rnn(20, kind, (6,), n_outputs=3, bidirectional=True, backend=backend, seed=0)
        model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=64, verbose=0)
        runs.append(model)
    a, b = runs[0].state_dict(), runs[1].state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-8, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("target", ["cupy", "torch-cuda"])
def test_attention_on_the_gpu_equals_numpy(target):
    """A causal Transformer block with a tied head, on variable-length token sequences: the GPU fit equals
    NumPy's (float64; SGD, since Adam would magnify the round-off of the key bias's zero gradient)."""
    be = _float64_gpu(target)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 11, size=n) for n in rng.integers(1, 9, size=64)]
    targets = [np.roll(s, -1) for s in seqs]
    runs = []
    for backend in (be, nnkit.get_backend("numpy", dtype="float64")):
        model = nnkit.Sequential([nnkit.Embedding(11, 16), nnkit.PositionalEmbedding(8, 16),
                                  nnkit.TransformerBlock(16, 4, causal=True), nnkit.LayerNorm(16),
                                  nnkit.TiedDense(0)], backend=backend, seed=0)
        model.fit(seqs, targets, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.1, momentum=0.9), epochs=2,
                  batch_size=16, verbose=0)
        runs.append(model)
    a, b = runs[0].state_dict(), runs[1].state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-7, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("target", ["cupy", "torch-cuda"])
def test_a_gpt_fits_and_generates_on_the_gpu(target):
    """A tiny character GPT on random windows: the GPU fit equals NumPy's (float64, SGD), and generation runs
    on the device, reproducible from its seed."""
    be = _float64_gpu(target)
    from nnkit.text import CharTokenizer, TokenWindows

    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20
    tok = CharTokenizer.fit(text)
    runs = []
    for backend in (be, nnkit.get_backend("numpy", dtype="float64")):
        model = nnkit.Sequential.gpt(tok.vocab_size, 16, 32, 2, 4, backend=backend, seed=0)
        model.tokenizer = tok
        model.fit(TokenWindows(tok.encode(text), 16), loss="cross_entropy", optimizer=nnkit.optim.SGD(0.3),
                  epochs=2, batch_size=8, steps_per_epoch=10, verbose=0)
        runs.append(model)
    a, b = runs[0].state_dict(), runs[1].state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-7, atol=1e-9, err_msg=k)
    out = runs[0].generate("To be", 50, seed=3, top_k=10)
    assert out.startswith("To be") and len(out) == 55 and out == runs[0].generate("To be", 50, seed=3, top_k=10)


# -- streamed data on the GPU -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cupy", "torch-cuda"])
def test_streamed_fit_from_a_memory_mapped_file_on_the_gpu(target, tmp_path):
    X, y = _data(n=1024)
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    if target == "cupy":
        _cupy()
        be = nnkit.get_backend("cupy")
    else:
        torch = _torch_cuda()
        be = nnkit.get_backend("torch", device="cuda")
    model = nnkit.Sequential.mlp([20, 64, 3], backend=be, seed=0)
    ref = nnkit.Sequential.mlp([20, 64, 3], backend=be, seed=0)
    model.fit(Xm, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=64, verbose=0)
    ref.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=64, verbose=0)
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    if target == "torch-cuda":  # inside an epoch only host-to-device copies: the epoch's read is the first sync

        class SyncsAreErrors(nnkit.Callback):
            def on_train_begin(self):
                torch.cuda.set_sync_debug_mode("error")

        t0 = time.perf_counter()
        try:
            with pytest.raises(RuntimeError, match="synchroniz"):
                model.fit(Xm, y, loss="cross_entropy", epochs=1, batch_size=64, verbose=0, callbacks=[SyncsAreErrors()])
        finally:
            torch.cuda.set_sync_debug_mode("default")
        print(f"streamed epoch with prefetch: {time.perf_counter() - t0:.3f} s")


# -- the backend classes on the GPU (nnkit.backends) ---------------------------------------------------------
def test_torch_cuda_backend_class_round_trips_and_its_model_exports():
    """TorchBackend on CUDA: pickled by class and device, its TF32 switch restored, a side-stream copy
    complete after done(); a CUDA model's to_torch() and explain() read its weights off the GPU."""
    import pickle

    torch = _torch_cuda()
    be = nnkit.get_backend("torch", device="cuda")
    assert type(be).__name__ == "TorchBackend" and be.on_cuda
    again = pickle.loads(pickle.dumps(be))
    assert type(again) is type(be) and again.device == be.device
    before = torch.backends.cuda.matmul.allow_tf32
    with be.activate(tf32=True):
        assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before
    with be.copy_stream() as copies:
        x = be.asarray(np.arange(12.0).reshape(3, 4), dtype=be.dtype)
        copies.done()
    assert x.is_cuda and float(x.sum()) == 66.0
    X, y = _data()
    model = nnkit.Sequential.mlp([20, 16, 3], backend=be, seed=0)
    net = model.to_torch()
    np.testing.assert_allclose(net(torch.from_numpy(X.astype(np.float32))).detach().numpy(),
                               model.predict(X).cpu().numpy(), rtol=1e-4, atol=1e-5)
    assert "dW0" in model.explain(X[:4], y[:4], "cross_entropy").values
