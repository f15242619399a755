"""Checkpoints: one ``.npz`` with the architecture, weights, optimizer state, epoch and RNG state.

Never pickle: the file holds only numeric arrays and one JSON document (stored
as bytes), and is read with ``allow_pickle=False``, so loading a stranger's file
cannot run code.  Writes go to a temporary file in the same folder, are
flushed to disk and then renamed over the target: an interrupted save leaves
the previous checkpoint intact.

Layout::

    __nnkit__            uint8   JSON: format, version, layers, dtype, backend, seed, epoch,
                                 rng (NumPy bit-generator state), optimizer (type,
                                 hyperparameters, per-parameter step counts), info
                                 (``model.info``: the user's JSON metadata)
    param/{key}          float   model.state_dict()[key]
    optim/{key}/{name}   float   optimizer.state[key][name] (moments)
"""
from __future__ import annotations

import json
import os

import numpy as np

from .files import atomic_write, read_npz
from .optim import OPTIMIZERS, Optimizer

__all__ = ["save", "load", "restore"]

FORMAT = "nnkit-checkpoint"
VERSION = 1
META = "__nnkit__"


def _optimizer_state(optimizer, to_numpy):
    if optimizer is None:
        return None, {}
    arrays, steps = {}, {}
    for key, state in optimizer.state.items():
        for name, value in state.items():
            if name == "t":
                steps[key] = int(value)
            else:
                arrays[f"optim/{key}/{name}"] = np.array(to_numpy(value), copy=True)
    name = next((n for n, cls in OPTIMIZERS.items() if type(optimizer) is cls), None)
    if name is None:
        raise ValueError(f"cannot save optimizer {type(optimizer).__name__}: only {', '.join(OPTIMIZERS)} are known")
    meta = {"type": name, "hyperparameters": optimizer.hyperparameters(), "steps": steps}
    return meta, arrays


def _jsonable_info(info):
    if not isinstance(info, dict):
        raise TypeError(f"model.info must be a dict of JSON data (str, numbers, lists, dicts), got {type(info).__name__}")
    try:
        json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"model.info must hold JSON data only (str, numbers, lists, dicts): {exc}") from None
    return info


def save(model, path):
    """Write ``model`` (and ``model.optimizer``, if it has one) to ``path`` atomically."""
    path = os.fspath(path)
    be = model.backend
    opt_meta, arrays = _optimizer_state(getattr(model, "optimizer", None), be.to_numpy)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "layers": model.config(),
        "dtype": model.dtype,
        "backend": be.name,
        "seed": model.seed if isinstance(model.seed, int) else None,
        "epoch": int(model.epoch),
        "rng": model.rng.bit_generator.state,
        "optimizer": opt_meta,
        "info": _jsonable_info(getattr(model, "info", {})),
    }
    arrays.update({f"param/{k}": v for k, v in model.state_dict().items()})
    arrays[META] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def _read(path):
    """(meta, arrays) of a checkpoint, or a clear error."""
    path = os.fspath(path)
    arrays = read_npz(path, "nnkit checkpoint")
    if META not in arrays:
        raise ValueError(f"{path!r} is an .npz file but not an nnkit checkpoint (no {META} entry)")
    try:
        meta = json.loads(arrays.pop(META).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path!r}: the checkpoint's description is damaged ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an nnkit checkpoint")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path!r} is checkpoint version {meta.get('version')!r}; this nnkit reads version {VERSION}")
    return meta, arrays


def _build_optimizer(meta, arrays, backend, path):
    opt = meta.get("optimizer")
    if opt is None:
        return None
    try:
        optimizer = OPTIMIZERS[opt["type"]](**opt["hyperparameters"])
        state = {}
        for name, value in arrays.items():
            if name.startswith("optim/"):
                key, field = name[len("optim/"):].rsplit("/", 1)
                state.setdefault(key, {})[field] = backend.asarray(value, dtype=backend.dtype)
        for key, t in opt["steps"].items():
            state.setdefault(key, {})["t"] = int(t)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path!r}: the optimizer state is damaged ({exc})") from None
    optimizer.state = state
    return optimizer


def load(path, backend=None):
    """Rebuild the model saved at ``path`` on ``backend`` (default ``"numpy"``).

    Weights, optimizer (as ``model.optimizer``), epoch counter and RNG state are restored.
    """
    from .model import Sequential, layer_from_config

    meta, arrays = _read(path)
    try:
        layers = [layer_from_config(c) for c in meta["layers"]]
        model = Sequential(layers, backend="numpy" if backend is None else backend, dtype=meta["dtype"],
                           seed=meta.get("seed"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path!r}: the architecture in the checkpoint is damaged ({exc})") from None
    _restore_into(model, meta, arrays, path)
    return model


def restore(model, path, optimizer=None, keep_hyperparameters=True):
    """Load the checkpoint at ``path`` into an existing ``model`` (architecture must match).

    ``model.optimizer`` becomes the saved optimizer.  With ``optimizer`` given (of the saved
    type), the saved moments and step counts go into it; ``keep_hyperparameters=False`` takes
    the saved hyperparameters (learning rate, ...) too.
    """
    meta, arrays = _read(path)
    if meta.get("layers") != model.config():
        raise ValueError(f"{path!r} holds another architecture: {meta.get('layers')} vs this model's {model.config()}")
    _restore_into(model, meta, arrays, path, optimizer, keep_hyperparameters)
    return model


def _restore_into(model, meta, arrays, path, optimizer=None, keep_hyperparameters=True):
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    saved_opt = _build_optimizer(meta, arrays, model.backend, path)
    if optimizer is not None and saved_opt is not None:
        if type(optimizer) is not type(saved_opt):
            raise ValueError(
                f"{path!r} was trained with {type(saved_opt).__name__}, but fit was given "
                f"{type(optimizer).__name__}: pass the same optimizer to resume"
            )
        if keep_hyperparameters:
            optimizer.state = saved_opt.state
            saved_opt = optimizer
    rng_state = meta.get("rng")
    probe = np.random.default_rng()
    try:
        probe.bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path!r}: the RNG state is damaged ({exc})") from None
    model.load_state_dict(params)  # checks keys and shapes before changing anything
    model.rng.bit_generator.state = rng_state
    model.epoch = int(meta.get("epoch", 0))
    info = meta.get("info")
    model.info = dict(info) if isinstance(info, dict) else {}
    if saved_opt is not None or isinstance(optimizer, Optimizer):
        model.optimizer = saved_opt if saved_opt is not None else optimizer
