"""The backend module's old address: ``nnkit.backend`` names what :mod:`nnkit.backends` holds (pickles and
checkpoints written before the backends had a folder of their own unpickle through ``get_backend`` here)."""
from .backends import (Backend, get_backend, BACKEND_NAMES, DTYPE_NAMES, host_copy, like, finish, local_rank,
                       is_sparse, cuda_index)

__all__ = ["Backend", "get_backend", "BACKEND_NAMES", "DTYPE_NAMES", "host_copy", "like", "finish", "local_rank",
           "is_sparse", "cuda_index"]
