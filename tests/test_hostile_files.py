"""Checkpoints a stranger crafted: every variant of a real checkpoint raises CheckpointError, with bounded memory.

The variants: byte flips all over the file, truncations, a compressed member that expands a
thousandfold, an architecture far larger than the file, a ``.npy`` header declaring 10¹² elements,
a deeply nested JSON description, a member that is not ``.npy``, a plain ``.npy`` under a ``.npz``
name, non-finite weights, optimizer state of the wrong shape or kind, and a directory.
"""
import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

import nnkit
from nnkit.training.checkpoint import CheckpointError

PEAK_LIMIT = 30 << 20  # bytes: far below what any of the bombs below would need


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A trained model's checkpoint (Adam state included): its bytes and members."""
    path = tmp_path_factory.mktemp("ckpt") / "real.npz"
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 6)), rng.integers(0, 3, 64)
    model = nnkit.Sequential.mlp([6, 16, 3], seed=0)
    model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=16, verbose=0)
    model.save(path)
    with np.load(path, allow_pickle=False) as f:
        members = {k: f[k] for k in f.files}
    return path.read_bytes(), members


def _meta(members):
    return json.loads(members["__nnkit__"].tobytes().decode())


def _zip(entries, compress=zipfile.ZIP_STORED):
    """An .npz from {name: bytes-or-array}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        for name, value in entries.items():
            if isinstance(value, np.ndarray):
                b = io.BytesIO()
                np.lib.format.write_array(b, value, allow_pickle=False)
                value = b.getvalue()
            z.writestr(name + ".npy", value)
    return buf.getvalue()


def _with(members, **changes):
    out = dict(members)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _meta_bytes(meta):
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def hostile_variants(data, members):
    meta = _meta(members)
    yield "plain .npy under an .npz name", members["param/0.W"].tobytes()[:0] + _npy(members["param/0.W"])
    yield "empty file", b""
    yield "text file", b"a,b,label\n1,2,cat\n"
    for cut in (10, 100, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        yield f"truncated at {cut}", data[:cut]
    # an architecture far larger than the file: Dense(16000, 16000)
    big = dict(meta, layers=[{"type": "Dense", "in_features": 16000, "out_features": 16000}], optimizer=None)
    yield "16000x16000 architecture in a tiny file", _zip({"__nnkit__": _meta_bytes(big),
                                                          "param/0.W": np.zeros((2, 2)),
                                                          "param/0.b": np.zeros(16000)})
    # attention and a Transformer block claiming a width of 2^20 (their weights 2^40 numbers), and a tie to nothing
    for layer in ({"type": "MultiHeadAttention", "embed_dim": 2**20, "num_heads": 1},
                  {"type": "TransformerBlock", "embed_dim": 2**20, "num_heads": 4},
                  {"type": "PositionalEmbedding", "max_len": 2**40, "dim": 2**20}):
        wide = dict(meta, layers=[layer], optimizer=None, input_shape=None)
        yield f"{layer['type']} of width 2^20 in a tiny file", _zip({"__nnkit__": _meta_bytes(wide),
                                                                     "param/0.weight": np.zeros((2, 2))})
    tied = dict(meta, layers=[{"type": "TiedDense", "source": "7"}], optimizer=None, input_shape=None)
    yield "a head tied to no layer", _zip({"__nnkit__": _meta_bytes(tied)})
    # a .npy header that declares 10^12 elements
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    yield "npy header of 1e12 elements", _zip(_with(members, **{"param/0.W": header.getvalue() + b"\0" * 64}))
    # a compressed member that expands a thousandfold (and another one nobody needs)
    huge = dict(meta, layers=[{"type": "Dense", "in_features": 2500, "out_features": 2000}], optimizer=None)
    yield "needed decompression bomb", _zip({"__nnkit__": _meta_bytes(huge), "param/0.W": np.zeros((2500, 2000)),
                                             "param/0.b": np.zeros(2000)}, zipfile.ZIP_DEFLATED)
    nested = b'{"format": "nnkit-checkpoint", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    yield "deeply nested JSON", _zip(_with(members, __nnkit__=np.frombuffer(nested, dtype=np.uint8)))
    yield "JSON that is not an object", _zip(_with(members, __nnkit__=_meta_bytes([1, 2, 3])))
    yield "member without the .npy format", _zip({**{k: v for k, v in members.items() if k != "param/0.b"},
                                                  "param/0.b": b"just some bytes, no npy magic"})
    yield "object array member", _zip_raw_object(members)
    nan_w = members["param/0.W"].copy()
    nan_w[0, 0] = np.nan
    yield "NaN weights", _zip(_with(members, **{"param/0.W": nan_w}))
    yield "inf optimizer moment", _zip(_with(members, **{"optim/0.W/m": np.full_like(members["optim/0.W/m"], np.inf)}))
    yield "moment of the wrong shape", _zip(_with(members, **{"optim/0.W/v": np.zeros((3, 3))}))
    yield "moment the optimizer does not have", _zip(_with(members, **{"optim/0.W/zz": members["optim/0.W/m"]}))
    yield "missing moment", _zip(_with(members, **{"optim/0.b/v": None}))
    yield "missing weights", _zip(_with(members, **{"param/2.W": None}))
    yield "weights of another shape", _zip(_with(members, **{"param/2.W": np.zeros((16, 4))}))
    yield "integer weights", _zip(_with(members, **{"param/0.b": np.zeros(16, dtype=np.int64)}))
    for key, value in (("layers", [{"type": "Conv"}]), ("layers", "Dense"), ("dtype", "float16"), ("epoch", -3),
                       ("epoch", "7"), ("rng", {"bit_generator": "PCG64", "state": "x"}), ("seed", "abc"),
                       ("optimizer", {"type": "adam", "hyperparameters": {"lr": -1}, "steps": {}}),
                       ("optimizer", {"type": "lbfgs"}), ("version", 99), ("info", [1]),
                       ("layers", [{"type": "Dense", "in_features": -4, "out_features": 3}]),
                       ("layers", [{"type": "Conv1D", "in_channels": 3, "out_channels": 4, "kernel_size": 3,
                                    "groups": 2}]),
                       ("layers", [{"type": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": 3,
                                    "bias": "yes"}]),
                       ("layers", [{"type": "Conv1D", "in_channels": 1, "out_channels": 2, "kernel_size": 4,
                                    "padding": "same", "stride": 2}]),
                       ("layers", [{"type": "ConvTranspose2D", "in_channels": 2, "out_channels": 2, "kernel_size": 3,
                                    "stride": 2, "output_padding": 5}]),
                       ("layers", [{"type": "Conv1D", "in_channels": 1, "out_channels": 2, "kernel_size": 3,
                                    "padding_mode": "mirror"}])):
        yield f"meta {key}={value!r}", _zip(_with(members, __nnkit__=_meta_bytes(dict(meta, **{key: value}))))


def _npy(a):
    b = io.BytesIO()
    np.lib.format.write_array(b, a)
    return b.getvalue()


def _zip_raw_object(members):
    b = io.BytesIO()
    np.lib.format.write_array(b, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return _zip(_with(members, **{"param/0.b": b.getvalue()}))


def test_hostile_checkpoints_raise_checkpoint_error_with_bounded_memory(real, tmp_path):
    data, members = real
    seen = 0
    for name, blob in hostile_variants(data, members):
        path = tmp_path / "hostile.npz"
        path.write_bytes(blob)
        tracemalloc.start()
        try:
            with pytest.raises(CheckpointError) as info:
                nnkit.load(path)
            _, peak = tracemalloc.get_traced_memory()
        except BaseException as exc:
            raise AssertionError(f"variant {name!r}: {type(exc).__name__}: {exc}") from exc
        finally:
            tracemalloc.stop()
        assert "hostile.npz" in str(info.value), name
        assert peak < PEAK_LIMIT, f"variant {name!r} used {peak / 2**20:.0f} MiB"
        seen += 1
    assert seen > 30


def test_an_unused_bomb_is_never_read(real, tmp_path):
    _, members = real
    bomb = np.zeros(5_000_000)  # 40 MB of zeros, ~40 kB deflated, beside the real members
    path = _write(tmp_path / "bomb.npz", _zip(_with(members, junk=bomb), zipfile.ZIP_DEFLATED))
    tracemalloc.start()
    try:
        model = nnkit.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT
    assert model.state_dict()["0.W"].shape == (6, 16)


@pytest.mark.slow
def test_byte_flips_never_load_silently_wrong(real, tmp_path):
    """Every single-byte flip either raises CheckpointError or loads the very same model (a flip in a
    zip field nobody reads); never different weights."""
    data, members = real
    good = nnkit.load(_write(tmp_path / "good.npz", data)).state_dict()
    refused = 0
    for pos in range(0, len(data), 5):
        for bit in (0x01, 0x80):
            flipped = bytearray(data)
            flipped[pos] ^= bit
            path = _write(tmp_path / "f.npz", bytes(flipped))
            tracemalloc.start()
            try:
                got = nnkit.load(path).state_dict()
            except CheckpointError:
                refused += 1
                continue
            except BaseException as exc:
                raise AssertionError(f"flip {bit:#x} at {pos}: {type(exc).__name__}: {exc}") from exc
            finally:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                assert peak < PEAK_LIMIT, f"flip at {pos} used {peak / 2**20:.0f} MiB"
            assert all(np.array_equal(got[k], good[k]) for k in good), f"flip at {pos} changed the weights"
    assert refused > len(data) // 5  # most flips land in checked bytes (data under a CRC, headers)


def _write(path, blob):
    path.write_bytes(blob)
    return path


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        nnkit.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        nnkit.load(tmp_path / "none.npz")
    with pytest.raises(CheckpointError):
        nnkit.load(tmp_path / "none.npz")


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError) and nnkit.CheckpointError is CheckpointError
