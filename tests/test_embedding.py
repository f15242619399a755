"""Embedding: integer token ids in, never cast to floats; its scatter-add backward equals PyTorch's; an id out
of range is refused naming the example and position, the model unchanged."""
import importlib.util

import numpy as np
import pytest

import nnkit
from tests.helpers import to_np

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
rng = np.random.default_rng(0)
IDS = rng.integers(0, 10, (6, 7))
Y = np.array([0, 1, 0, 1, 1, 0])


def _model(backend="numpy", padding_idx=None, **kw):
    return nnkit.Sequential([nnkit.Embedding(10, 4, padding_idx=padding_idx), nnkit.GRU(4, 5, return_sequences=False),
                             nnkit.Dense(5, 2)], backend=backend, seed=0, **kw)


def test_gradcheck_on_every_backend(make_backend):
    assert nnkit.gradcheck(_model(make_backend("float64")), IDS, Y, "cross_entropy") < 1e-6


@needs_torch
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_values_and_gradient_equal_pytorch(padding_idx):
    import torch

    model = nnkit.Sequential([nnkit.Embedding(10, 4, padding_idx=padding_idx)], dtype="float64", seed=0)
    emb = model.to_torch()[0]
    out = emb(torch.from_numpy(IDS))
    G = rng.standard_normal(tuple(out.shape))
    (out * torch.from_numpy(G)).sum().backward()
    np.testing.assert_allclose(to_np(model.forward(IDS)), out.detach().numpy(), rtol=1e-12)
    model.backward(G)
    np.testing.assert_allclose(model.layers[0].grads["weight"], emb.weight.grad.numpy(), rtol=1e-12, atol=1e-14)
    if padding_idx is not None:
        assert not np.any(model.layers[0].grads["weight"][padding_idx])
        assert not np.any(model.state_dict()["0.weight"][padding_idx])  # the padding row starts at zero
    back = nnkit.Sequential.from_torch(model.to_torch(), dtype="float64")
    assert back.layers[0].config() == model.layers[0].config()


def test_ids_stay_integers_even_under_a_mixed_policy():
    model = _model()
    X = nnkit.data.as_input(model, IDS)
    assert X.dtype.kind == "i"
    if HAS_TORCH:
        import torch

        mixed = _model("torch", precision="mixed_bfloat16")
        Xt = nnkit.data.as_input(mixed, IDS)
        assert Xt.dtype == torch.int64 and mixed.policy.cast_input(Xt).dtype == torch.int64
        hist = mixed.fit(IDS, Y, loss="cross_entropy", epochs=2, batch_size=3, verbose=0)
        assert np.all(np.isfinite(hist["loss"]))


def test_bad_ids_are_refused_naming_where_and_the_model_is_unchanged():
    model = _model()
    before = model.state_dict()
    bad = IDS.copy()
    bad[2, 5] = 10
    with pytest.raises(ValueError, match=r"X\[2, 5\] = 10 is not a token id of Embedding\(10, 4\): ids must lie in "
                                         r"\[0, 10\) \(example 2, position 5\)"):
        model.fit(bad, Y, loss="cross_entropy", epochs=1, verbose=0)
    bad[2, 5] = -1
    with pytest.raises(ValueError, match=r"X\[2, 5\] = -1"):
        model.predict(bad)
    with pytest.raises(TypeError, match="takes integer token ids, got X of dtype float64"):
        model.predict(IDS.astype(float))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match="padding_idx must be an id"):
        nnkit.Embedding(10, 4, padding_idx=10)


def test_a_character_model_trains_saves_and_exports(tmp_path):
    model = _model(dtype="float32")
    hist = model.fit(IDS, Y, loss="cross_entropy", optimizer=nnkit.optim.Adam(1e-2), epochs=10, batch_size=3,
                     verbose=0)
    assert hist["loss"][-1] < hist["loss"][0]
    model.save(tmp_path / "m.npz")
    np.testing.assert_allclose(to_np(nnkit.load(tmp_path / "m.npz").predict(IDS)), to_np(model.predict(IDS)),
                               rtol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    proto = model.export(None)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert proto.graph.input[0].type.tensor_type.elem_type == 7  # int64 token ids
    got = sess.run(None, {"input": IDS.astype(np.int64)})[0]
    np.testing.assert_allclose(got, to_np(model.predict(IDS)), rtol=1e-5, atol=1e-6)
