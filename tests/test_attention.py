"""Attention: MultiHeadAttention, PositionalEmbedding and TransformerBlock equal PyTorch's autograd in float64
(nn.MultiheadAttention, F.scaled_dot_product_attention, nn.TransformerEncoderLayer(norm_first=True)), gradcheck on
every backend, a wrong derivation caught, composite layers everywhere parameters go."""
import pickle

import numpy as np
import pytest

import nnkit
from tests.helpers import to_np

E, F_IN, K = 8, 3, 4


def _torch():
    return pytest.importorskip("torch")


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _model(core, seed=0, **kw):
    """Dense(3, 8) → core → Dense(8, 4): so that the core layer's dX is checked through the first Dense's dW."""
    return nnkit.Sequential([nnkit.Dense(F_IN, E), core, nnkit.Dense(E, K)], dtype="float64", seed=seed,
                            input_shape=(None, F_IN), **kw)


def _against_torch(model, core_fn, X, Y, lengths=None):
    """The nnkit model's loss and every gradient against the same network in PyTorch (``core_fn(x, t_lengths)``
    builds the middle from the state dict): relative 1e-9 in float64."""
    torch = _torch()
    sd = {k: torch.tensor(to_np(v), requires_grad=True) for k, v in model.state_dict().items()}
    x = torch.tensor(X) @ sd["0.W"] + sd["0.b"]
    t_lengths = None if lengths is None else torch.tensor(lengths)
    y = core_fn(x, sd, t_lengths) @ sd["2.W"] + sd["2.b"]
    T = X.shape[1]
    w = torch.ones(X.shape[0], T, dtype=torch.float64) if lengths is None else \
        (torch.arange(T)[None, :] < t_lengths[:, None]).to(torch.float64)
    loss = (0.5 * ((y - torch.tensor(Y)) ** 2).sum(-1) * w).sum() / w.sum()
    loss.backward()
    if lengths is None:
        value, grads = model.value_and_grad(X, Y, "mse")
    else:
        value, grads = model.value_and_grad(X, Y, "mse", lengths=lengths)
    assert _rel(to_np(value), loss.detach().numpy()) < 1e-12
    for k, t in sd.items():
        assert _rel(to_np(grads[k]), t.grad.numpy()) < 1e-9, k
    return model


def _mha_torch(torch, sd, prefix, x, causal, lengths, heads):
    """nn.MultiheadAttention's own forward (F.multi_head_attention_forward) on the nnkit weights."""
    T = x.shape[1]
    am = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None
    pad = None if lengths is None else torch.arange(T)[None, :] >= lengths[:, None]
    return torch.nn.functional.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), E, heads, sd[prefix + "in_proj_weight"],
        sd[prefix + "in_proj_bias"], None, None, False, 0.0, sd[prefix + "out_proj_weight"],
        sd[prefix + "out_proj_bias"], training=False, key_padding_mask=pad, need_weights=False,
        attn_mask=am)[0].transpose(0, 1)


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T", [1, 6])
def test_attention_equals_torch_multihead_attention(heads, causal, T):
    torch = _torch()
    rng = np.random.default_rng(heads * 10 + T)
    X, Y = rng.standard_normal((3, T, F_IN)), rng.standard_normal((3, T, K))
    model = _model(nnkit.MultiHeadAttention(E, heads, causal=causal))
    model.load_state_dict({**model.state_dict(), "1.in_proj_bias": rng.standard_normal(3 * E) * 0.1,
                           "1.out_proj_bias": rng.standard_normal(E) * 0.1})
    _against_torch(model, lambda x, sd, L: _mha_torch(torch, sd, "1.", x, causal, L, heads), X, Y)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_padded_keys_equals_torch(causal):
    """Variable-length sequences: padded keys never attended (key_padding_mask), the padded positions' scores
    and outputs left out of the loss."""
    torch = _torch()
    rng = np.random.default_rng(3)
    lengths = np.array([6, 1, 4])
    X, Y = rng.standard_normal((3, 6, F_IN)), rng.standard_normal((3, 6, K))
    X[1, 1:] = 5.0  # padding that would show if it were attended
    model = _model(nnkit.MultiHeadAttention(E, 2, causal=causal))
    _against_torch(model, lambda x, sd, L: _mha_torch(torch, sd, "1.", x, causal, L, 2), X, Y, lengths)
    seqs = [X[b, :n] for b, n in enumerate(lengths)]  # the same as a list of sequences
    np.testing.assert_allclose(to_np(model.predict(seqs))[1, :1], to_np(model.predict(X, lengths=lengths))[1, :1])


def test_attention_equals_scaled_dot_product_attention():
    """The heads' core is F.scaled_dot_product_attention (causal) between torch's own projections."""
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((2, 5, F_IN)), rng.standard_normal((2, 5, K))

    def core(x, sd, _):
        qkv = x @ sd["1.in_proj_weight"].T + sd["1.in_proj_bias"]
        q, k, v = (a.reshape(2, 5, 2, 4).transpose(1, 2) for a in qkv.split(E, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 5, E)
        return o @ sd["1.out_proj_weight"].T + sd["1.out_proj_bias"]

    _against_torch(_model(nnkit.MultiHeadAttention(E, 2, causal=True)), core, X, Y)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_transformer_block_equals_torch_encoder_layer(causal, padded):
    """TransformerBlock = nn.TransformerEncoderLayer(norm_first=True, batch_first=True, GELU tanh), every gradient."""
    torch = _torch()
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((3, 6, F_IN)), rng.standard_normal((3, 6, K))
    lengths = np.array([6, 2, 5]) if padded else None
    model = _model(nnkit.TransformerBlock(E, 2, causal=causal))

    def core(x, sd, L):
        enc = torch.nn.TransformerEncoderLayer(E, 2, dim_feedforward=4 * E, dropout=0.0, batch_first=True,
                                               norm_first=True, activation=lambda a: torch.nn.functional.gelu(
                                                   a, approximate="tanh"), dtype=torch.float64)
        def put(mod, name, key, transpose=False):  # the nnkit tensor in place of the module's parameter
            delattr(mod, name)
            setattr(mod, name, sd[key].T if transpose else sd[key])

        sa = enc.self_attn
        put(sa, "in_proj_weight", "1.attn.in_proj_weight")
        put(sa, "in_proj_bias", "1.attn.in_proj_bias")
        put(sa.out_proj, "weight", "1.attn.out_proj_weight")
        put(sa.out_proj, "bias", "1.attn.out_proj_bias")
        for mod, part in ((enc.linear1, "fc"), (enc.linear2, "proj")):
            put(mod, "weight", f"1.{part}.W", transpose=True)
            put(mod, "bias", f"1.{part}.b")
        for mod, part in ((enc.norm1, "ln_1"), (enc.norm2, "ln_2")):
            put(mod, "weight", f"1.{part}.gamma")
            put(mod, "bias", f"1.{part}.beta")
        T = x.shape[1]
        am = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None
        pad = None if L is None else torch.arange(T)[None, :] >= L[:, None]
        return enc(x, src_mask=am, src_key_padding_mask=pad, is_causal=causal)

    for p in model.layers[1].parts.values():  # nonzero biases and gains: every term of the derivation counts
        for k, v in p.params.items():
            p.params[k] = v + model.backend.asarray(rng.standard_normal(v.shape) * 0.1, dtype=model.backend.dtype)
    _against_torch(model, core, X, Y, lengths)


def test_positional_embedding_learned_and_sinusoidal():
    _torch()
    rng = np.random.default_rng(6)
    X, Y = rng.standard_normal((2, 5, F_IN)), rng.standard_normal((2, 5, K))
    model = _model(nnkit.PositionalEmbedding(7, E))
    _against_torch(model, lambda x, sd, L: x + sd["1.weight"][:x.shape[1]], X, Y)
    sin = nnkit.PositionalEmbedding(7, E, kind="sinusoidal")
    nnkit.Sequential([sin], dtype="float64", seed=0)
    table = to_np(sin.buffers["table"])
    t, i = np.arange(7)[:, None], np.arange(0, E, 2)[None, :]
    np.testing.assert_allclose(table[:, 0::2], np.sin(t / 10000 ** (i / E)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(table[:, 1::2], np.cos(t / 10000 ** (i / E)), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"holds 7 positions \(max_len\), fewer than the sequences' 9"):
        _model(nnkit.PositionalEmbedding(7, E)).predict(np.zeros((1, 9, F_IN)))


def _gpt_like(backend, dtype="float64", causal=True, dropout=0.0):
    return nnkit.Sequential([nnkit.Embedding(11, E), nnkit.PositionalEmbedding(6, E),
                             nnkit.TransformerBlock(E, 2, mlp_ratio=2, causal=causal, dropout=dropout),
                             nnkit.LayerNorm(E), nnkit.Dense(E, 11)], backend=backend, dtype=dtype, seed=0)


def test_gradcheck_on_every_backend(make_backend):
    be = make_backend("float64")
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 11, size=(3, 6))
    targets = np.roll(ids, -1, axis=1)
    report = nnkit.gradcheck(_gpt_like(be), ids, targets, "cross_entropy")
    assert report < 1e-6, str(report)
    seqs = [ids[0, :6], ids[1, :2], ids[2, :4]]  # key padding on every backend too
    report = nnkit.gradcheck(_gpt_like(be), seqs, [np.roll(s, -1) for s in seqs], "cross_entropy")
    assert report < 1e-6, str(report)


def test_a_wrong_attention_derivation_fails(monkeypatch):
    """Dropping the softmax Jacobian's row-sum term (dS = P ⊙ dP) is caught by gradcheck."""
    from nnkit.layers import attention

    monkeypatch.setattr(attention, "softmax_rows_backward", lambda xp, P, dP: P * dP)
    rng = np.random.default_rng(8)
    model = _model(nnkit.MultiHeadAttention(E, 2, causal=True))
    report = nnkit.gradcheck(model, rng.standard_normal((2, 4, F_IN)), rng.standard_normal((2, 4, K)), "mse")
    assert report > 1e-3 and report.failing()


def test_a_composite_layer_needs_no_code_of_its_own_for_its_parameters(tmp_path):
    """The block's parts' parameters are named, frozen, saved, loaded, cloned, pickled and moved through
    ``children()`` alone."""
    model = _gpt_like("numpy")
    names = set(model.state_dict())
    assert {"2.attn.in_proj_weight", "2.ln_1.gamma", "2.fc.W", "2.proj.b", "1.weight"} <= names
    model.freeze(model.layers[2].parts["attn"])
    rng = np.random.default_rng(9)
    ids = rng.integers(0, 11, size=(4, 6))
    before = to_np(model.state_dict()["2.attn.in_proj_weight"]).copy()
    model.fit(ids, np.roll(ids, -1, axis=1), loss="cross_entropy", optimizer="adam", epochs=1, verbose=0)
    np.testing.assert_array_equal(to_np(model.state_dict()["2.attn.in_proj_weight"]), before)  # frozen
    assert not np.array_equal(to_np(model.state_dict()["2.fc.W"]), to_np(_gpt_like("numpy").state_dict()["2.fc.W"]))
    path = tmp_path / "gpt.npz"
    model.save(path)
    loaded = nnkit.load(path)
    assert loaded.layers[2].parts["attn"].trainable is False and loaded.layers[2].parts["fc"].trainable
    for other in (loaded, model.clone(), pickle.loads(pickle.dumps(model)), model.clone(backend="array_api_strict")):
        np.testing.assert_allclose(to_np(other.predict(ids)), to_np(model.predict(ids)), rtol=1e-12)


def test_attention_weights_are_explained_per_head(tmp_path):
    model = nnkit.Sequential([nnkit.Embedding(11, E), nnkit.MultiHeadAttention(E, 2, causal=True),
                              nnkit.Dense(E, 11)], dtype="float64", seed=0)
    ids = np.array([[1, 2, 3, 4]])
    report = model.explain(ids, np.array([[2, 3, 4, 5]]), "cross_entropy")
    P = report.values["P1"]
    assert P.shape == (1, 2, 4, 4)
    np.testing.assert_allclose(P.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(P[0, 0], 1) == 0)  # causal: no query looks ahead
    assert "attention weights" in str(report)
    pytest.importorskip("matplotlib")
    fig = nnkit.plots.attention(P, tmp_path / "heads.png", tokens="abcd")
    assert len(fig.axes) == 3 and (tmp_path / "heads.png").stat().st_size > 1000  # two heads and the colour bar
    with pytest.raises(ValueError, match=r"\(batch, heads, T, T\)"):
        nnkit.plots.attention(P[0, 0])


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_onnx_runtime_equals_predict_causal_and_variable_lengths(kind):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = nnkit.Sequential([nnkit.Embedding(11, E), nnkit.PositionalEmbedding(6, E, kind=kind),
                              nnkit.TransformerBlock(E, 2, causal=True), nnkit.MultiHeadAttention(E, 4),
                              nnkit.LayerNorm(E), nnkit.Dense(E, 11)], seed=0)
    rng = np.random.default_rng(10)
    ids = rng.integers(0, 11, size=(3, 6))
    sess = ort.InferenceSession(model.export(None).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": ids})[0], to_np(model.predict(ids)), rtol=1e-4, atol=1e-5)
    short = sess.run(None, {"input": ids[:, :3]})[0]  # T read from the input: the causal mask and positions follow
    np.testing.assert_allclose(short, to_np(model.predict(ids[:, :3])), rtol=1e-4, atol=1e-5)
    lengths = np.array([6, 1, 4])
    sess = ort.InferenceSession(model.export(None, lengths=True).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": ids, "lengths": lengths})[0]
    np.testing.assert_allclose(got, to_np(model.predict(ids, lengths=lengths)), rtol=1e-4, atol=1e-5)


def test_to_torch_and_from_torch_round_trip():
    torch = _torch()
    model = _gpt_like("numpy")
    model.layers[2].parts["attn"].params["in_proj_bias"] += 0.1  # nonzero biases travel too
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 11, size=(3, 6))
    net = model.to_torch()
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.as_tensor(ids)).numpy(), to_np(model.predict(ids)), rtol=1e-9,
                                   atol=1e-12)
    back = nnkit.Sequential.from_torch(net)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(to_np(back.state_dict()[k]), to_np(v), err_msg=k)
    assert repr(back.layers[2]) == repr(model.layers[2])
    lengths = np.array([6, 2, 5])
    with torch.no_grad():
        got = model.to_torch(lengths=True)(torch.as_tensor(ids), torch.as_tensor(lengths)).numpy()
    np.testing.assert_allclose(got, to_np(model.predict(ids, lengths=lengths)), rtol=1e-9, atol=1e-12)
    again = pickle.loads(pickle.dumps(net))
    with torch.no_grad():
        np.testing.assert_array_equal(again(torch.as_tensor(ids)).numpy(), net(torch.as_tensor(ids)).numpy())


def _tied(backend="numpy", bias=False):
    return nnkit.Sequential([nnkit.Embedding(11, E), nnkit.PositionalEmbedding(6, E),
                             nnkit.TransformerBlock(E, 2, causal=True), nnkit.LayerNorm(E),
                             nnkit.TiedDense(0, bias=bias)], backend=backend, dtype="float64", seed=0)


def test_tied_weights_receive_the_sum_of_both_uses_gradients(make_backend):
    """The head's matrix is the embedding's: one parameter, whose gradient is the sum of the lookup's and the
    head's (gradcheck on every backend; PyTorch's autograd through a shared Parameter to 1e-9)."""
    be = make_backend("float64")
    rng = np.random.default_rng(12)
    ids = rng.integers(0, 11, size=(3, 6))
    targets = np.roll(ids, -1, axis=1)
    model = _tied(be, bias=True)
    assert "0.weight" in model.state_dict() and not any(k.startswith("4.") and k != "4.b" for k in model.state_dict())
    report = nnkit.gradcheck(model, ids, targets, "cross_entropy")
    assert report < 1e-6, str(report)


def test_tied_weights_equal_torch_and_survive_save_clone_and_export(tmp_path):
    torch = _torch()
    model = _tied()
    rng = np.random.default_rng(13)
    ids = rng.integers(0, 11, size=(3, 6))
    targets = np.roll(ids, -1, axis=1)
    net = model.to_torch()
    assert net[4].weight is net[0].weight  # one Parameter in PyTorch too
    torch.nn.functional.cross_entropy(net.train()(torch.as_tensor(ids)).reshape(-1, 11),
                                      torch.as_tensor(targets).reshape(-1)).backward()
    _, grads = model.value_and_grad(ids, targets, "cross_entropy")
    assert _rel(to_np(grads["0.weight"]), net[0].weight.grad.numpy()) < 1e-9
    only_lookup = net[0].weight.grad.numpy() - torch.autograd.grad(  # the head's share is really in the sum
        torch.nn.functional.cross_entropy(net(torch.as_tensor(ids)).reshape(-1, 11),
                                          torch.as_tensor(targets).reshape(-1)), net[4].weight)[0].numpy()
    assert not np.allclose(only_lookup, net[0].weight.grad.numpy())
    back = nnkit.Sequential.from_torch(net)
    assert repr(back.layers[4]) == "TiedDense('0')"
    np.testing.assert_allclose(to_np(back.predict(ids)), to_np(model.predict(ids)), rtol=1e-12)
    model.fit(ids, targets, loss="cross_entropy", optimizer="adam", epochs=2, verbose=0)
    model.save(tmp_path / "tied.npz")
    for other in (nnkit.load(tmp_path / "tied.npz"), model.clone(), pickle.loads(pickle.dumps(model))):
        np.testing.assert_allclose(to_np(other.predict(ids)), to_np(model.predict(ids)), rtol=1e-12)
        assert other.layers[4].source is other.layers[0]
    with pytest.raises(ValueError, match="shares the weight of layer '3'.*not before it"):
        nnkit.Sequential([nnkit.Embedding(11, E), nnkit.TiedDense(3), nnkit.Dense(11, E), nnkit.Embedding(11, E)])


@pytest.mark.slow
def test_compiled_fit_on_jax_equals_the_eager_one():
    pytest.importorskip("jax")
    rng = np.random.default_rng(14)
    ids = rng.integers(0, 11, size=(16, 6))
    runs = []
    for compile_ in (False, True):
        model = _tied("jax")
        model = model.clone(dtype="float32")
        # SGD, not Adam: the key bias's true gradient is 0 (a softmax row ignores a shift common to its keys), and
        # Adam would blow its round-off up into steps of the full learning rate, compiled or not
        hist = model.fit(ids, np.roll(ids, -1, axis=1), loss="cross_entropy", optimizer=nnkit.optim.SGD(0.1),
                         epochs=2, batch_size=8, verbose=0, compile=compile_)
        runs.append((hist["loss"], {k: to_np(v) for k, v in model.state_dict().items()}))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5)
    for k, v in runs[0][1].items():
        np.testing.assert_allclose(runs[1][1][k], v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_mixed_precision_keeps_the_softmax_in_float32():
    """Under mixed_bfloat16 (torch backend) the scores, the softmax and its row sums are float32 and the step
    follows the float32 one closely."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(15)
    ids = rng.integers(0, 11, size=(4, 6))
    targets = np.roll(ids, -1, axis=1)
    full = _tied("torch").clone(dtype="float32")
    mixed = full.clone(precision="mixed_bfloat16")
    v32, g32 = full.value_and_grad(ids, targets, "cross_entropy")
    v16, g16 = mixed.value_and_grad(ids, targets, "cross_entropy")
    attn = mixed.layers[2].parts["attn"]
    mixed.forward(ids)
    assert str(attn._cache[5].dtype).endswith("float32")  # P
    assert str(attn._cache[2].dtype).endswith("bfloat16")  # Q, in the compute dtype
    assert abs(float(to_np(v16)) - float(to_np(v32))) < 2e-2 * abs(float(to_np(v32)))
    for k, g in g32.items():
        assert str(g16[k].dtype).endswith("float32"), k
        assert _rel(to_np(g16[k]), to_np(g)) < 0.1, k
