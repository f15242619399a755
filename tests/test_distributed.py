"""Data-parallel training on MPI equals the single-process run of the same global batch (float64, 1e-10)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import nnkit
from nnkit.training import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpi_worker  # noqa: E402


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'nnkit[mpi]')")
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # MPICH's wheel puts it beside python
    exe = here if os.path.exists(here) else shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        pytest.skip("no mpiexec on PATH (pip install 'nnkit[mpi]' brings MPICH's)")
    return exe


def _launch(n, *args, script=None):
    exe = _mpiexec()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = script or [os.path.join(HERE, "mpi_worker.py")]
    res = subprocess.run([exe, "-n", str(n), sys.executable, *cmd, *map(str, args)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=os.path.dirname(HERE))
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _single(tmp_path, epochs):
    out = tmp_path / "single.npz"
    mpi_worker.run(None, out, epochs)
    return np.load(out)


def _assert_same(a, b, tol=1e-10):
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=tol, err_msg=k)


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_equals_single_process(tmp_path, ranks):
    out = tmp_path / f"mpi{ranks}.npz"
    _launch(ranks, out, 5)
    _assert_same(np.load(out), _single(tmp_path, 5))


def test_mpi_resume_across_ranks(tmp_path):
    ckpt, out = tmp_path / "run.npz", tmp_path / "resumed.npz"
    _launch(2, tmp_path / "first.npz", 3, ckpt)  # epochs 1-3, checkpoint written by rank 0
    _launch(3, out, 5, ckpt)                     # resumed on 3 ranks, up to 5 epochs in total
    resumed = np.load(out)
    single = _single(tmp_path, 5)
    for k in resumed.files:
        if k.startswith("param/"):
            np.testing.assert_allclose(resumed[k], single[k], rtol=0, atol=1e-10, err_msg=k)
    np.testing.assert_allclose(resumed["loss"], single["loss"][3:], rtol=0, atol=1e-10)


@pytest.mark.parametrize("seq", ["pooled", "positions", "attention"])
def test_mpi_on_variable_length_sequences_equals_single_process(tmp_path, monkeypatch, seq):
    """Lists of sequences of 1 to 9 steps split over 3 ranks (each slice cut to its own longest sequence, the
    per-position case weighting each rank by its valid positions), resumed from a checkpoint on 2 ranks: the
    single-process run's weights and logs to 1e-10."""
    monkeypatch.setenv("NNKIT_TEST_SEQ", seq)
    ckpt = tmp_path / "run.npz"
    _launch(3, tmp_path / "first.npz", 2, ckpt)
    _launch(2, tmp_path / "resumed.npz", 4, ckpt)
    single = _single(tmp_path, 4)
    resumed = np.load(tmp_path / "resumed.npz")
    for k in resumed.files:
        if k.startswith("param/"):
            np.testing.assert_allclose(resumed[k], single[k], rtol=0, atol=1e-10, err_msg=k)
    for k in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(resumed[k], single[k][2:], rtol=0, atol=1e-10, err_msg=k)
    first = np.load(tmp_path / "first.npz")
    np.testing.assert_allclose(first["loss"], single["loss"][:2], rtol=0, atol=1e-10)


def test_mpi_on_a_graph_equals_single_process(tmp_path, monkeypatch):
    monkeypatch.setenv("NNKIT_TEST_GRAPH", "1")  # the launched ranks inherit it
    out = tmp_path / "graph2.npz"
    _launch(2, out, 3)
    _assert_same(np.load(out), _single(tmp_path, 3))


def test_allreduce_share_benchmark_runs():
    out = _launch(2, "--quick", script=["-m", "benchmarks.mpi_share"])
    assert "processes 2" in out and "all-reduce" in out


def test_rank_slices_cover_the_batch_exactly():
    for n in (1, 2, 7, 50, 33):
        for size in (1, 2, 3, 8):
            parts = [distributed.rank_slice(10, 10 + n, r, size) for r in range(size)]
            assert parts[0][0] == 10 and parts[-1][1] == 10 + n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1



def test_single_process_communicator_is_the_identity(tmp_path):
    X, y, Xv, yv = mpi_worker.data()
    runs = []
    for comm in (None, distributed.SingleProcess()):
        model = nnkit.Sequential([nnkit.Dense(6, 8), nnkit.Tanh(), nnkit.Dense(8, 3)], dtype="float64", seed=0)
        model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=50, verbose=0, comm=comm)
        runs.append(model.state_dict())
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])


def test_bad_comm_is_refused():
    X, y, _, _ = mpi_worker.data()
    model = nnkit.Sequential([nnkit.Dense(6, 3)], seed=0)
    with pytest.raises(TypeError, match="Communicator"):
        model.fit(X, y, loss="cross_entropy", epochs=1, comm="mpi")
