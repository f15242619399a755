"""Text in: a character vocabulary (``CharTokenizer``) and random windows of a token array (``TokenWindows``) for
training language models per position — the next token at each of a window's positions."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["CharTokenizer", "TokenWindows", "read_text"]

MAX_VOCAB = 1 << 16  # characters in a vocabulary: more is no character model (and a hostile file's claim)


class CharTokenizer:
    """A character vocabulary: the sorted distinct characters of a text, each an id (nanoGPT's ``stoi``/``itos``).

    ``CharTokenizer.fit(text)`` builds it; ``encode(text)`` gives the ids (an int64 array), ``decode(ids)`` the
    text back.  A character outside the vocabulary is a ``ValueError`` naming it and its position.  Attached to a
    model (``model.tokenizer = tok``) it is saved and loaded with it.
    """

    def __init__(self, chars) -> None:
        chars = list(chars)
        if not chars or len(chars) > MAX_VOCAB or not all(isinstance(c, str) and len(c) == 1 for c in chars) \
                or len(set(chars)) != len(chars):
            raise ValueError(f"a character vocabulary is 1 to {MAX_VOCAB} distinct single characters, got "
                             f"{len(chars)} entries" + ("" if chars else " (an empty text?)"))
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        """The vocabulary of ``text``: its distinct characters, sorted."""
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.fit takes the text (a str), got {type(text).__name__}")
        if not text:
            raise ValueError("CharTokenizer.fit: the text is empty")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """The ids of ``text``'s characters, (len(text),) int64; an unknown character is an error naming it."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        lookup = self._index
        try:
            return np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in lookup)
            raise ValueError(f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} is not in the "
                             f"vocabulary of {self.vocab_size} characters the tokenizer was fitted on") from None

    def decode(self, ids: Any) -> str:
        """The text of ``ids`` (any integer array or list); an id outside [0, vocab_size) is an error."""
        a = np.asarray(ids).reshape(-1)
        if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= self.vocab_size):
            raise ValueError(f"decode takes integer ids in [0, {self.vocab_size}), got {a.dtype} in "
                             f"[{a.min()}, {a.max()}]")
        return "".join(self.chars[i] for i in a.tolist())

    def to_info(self) -> dict[str, Any]:
        """JSON data for a checkpoint's ``info``."""
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_info(cls, info: Any) -> CharTokenizer:
        """The tokenizer :meth:`to_info` wrote; a damaged entry is a ValueError."""
        if not isinstance(info, dict) or info.get("type") != "char" or not isinstance(info.get("chars"), str):
            raise ValueError("the saved tokenizer is damaged (expected {'type': 'char', 'chars': '...'})")
        return cls(info["chars"])

    def __eq__(self, other):
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self):
        return f"CharTokenizer({self.vocab_size} characters)"


class TokenWindows:
    """Windows of ``block_size`` tokens of a token array and their next-token targets, as a dataset for
    ``fit``: row i is (ids[i : i+T], ids[i+1 : i+T+1]), for every start i — ``len(ids) − T`` rows.

    ``fit(TokenWindows(ids, T), loss="cross_entropy", steps_per_epoch=K, ...)`` draws K batches of random
    windows an epoch (with replacement, from the model's generator: a resumed run draws the same), as nanoGPT
    draws its batches.  ``ids`` may be a memory-mapped file (``np.memmap`` / ``np.load(..., mmap_mode="r")``):
    only the windows of each batch are read, so a corpus larger than memory trains.
    """

    def __init__(self, ids: Any, block_size: int) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        shape = np.shape(ids)
        if len(shape) != 1:
            raise ValueError(f"TokenWindows takes a 1-D array of token ids, got shape {shape}")
        if np.asarray(ids[:0]).dtype.kind not in "iu":
            raise ValueError(f"TokenWindows takes integer token ids, got {np.asarray(ids[:0]).dtype}")
        if shape[0] <= block_size:
            raise ValueError(f"the token array has {shape[0]} tokens: windows of {block_size} need at least "
                             f"{block_size + 1} (the targets are the next tokens)")
        self.ids, self.block_size = ids, int(block_size)

    def __len__(self) -> int:
        return int(np.shape(self.ids)[0]) - self.block_size

    def __getitem__(self, idx):
        """(X, Y) (len(idx), T) int64: the windows starting at ``idx`` and the tokens one step later."""
        starts = np.asarray(idx, dtype=np.int64).reshape(-1)
        if starts.size and (starts.min() < 0 or starts.max() >= len(self)):
            raise IndexError(f"window starts must be in [0, {len(self)}), got [{starts.min()}, {starts.max()}]")
        rows = np.asarray(self.ids[starts[:, None] + np.arange(self.block_size + 1)[None, :]], dtype=np.int64)
        return rows[:, :-1], rows[:, 1:]  # only these windows are read, even from a memory-mapped file


def read_text(path: str | os.PathLike, max_bytes: int = 1 << 31) -> str:
    """A UTF-8 text file (bounded: a file over ``max_bytes`` is refused before it is read); a clear error for a
    missing, unreadable or non-UTF-8 file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{path!r} has {size} bytes, more than the {max_bytes} a text corpus may have here")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path!r} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
