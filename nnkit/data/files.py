"""Files: every write is atomic, every ``.npz`` is read without pickles and with bounded memory.

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in the target's folder, flushes
it to disk and renames it over ``path``: a crash or Ctrl-C in the middle leaves the previous file as
it was.  The temporary file carries the writer's process id (``.nnkit-{pid}-*.tmp``); a process
killed mid-write leaves it behind, and the next write to that folder removes every such file whose
process is gone.  The new file gets the permissions of the file it replaces, or the user's umask
(not ``mkstemp``'s 0600).  Checkpoints, predictions, reports and plots all go through it.

:class:`NpzReader` reads an ``.npz`` a stranger may have crafted: it looks at each member's ``.npy``
header (shape, dtype) before reading any data, refuses object arrays, members whose size does not
match their header, and compressed members that would expand more than ``MAX_EXPANSION`` times;
it reads only the members asked for, in bounded chunks, and checks their CRC.  Every problem is a
``ValueError`` subclass naming the file (``error=`` chooses which).
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import zipfile

import numpy as np

__all__ = ["atomic_write", "read_npz", "NpzReader", "FileFormatError", "MAX_EXPANSION"]

VERSION = "0.1.0"  # nnkit's own version (``nnkit.__version__``), written into the files it makes (ONNX's producer)
MAX_EXPANSION = 100  # a compressed member may expand at most this many times (deflate of zeros: ~1000×)
MAX_MEMBERS = 100_000
_TEMP = re.compile(r"^\.nnkit-(\d+)-[^/]*\.tmp$")
_CHUNK = 1 << 22


class FileFormatError(ValueError):
    """A data file (``.npz``, ``.csv``) that cannot be read as what it should be."""


class FileMissingError(FileFormatError, FileNotFoundError):
    """The file (or its folder) does not exist."""


# -- writing -------------------------------------------------------------------------------------------
def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell): leave its file alone
    return True


def remove_stale_temps(folder):
    """Remove ``.nnkit-{pid}-*.tmp`` files in ``folder`` whose writing process no longer exists."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _TEMP.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def check_writable(path, what="output file"):
    """Raise a clear ``OSError`` now (before hours of training) if ``path`` cannot be written atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a directory: give a file name inside it")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} {path!r}: the folder {folder!r} does not exist")
    try:  # the one sure test: create (and remove) a file there, as the atomic write will
        fd, probe = tempfile.mkstemp(prefix=f".nnkit-{os.getpid()}-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"{what} {path!r}: the folder {folder!r} is not writable ({exc.strerror})") from None
    return path


def atomic_write(path, write):
    """Write ``path`` atomically: ``write(f)`` fills a binary temporary file that then replaces ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory: give a file name inside it")
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(folder)
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".nnkit-{os.getpid()}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# -- reading ---------------------------------------------------------------------------------------------
class NpzReader:
    """An ``.npz`` opened for careful reading: ``members`` maps each array's name to its declared
    ``(shape, dtype)``; :meth:`read` reads one.  Use as a context manager.

    ``what`` names what the file should be (in messages); ``error`` is the exception class raised.
    """

    def __init__(self, path, what="an .npz file", error=FileFormatError, missing=FileMissingError):
        self.path, self.what, self.error = os.fspath(path), what, error
        if not os.path.exists(self.path):
            raise missing(f"no such file: {self.path!r} (expected {what})")
        if os.path.isdir(self.path):
            raise error(f"{self.path!r} is a directory, not {what}")
        self.size = os.path.getsize(self.path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except Exception as exc:  # zipfile raises BadZipFile, NotImplementedError, struct.error, ...
            raise self._bad(f"not a zip archive ({type(exc).__name__}: {exc})") from None
        try:
            self._infos = {}
            infos = self.zip.infolist()
            if len(infos) > MAX_MEMBERS:
                raise self._bad(f"{len(infos)} members (at most {MAX_MEMBERS})")
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise self._bad(f"member {info.filename!r} is not an .npy array")
                self._infos[info.filename[:-4]] = info
            self.members = {}
        except BaseException:
            self.zip.close()
            raise

    def _bad(self, problem):
        return self.error(f"{self.path!r} is not a readable {self.what} (corrupt, truncated or another "
                          f"format): {problem}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        self.zip.close()

    def names(self):
        return list(self._infos)

    def header(self, name):
        """``(shape, dtype)`` of member ``name`` from its ``.npy`` header (no data read)."""
        if name not in self.members:
            with self._open(name) as f:
                self.members[name] = self._parse_header(name, f)[:2]
        return self.members[name]

    def _open(self, name):
        try:
            return self.zip.open(self._infos[name])
        except KeyError:
            raise self.error(f"{self.path!r}: no member {name!r}") from None
        except Exception as exc:  # BadZipFile, NotImplementedError (an unknown compression), ...
            raise self._bad(f"member {name!r}: {type(exc).__name__}: {exc}") from None

    def _parse_header(self, name, f):
        fmt = np.lib.format
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=10_000)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=10_000)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, TypeError, SyntaxError, EOFError, OSError, zipfile.BadZipFile, RecursionError,
                MemoryError, OverflowError) as exc:
            raise self._bad(f"member {name!r} has no valid .npy header ({type(exc).__name__}: {exc})") from None
        if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize == 0:
            raise self.error(f"{self.path!r}: member {name!r} has dtype {dtype}, not a plain number type "
                             "(object arrays are never loaded)")
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise self._bad(f"member {name!r} declares the shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        info = self._infos[name]
        offset = f.tell()
        if info.file_size != offset + nbytes:
            raise self._bad(f"member {name!r} declares {shape} {dtype} ({nbytes:,} bytes) but holds "
                            f"{max(info.file_size - offset, 0):,}")
        if info.compress_size > self.size or info.header_offset + info.compress_size > self.size:
            raise self._bad(f"member {name!r} claims {info.compress_size:,} bytes in a file of {self.size:,}")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_EXPANSION * max(info.compress_size, 1) \
                and info.file_size > (1 << 20):
            raise self._bad(f"member {name!r} would expand from {info.compress_size:,} to {info.file_size:,} "
                            f"bytes (more than {MAX_EXPANSION}× — a decompression bomb?)")
        return shape, dtype, fortran, nbytes

    def read(self, name, shape=None, dtypes=None):
        """Member ``name`` as a NumPy array; ``shape``/``dtypes`` (kinds like ``"f"``) are checked
        against its header before any data is read."""
        with self._open(name) as f:
            got_shape, dtype, fortran, nbytes = self._parse_header(name, f)
            self.members[name] = (got_shape, dtype)
            if shape is not None and tuple(got_shape) != tuple(shape):
                raise self.error(f"{self.path!r}: member {name!r} has shape {tuple(got_shape)}, expected "
                                 f"{tuple(shape)}")
            if dtypes is not None and dtype.kind not in dtypes:
                raise self.error(f"{self.path!r}: member {name!r} has dtype {dtype}")
            buf = bytearray(nbytes)
            view, done = memoryview(buf), 0
            try:
                while done < nbytes:
                    got = f.readinto(view[done:done + _CHUNK])
                    if not got:
                        raise EOFError(f"{nbytes - done:,} bytes missing")
                    done += got
                if f.read(1):  # reaching the end checks the CRC
                    raise ValueError("more data than the header declares")
            except Exception as exc:  # BadZipFile (a bad CRC), zlib.error, EOFError, ...
                raise self._bad(f"member {name!r}: {type(exc).__name__}: {exc}") from None
        arr = np.frombuffer(buf, dtype=dtype)
        return arr.reshape(got_shape, order="F" if fortran else "C")


def read_npz(path, what="an .npz file", error=FileFormatError):
    """All arrays of an ``.npz`` as a dict, read with :class:`NpzReader`'s checks."""
    with NpzReader(path, what, error) as z:
        return {name: z.read(name) for name in z.names()}
