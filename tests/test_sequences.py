"""Sequences in the data path: variable lengths (padding, masks) through RNN/GRU/LSTM equal PyTorch's packed
sequences; per-position targets, losses, weights and metrics equal PyTorch's cross-entropy over the valid tokens;
SequencePool; pad_sequences and lengths refuse bad input."""
import importlib.util
import pickle

import numpy as np
import pytest

import nnkit
from nnkit.data import pad_sequences
from tests.helpers import to_np

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")


def _torch_name(name):
    return name.replace("_reverse", "") + "_l0" + ("_reverse" if name.endswith("_reverse") else "")


def _packed(torch, rnn, x, lengths, return_sequences):
    """PyTorch's packed-sequence run of ``rnn`` on padded x: the padded outputs (zero at padding), or h_n's
    directions side by side."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
    out, state = rnn(packed)
    if return_sequences:
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
    h = state[0] if isinstance(state, tuple) else state
    return h.transpose(0, 1).reshape(x.shape[0], -1)


GRID = [(kind, bi, rs, case) for kind in ("RNN", "GRU", "LSTM") for bi in (False, True) for rs in (True, False)
        for case in ("mixed", "one", "hidden1")]
CASES = {"mixed": ([5, 1, 3, 5], 2, 3), "one": ([1], 3, 2), "hidden1": ([2, 4], 1, 1)}  # lengths, F, H


@needs_torch
@pytest.mark.parametrize("kind,bi,rs,case", GRID, ids=[f"{k}-bi{int(b)}-seq{int(r)}-{c}" for k, b, r, c in GRID])
def test_masked_recurrence_equals_pytorch_packed_sequences(kind, bi, rs, case):
    import torch

    lengths, Fi, H = CASES[case]
    rng = np.random.default_rng(3)
    B, T = len(lengths), max(lengths) + (1 if case == "one" else 0)  # "one": a padded step after a length-1 sequence
    layer = getattr(nnkit, kind)(Fi, H, bidirectional=bi, return_sequences=rs)
    model = nnkit.Sequential([layer], dtype="float64", seed=2)
    rnn = getattr(torch.nn, kind)(Fi, H, batch_first=True, bidirectional=bi, dtype=torch.float64)
    with torch.no_grad():
        for name in layer.param_names:
            getattr(rnn, _torch_name(name)).copy_(torch.from_numpy(to_np(layer.params[name])))
    X = rng.standard_normal((B, T, Fi))
    lens = np.array(lengths)
    M = (np.arange(T)[None, :] < lens[:, None]).astype(np.float64)
    X = X * M[:, :, None] + 7.0 * (1 - M[:, :, None])  # padding that would show if it leaked
    xt = torch.from_numpy(X).requires_grad_(True)
    yt = _packed(torch, rnn, xt, lens, rs)
    G = rng.standard_normal(tuple(yt.shape))
    (yt * torch.from_numpy(G)).sum().backward()
    Y = model.forward_batch(model.backend.asarray(X), train=True, mask=model.backend.asarray(M))
    dX = layer.backward(G, need_dX=True)
    np.testing.assert_allclose(to_np(Y), yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(to_np(dX), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name in layer.param_names:
        np.testing.assert_allclose(to_np(layer.grads[name]), getattr(rnn, _torch_name(name)).grad.numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    if rs:
        assert np.all(to_np(Y)[M == 0] == 0.0)  # the padded outputs are zero


def _lm(V=7, d=4, H=5, bi=False, kind="GRU"):
    cell = getattr(nnkit, kind)(d, H, bidirectional=bi)
    return nnkit.Sequential([nnkit.Embedding(V, d), cell, nnkit.Dense(H * (2 if bi else 1), V)], dtype="float64",
                            seed=0)


def _token_data(n=5, V=7, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 7, size=n)
    lengths[0] = 6
    X = [rng.integers(0, V, size=t) for t in lengths]
    y = [rng.integers(0, V, size=t) for t in lengths]
    return X, y, lengths


@needs_torch
@pytest.mark.parametrize("bi", [False, True])
def test_per_token_cross_entropy_equals_pytorch_over_the_valid_tokens(bi):
    import torch
    import torch.nn.functional as tF

    model = _lm(bi=bi)
    X, y, lengths = _token_data()
    value, grads = model.value_and_grad(X, y, "cross_entropy")
    emb, cell, dense = model.layers
    W_e = torch.from_numpy(to_np(emb.params["weight"])).requires_grad_(True)
    rnn = torch.nn.GRU(4, 5, batch_first=True, bidirectional=bi, dtype=torch.float64)
    with torch.no_grad():
        for name in cell.param_names:
            getattr(rnn, _torch_name(name)).copy_(torch.from_numpy(to_np(cell.params[name])))
    W = torch.from_numpy(to_np(dense.params["W"])).requires_grad_(True)
    b = torch.from_numpy(to_np(dense.params["b"])).requires_grad_(True)
    Xp, _ = pad_sequences(X)
    Yp, _ = pad_sequences(y)
    h = _packed(torch, rnn, W_e[torch.from_numpy(Xp)], lengths, True)
    logits = h @ W + b
    valid = torch.from_numpy(np.arange(Xp.shape[1])[None, :] < lengths[:, None])
    ref = tF.cross_entropy(logits[valid], torch.from_numpy(Yp)[valid])  # the mean over the valid tokens
    ref.backward()
    assert abs(float(to_np(value)) - ref.item()) <= 1e-12 * abs(ref.item())
    np.testing.assert_allclose(to_np(grads["0.weight"]), W_e.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(to_np(grads["2.W"]), W.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(to_np(grads["2.b"]), b.grad.numpy(), rtol=1e-9, atol=1e-13)
    for name in cell.param_names:
        np.testing.assert_allclose(to_np(grads["1." + name]), getattr(rnn, _torch_name(name)).grad.numpy(),
                                   rtol=1e-9, atol=1e-13, err_msg=name)


def test_a_list_of_sequences_is_the_padded_array_with_its_lengths():
    X, y, lengths = _token_data()
    Xp, _ = pad_sequences(X)
    Yp, _ = pad_sequences(y)
    a, b = _lm(), _lm()
    va, ga = a.value_and_grad(X, y, "cross_entropy")
    vb, gb = b.value_and_grad(Xp, Yp, "cross_entropy", lengths=lengths)
    assert float(va) == float(vb)
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])
    # what padding holds does not matter: other ids and other targets there give the same loss
    Xo, Yo = Xp.copy(), Yp.copy()
    pad = np.arange(Xp.shape[1])[None, :] >= lengths[:, None]
    Xo[pad], Yo[pad] = 3, 5
    vc, gc = b.value_and_grad(Xo, Yo, "cross_entropy", lengths=lengths)
    assert float(vc) == pytest.approx(float(va), rel=1e-14)
    for k in ga:
        np.testing.assert_allclose(gc[k], ga[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_gradcheck_through_masks_on_every_backend(make_backend, kind):
    cell = getattr(nnkit, kind)(3, 4, bidirectional=True)
    model = nnkit.Sequential([cell, nnkit.Dense(8, 3)], backend=make_backend("float64"), seed=0)
    rng = np.random.default_rng(1)
    X = [rng.standard_normal((t, 3)) for t in (4, 1, 3)]
    y = [rng.integers(0, 3, size=t) for t in (4, 1, 3)]
    report = nnkit.gradcheck(model, X, y, "cross_entropy")
    assert report < 1e-6, str(report)


def test_a_wrong_mask_derivation_fails(monkeypatch):
    """A backward pass told every step is valid (h_n's gradient sent to the last padded step, the reverse
    direction's padding not gated) is caught by gradcheck."""
    from nnkit.layers import recurrent

    right = recurrent._Recurrent.backward

    def wrong(self, dY, need_dX=True):
        for d, (Xd, steps, M, H) in enumerate(self._cache):
            if M is not None:  # the backward pass told every step is valid
                self._cache[d] = (Xd, steps, M * 0.0 + 1.0, H)
        return right(self, dY, need_dX)

    monkeypatch.setattr(recurrent._Recurrent, "backward", wrong)
    model = nnkit.Sequential([nnkit.GRU(2, 3, return_sequences=False), nnkit.Dense(3, 2)], dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((t, 2)) for t in (4, 2)]
    report = nnkit.gradcheck(model, X, np.array([0, 1]), "cross_entropy")
    assert report > 1e-3 and report.failing()


def test_fit_evaluate_predict_on_sequences_of_different_lengths():
    rng = np.random.default_rng(0)
    V = 6
    X = [rng.integers(0, V, size=t) for t in rng.integers(2, 9, size=40)]
    y = [np.roll(x, -1) for x in X]  # predict the next id (cyclically): learnable from the current one
    model = nnkit.Sequential([nnkit.Embedding(V, 8), nnkit.GRU(8, 16), nnkit.Dense(16, V)], seed=0)
    hist = model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(0.02), epochs=15, batch_size=8,
                     verbose=0, validation_data=(X[:10], y[:10]))
    assert hist["loss"][-1] < hist["loss"][0]
    logs = model.evaluate(X, y, "cross_entropy")
    out = to_np(model.predict(X))
    lengths = np.array([len(x) for x in X])
    assert out.shape == (40, lengths.max(), V)
    valid = np.arange(out.shape[1])[None, :] < lengths[:, None]
    assert np.all(out[~valid] == 0.0)  # padded outputs are zero
    Yp, _ = pad_sequences(y)
    z = out[valid] - out[valid].max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = -logp[np.arange(valid.sum()), Yp[valid]].mean()  # the mean over the valid positions
    assert logs["loss"] == pytest.approx(ce, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(float((out[valid].argmax(1) == Yp[valid]).mean()), abs=1e-9)
    assert hist["val_loss"][-1] == pytest.approx(model.evaluate(X[:10], y[:10], "cross_entropy")["loss"], rel=1e-5)


def test_per_position_weights_act_as_masks():
    X, y, lengths = _token_data(n=4)
    Xp, _ = pad_sequences(X)
    Yp, _ = pad_sequences(y)
    model = nnkit.Sequential([nnkit.Embedding(7, 4), nnkit.Dense(4, 7)], dtype="float64", seed=0)  # no recurrence
    full = (np.arange(Xp.shape[1])[None, :] < lengths[:, None]).astype(float)
    by_weight = model.evaluate(Xp, Yp, "cross_entropy", sample_weight=full)
    by_length = model.evaluate(Xp, Yp, "cross_entropy", lengths=lengths)
    assert by_weight["loss"] == pytest.approx(by_length["loss"], rel=1e-13)
    assert by_weight["accuracy"] == pytest.approx(by_length["accuracy"], rel=1e-13)
    w = full.copy()
    w[0, :3] = 0.0  # three of sequence 0's positions left out
    logs = model.evaluate(Xp, Yp, "cross_entropy", sample_weight=w)
    out = to_np(model.predict(Xp))
    z = out - out.max(axis=2, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    ell = -np.take_along_axis(logp, Yp[:, :, None], axis=2)[:, :, 0]
    assert logs["loss"] == pytest.approx((ell * w).sum() / w.sum(), rel=1e-12)


def test_per_position_targets_stay_labels_and_mse_takes_values():
    model = nnkit.Sequential([nnkit.Embedding(5, 3), nnkit.Dense(3, 5)], seed=0)
    ids = np.array([[0, 1, 2], [3, 4, 0]])
    T = nnkit.data.as_input(model, ids)
    assert T.dtype == np.int64
    labels = nnkit.data.as_target(model, np.array([[1, 2, 3], [4, 0, 1]]), 2, nnkit.get_loss("cross_entropy"))
    assert labels.shape == (2, 3) and labels.dtype == np.int64  # O(B·T) targets, no (B, T, V) one-hot
    with pytest.raises(ValueError, match="per-position targets"):
        nnkit.data.as_target(model, np.zeros((2, 4), dtype=np.int64), 2, nnkit.get_loss("cross_entropy"))
    reg = nnkit.Sequential([nnkit.Embedding(5, 3), nnkit.Dense(3, 2)], dtype="float64", seed=0)
    Y = np.random.default_rng(0).standard_normal((2, 3, 2))
    value, _ = reg.value_and_grad(ids, Y, "mse")
    out = to_np(reg.predict(ids))
    assert float(value) == pytest.approx(float(((out - Y) ** 2).mean()), rel=1e-12)


@needs_torch
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_sequence_pool_leaves_padding_out_and_equals_torch(mode):
    import torch

    rng = np.random.default_rng(0)
    lengths = np.array([4, 1, 3])
    X = rng.standard_normal((3, 4, 5))
    M = (np.arange(4)[None, :] < lengths[:, None]).astype(np.float64)
    pool = nnkit.SequencePool(mode)
    model = nnkit.Sequential([pool], dtype="float64", seed=0)
    Y = model.forward_batch(X, train=True, mask=M)
    G = rng.standard_normal((3, 5))
    dX = pool.backward(G)
    xt = torch.from_numpy(X).requires_grad_(True)
    m = torch.from_numpy(M)[:, :, None]
    if mode == "mean":
        yt = (xt * m).sum(1) / m.sum(1)
    else:
        yt = xt.masked_fill(m == 0, float("-inf")).max(dim=1).values
    (yt * torch.from_numpy(G)).sum().backward()
    np.testing.assert_allclose(to_np(Y), yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(to_np(dX), xt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_a_classifier_over_pooled_sequences_trains_and_gradchecks(make_backend):
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((t, 2)) for t in (3, 5, 2)]
    for mode in ("mean", "max"):
        model = nnkit.Sequential([nnkit.LSTM(2, 3), nnkit.SequencePool(mode), nnkit.Dense(3, 2)],
                                 backend=make_backend("float64"), seed=0)
        report = nnkit.gradcheck(model, X, np.array([0, 1, 1]), "cross_entropy")
        assert report < 1e-6, (mode, str(report))


def test_a_per_position_output_after_a_layer_that_moves_positions_is_refused():
    model = nnkit.Sequential([nnkit.Reshape((1, 6)), nnkit.Conv1D(1, 2, 3, padding=1), nnkit.Reshape((6, 2))],
                             seed=0)
    X = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    with pytest.raises(ValueError):  # lengths on a table that is no sequence: refused, not guessed
        model.value_and_grad(X, np.zeros((2, 6), dtype=np.int64), "cross_entropy", lengths=[3, 6])


def test_a_model_that_would_read_the_padding_as_data_is_refused():
    seqs = [np.ones((5, 3), np.float32), np.ones((2, 3), np.float32)]
    flat = nnkit.Sequential([nnkit.GRU(3, 4), nnkit.Flatten(), nnkit.Dense(20, 2)], seed=0)
    before = flat.state_dict()
    with pytest.raises(TypeError, match=r"Flatten\(\) would read the padding as data"):
        flat.fit(seqs, np.array([0, 1]), loss="cross_entropy", epochs=1, verbose=0)
    with pytest.raises(ValueError, match="padded sequences"):
        flat.predict(pad_sequences(seqs)[0], lengths=[5, 2])
    for k, v in before.items():
        np.testing.assert_array_equal(to_np(v), to_np(flat.state_dict()[k]))
    dense = nnkit.Sequential([nnkit.Dense(4, 2)], seed=0)  # float (T_i,) sequences: T on the feature axis
    with pytest.raises(TypeError, match=r"Dense\(4, 2\) would read"):
        dense.predict([np.ones(4, np.float32), np.ones(2, np.float32)])
    pooled = nnkit.Sequential([nnkit.Dense(3, 4), nnkit.SequencePool("max"), nnkit.Dense(4, 2)],
                              input_shape=(None, 3), seed=0)
    assert to_np(pooled.predict(seqs)).shape == (2, 2)  # Dense keeps positions; the pool takes the mask
    same = nnkit.Sequential([nnkit.GRU(3, 4), nnkit.Flatten(), nnkit.Dense(20, 2)], seed=0)
    assert to_np(same.predict([np.ones((5, 3)), np.ones((5, 3))])).shape == (2, 2)  # equal lengths: no padding


def test_layers_whose_statistics_would_count_the_padding_refuse_it_and_say_why():
    seqs = [np.ones((5, 3), np.float32), np.ones((2, 3), np.float32)]
    y = np.array([0, 1])
    cases = [(nnkit.BatchNorm(4),
              r"BatchNorm\(num_features=4.*statistics are per channel over the batch and every position.*LayerNorm"),
             (nnkit.GlobalAvgPool(), r"GlobalAvgPool\(\).*padding included.*SequencePool\('mean'\)"),
             (nnkit.Flatten(), r"Flatten\(\).*return_sequences=False")]
    for layer, message in cases:
        model = nnkit.Sequential([nnkit.Dense(3, 4), layer, nnkit.Dense(4, 2)], input_shape=(None, 3), seed=0) \
            if not isinstance(layer, nnkit.Flatten) else \
            nnkit.Sequential([nnkit.Dense(3, 4), layer, nnkit.Dense(20, 2)], input_shape=(5, 3), seed=0)
        before = {k: to_np(v).copy() for k, v in model.state_dict().items()}
        with pytest.raises(TypeError, match=message):
            model.fit(seqs, y, loss="cross_entropy", epochs=1, verbose=0)
        with pytest.raises(ValueError, match=message):  # padded arrays with their lengths: the same reason
            model.evaluate(pad_sequences(seqs)[0], y, "cross_entropy", lengths=[5, 2])
        for k, v in before.items():
            np.testing.assert_array_equal(v, to_np(model.state_dict()[k]))
    pooled = nnkit.Sequential([nnkit.Dense(3, 4), nnkit.LayerNorm(4), nnkit.SequencePool("mean"),
                               nnkit.Dense(4, 2)], input_shape=(None, 3), seed=0)
    assert to_np(pooled.predict(seqs)).shape == (2, 2)  # what the messages advise works


def test_streamed_batches_of_sequences():
    rng = np.random.default_rng(1)
    seqs = [rng.standard_normal((t, 3)).astype(np.float32) for t in rng.integers(1, 8, size=24)]
    labels = rng.integers(0, 2, size=24)
    batches = [(seqs[i:i + 8], labels[i:i + 8]) for i in range(0, 24, 8)]  # each batch a list of its sequences
    model = nnkit.Sequential([nnkit.GRU(3, 4, return_sequences=False), nnkit.Dense(4, 2)], seed=0)
    twin = model.clone()
    model.fit(batches, loss="cross_entropy", optimizer="sgd", epochs=2, verbose=0, shuffle=False)
    for _ in range(2):  # the same steps, one batch at a time
        for xb, yb in batches:
            twin.train_step(xb, yb, "cross_entropy", twin.optimizer or _sgd(twin))
    for k, v in model.params().items():
        np.testing.assert_allclose(to_np(v), to_np(twin.params()[k]), rtol=1e-5, atol=1e-6)
    out = to_np(model.predict(batches))
    assert out.shape == (24, 2)
    np.testing.assert_allclose(out, to_np(model.predict(seqs)), rtol=1e-5, atol=1e-6)


def _sgd(model):
    model.optimizer = nnkit.optim.get_optimizer("sgd")
    return model.optimizer


# -- bad input ---------------------------------------------------------------------------------------------
def test_pad_sequences_pads_and_refuses_bad_input():
    X, lengths = pad_sequences([np.array([1, 2, 3]), np.array([4])])
    np.testing.assert_array_equal(X, [[1, 2, 3], [4, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert X.dtype == np.int64
    F, _ = pad_sequences([np.ones((2, 3)), np.ones((1, 3))], maxlen=4, value=-1.0)
    assert F.shape == (2, 4, 3) and F[1, 1, 0] == -1.0
    with pytest.raises(TypeError, match="non-empty list"):
        pad_sequences([])
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pad_sequences([np.ones(2), np.ones(0)])
    with pytest.raises(ValueError, match="same shape"):
        pad_sequences([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="more than maxlen"):
        pad_sequences([np.ones(5)], maxlen=3)
    with pytest.raises(TypeError, match="numeric"):
        pad_sequences([np.array(["a", "b"])])
    with pytest.raises(ValueError, match="sort the sequences by length"):  # refused before allocating
        pad_sequences([np.ones(10_000_000, dtype=np.int8)] + [np.ones(1, dtype=np.int8)] * 2000)


def test_bad_lengths_are_refused_and_leave_the_model_unchanged():
    model = nnkit.Sequential([nnkit.GRU(2, 3), nnkit.Dense(3, 2)], seed=0)
    before = {k: to_np(v).copy() for k, v in model.params().items()}
    X = np.zeros((2, 4, 2), dtype=np.float32)
    y = np.zeros((2, 4), dtype=np.int64)
    for lengths, match in (([0, 4], r"\[1, 4\]"), ([5, 1], r"\[1, 4\]"), ([1], "2 integers"),
                           ([1.5, 2.0], "integers")):
        with pytest.raises(ValueError, match=match):
            model.fit(X, y, loss="cross_entropy", lengths=lengths, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="lengths"):
        model.fit([np.zeros((2, 2)), np.zeros((3, 2))], [np.zeros(2, int), np.zeros(3, int)], loss="cross_entropy",
                  lengths=[2, 3], verbose=0)
    with pytest.raises(ValueError, match="target i must have"):
        model.fit([np.zeros((2, 2)), np.zeros((3, 2))], [np.zeros(3, int), np.zeros(2, int)], loss="cross_entropy",
                  verbose=0)
    for k, v in model.params().items():
        np.testing.assert_array_equal(to_np(v), before[k])


def test_token_ids_out_of_range_name_the_example_and_position():
    model = nnkit.Sequential([nnkit.Embedding(5, 3), nnkit.GRU(3, 2), nnkit.Dense(2, 5)], seed=0)
    X = [np.array([1, 2, 3]), np.array([4, 9])]
    with pytest.raises(ValueError, match=r"X\[1, 1\] = 9 .*example 1, position 1"):
        model.fit(X, [np.array([1, 2, 3]), np.array([4, 0])], loss="cross_entropy", verbose=0)


# -- batches padded to their own longest sequence; length buckets ------------------------------------------------
def _ragged(n=40, V=7, seed=3):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 12, size=n)
    lengths[5] = 20  # one long sequence: the data set's padding is 20 steps, most batches' far less
    X = [rng.integers(0, V, size=int(t)) for t in lengths]
    y = [rng.integers(0, V, size=int(t)) for t in lengths]
    return X, y, lengths


@pytest.mark.parametrize("pooled", [False, True])
def test_batches_are_cut_to_their_own_longest_sequence(monkeypatch, pooled):
    """Each batch runs as many steps as its longest sequence, and the fit equals one whose batches all keep the
    data set's padding (the cut steps are padding in every row)."""
    X, y, lengths = _ragged()
    labels = np.array([int(t) % 3 for t in lengths])

    def model():
        layers = [nnkit.Embedding(7, 4), nnkit.GRU(4, 5, bidirectional=True, return_sequences=not pooled),
                  nnkit.Dense(10, 3 if pooled else 7)]
        return nnkit.Sequential(layers, dtype="float64", seed=0)

    target = labels if pooled else y
    seen = []
    a = model()
    real = a.layers[1].forward
    monkeypatch.setattr(a.layers[1], "forward", lambda X, **kw: (seen.append(X.shape[1]), real(X, **kw))[1])
    a.fit(X, target, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.2), epochs=2, batch_size=8, verbose=0)
    order_free = max(seen)
    assert order_free == 20 and min(seen) < 20  # the batch without the long sequence ran fewer steps
    b = model()
    monkeypatch.setattr(nnkit.data.batches, "_trims", lambda *args: False)  # the data set's padding in every batch
    b.fit(X, target, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.2), epochs=2, batch_size=8, verbose=0)
    for k, p in a.params().items():
        np.testing.assert_allclose(to_np(p), to_np(b.params()[k]), rtol=1e-12, atol=1e-14, err_msg=k)


def test_bucket_groups_similar_lengths_and_refuses_what_it_cannot_order():
    X, y, lengths = _ragged(n=200)
    rng = np.random.default_rng(0)
    order = nnkit.data.bucketed(rng.permutation(200), lengths, 16, rng, batches_per_bucket=4)
    assert sorted(order.tolist()) == list(range(200))  # every sequence once
    spread = [np.ptp(lengths[order[s:s + 16]]) for s in range(0, 192, 16)]
    shuffled = [np.ptp(lengths[p]) for p in np.array_split(rng.permutation(200)[:192], 12)]
    assert np.mean(spread) < 0.5 * np.mean(shuffled)
    model = nnkit.Sequential([nnkit.Embedding(7, 4), nnkit.GRU(4, 5), nnkit.Dense(5, 7)], dtype="float64", seed=0)
    h = model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, bucket=True, verbose=0)
    assert np.all(np.isfinite(h["loss"]))
    with pytest.raises(ValueError, match="needs shuffle=True"):
        model.fit(X, y, loss="cross_entropy", epochs=1, shuffle=False, bucket=True, verbose=0)
    with pytest.raises(ValueError, match="list of sequences"):
        model.fit(np.zeros((8, 5), dtype=np.int64), np.zeros((8, 5), dtype=np.int64), loss="cross_entropy",
                  epochs=1, bucket=True, verbose=0)


@pytest.mark.parametrize("kind,bi,rs", [(k, b, r) for k in ("RNN", "GRU", "LSTM") for b in (False, True)
                                        for r in (True, False)])
def test_onnx_with_lengths_equals_predict_on_a_variable_length_batch(kind, bi, rs):
    """``export(lengths=True)``: ONNX Runtime on a padded batch with its lengths equals ``predict`` — the
    recurrent operators stop at each sequence's end (sequence_lens), a per-position output is zero at padding."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    layers = [nnkit.Embedding(9, 3), getattr(nnkit, kind)(3, 4, bidirectional=bi, return_sequences=rs),
              nnkit.Dense(4 * (2 if bi else 1), 5)]
    model = nnkit.Sequential(layers, seed=0, input_shape=(None,))
    rng = np.random.default_rng(1)
    lengths = np.array([6, 1, 4])
    X = rng.integers(0, 9, size=(3, 6))
    sess = ort.InferenceSession(model.export(None, lengths=True).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": X.astype(np.int64), "lengths": lengths.astype(np.int64)})[0]
    np.testing.assert_allclose(got, to_np(model.predict(X, lengths=lengths)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_onnx_lengths_through_sequence_pool_equal_predict(mode):
    """SequencePool in an exported graph with lengths: the mean or max over each sequence's valid steps, after a
    per-position Dense (the padded steps are not zero there) and a recurrent layer."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = nnkit.Sequential([nnkit.Dense(3, 4), nnkit.Tanh(), nnkit.GRU(4, 5, bidirectional=True),
                              nnkit.SequencePool(mode), nnkit.Dense(10, 2)], seed=0, input_shape=(None, 3))
    rng = np.random.default_rng(2)
    seqs = [rng.standard_normal((n, 3)).astype(np.float32) for n in (6, 1, 4, 2)]
    X, lengths = nnkit.data.pad_sequences(seqs, value=7.0)  # a padding value that would show if it were read
    sess = ort.InferenceSession(model.export(None, lengths=True).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": X, "lengths": lengths.astype(np.int64)})[0]
    np.testing.assert_allclose(got, to_np(model.predict(seqs)), rtol=1e-5, atol=1e-6)
    one = sess.run(None, {"input": X[:1], "lengths": np.array([6], np.int64)})[0]  # no padding at all
    np.testing.assert_allclose(one, got[:1], rtol=1e-5, atol=1e-6)


def test_onnx_lengths_are_refused_through_a_layer_that_cannot_take_them():
    pytest.importorskip("onnx")

    class MeanOfAll(nnkit.SequencePool):  # a user's mask-taking layer whose ONNX form knows no lengths
        onnx_lengths = False

    model = nnkit.Sequential([nnkit.GRU(3, 4), MeanOfAll("mean"), nnkit.Dense(4, 2)], seed=0,
                             input_shape=(None, 3))
    with pytest.raises(ValueError, match="layer 1 MeanOfAll.*cannot take the lengths"):
        model.export(None, lengths=True)
    model.export(None)  # sequences of one length: as before


def test_sequence_pool_explains_its_formula_and_keeps_a_subclass_on_clone():
    model = nnkit.Sequential([nnkit.GRU(2, 3), nnkit.SequencePool("mean"), nnkit.Dense(3, 2)], dtype="float64",
                             seed=0, input_shape=(4, 2))
    text = str(model.explain(np.random.default_rng(0).standard_normal((2, 4, 2)), np.array([0, 1]),
                             "cross_entropy"))
    assert "Σ_t m_t X_t / Σ_t m_t" in text and "each valid step an equal share" in text

    class MyPool(nnkit.SequencePool):
        pass

    clone = nnkit.Sequential([nnkit.GRU(2, 3), MyPool("max")], seed=0).clone()
    assert type(clone.layers[1]).__name__ == "MyPool" and clone.layers[1].mode == "max"


@pytest.mark.slow
def test_compiled_fit_pads_batches_to_a_few_lengths_and_equals_the_eager_fit(monkeypatch):
    """compile=True on JAX: each batch padded to its length bucket (the next multiple of ⌈T/8⌉), so the step is
    traced once per bucket — at most 8 lengths — and the fit equals the eager one (each batch cut to its own
    longest) to float32 round-off."""
    pytest.importorskip("jax")
    from nnkit.data import batches as data  # where FitData looks _trimmed up

    rng = np.random.default_rng(5)
    seqs = [rng.standard_normal((t, 2)).astype(np.float32) for t in rng.integers(1, 13, size=32)]
    y = rng.integers(0, 2, size=32)
    seen = []
    trimmed = data._trimmed
    monkeypatch.setattr(data, "_trimmed", lambda batch, longest, steps: seen.append(longest) or
                        trimmed(batch, longest, steps))
    runs = {}
    for compile_ in (False, True):
        seen.clear()
        model = nnkit.Sequential([nnkit.GRU(2, 3, bidirectional=True, return_sequences=False), nnkit.Dense(6, 2)],
                                 backend="jax", seed=0)
        hist = model.fit(seqs, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(0.01), epochs=2, batch_size=8,
                         verbose=0, compile=compile_)
        runs[compile_] = (hist["loss"], {k: to_np(v) for k, v in model.state_dict().items()}, sorted(set(seen)))
    T = max(len(s) for s in seqs)
    grid = {data.compiled_length(n, T) for n in range(1, T + 1)}
    assert len(grid) <= nnkit.data.COMPILED_LENGTHS and set(runs[True][2]) <= grid
    assert len(runs[True][2]) < len(runs[False][2])  # fewer distinct lengths than the eager fit's exact cuts
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=2e-5)
    for k, v in runs[False][1].items():
        np.testing.assert_allclose(runs[True][1][k], v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_compiled_lengths():
    from nnkit.data import compiled_length

    assert [compiled_length(n, 29) for n in (1, 4, 5, 27, 29)] == [4, 4, 8, 28, 29]  # multiples of ⌈29/8⌉ = 4
    assert [compiled_length(n) for n in (1, 2, 3, 17, 64)] == [1, 2, 4, 32, 64]  # streams: powers of two
    assert len({compiled_length(n, 1000) for n in range(1, 1001)}) == 8


def test_a_compiled_fit_on_a_stream_pads_each_batch_to_a_power_of_two(monkeypatch):
    from nnkit.data import batches as data  # where FitData looks pad_sequences up

    rng = np.random.default_rng(1)
    seqs = [rng.standard_normal((t, 3)).astype(np.float32) for t in (5, 2, 3, 7, 1, 6, 9, 3, 4)]
    labels = rng.integers(0, 2, size=9)
    batches = [(seqs[i:i + 3], labels[i:i + 3]) for i in range(0, 9, 3)]  # longest 5, 7, 9
    padded = []
    pad = data.pad_sequences
    monkeypatch.setattr(data, "pad_sequences", lambda s, maxlen=None, **kw: padded.append(maxlen) or
                        pad(s, maxlen, **kw))
    model = nnkit.Sequential([nnkit.GRU(3, 4, return_sequences=False), nnkit.Dense(4, 2)], seed=0)
    twin = model.clone()
    model.fit(batches, loss="cross_entropy", epochs=1, verbose=0, compile=True)  # NumPy: the same step, eager
    assert padded == [8, 8, 16]
    twin.fit(batches, loss="cross_entropy", epochs=1, verbose=0)
    for k, v in model.params().items():  # the extra padding changes nothing
        np.testing.assert_allclose(to_np(v), to_np(twin.params()[k]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_to_torch_with_lengths_runs_packed_and_equals_predict(kind):
    """``to_torch(lengths=True)``: ``net(x, lengths)`` runs the recurrent layers as packed sequences and pools or
    masks as nnkit does — equal to ``predict(X, lengths=...)`` in float64; a model whose mask-taking layer has
    no PyTorch form for lengths is refused naming it."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    lengths = np.array([6, 1, 4, 6])
    pooled = nnkit.Sequential([nnkit.Dense(3, 4), nnkit.Tanh(), getattr(nnkit, kind)(4, 5, bidirectional=True),
                               nnkit.SequencePool("max"), nnkit.Dense(10, 2)], dtype="float64", seed=0,
                              input_shape=(None, 3))
    X = rng.standard_normal((4, 6, 3))
    X[1, 1:] = 7.0  # padding that would show if it were read
    final = nnkit.Sequential([getattr(nnkit, kind)(3, 4, bidirectional=True, return_sequences=False),
                              nnkit.Dense(8, 2)], dtype="float64", seed=1, input_shape=(None, 3))
    ids = rng.integers(0, 9, size=(4, 6))
    tokens = nnkit.Sequential([nnkit.Embedding(9, 3), getattr(nnkit, kind)(3, 4), nnkit.Dense(4, 9)],
                              dtype="float64", seed=2, input_shape=(None,))
    for model, x in ((pooled, X), (final, X), (tokens, ids)):
        net = model.to_torch(lengths=True)
        with torch.no_grad():
            got = net(torch.as_tensor(x), torch.as_tensor(lengths)).numpy()
        np.testing.assert_allclose(got, to_np(model.predict(x, lengths=lengths)), rtol=1e-10, atol=1e-12)
        again = pickle.loads(pickle.dumps(net))  # torch.save of the whole module: its classes found by name
        with torch.no_grad():
            np.testing.assert_array_equal(again(torch.as_tensor(x), torch.as_tensor(lengths)).numpy(), got)
    net = pooled.to_torch()  # without lengths: as before, every step counts
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.as_tensor(X)).numpy(), to_np(pooled.predict(X)), rtol=1e-10)

    class Plain(torch.nn.Module):  # a user's module that knows no lengths
        def __init__(self, mode):
            super().__init__()

        def forward(self, x):
            return x.mean(dim=1)

    class MeanOfAll(nnkit.SequencePool):
        @classmethod
        def torch_module(cls, nn):
            return Plain

    mine = nnkit.Sequential([nnkit.GRU(3, 4), MeanOfAll("mean")], seed=0, input_shape=(None, 3))
    with pytest.raises(ValueError, match="layer 1 MeanOfAll.*takes no lengths"):
        mine.to_torch(lengths=True)


def test_a_bucketed_variable_length_fit_resumes_bit_identically(tmp_path):
    """Checkpoints: a fit on lists of sequences with bucket=True and per-position targets, stopped after 2 of 4
    epochs and resumed from its checkpoint, ends with the weights and logs of the uninterrupted fit, bit for bit
    (the buckets and shuffles replayed from the model's generator)."""
    rng = np.random.default_rng(9)
    X = [rng.integers(0, 7, size=t) for t in rng.integers(1, 15, size=60)]
    y = [np.roll(x, 1) for x in X]

    def model():
        return nnkit.Sequential([nnkit.Embedding(7, 4), nnkit.GRU(4, 6, bidirectional=True), nnkit.Dense(12, 7)],
                                seed=0)

    kw = dict(loss="cross_entropy", optimizer="adam", batch_size=8, bucket=True, verbose=0,
              validation_data=(X[:10], y[:10]))
    whole = model()
    h_whole = whole.fit(X, y, epochs=4, **kw)
    ckpt = tmp_path / "run.npz"
    first = model()
    first.fit(X, y, epochs=2, checkpoint=ckpt, **kw)
    resumed = model()
    h_resumed = resumed.fit(X, y, epochs=4, checkpoint=ckpt, resume=True, **kw)
    for k, v in whole.state_dict().items():
        np.testing.assert_array_equal(to_np(resumed.state_dict()[k]), to_np(v), err_msg=k)
    np.testing.assert_array_equal(h_resumed["loss"], h_whole["loss"][2:])
    np.testing.assert_array_equal(h_resumed["val_loss"], h_whole["val_loss"][2:])
