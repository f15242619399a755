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
    param/{key}          float   the trained parameters (model.params())
    buffer/{key}         float   the carried buffers: running statistics (model.state.buffers())
    optim/{key}/{name}   float   optimizer.state[key][name] (moments)
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..data.files import FileFormatError, NpzReader, atomic_write
from ..layers import check_input_shape, infer_shapes, layer_from_config
from ..layers.core import resolve_ties
from .optim import OPTIMIZERS, Optimizer

from .precision import PRECISIONS, LossScaler

__all__ = ["save", "read", "restore", "restore_into", "CheckpointError", "CheckpointNotFoundError"]

FORMAT = "nnkit-checkpoint"
VERSION = 1
META = "__nnkit__"


def _optimizer_state(optimizer, to_numpy):
    if optimizer is None:
        return None, {}
    arrays, steps = {}, {}
    for key, state in optimizer.state.items():
        for name, value in state.items():
            if name == "t":  # a Python int, or a 0-d array when a compiled step carries it
                steps[key] = value if isinstance(value, int) else int(round(float(to_numpy(value))))
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
    """Write ``model`` (and ``model.state.optimizer``, if it has one) to ``path`` atomically."""
    path = os.fspath(path)
    be = model.backend
    opt_meta, arrays = _optimizer_state(model.state.optimizer, be.to_numpy)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "layers": model.config(),
        "graph": model.graph_config() if hasattr(model, "graph_config") else None,  # None: a chain (Sequential)
        "dtype": model.dtype,
        "input_shape": None if model.input_shape is None else list(model.input_shape),
        "precision": model.precision,
        "loss_scale": None if model.state.scaler is None else [be.to_float(model.state.scaler["scale"]),
                                                              be.to_float(model.state.scaler["good"])],
        "backend": be.name,
        "seed": model.seed if isinstance(model.seed, int) else None,
        "epoch": int(model.state.epoch),
        "rng": model.state.rng.bit_generator.state,
        "optimizer": opt_meta,
        "info": _jsonable_info(getattr(model, "info", {})),
        "frozen": _frozen_paths((str(i), layer) for i, layer in enumerate(model.layers)),
    }
    to_numpy = be.to_numpy
    arrays.update({f"param/{k}": np.array(to_numpy(v), copy=True) for k, v in model.params().items()})
    arrays.update({f"buffer/{k}": np.array(to_numpy(v), copy=True) for k, v in model.state.buffers().items()})
    arrays[META] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


class CheckpointError(FileFormatError):
    """A checkpoint that cannot be loaded: not an nnkit checkpoint, damaged, or inconsistent with itself
    (the message names the file and the problem).  A ``ValueError``."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""


MAX_META_BYTES = 16 << 20  # the JSON description of a checkpoint (architecture, optimizer, info)


def _fail(path, problem):
    return CheckpointError(f"{path!r}: {problem}")


def read(path):
    """``(meta, layers, params, moments)`` of a checkpoint, every part checked against the others
    before any weight is read, or a :class:`CheckpointError`.

    Only the members the model needs are read: ``param/{key}`` shaped as the architecture says,
    ``optim/{key}/{field}`` shaped like their parameter, all finite floats.
    """
    path = os.fspath(path)
    with NpzReader(path, "nnkit checkpoint", CheckpointError, CheckpointNotFoundError) as z:
        if META not in z.names():
            raise CheckpointError(f"{path!r} is an .npz file but not an nnkit checkpoint (no {META} entry)")
        shape, dtype = z.header(META)
        if len(shape) != 1 or dtype != np.uint8 or shape[0] > MAX_META_BYTES:
            raise _fail(path, f"the checkpoint's description is not a JSON byte string of at most "
                              f"{MAX_META_BYTES:,} bytes (got {shape} {dtype})")
        try:
            meta = json.loads(z.read(META).tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise _fail(path, f"the checkpoint's description is damaged ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{path!r} is not an nnkit checkpoint")
        if meta.get("version") != VERSION:
            raise _fail(path, f"checkpoint version {meta.get('version')!r}; this nnkit reads version {VERSION}")
        for key, kind in (("layers", list), ("dtype", str), ("epoch", int)):
            if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
                raise _fail(path, f"the entry {key!r} is missing or not a {kind.__name__}")
        if meta["epoch"] < 0 or meta["dtype"] not in ("float32", "float64"):
            raise _fail(path, f"epoch {meta['epoch']!r} / dtype {meta['dtype']!r} out of range")
        if meta.get("seed") is not None and (not isinstance(meta["seed"], int) or isinstance(meta["seed"], bool)):
            raise _fail(path, f"the seed {meta['seed']!r} is not an integer")
        _check_precision(path, meta)
        try:
            layers = [layer_from_config(c) for c in meta["layers"]]
            _freeze(layers, meta.get("frozen", []), path)
            resolve_ties(layers)
            in_shape = check_input_shape(meta.get("input_shape"), layers)  # absent in older files: the first layer's
            if in_shape is not None and meta.get("graph") is None:  # a graph's shapes are checked as it is rebuilt
                infer_shapes(layers, in_shape)
            expected, buffers = {}, {}  # key -> shape, for the trained parameters and the carried buffers
            for i, layer in enumerate(layers):
                shapes = layer.param_shapes()
                for name, _, kind, _ in layer.slots():
                    (expected if kind == "params" else buffers)[f"{i}.{name}"] = shapes[name]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _fail(path, f"the architecture in the checkpoint is damaged ({exc})") from None
        # the members must be there, with the architecture's shapes, before anything is read or built
        members = {**{f"param/{k}": s for k, s in expected.items()}, **{f"buffer/{k}": s for k, s in buffers.items()}}
        for name, shp in members.items():
            what = "weights" if name.startswith("param/") else "buffer"
            key = name.split("/", 1)[1]
            if name not in z.names():
                raise _fail(path, f"the {what} {key!r} of the architecture are missing")
            got, dt = z.header(name)
            if tuple(got) != tuple(shp) or dt.kind != "f":
                raise _fail(path, f"the {what} {key!r} are {tuple(got)} {dt}, the architecture says {tuple(shp)} float")
        opt_meta = meta.get("optimizer")
        fields = {}
        if opt_meta is not None:
            fields = _optimizer_fields(opt_meta, expected, z, path)
        params = {name.split("/", 1)[1]: _finite(z.read(name, shp, "f"), path, f"values of {name!r}")
                  for name, shp in members.items()}
        moments = {(key, field): _finite(z.read(f"optim/{key}/{field}", expected[key], "f"), path,
                                         f"optimizer state {key!r}/{field!r}")
                   for key, field in fields}
    return meta, layers, params, moments


def _frozen_paths(named, prefix=""):
    """``["0", "3.1", "4.attn"]``: where the frozen layers (``trainable = False``) sit in the model, from its
    ``(name, layer)`` pairs down through each composite layer's children."""
    out = []
    for name, layer in named:
        where = f"{prefix}{name}"
        if not layer.trainable:
            out.append(where)
        out += _frozen_paths(layer.children(), f"{where}.")
    return out


def _freeze(layers, paths, path):
    """Mark the layers at ``paths`` (as :func:`_frozen_paths` wrote them) frozen; a path that names no layer
    of the architecture is a damaged checkpoint."""
    if not isinstance(paths, list) or len(paths) > 100_000:
        raise _fail(path, "the list of frozen layers is damaged")
    for where in paths:
        parts = where.split(".") if isinstance(where, str) and len(where) < 1000 else None
        found, inner = None, dict((str(i), layer) for i, layer in enumerate(layers))
        for part in parts or [None]:
            if part not in inner:
                raise _fail(path, f"the frozen layer {where!r} is not a layer of the architecture")
            found = inner[part]
            inner = dict(found.children())
        found.trainable = False


def _finite(a, path, what):
    if not np.all(np.isfinite(a)):
        raise _fail(path, f"the {what} hold NaN or infinity")
    return a


def _rebuild_optimizer(opt):
    """The saved optimizer from its type and hyperparameters.  Its learning rate may be 0 — where a schedule
    (CosineLR to min_lr=0) left it, which the constructor refuses from a user — but not negative or infinite."""
    hp = dict(opt["hyperparameters"])
    lr = hp.get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr == 0:
        optimizer = OPTIMIZERS[opt["type"]](**{**hp, "lr": 1.0})
        optimizer.lr = 0.0
        return optimizer
    return OPTIMIZERS[opt["type"]](**hp)


def _optimizer_fields(opt, expected, z, path):
    """The (key, field) moment members the saved optimizer needs, checked; its type and hyperparameters too."""
    if not isinstance(opt, dict) or opt.get("type") not in OPTIMIZERS:
        raise _fail(path, f"the optimizer state is damaged (type {opt.get('type') if isinstance(opt, dict) else opt!r})")
    try:
        optimizer = _rebuild_optimizer(opt)
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"the optimizer state is damaged ({exc})") from None
    steps = opt.get("steps")
    if not isinstance(steps, dict) or any(k not in expected or not isinstance(t, int) or isinstance(t, bool)
                                          or t < 0 for k, t in steps.items()):
        raise _fail(path, "the optimizer's step counts are damaged")
    allowed = set(optimizer.init_state(np.zeros(1))) - {"t"}
    fields = []
    for name in z.names():
        if name.startswith("optim/"):
            key, _, field = name[len("optim/"):].rpartition("/")
            if key not in expected or field not in allowed:
                raise _fail(path, f"unexpected optimizer state {name!r} for {type(optimizer).__name__}")
            got, dt = z.header(name)
            if tuple(got) != tuple(expected[key]) or dt.kind != "f":
                raise _fail(path, f"the optimizer state {name!r} is {tuple(got)} {dt}, expected {tuple(expected[key])}")
            fields.append((key, field))
    for key in steps:
        missing = allowed - {f for k, f in fields if k == key}
        if missing:
            raise _fail(path, f"the optimizer state of {key!r} lacks {sorted(missing)}")
    return fields


def _build_optimizer(meta, moments, backend):
    opt = meta.get("optimizer")
    if opt is None:
        return None
    optimizer = _rebuild_optimizer(opt)
    state = {}
    for (key, field), value in moments.items():
        state.setdefault(key, {})[field] = backend.asarray(np.array(value), dtype=backend.dtype)
    for key, t in opt["steps"].items():
        state.setdefault(key, {})["t"] = int(t)
    optimizer.state = state
    return optimizer


def restore(model, path, optimizer=None, keep_hyperparameters=True):
    """Load the checkpoint at ``path`` into an existing ``model`` (architecture must match).

    ``model.state.optimizer`` becomes the saved optimizer.  With ``optimizer`` given (of the saved
    type), the saved moments and step counts go into it; ``keep_hyperparameters=False`` takes
    the saved hyperparameters (learning rate, ...) too.
    """
    meta, _, params, moments = read(path)
    if meta.get("layers") != model.config():
        raise _fail(path, f"it holds another architecture: {meta.get('layers')} vs this model's {model.config()}")
    restore_into(model, meta, params, moments, path, optimizer, keep_hyperparameters)
    return model


def _check_precision(path, meta):
    """The saved precision policy (absent in files older than it: None) and loss scale [S, good steps]."""
    precision, scale = meta.get("precision"), meta.get("loss_scale")
    if precision is not None and precision not in PRECISIONS:
        raise _fail(path, f"unknown precision {precision!r}: expected None or one of {', '.join(PRECISIONS)}")
    if scale is not None:
        if precision != "mixed_float16" or not isinstance(scale, list) or len(scale) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scale) \
                or not 0.0 < scale[0] <= 2.0 ** 127 or not 0 <= scale[1] < LossScaler.growth_interval:
            raise _fail(path, f"the loss scale {scale!r} is damaged (expected [scale > 0, good steps] for "
                              f"mixed_float16)")


def restore_into(model, meta, params, moments, path, optimizer=None, keep_hyperparameters=True):
    saved_opt = _build_optimizer(meta, moments, model.backend)
    if optimizer is not None and saved_opt is not None:
        if type(optimizer) is not type(saved_opt):
            raise _fail(path, f"it was trained with {type(saved_opt).__name__}, but fit was given "
                              f"{type(optimizer).__name__}: pass the same optimizer to resume")
        if keep_hyperparameters:
            optimizer.state = saved_opt.state
            saved_opt = optimizer
    rng_state = meta.get("rng")
    probe = np.random.default_rng()
    try:
        probe.bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise _fail(path, f"the RNG state is damaged ({exc})") from None
    info = meta.get("info")
    if info is not None and not isinstance(info, dict):
        raise _fail(path, "the model's info is not a JSON object")
    model.load_state_dict(params)  # checks keys and shapes before changing anything
    if model.policy.loss_scaling and meta.get("loss_scale") is not None:
        model.state.scaler = LossScaler.init(model.backend, *meta["loss_scale"])
    model.state.rng.bit_generator.state = rng_state
    model.state.epoch = int(meta.get("epoch", 0))
    model.info = dict(info) if isinstance(info, dict) else {}
    if saved_opt is not None or isinstance(optimizer, Optimizer):
        model.state.optimizer = saved_opt if saved_opt is not None else optimizer
