"""CPU threads: ``nnkit.set_threads`` / ``--threads N`` set the BLAS libraries' threads (threadpoolctl), ``fit``
applies one per physical core unless the user chose, and warns once when the cores are not its own."""
import os
import warnings

import numpy as np
import pytest

import nnkit
from nnkit.backends import threads
from nnkit.tools.cli import main

pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    before = threads.get_threads()
    monkeypatch.setattr(threads, "_state", {"chosen": None, "warned": False})
    yield
    threads._limit(before)


def test_set_threads_limits_the_blas_and_says_what_it_set():
    assert nnkit.set_threads(1) == 1 and threads.get_threads() == 1
    n = nnkit.set_threads(None)
    assert n == threads.physical_cores() and threads.get_threads() == n
    assert 1 <= threads.physical_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_set_threads_refuses_anything_but_a_positive_integer(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        nnkit.set_threads(bad)


def test_fit_applies_the_default_once_unless_the_user_chose(monkeypatch):
    for var in threads._ENV:
        monkeypatch.delenv(var, raising=False)
    calls = []
    monkeypatch.setattr(threads, "_limit", calls.append)
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    model = nnkit.Sequential.mlp([3, 4, 2], seed=0)
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    assert calls == [threads.physical_cores()]  # once per process
    threads._state["chosen"] = None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own choice stands
    model.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)
    assert calls == [threads.physical_cores()]


def test_oversubscription_warns_once_when_the_model_is_far_slower_on_its_threads_than_on_one(monkeypatch):
    times = {}
    monkeypatch.setattr(threads, "_probe_times", lambda probe, rounds, wall: times["now"])
    probe = lambda: None  # noqa: E731
    times["now"] = (0.010, 0.012)
    assert not threads.check_oversubscribed(probe, 2.0, threads=2)  # as fast as its floor on one thread
    times["now"] = (0.090, 0.010)
    assert not threads.check_oversubscribed(probe, 2.0, threads=1)  # one thread: nothing to give up
    assert not threads.check_oversubscribed(probe, 0.5, threads=2)  # too short to judge
    with pytest.warns(threads.OversubscribedWarning, match=r"90.0 ms on 2 BLAS threads and 10.0 ms on one "
                                                           r"\(9.0x slower\).*set_threads\(1\).*--threads 1"):
        assert threads.check_oversubscribed(probe, 2.0, threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not threads.check_oversubscribed(probe, 2.0, threads=2)  # once per process


def test_the_probe_times_a_real_pass_on_one_thread_and_gives_the_threads_back():
    from threadpoolctl import threadpool_limits

    A = np.random.default_rng(0).standard_normal((300, 300))
    seen = []
    with threadpool_limits(limits=2):
        many, one = threads._probe_times(lambda: seen.append(threads.get_threads()) or A @ A, 3, 10.0)
        assert threads.get_threads() == 2
    assert 0 < many and 0 < one and sorted(set(seen)) == [1, 2]


def test_fit_times_its_first_batch_after_the_first_epoch(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "check_oversubscribed", lambda probe, wall: calls.append((probe(), wall)))
    X, y = nnkit.datasets.make_moons(n_samples=64, seed=0)
    model = nnkit.Sequential.mlp([2, 8, 2], seed=0)
    before = model.state_dict()
    model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0)
    assert len(calls) == 1  # the first epoch only
    twin = nnkit.Sequential.mlp([2, 8, 2], seed=0)
    twin.load_state_dict(before)
    monkeypatch.setattr(threads, "check_oversubscribed", lambda probe, wall: None)
    twin.fit(X, y, loss="cross_entropy", epochs=2, verbose=0)
    for k, v in twin.state_dict().items():  # the probe changes nothing the training reads
        np.testing.assert_array_equal(v, model.state_dict()[k])


def test_every_command_takes_threads(capsys, tmp_path):
    assert main(["data", "xor", "--rows", "8", "--threads", "1", "-o", str(tmp_path / "xor.csv")]) == 0
    assert threads.get_threads() == 1
    for command in (["train"], ["predict", "m.npz", "d.csv"], ["generate", "m.npz"], ["explain"], ["export", "m", "o"],
                    ["data", "xor"]):
        with pytest.raises(SystemExit) as exc:
            main(command + ["--threads", "0"])
        assert exc.value.code == 2
        assert "--threads: must be a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--threads", "zero"])
    assert "--threads: must be a positive integer, got 'zero'" in capsys.readouterr().err


def test_train_with_threads_runs_on_that_many(tmp_path):
    assert main(["train", "--data", "xor", "--hidden", "4", "--epochs", "1", "--threads", "1", "-q"]) == 0
    assert threads.get_threads() == 1


def test_a_compiled_fit_is_not_probed(monkeypatch):
    """The probe times an eager forward pass on the BLAS threads: a compiled step runs on its compiler's threads."""
    calls = []
    monkeypatch.setattr(threads, "check_oversubscribed", lambda probe, wall: calls.append(wall))
    X, y = nnkit.datasets.make_moons(n_samples=32, seed=0)
    nnkit.Sequential.mlp([2, 4, 2], seed=0).fit(X, y, loss="cross_entropy", epochs=1, verbose=0, compile=True)
    assert calls == []

