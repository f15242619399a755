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


def test_oversubscription_warns_once_and_only_when_the_cores_are_taken(monkeypatch):
    monkeypatch.setattr(threads, "_usable_cpus", lambda: [0, 1])
    assert not threads.check_oversubscribed(1.9, 1.0, threads=2, load=3.0)  # got the CPUs it asked for
    assert not threads.check_oversubscribed(0.6, 1.0, threads=2, load=1.0)  # a quiet machine: waiting on itself
    assert not threads.check_oversubscribed(0.6, 1.0, threads=1, load=4.0)  # one thread: nothing to give up
    assert not threads.check_oversubscribed(0.1, 0.2, threads=2, load=4.0)  # too short to judge
    with pytest.warns(threads.OversubscribedWarning, match=r"set_threads\(1\).*--threads 1"):
        assert threads.check_oversubscribed(0.6, 1.0, threads=2, load=4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not threads.check_oversubscribed(0.1, 1.0, threads=2, load=8.0)  # once per process


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
