"""How much of a data-parallel step is the all-reduce: shape M (784-1024-1024-10), global batch 256.

Run:  OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python -m benchmarks.mpi_share
      (and OPENBLAS_NUM_THREADS=2 python -m benchmarks.mpi_share for the one-process reference)

Rank 0 prints the time per step, the all-reduce time per step (the one flat gradient buffer) and
its share. The communicator is wrapped to time its all-reduce calls; nothing else changes.
"""
import sys
import time

import numpy as np

import nnkit
from nnkit.tools.bench import host_batch, mlp
from nnkit.training.distributed import Communicator, MPICommunicator


class TimedComm(Communicator):
    """A communicator that adds up the seconds spent in its all-reduce calls."""

    def __init__(self, inner):
        self.inner, self.rank, self.size, self.seconds, self.calls = inner, inner.rank, inner.size, 0.0, 0

    def allreduce(self, x):
        t0 = time.perf_counter()
        out = self.inner.allreduce(x)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def broadcast(self, x, root=0):
        return self.inner.broadcast(x, root)

    def barrier(self):
        self.inner.barrier()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    sizes, batch = (784, 1024, 1024, 10), 256
    steps, epochs = (2, 1) if quick else (16, 3)
    X, y = host_batch(sizes, batch * steps, "float32")
    try:
        comm = TimedComm(MPICommunicator())
    except RuntimeError:
        comm = None
    model = mlp(sizes, nnkit.get_backend("numpy", dtype="float32"))
    opt = nnkit.optim.SGD(0.01)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=batch, verbose=0, comm=comm)  # warm-up
    if comm is not None:
        comm.seconds, comm.calls = 0.0, 0
    t0 = time.perf_counter()
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=epochs, batch_size=batch, verbose=0, comm=comm)
    total = time.perf_counter() - t0
    n_steps = steps * epochs
    if comm is None or comm.rank == 0:
        size = 1 if comm is None else comm.size
        n_grad = sum(int(np.prod(p.shape)) for p in model.params().values())
        line = f"processes {size}: {1e3 * total / n_steps:.2f} ms per step (global batch {batch})"
        if comm is not None and comm.size > 1:
            reduce_ms = 1e3 * comm.seconds / n_steps
            line += (f"; all-reduce {reduce_ms:.2f} ms per step ({n_grad:,} float32 in one buffer), "
                     f"{100 * comm.seconds / total:.0f}% of the step")
        print(line)


if __name__ == "__main__":
    main()
