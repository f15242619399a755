"""Files: every write is atomic, every ``.npz`` is read without pickles.

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in the target's folder, flushes
it to disk and renames it over ``path``: a crash or Ctrl-C in the middle leaves the previous file as
it was and no temporary behind.  Checkpoints, predictions, reports and plots all go through it.
"""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

__all__ = ["atomic_write", "read_npz"]


def atomic_write(path, write):
    """Write ``path`` atomically: ``write(f)`` fills a binary temporary file that then replaces ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".nnkit-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_npz(path, what="an .npz file"):
    """All arrays of an ``.npz`` as a dict (``allow_pickle=False``); FileNotFoundError / ValueError naming
    ``what`` the file should have been."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r} (expected {what})")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise ValueError(f"{path!r} is not a readable {what} (corrupt, truncated or another format): {exc}") from None
