"""The backends: one file per array library, each a subclass of the Array-API base class that overrides only
what differs for its library.

=================  ==========================================================================================
module             library
=================  ==========================================================================================
:mod:`.base`       ``Backend``: the base class, written once against the Array API standard
:mod:`.numpy`      NumPy (the CPU), with a cheaper namespace for small steps
:mod:`.cupy`       CuPy (NVIDIA GPUs): creation on the right device, streams, TF32
:mod:`.torch`      PyTorch (CPU, CUDA, meta): generators per device, ``torch.compile``, pinned copies
:mod:`.jax`        JAX (CPU, GPU): random keys as state, ``jax.jit``, float64 only in x64 mode
:mod:`.strict`     array-api-strict: the standard and nothing more
:mod:`.generic`    any other array-API module passed as ``backend=module``
=================  ==========================================================================================

:func:`get_backend` is the one factory that picks the class: by ``backend=`` name, or by asking each class
whether an imported module is its library.  Adding a library is one new file here with a ``Backend``
subclass that names itself (``name``) and says how to load it (``load``) and recognise it (``matches``,
``holds``); it is found by the folder (a subclass defined in your own code is found too).  The helpers below (:func:`host_copy`, :func:`like`, :func:`finish`)
ask the class that holds the array.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

from typing import Any

import numpy as np

from .base import Backend, DTYPE_NAMES, cuda_index
from .generic import GenericBackend

__all__ = ["Backend", "get_backend", "BACKEND_NAMES", "DTYPE_NAMES", "host_copy", "like", "finish", "local_rank",
           "is_sparse", "cuda_index", "backend_classes"]


def _import_folder():
    """Import every module of this folder, so that each library's class exists."""
    for info in pkgutil.iter_modules([os.path.dirname(__file__)]):
        importlib.import_module(f"{__name__}.{info.name}")


def _classes():
    """Every named Backend subclass — this folder's, and any defined elsewhere (a library of your own: a
    subclass with ``name``, ``load`` and ``matches``) — in their ``listed`` order."""
    found, todo = [], list(Backend.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__dict__.get("name") is not None:
            found.append(cls)
    return tuple(sorted(found, key=lambda c: (getattr(c, "listed", 99), c.name)))


_import_folder()
BACKEND_NAMES = tuple(c.name for c in _classes())  # the libraries nnkit has a file for


def backend_classes():
    """``{name: Backend subclass}`` for every library nnkit knows now (its own files and your subclasses)."""
    return {c.name: c for c in _classes()}


def get_backend(name: Any = "numpy", device: Any = None, dtype: str | None = None) -> Backend:
    """Return the :class:`Backend` for ``name``.

    ``name`` is one of ``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"``, ``"array_api_strict"``, an
    already-imported array module (``numpy``, ``cupy``, ``torch``, ``jax``/``jax.numpy``,
    ``array_api_strict`` or any module that follows the Array API standard), or a :class:`Backend`
    (returned as it is, or with ``dtype`` applied).  ``dtype`` is ``"float32"`` (the default) or
    ``"float64"`` (on JAX it needs ``jax.config.update("jax_enable_x64", True)``).

    ``device`` is where arrays live; ``None`` is the library's current/default device.  CuPy: a GPU index,
    ``"cuda:N"`` or a ``cupy.cuda.Device``; torch: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"meta"``; JAX:
    ``"cpu"``, ``"gpu:N"`` or a ``jax.Device``; array_api_strict: one of its ``Device`` objects.
    """
    if isinstance(name, Backend):
        return name if dtype is None or name.dtype_name == dtype else name.with_dtype(dtype)
    if dtype is None:
        dtype = "float32"
    if isinstance(name, str):
        classes = backend_classes()
        if name not in classes:
            raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(repr(n) for n in classes)}, "
                             "or an imported array module")
        return classes[name].load(device, dtype)
    module = name
    for cls in _classes():
        if cls.matches(module):
            return cls.load(device, dtype)
    backend = GenericBackend.load_module(module, device, dtype)
    if backend is None:
        raise ValueError(f"backend {module!r} is not an array library: expected one of "
                         f"{', '.join(repr(n) for n in BACKEND_NAMES)} or a module that follows the Python Array "
                         "API standard")
    return backend


def _holder(x):
    """The Backend class whose library ``x`` is an array of (the generic one for any other)."""
    for cls in _classes():
        if cls.holds(x):
            return cls
    return GenericBackend


# -- host <-> device, for an array of any library -----------------------------------------------------
def host_copy(x: Any) -> np.ndarray:
    """A writable NumPy copy of an array of any supported library (a device → host transfer for GPU arrays;
    it waits for the array's pending work by itself)."""
    return _holder(x).host_copy_of(x)


def like(a, x):
    """Host data ``a`` as an array of ``x``'s library on ``x``'s device (the way back from ``host_copy``)."""
    return _holder(x).like_array(a, x)


def finish(x):
    """Wait until the queued work that produces ``x`` is done (before a library outside the array library's
    stream — MPI, say — reads its memory).  A no-op for host arrays."""
    _holder(x).finish_array(x)


def is_sparse(x):
    """True for a SciPy sparse matrix (host data that nnkit densifies one batch at a time)."""
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def local_rank(rank, n_devices, environ=None):
    """The node-local rank of process ``rank`` (which GPU it takes): the launcher's variable (``LOCAL_RANK``,
    Open MPI's ``OMPI_COMM_WORLD_LOCAL_RANK``, MPICH/Intel MPI's ``MPI_LOCALRANKID``, Slurm's
    ``SLURM_LOCALID``, PALS' ``PALS_LOCAL_RANKID``), else ``rank mod n_devices``."""
    environ = os.environ if environ is None else environ
    for var in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID",
                "PALS_LOCAL_RANKID"):
        value = environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return rank % max(int(n_devices), 1)

