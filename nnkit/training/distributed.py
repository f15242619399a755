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

import array_api_compat
import numpy as np

from ..backends import finish, host_copy, like, local_rank
from ..backends.functional import namespace_of
from ..data import rank_slice  # noqa: F401 (the rows a rank reads: the data path's)

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

    The staging rule (one rule, in :meth:`_route`): NumPy arrays are reduced in place in their own
    memory; CuPy arrays go to MPI directly only when the MPI library is CUDA-aware (``cuda_aware=None``
    asks MPI; True/False forces it), after their device's stream has finished the work that
    produces them (MPI does not see CUDA streams); **every other array** — CuPy on an MPI that is not
    CUDA-aware, torch tensors on any device (CPU or CUDA), JAX arrays — is staged through the host:
    copied to NumPy (which waits for the device), reduced, and copied back to its library and device.
    That is one device↔host round trip per all-reduce, i.e. per step, for those.
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

    def _route(self, x):
        """``(buffer, back)``: the buffer MPI reads and writes for ``x``, and how to turn it into the
        result (see the class docstring for the rule)."""
        if isinstance(x, np.ndarray):
            x = np.ascontiguousarray(x)
            return x, lambda buf: buf
        if self.cuda_aware and array_api_compat.is_cupy_array(x):
            if not x.flags.c_contiguous:
                x = x.copy()
            finish(x)  # the producing kernels are done before MPI reads the memory
            return x, lambda buf: buf
        return host_copy(x), lambda buf: like(buf, x)

    def allreduce(self, x):
        """Sum over ranks (in the array's own memory or staged through the host, see ``_route``)."""
        buf, back = self._route(x)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return back(buf)

    def broadcast(self, x, root=0):
        """Rank ``root``'s array on every rank."""
        buf, back = self._route(x)
        self.comm.Bcast(buf, root=root)
        return back(buf)

    def barrier(self):
        """MPI barrier."""
        self.comm.Barrier()


class NCCLCommunicator(Communicator):
    """NCCL for CuPy arrays through ``cupyx.distributed`` — one GPU per rank.

    ``NCCLCommunicator(n_ranks, rank, host="127.0.0.1", port=13333)`` on each process.  The rank's GPU
    is ``device`` if given, else its *node-local* rank (from the launcher's ``LOCAL_RANK``,
    ``OMPI_COMM_WORLD_LOCAL_RANK``, ``MPI_LOCALRANKID`` or ``SLURM_LOCALID``; else the global rank modulo
    the node's GPU count): rank 5 of a two-node job with four GPUs each takes GPU 1, not GPU 5.
    That GPU becomes the current device; build the model with ``backend="cupy"`` after this (the
    backend takes the current device).  Arrays are reduced on the device with no host copy.  The
    processes meet through a TCP store at ``host:port`` that rank 0 opens.
    """

    def __init__(self, n_ranks, rank, host=None, port=None, device=None):
        try:
            import cupy
            from cupyx import distributed as cdist
        except ImportError as exc:
            raise RuntimeError("NCCLCommunicator needs CuPy with NCCL: pip install 'nnkit[cuda12]'") from exc
        self.cupy = cupy
        if device is None:
            device = local_rank(rank, cupy.cuda.runtime.getDeviceCount())
        self.device = cupy.cuda.Device(device)
        self.device.use()
        kwargs = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        self.comm = cdist.init_process_group(n_ranks, rank, backend="nccl", **kwargs)
        self.rank, self.size = rank, n_ranks

    def allreduce(self, x):
        """Sum over ranks, on the device (CuPy arrays only: they are the model's arrays on a CuPy backend)."""
        self._check(x)
        with self.device:
            out = self.cupy.empty_like(x)
            self.comm.all_reduce(x, out, op="sum")
        return out

    def broadcast(self, x, root=0):
        """Rank ``root``'s array on every rank, on the device."""
        self._check(x)
        with self.device:
            x = self.cupy.ascontiguousarray(x)
            self.comm.broadcast(x, root=root)
        return x

    def _check(self, x):
        if not isinstance(x, self.cupy.ndarray):
            raise TypeError(f"NCCLCommunicator reduces CuPy arrays on the GPU, got a {type(x).__module__}."
                            f"{type(x).__name__}: train with backend='cupy'")

    def barrier(self):
        """NCCL barrier."""
        self.comm.barrier()


# -- what fit uses ------------------------------------------------------------------------------
def check_comm(comm):
    """``comm`` if it is a :class:`Communicator` (or None), else a TypeError naming the interface."""
    if comm is None or isinstance(comm, Communicator):
        return comm
    raise TypeError(f"comm must be an nnkit.training.distributed.Communicator (e.g. MPICommunicator()), got {comm!r}")


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
    """Rank 0's parameters, buffers and generator state on every rank (so weights, running statistics,
    shuffles and dropout masks agree at the start; running statistics then follow each rank's slices).

    Communicators only ever receive arrays of the model's backend: the generator state travels as
    a uint8 array of the backend (read back on the host once, before training).
    """
    be = model.backend
    new = {k: comm.broadcast(model.xp.asarray(p, copy=True)) for k, p in {**model.params(), **model.state.buffers()}.items()}
    model.assign(new)
    state = np.frombuffer(json.dumps(model.state.rng.bit_generator.state).encode(), dtype=np.uint8)
    length = int(be.to_numpy(comm.broadcast(be.asarray(np.array([state.size], dtype=np.int64))))[0])
    buf = np.zeros(length, dtype=np.uint8)
    if comm.rank == 0:
        buf[:] = state
    buf = be.to_numpy(comm.broadcast(be.asarray(buf)))
    model.state.rng.bit_generator.state = json.loads(np.asarray(buf, dtype=np.uint8).tobytes().decode())
