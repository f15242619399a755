"""Threads: how many CPU threads the BLAS and OpenMP libraries under the arrays run — one per physical core by
default, ``nnkit.set_threads(n)`` (``--threads N`` on the command line) to choose.

A BLAS library starts one thread per *logical* core and spins them while it waits; on a machine that also runs
other work those threads fight for the cores, and a step can get ten times slower with the same numbers.  One
thread per physical core is the fast setting on a quiet machine, one thread on a busy one.  The limits go
through ``threadpoolctl`` (which knows OpenBLAS, MKL, BLIS and the OpenMP runtimes by their loaded libraries),
and through ``torch.set_num_threads`` when PyTorch is already imported (its own pool).

``fit`` applies the default once, before its first step, unless ``set_threads`` was called or one of the usual
variables (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``) is set: those are the user's
choice.  After the first epoch it warns, once, when a forward pass of the model on its threads is far slower
than the same pass on one thread — the model's own measured floor (:func:`check_oversubscribed`).
"""
from __future__ import annotations

import numbers
import os
import sys
import warnings

__all__ = ["set_threads", "get_threads", "threads_arg", "physical_cores", "apply_default", "check_oversubscribed",
           "OversubscribedWarning"]

_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
_state = {"chosen": None, "warned": False}


class OversubscribedWarning(UserWarning):
    """The process got far less CPU than its BLAS threads ask for: fewer threads are likely faster."""


def _usable_cpus():
    """The logical CPUs this process may run on (its affinity mask, else every one)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores():
    """The physical cores this process may run on: logical CPUs that are hyper-threads of one core count once
    (Linux's ``topology/core_id`` and ``physical_package_id``); where the topology cannot be read, the number of
    usable logical CPUs."""
    cpus = _usable_cpus()
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "core_id") as f:
                core = f.read().strip()
            with open(base + "physical_package_id") as f:
                package = f.read().strip()
        except OSError:
            return max(len(cpus), 1)
        cores.add((package, core))
    return max(len(cores), 1)


def _limit(n):
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)  # as a function: the limits stay until changed again
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def set_threads(n=None):
    """Run the BLAS and OpenMP libraries (and PyTorch's CPU pool, when PyTorch is imported) on ``n`` threads;
    ``None`` means one per physical core.  Returns the number set.  A positive integer, else ValueError."""
    if n is None:
        n = physical_cores()
    elif isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"threads must be a positive integer (or None: one per physical core), got {n!r}")
    n = int(n)
    _limit(n)
    _state["chosen"] = n
    return n


def threads_arg(text):
    """``--threads N`` on the command line: a positive integer (an argparse type: anything else is a usage error
    that names it)."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n


def get_threads():
    """The threads the BLAS libraries run now (the largest among those loaded; 1 where none is loaded)."""
    from threadpoolctl import threadpool_info

    return max((lib.get("num_threads") or 1 for lib in threadpool_info() if lib.get("user_api") == "blas"),
               default=1)


def apply_default():
    """One BLAS thread per physical core, once per process — unless :func:`set_threads` chose, or an
    environment variable (``OMP_NUM_THREADS`` ...) sets the count.  Called by ``fit`` before its first step."""
    if _state["chosen"] is not None or any(os.environ.get(v) for v in _ENV):
        return
    try:
        set_threads(None)
    except ImportError:  # threadpoolctl missing: the libraries keep their own default
        _state["chosen"] = 0


def check_oversubscribed(probe, wall_seconds, threads=None, ratio=1.5, rounds=3):
    """After the first epoch: is the model far slower on its BLAS threads than on one?  ``probe()`` runs one
    forward pass of a training batch (and waits for it); it is timed on the threads of now and on one thread,
    alternating, ``rounds`` times each (the fastest of each: the model's own floor, not a figure from elsewhere).
    On a machine whose cores are taken — by other work, or by more threads than cores — the threads wait for each
    other and the pass on several threads is many times slower than on one; then warn
    (:class:`OversubscribedWarning`), once per process, with both times and what to do.  An epoch under a second,
    or one thread, is not judged.  Returns True when it warned."""
    if _state["warned"] or wall_seconds < 1.0:
        return False
    threads = get_threads() if threads is None else int(threads)
    if threads < 2:
        return False
    many, one = _probe_times(probe, rounds, wall_seconds)
    if not many > ratio * one:
        return False
    _state["warned"] = True
    warnings.warn(f"one forward pass of a batch took {many * 1e3:.1f} ms on {threads} BLAS threads and "
                  f"{one * 1e3:.1f} ms on one ({many / one:.1f}x slower): the machine is oversubscribed (other work, "
                  "or more threads than free cores), and every step waits for the slowest thread. Fewer threads "
                  "are faster here: nnkit.set_threads(1) (--threads 1 on the command line)",
                  OversubscribedWarning, stacklevel=3)
    return True


def _probe_times(probe, rounds, wall_seconds):
    """(fastest time of ``probe`` on the threads of now, fastest on one thread), alternating; fewer rounds when one
    pass is long beside the epoch (the probe costs at most a few per cent of it)."""
    import time
    from threadpoolctl import threadpool_limits

    def timed():
        t = time.perf_counter()
        probe()
        return time.perf_counter() - t

    first = timed()  # a warm-up, and what one pass costs
    rounds = max(1, min(int(rounds), int(0.05 * wall_seconds / max(2 * first, 1e-9))))
    torch = sys.modules.get("torch")
    many, one = [], []
    for _ in range(rounds):
        many.append(timed())
        before = torch.get_num_threads() if torch is not None else None
        with threadpool_limits(limits=1):
            if torch is not None:
                torch.set_num_threads(1)
            try:
                one.append(timed())
            finally:
                if torch is not None:
                    torch.set_num_threads(before)
    return min(many), min(one)
