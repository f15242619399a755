"""Data-parallel training across processes on an existing engine: MPI (mpi4py) or NCCL (CuPy).

A communicator has ``rank``, ``size``, ``allreduce(x)`` (element-wise sum over the ranks),
``broadcast(x, root=0)`` and ``barrier()``.  ``model.fit(..., comm=comm)`` then trains one model
replicated on every rank:

* every rank holds the same data; ``batch_size`` is the *global* batch and each rank takes a
  contiguous slice of every global batch (the shuffle is the same everywhere: it comes from the
  model's seed, whose generator state is broadcast from rank 0 at the start);
* parameters are broadcast from rank 0 before training;
* each rank's gradient of its mean loss is weighted by its share of the global batch, B_r / B, and
  the weighted gradients are summed across ranks in **one** all-reduce of one flat buffer per step:
  Σ_r (B_r/B)·∇L_r = ∇ of the global batch's mean loss, exactly, also for an uneven last batch;
* the epoch's loss and metric sums (training and validation, each rank on its share) are summed in
  one more all-reduce per epoch; only rank 0 prints progress and writes checkpoints, and all ranks
  can resume from the checkpoint file (a shared file system).
* Ctrl-C is honoured at the end of an epoch (all ranks agree through the epoch's all-reduce), never
  in the middle of one, so no rank is left waiting in a collective.

Launch with ``mpiexec -n 4 python train.py`` (or the cluster scheduler's ``srun``/``mpirun``).
"""
from __future__ import annotations

import json
import math

import numpy as np

from .backend import host_copy, like
from .functional import namespace_of

__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "NCCLCommunicator", "rank_slice"]


class Communicator:
    """The interface ``fit(comm=...)`` uses.  Subclasses wrap a real engine."""

    rank = 0
    size = 1

    def allreduce(self, x):
        """Element-wise sum of ``x`` over all ranks (same shape and array library as ``x``)."""
        raise NotImplementedError

    def broadcast(self, x, root=0):
        """Rank ``root``'s ``x`` on every rank (``x`` gives the shape and dtype on the others)."""
        raise NotImplementedError

    def barrier(self):
        """Wait until every rank has arrived here."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """One process: every collective is the identity (``fit(comm=SingleProcess())`` = ``fit()``)."""

    def allreduce(self, x):
        """Sum over one rank: ``x`` itself."""
        return x

    def broadcast(self, x, root=0):
        """Broadcast from the only rank: ``x`` itself."""
        return x

    def barrier(self):
        """Nothing to wait for."""


class MPICommunicator(Communicator):
    """MPI through mpi4py (``pip install 'nnkit[mpi]'`` brings mpi4py and MPICH with ``mpiexec``).

    NumPy arrays are reduced in place in their own memory.  CuPy arrays go straight to MPI when the
    MPI library is CUDA-aware (``cuda_aware=None`` asks MPI; True/False forces it); otherwise — and
    for every other library (torch, ...) — they are staged through the host: copied to NumPy, reduced,
    copied back (one device↔host round trip per all-reduce, i.e. per step).
    """

    def __init__(self, comm=None, cuda_aware=None):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise RuntimeError("MPICommunicator needs mpi4py and an MPI library: pip install 'nnkit[mpi]'") from exc
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if cuda_aware is None:
            query = getattr(MPI, "Query_cuda_support", None)
            try:
                cuda_aware = bool(query()) if query is not None else False
            except Exception:  # an MPI without the MPIX extension
                cuda_aware = False
        self.cuda_aware = cuda_aware

    def _direct(self, x):
        return isinstance(x, np.ndarray) or (self.cuda_aware and hasattr(x, "__cuda_array_interface__"))

    def allreduce(self, x):
        """Sum over ranks; in place for NumPy (and CuPy on a CUDA-aware MPI), else staged through the host."""
        if self._direct(x):
            if isinstance(x, np.ndarray) and not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            self.comm.Allreduce(self.MPI.IN_PLACE, x, op=self.MPI.SUM)
            return x
        host = host_copy(x)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        return like(host, x)

    def broadcast(self, x, root=0):
        """Rank ``root``'s array on every rank."""
        if self._direct(x):
            self.comm.Bcast(x, root=root)
            return x
        host = host_copy(x)
        self.comm.Bcast(host, root=root)
        return like(host, x)

    def barrier(self):
        """MPI barrier."""
        self.comm.Barrier()


class NCCLCommunicator(Communicator):
    """NCCL for CuPy arrays through ``cupyx.distributed`` — one GPU per rank.

    ``NCCLCommunicator(n_ranks, rank, host="127.0.0.1", port=13333)`` on each process (rank r uses
    GPU r of its node unless ``device`` says otherwise).  Arrays are reduced on the device with no
    host copy.  The processes meet through a TCP store at ``host:port`` that rank 0 opens.
    """

    def __init__(self, n_ranks, rank, host=None, port=None, device=None):
        try:
            import cupy
            from cupyx import distributed as cdist
        except ImportError as exc:
            raise RuntimeError("NCCLCommunicator needs CuPy with NCCL: pip install 'nnkit[cuda12]'") from exc
        self.cupy = cupy
        cupy.cuda.Device(rank if device is None else device).use()
        kwargs = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        self.comm = cdist.init_process_group(n_ranks, rank, backend="nccl", **kwargs)
        self.rank, self.size = rank, n_ranks

    def allreduce(self, x):
        """Sum over ranks, on the device."""
        out = self.cupy.empty_like(x)
        self.comm.all_reduce(x, out, op="sum")
        return out

    def broadcast(self, x, root=0):
        """Rank ``root``'s array on every rank, on the device."""
        x = self.cupy.ascontiguousarray(x)
        self.comm.broadcast(x, root=root)
        return x

    def barrier(self):
        """NCCL barrier."""
        self.comm.barrier()


# -- what fit uses ------------------------------------------------------------------------------
def check_comm(comm):
    """``comm`` if it is a :class:`Communicator` (or None), else a TypeError naming the interface."""
    if comm is None or isinstance(comm, Communicator):
        return comm
    raise TypeError(f"comm must be an nnkit.distributed.Communicator (e.g. MPICommunicator()), got {comm!r}")


def rank_slice(start, stop, rank, size):
    """Rank ``rank``'s contiguous share [a, b) of the rows [start, stop): sizes differ by at most one."""
    n = stop - start
    return start + (n * rank) // size, start + (n * (rank + 1)) // size


def allreduce_grads(comm, grads, weight):
    """Σ_r weight_r · grads_r over the ranks, in one all-reduce of one flat buffer."""
    keys = list(grads)
    first = grads[keys[0]]
    xp = namespace_of(first)
    flat = xp.concat([xp.reshape(grads[k], (-1,)) for k in keys])
    flat *= weight
    flat = comm.allreduce(flat)
    out, offset = {}, 0
    for k in keys:
        shape = tuple(grads[k].shape)
        size = math.prod(shape)
        out[k] = xp.reshape(flat[offset:offset + size], shape)
        offset += size
    return out


def sync_model(comm, model):
    """Rank 0's parameters and generator state on every rank (so weights and shuffles agree)."""
    new = {k: comm.broadcast(model.xp.asarray(p, copy=True)) for k, p in model.params().items()}
    model._assign(new)
    state = np.frombuffer(json.dumps(model.rng.bit_generator.state).encode(), dtype=np.uint8)
    length = comm.broadcast(np.array([state.size], dtype=np.int64))
    buf = np.zeros(int(length[0]), dtype=np.uint8)
    if comm.rank == 0:
        buf[:] = state
    buf = comm.broadcast(buf)
    model.rng.bit_generator.state = json.loads(buf.tobytes().decode())
