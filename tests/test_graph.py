"""Models beyond a stack: ``nnkit.Input``, layer calls on symbolic tensors, the merge layers and ``nnkit.Model`` —
a graph walked forward in order and backward in reverse, fan-outs and shared layers summing their gradients —
checked against PyTorch's autograd in float64 and against finite differences on every backend."""
import pickle

import numpy as np
import pytest

import nnkit
from nnkit.layers import graph as graph_module

RNG = np.random.default_rng(0)


def torch_or_skip():
    return pytest.importorskip("torch")


def close(a, b, rtol=1e-9, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol,
                               atol=atol)


def grads_of(model, X, y, loss, **kw):
    value, grads = model.value_and_grad(X, y, loss, **kw)
    return float(value), {k: model.backend.to_numpy(g) for k, g in grads.items()}


# -- building ----------------------------------------------------------------------------------------------------
def test_a_graph_is_built_from_layer_calls_and_its_shapes_are_checked_at_once():
    x = nnkit.Input((4,), name="x")
    h = nnkit.Dense(4, 8)(x)
    assert h.shape == (8,) and h.node.layer.out_features == 8
    with pytest.raises(ValueError, match=r"Dense\(5, 2\) called on a tensor \(B, 8\): it expects 5 input features"):
        nnkit.Dense(5, 2)(h)
    with pytest.raises(ValueError, match=r"Add\(\) called on .*needs inputs of one shape"):
        nnkit.Add()([h, x])
    with pytest.raises(ValueError, match=r"Concatenate\(axis=-1\) called on .*equal sizes off the joined axis"):
        nnkit.Concatenate()([nnkit.Input((2, 3)), nnkit.Input((4, 5))])
    with pytest.raises(TypeError, match="takes a list of tensors"):
        nnkit.Add()(h)
    with pytest.raises(TypeError, match="takes one tensor, got a list of 2"):
        nnkit.Dense(8, 2)([h, h])
    with pytest.raises(TypeError, match="symbolic tensors"):
        nnkit.Dense(4, 2)(np.zeros((2, 4)))
    other = nnkit.Input((4,))
    with pytest.raises(ValueError, match="not among the model's inputs"):
        nnkit.Model(x, nnkit.Add()([h, nnkit.Dense(4, 8)(other)]))
    with pytest.raises(ValueError, match="is not used by any output"):
        nnkit.Model([x, other], h)
    with pytest.raises(ValueError, match="Input shape must be positive sizes"):
        nnkit.Input((0, 3))
    model = nnkit.Model(x, nnkit.Dense(8, 2)(h), seed=0)
    assert isinstance(nnkit.Sequential.mlp([2, 3]), nnkit.Model)  # Sequential is the chain case
    assert model.input_names == ["x"] and model.output_names == ["output"] and model.n_outputs == 2


def _fanout_model(backend="numpy", dtype="float64", precision=None):
    """x → Dense → (ReLU, Tanh) → Concatenate → Dense: a value read by two nodes."""
    x = nnkit.Input((3,), name="x")
    h = nnkit.Dense(3, 5)(x)
    joined = nnkit.Concatenate()([nnkit.ReLU()(h), nnkit.Tanh()(h)])
    return nnkit.Model(x, nnkit.Dense(10, 2)(joined), backend=backend, dtype=dtype, seed=0, precision=precision)


def test_a_fan_out_sums_its_gradients_on_every_backend(make_backend):
    model = _fanout_model(backend=make_backend("float64"))
    X, y = RNG.standard_normal((6, 3)), np.array([0, 1, 1, 0, 1, 0])
    report = nnkit.gradcheck(model, X, y, "cross_entropy")
    assert report < 1e-7, report


def test_a_backward_pass_that_drops_a_branch_of_a_fan_out_fails_the_check(monkeypatch):
    model = _fanout_model()
    X, y = RNG.standard_normal((6, 3)), np.array([0, 1, 1, 0, 1, 0])
    assert nnkit.gradcheck(model, X, y, "cross_entropy") < 1e-7

    def first_branch_only(plan, d_outputs, need_inputs=False):  # a mutant: a fan-out keeps one branch's gradient
        grads = [None] * plan.n_values
        for slot, d in zip(plan.outputs, d_outputs):
            grads[slot] = d
        for layer, src, dst, srcs, shared, _, step in plan.backward_order:
            if grads[dst] is None:
                continue
            dX = layer.backward(grads[dst], need_dX=step.need_dx)
            if step.need_dx:
                for v, d in zip(srcs or (src,), dX if srcs else (dX,)):
                    grads[v] = d if grads[v] is None else grads[v]  # the bug: the second branch is dropped

    monkeypatch.setattr(graph_module, "walk_backward", first_branch_only)
    assert nnkit.gradcheck(model, X, y, "cross_entropy") > 1e-3


def test_x_plus_f_of_x_written_with_add_equals_residual():
    dense1, dense2 = nnkit.Dense(4, 4), nnkit.Dense(4, 4)
    x = nnkit.Input((4,))
    graph = nnkit.Model(x, nnkit.Add()([x, dense2(nnkit.ReLU()(dense1(x)))]), dtype="float64", seed=0)
    chain = nnkit.Sequential([nnkit.Residual([nnkit.Dense(4, 4), nnkit.ReLU(), nnkit.Dense(4, 4)])], dtype="float64")
    state = graph.state_dict()
    chain.load_state_dict({"0.0.W": state["0.W"], "0.0.b": state["0.b"], "0.2.W": state["2.W"],
                           "0.2.b": state["2.b"]})
    X, y = RNG.standard_normal((5, 4)), RNG.standard_normal((5, 4))
    np.testing.assert_array_equal(graph.predict(X), chain.predict(X))
    vg, gg = grads_of(graph, X, y, "mse")
    vc, gc = grads_of(chain, X, y, "mse")
    assert vg == vc
    for a, b in (("0.W", "0.0.W"), ("0.b", "0.0.b"), ("2.W", "0.2.W"), ("2.b", "0.2.b")):
        close(gg[a], gc[b], rtol=1e-12)


# -- against PyTorch's autograd, float64 ------------------------------------------------------------------------
def test_a_siamese_network_equals_autograd():
    """One encoder called on two inputs (its gradient the sum of both calls'), |a − b| into a head."""
    torch = torch_or_skip()
    encoder, act, head = nnkit.Dense(4, 6), nnkit.Tanh(), nnkit.Dense(6, 3)
    a, b = nnkit.Input((4,), name="a"), nnkit.Input((4,), name="b")
    ea, eb = act(encoder(a)), act(encoder(b))
    model = nnkit.Model({"a": a, "b": b}, head(nnkit.Abs()(nnkit.Subtract()([ea, eb]))), dtype="float64", seed=1)
    assert len(model.layers) == 5 and len(model._plan.steps) == 7  # the encoder and its activation: once each
    A, B, y = RNG.standard_normal((7, 4)), RNG.standard_normal((7, 4)), RNG.integers(0, 3, 7)
    value, grads = grads_of(model, {"a": A, "b": B}, y, "cross_entropy")
    W = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    ta, tb = (torch.tanh(torch.tensor(M) @ W["0.W"] + W["0.b"]) for M in (A, B))
    out = torch.abs(ta - tb) @ W["4.W"] + W["4.b"]
    loss = torch.nn.functional.cross_entropy(out, torch.tensor(y))
    loss.backward()
    close(value, loss.item())
    close(model.predict([A, B]), out.detach().numpy())
    for k, t in W.items():
        close(grads[k], t.grad.numpy())


def test_a_two_input_model_of_a_table_and_a_sequence_equals_autograd():
    """Dense on a table, a GRU on a sequence, concatenated into a head."""
    torch = torch_or_skip()
    table, seq = nnkit.Input((5,), name="table"), nnkit.Input((6, 3), name="seq")
    t = nnkit.ReLU()(nnkit.Dense(5, 4)(table))
    s = nnkit.GRU(3, 4, return_sequences=False)(seq)
    model = nnkit.Model([table, seq], nnkit.Dense(8, 2)(nnkit.Concatenate()([t, s])), dtype="float64", seed=2)
    Xt, Xs, y = RNG.standard_normal((5, 5)), RNG.standard_normal((5, 6, 3)), RNG.integers(0, 2, 5)
    value, grads = grads_of(model, [Xt, Xs], y, "cross_entropy")
    state = model.state_dict()
    W = {k: torch.tensor(v, requires_grad=True) for k, v in state.items()}
    gru = torch.nn.GRU(3, 4, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(gru, name).copy_(torch.tensor(state[f"2.{name[:-3]}"]))
    _, h = gru(torch.tensor(Xs))
    joined = torch.cat([torch.relu(torch.tensor(Xt) @ W["0.W"] + W["0.b"]), h[0]], dim=1)
    out = joined @ W["4.W"] + W["4.b"]
    loss = torch.nn.functional.cross_entropy(out, torch.tensor(y))
    loss.backward()
    close(value, loss.item())
    for k in ("0.W", "0.b", "4.W", "4.b"):
        close(grads[k], W[k].grad.numpy())
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        close(grads[f"2.{name[:-3]}"], getattr(gru, name).grad.numpy())


def test_a_two_output_model_with_weighted_losses_equals_autograd():
    """A softmax head and a regression head on one trunk: L = 1·CE + 0.5·MSE."""
    torch = torch_or_skip()
    x = nnkit.Input((4,))
    trunk = nnkit.ReLU()(nnkit.Dense(4, 8)(x))
    model = nnkit.Model(x, {"kind": nnkit.Dense(8, 3)(trunk), "size": nnkit.Dense(8, 1)(trunk)},
                        dtype="float64", seed=3)
    X, kind, size = RNG.standard_normal((6, 4)), RNG.integers(0, 3, 6), RNG.standard_normal(6)
    value, grads = grads_of(model, X, {"kind": kind, "size": size}, {"kind": "cross_entropy", "size": "mse"},
                            loss_weights={"kind": 1.0, "size": 0.5})
    W = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    h = torch.relu(torch.tensor(X) @ W["0.W"] + W["0.b"])
    F = torch.nn.functional
    loss = F.cross_entropy(h @ W["2.W"] + W["2.b"], torch.tensor(kind)) + \
        0.5 * 0.5 * F.mse_loss((h @ W["3.W"] + W["3.b"])[:, 0], torch.tensor(size))  # nnkit's MSE: ½ the mean
    loss.backward()
    close(value, loss.item())
    for k, t in W.items():
        close(grads[k], t.grad.numpy())
    out = model.predict(X)
    assert set(out) == {"kind", "size"} and out["kind"].shape == (6, 3) and out["size"].shape == (6, 1)


def test_a_u_net_like_conv_net_equals_autograd():
    """Down (conv, pool), up (a transposed convolution), the skip joined on the channels."""
    torch = torch_or_skip()
    F = torch.nn.functional
    x = nnkit.Input((1, 8, 8))
    skip = nnkit.ReLU()(nnkit.Conv2D(1, 4, 3, padding=1)(x))
    down = nnkit.ReLU()(nnkit.Conv2D(4, 4, 3, padding=1)(nnkit.MaxPool2D(2)(skip)))
    up = nnkit.ConvTranspose2D(4, 4, 2, stride=2)(down)
    out = nnkit.Conv2D(8, 1, 1)(nnkit.Concatenate(axis=1)([up, skip]))
    model = nnkit.Model(x, nnkit.Flatten()(out), dtype="float64", seed=4)
    X, y = RNG.standard_normal((2, 1, 8, 8)), RNG.standard_normal((2, 64))
    value, grads = grads_of(model, X, y, "mse")
    W = {k: torch.tensor(v, requires_grad=True) for k, v in model.state_dict().items()}
    keys = sorted({k.split(".")[0] for k in W}, key=int)
    c1, c2, ct, c3 = keys
    s = F.relu(F.conv2d(torch.tensor(X), W[f"{c1}.W"], W[f"{c1}.b"], padding=1))
    d = F.relu(F.conv2d(F.max_pool2d(s, 2), W[f"{c2}.W"], W[f"{c2}.b"], padding=1))
    u = F.conv_transpose2d(d, W[f"{ct}.W"], W[f"{ct}.b"], stride=2)
    o = F.conv2d(torch.cat([u, s], dim=1), W[f"{c3}.W"], W[f"{c3}.b"]).reshape(2, -1)
    loss = 0.5 * ((o - torch.tensor(y)) ** 2).sum() / 2  # nnkit's MSE: ½‖a − y‖² per row, the mean over rows
    loss.backward()
    close(value, loss.item())
    close(model.predict(X), o.detach().numpy())
    for k, t in W.items():
        close(grads[k], t.grad.numpy())


# -- every door -------------------------------------------------------------------------------------------------
def test_a_graph_of_one_input_and_output_trains_saves_loads_clones_and_pickles(tmp_path):
    model = _fanout_model(dtype="float32")
    X, y = nnkit.datasets.make_moons(n_samples=128, seed=0)
    X = np.c_[X, X[:, :1] * X[:, 1:]]
    history = model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.Adam(0.02), epochs=30, verbose=0,
                        validation_split=0.2)
    assert history["loss"][-1] < history["loss"][0] and model.evaluate(X, y, "cross_entropy")["accuracy"] > 0.85
    model.save(tmp_path / "g.npz")
    loaded = nnkit.load(tmp_path / "g.npz")
    assert type(loaded) is nnkit.Model and loaded.graph_config() == model.graph_config()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(model.clone().predict(X), model.predict(X))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(X), model.predict(X))
    loaded.fit(X, y, loss="cross_entropy", epochs=1, verbose=0)  # goes on with the saved optimizer
    assert "Concatenate" in model.summary() and "connected to" in model.summary()


def test_a_shared_layer_keeps_one_set_of_parameters_and_saves_once(tmp_path):
    encoder = nnkit.Dense(3, 3)
    a, b = nnkit.Input((3,), name="a"), nnkit.Input((3,), name="b")
    model = nnkit.Model([a, b], nnkit.Add()([encoder(a), encoder(b)]), dtype="float64", seed=0)
    assert list(model.state_dict()) == ["0.W", "0.b"]
    A, B = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    _, grads = grads_of(model, [A, B], np.zeros((4, 3)), "mse")
    W, bias = model.state_dict()["0.W"], model.state_dict()["0.b"]
    out = A @ W + bias + B @ W + bias
    close(grads["0.W"], (A + B).T @ (out / 4))  # the sum of both calls' gradients (L = Σ‖out_n‖² / 2N)
    model.save(tmp_path / "s.npz")
    np.testing.assert_array_equal(nnkit.load(tmp_path / "s.npz").predict([A, B]), model.predict([A, B]))


def test_several_inputs_are_named_in_every_error_and_the_model_is_unchanged():
    a, b = nnkit.Input((2,), name="a"), nnkit.Input((3,), name="b")
    model = nnkit.Model({"a": a, "b": b}, nnkit.Dense(5, 1)(nnkit.Concatenate()([a, b])), dtype="float64", seed=0)
    before = model.state_dict()
    A, B, y = np.ones((4, 2)), np.ones((4, 3)), np.zeros(4)
    opt = nnkit.optim.SGD(0.1)
    with pytest.raises(ValueError, match=r"X: no X for 'b' \(the model's are 'a', 'b'\)"):
        model.train_step({"a": A}, y, "mse", opt)
    with pytest.raises(ValueError, match=r"unknown name\(s\) 'c'"):
        model.train_step({"a": A, "b": B, "c": B}, y, "mse", opt)
    with pytest.raises(ValueError, match=r"input 'b' has 3 rows but input 'a' has 4"):
        model.train_step([A, B[:3]], y, "mse", opt)
    with pytest.raises(ValueError, match=r"input 'b' has shape \(4, 2\) but the model expects \(B, 3\)"):
        model.train_step([A, A], y, "mse", opt)
    with pytest.raises(ValueError, match="output 'output'"):
        model.train_step([A, B], np.zeros((3, 1)), "mse", opt)
    with pytest.raises(ValueError, match=r"X must be a list of 2 \('a', 'b'\) or a dict by name"):
        model.fit(lambda: iter([]), y, loss="mse", epochs=1)  # a stream brings its targets inside its batches
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    model.train_step([A, B], y, "mse", opt)
    assert not np.array_equal(model.state_dict()["1.W"], before["1.W"])


@pytest.mark.parametrize("hostile", ["cycle", "unknown slot", "unknown layer", "million nodes", "bad input"])
def test_a_hostile_saved_graph_is_refused_before_anything_is_built(hostile, tmp_path):
    import json

    model = _fanout_model()
    model.save(tmp_path / "g.npz")
    with np.load(tmp_path / "g.npz") as z:
        arrays = {k: z[k] for k in z.files}
    key = "__nnkit__"  # the checkpoint's JSON description
    meta = json.loads(arrays[key].tobytes().decode())
    graph = meta["graph"]
    if hostile == "cycle":
        graph["nodes"][0][1] = [3]  # node 0 reads what node 2 writes
    elif hostile == "unknown slot":
        graph["outputs"] = [99]
    elif hostile == "unknown layer":
        graph["nodes"][1][0] = 42
    elif hostile == "million nodes":
        graph["nodes"] = [[0, [0], False]] * 1_000_001
    else:
        graph["inputs"][0]["shape"] = [-3]
    arrays[key] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(nnkit.CheckpointError):
        nnkit.load(tmp_path / "bad.npz")


def test_a_graph_compiled_on_jax_trains_as_it_does_eagerly():
    pytest.importorskip("jax")
    X, y = nnkit.datasets.make_moons(n_samples=64, seed=1)
    X = np.c_[X, X[:, 0] ** 2]
    runs = []
    for compile in (False, True):
        model = _fanout_model(backend="jax", dtype="float64")
        model.fit(X, y, loss="cross_entropy", optimizer=nnkit.optim.SGD(0.1), epochs=3, batch_size=16,
                  compile=compile, verbose=0, shuffle=False)
        runs.append(model.state_dict())
    for k in runs[0]:
        close(runs[1][k], runs[0][k], rtol=1e-10)


def test_a_graph_under_mixed_precision_trains_in_its_compute_dtype():
    pytest.importorskip("torch")
    model = _fanout_model(backend="torch", dtype="float32", precision="mixed_bfloat16")
    X, y = RNG.standard_normal((32, 3)).astype(np.float32), RNG.integers(0, 2, 32)
    history = model.fit(X, y, loss="cross_entropy", epochs=3, verbose=0)
    assert np.isfinite(history["loss"]).all() and model.compute_dtype == "bfloat16"


def test_a_graph_exports_to_onnx_and_to_torch_with_the_same_outputs(tmp_path):
    torch = torch_or_skip()
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    encoder = nnkit.Dense(4, 6)
    a, b = nnkit.Input((4,), name="a"), nnkit.Input((4,), name="b")
    d = nnkit.Subtract()([nnkit.Tanh()(encoder(a)), nnkit.Tanh()(encoder(b))])
    h = nnkit.Multiply()([d, d])
    model = nnkit.Model({"a": a, "b": b}, {"kind": nnkit.Dense(6, 3)(h), "size": nnkit.Dense(6, 1)(h)},
                        dtype="float64", seed=5)
    A, B = RNG.standard_normal((5, 4)), RNG.standard_normal((5, 4))
    want = model.predict({"a": A, "b": B})
    model.export(tmp_path / "g.onnx")
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["a", "b"]
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"a": A, "b": B})))
    for k in ("kind", "size"):
        close(got[k], want[k], rtol=1e-12)
    net = model.to_torch()
    kind, size = net(torch.tensor(A), torch.tensor(B))
    close(kind.detach().numpy(), want["kind"], rtol=1e-12)
    close(size.detach().numpy(), want["size"], rtol=1e-12)
    single = _fanout_model()
    X = RNG.standard_normal((4, 3))
    single.export(tmp_path / "s.onnx")
    close(ort.InferenceSession(str(tmp_path / "s.onnx")).run(["output"], {"input": X})[0], single.predict(X),
          rtol=1e-12)
    close(single.to_torch()(torch.tensor(X)).detach().numpy(), single.predict(X), rtol=1e-12)
    import io

    buf = io.BytesIO()
    torch.save(net, buf)  # the module pickles by name (nnkit.export.pytorch.Graph)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    close(again(torch.tensor(A), torch.tensor(B))[0].detach().numpy(), want["kind"], rtol=1e-12)


def test_a_model_is_a_layer_of_another_graph_and_equals_its_nodes_inlined(tmp_path):
    x = nnkit.Input((4,), name="x")
    encoder = nnkit.Model(x, nnkit.Tanh()(nnkit.Dense(4, 6)(x)), name="encoder", dtype="float64", seed=7)
    a, b = nnkit.Input((4,), name="a"), nnkit.Input((4,), name="b")
    d = nnkit.Subtract()([encoder(a), encoder(b)])  # one model called twice: one set of parameters
    nested = nnkit.Model([a, b], nnkit.Dense(6, 2)(nnkit.Multiply()([d, d])), dtype="float64", seed=8)
    assert list(nested.state_dict()) == ["0.0.W", "0.0.b", "3.W", "3.b"]
    np.testing.assert_array_equal(nested.state_dict()["0.0.W"], encoder.state_dict()["0.W"])  # kept its weights
    dense, act = nnkit.Dense(4, 6), nnkit.Tanh()
    a2, b2 = nnkit.Input((4,)), nnkit.Input((4,))
    d2 = nnkit.Subtract()([act(dense(a2)), act(dense(b2))])
    flat = nnkit.Model([a2, b2], nnkit.Dense(6, 2)(nnkit.Multiply()([d2, d2])), dtype="float64", seed=0)
    state = nested.state_dict()
    flat.load_state_dict({"0.W": state["0.0.W"], "0.b": state["0.0.b"], "4.W": state["3.W"], "4.b": state["3.b"]})
    A, B, y = RNG.standard_normal((5, 4)), RNG.standard_normal((5, 4)), RNG.integers(0, 2, 5)
    vn, gn = grads_of(nested, [A, B], y, "cross_entropy")
    vf, gf = grads_of(flat, [A, B], y, "cross_entropy")
    close(vn, vf, rtol=1e-13)
    for n, f in (("0.0.W", "0.W"), ("0.0.b", "0.b"), ("3.W", "4.W"), ("3.b", "4.b")):
        close(gn[n], gf[f], rtol=1e-12)
    nested.save(tmp_path / "n.npz")
    loaded = nnkit.load(tmp_path / "n.npz")
    np.testing.assert_array_equal(loaded.predict([A, B]), nested.predict([A, B]))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(nested)).predict([A, B]), nested.predict([A, B]))
    assert "Submodel(encoder: 2 layers)" in nested.summary()
    with pytest.raises(ValueError, match=r"expects \(B, 4\)"):
        encoder(nnkit.Input((5,)))


def test_the_picture_of_a_graph_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    model = _fanout_model()
    fig = nnkit.plots.model(model, tmp_path / "graph.png", title="fan-out")
    assert (tmp_path / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any(t.startswith("input x") for t in texts) and any("Concatenate" in t for t in texts)
    assert any("→ output" in t for t in texts) and len([t for t in texts if t]) == 6  # the input, five nodes
    nnkit.plots.model(nnkit.Sequential.mlp([2, 3, 2]))  # a chain: a column


def test_a_graph_resumed_from_its_checkpoint_is_bit_identical(tmp_path):
    X, y = nnkit.datasets.make_moons(n_samples=96, seed=2)
    X = np.c_[X, X[:, 0] * X[:, 1]]
    whole = _fanout_model(dtype="float32")
    whole.fit(X, y, loss="cross_entropy", epochs=4, batch_size=16, verbose=0)
    first = _fanout_model(dtype="float32")
    first.fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, verbose=0, checkpoint=tmp_path / "c.npz")
    again = nnkit.load(tmp_path / "c.npz")
    again.fit(X, y, loss="cross_entropy", epochs=4, batch_size=16, verbose=0, checkpoint=tmp_path / "c.npz",
              resume=True)
    for k, v in whole.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)



def _two_by_two(seed=9):
    table, seq = nnkit.Input((5,), name="table"), nnkit.Input((6, 3), name="seq")
    joined = nnkit.Concatenate()([nnkit.ReLU()(nnkit.Dense(5, 8)(table)),
                                  nnkit.GRU(3, 8, return_sequences=False)(seq)])
    return nnkit.Model({"table": table, "seq": seq},
                       {"kind": nnkit.Dense(16, 3)(joined), "size": nnkit.Dense(16, 1)(joined)}, dtype="float64",
                       seed=seed)


def test_several_inputs_and_outputs_train_by_fit_with_logs_named_by_output():
    model = _two_by_two()
    n = 24
    X = {"table": RNG.standard_normal((n, 5)), "seq": RNG.standard_normal((n, 6, 3))}
    y = {"kind": RNG.integers(0, 3, n), "size": RNG.standard_normal(n)}
    losses, weights = {"kind": "cross_entropy", "size": "mse"}, {"kind": 1.0, "size": 0.5}
    value, grads = grads_of(model, X, y, losses, loss_weights=weights)
    before = model.state_dict()
    history = model.fit(X, y, loss=losses, loss_weights=weights, optimizer=nnkit.optim.SGD(0.1), epochs=1,
                        batch_size=n, shuffle=False, verbose=0)
    close(history["loss"][0], value)  # one batch: the epoch's loss is its loss, Σ c_k L_k
    for k, v in model.state_dict().items():  # and its update is −lr·∇L
        close(v, before[k] - 0.1 * grads[k], rtol=1e-10)
    assert {"loss", "kind_loss", "size_loss", "kind_accuracy"} <= set(history)
    half = {k: v[:12] for k, v in X.items()}, {k: v[:12] for k, v in y.items()}
    rest = {k: v[12:] for k, v in X.items()}, {k: v[12:] for k, v in y.items()}
    history = model.fit(*half, loss=losses, loss_weights=weights, epochs=1, verbose=0, validation_data=rest,
                        metrics={"kind": ["accuracy", "top_2_accuracy"]})
    scored = model.evaluate(*rest, losses, metrics={"kind": ["accuracy", "top_2_accuracy"]})
    for name in ("kind_loss", "size_loss", "kind_accuracy", "kind_top_2_accuracy"):
        close(history[f"val_{name}"][-1], scored[name], rtol=1e-9)
    close(scored["loss"], scored["kind_loss"] + scored["size_loss"])  # evaluate weighs the outputs alike
    with pytest.raises(ValueError, match=r"metrics for unknown output\(s\) 'colour'"):
        model.fit(X, y, loss=losses, epochs=1, verbose=0, metrics={"colour": ["accuracy"]})
    with pytest.raises(ValueError, match=r"output 'size'"):
        model.fit(X, {"kind": y["kind"], "size": np.zeros((n, 2))}, loss=losses, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="loss weights must be finite and not negative"):
        model.fit(X, y, loss=losses, loss_weights={"kind": -1.0, "size": 1.0}, epochs=1, verbose=0)
    out = model.predict(X)
    assert set(out) == {"kind", "size"}



def test_sample_weights_weigh_every_output_of_a_model_of_several():
    model = _two_by_two(seed=3)
    n = 10
    X = [RNG.standard_normal((n, 5)), RNG.standard_normal((n, 6, 3))]
    y = [RNG.integers(0, 3, n), RNG.standard_normal(n)]
    w = np.r_[np.ones(5), np.zeros(5)]
    twin = model.clone()
    model.fit(X, y, loss=["cross_entropy", "mse"], sample_weight=w, optimizer=nnkit.optim.SGD(0.1), epochs=1,
              batch_size=n, shuffle=False, verbose=0)
    half = [x[:5] for x in X], [t[:5] for t in y]
    twin.fit(*half, loss=["cross_entropy", "mse"], optimizer=nnkit.optim.SGD(0.1), epochs=1, batch_size=5,
             shuffle=False, verbose=0)
    for k, v in model.state_dict().items():  # the rows of weight 0 count for nothing
        close(v, twin.state_dict()[k], rtol=1e-10)


def test_explain_walks_a_graph_and_its_gradients_are_the_models():
    model = _fanout_model()
    X, y = RNG.standard_normal((2, 3)), np.array([0, 1])
    report = model.explain(X, y, "cross_entropy", optimizer=nnkit.optim.SGD(0.1))
    text = str(report)
    assert "layer 3: Concatenate(axis=-1)" in text and "dX1 of layer 3" in text and "dX2 of layer 3" in text
    _, grads = grads_of(model, X, y, "cross_entropy")
    state = model.state_dict()
    # the update of the layer behind the fan-out, whose gradient is the sum of both branches'
    close(report.values["W0_new"], state["0.W"] - 0.1 * grads["0.W"], rtol=1e-12)
    close(report.values["dW0"], grads["0.W"], rtol=1e-12)


def test_a_stream_of_batches_with_dicts_trains_a_model_of_several_inputs_and_outputs():
    model = _two_by_two(seed=4)
    n = 24
    X = {"table": RNG.standard_normal((n, 5)), "seq": RNG.standard_normal((n, 6, 3))}
    y = {"kind": RNG.integers(0, 3, n), "size": RNG.standard_normal(n)}
    losses = {"kind": "cross_entropy", "size": "mse"}
    twin = model.clone()
    model.fit(X, y, loss=losses, optimizer=nnkit.optim.SGD(0.1), epochs=2, batch_size=8, shuffle=False, verbose=0)

    def batches():
        for s in range(0, n, 8):
            yield {k: v[s:s + 8] for k, v in X.items()}, {k: v[s:s + 8] for k, v in y.items()}

    history = twin.fit(batches, loss=losses, optimizer=nnkit.optim.SGD(0.1), epochs=2, verbose=0,
                       validation_data=batches)
    for k, v in model.state_dict().items():  # the same batches in the same order: the same weights
        close(twin.state_dict()[k], v, rtol=1e-10)
    assert "val_kind_loss" in history
    close(twin.evaluate(batches, None, losses)["kind_loss"], twin.evaluate(X, y, losses)["kind_loss"], rtol=1e-10)

    def bad():
        yield {"table": X["table"][:8]}, {k: v[:8] for k, v in y.items()}

    with pytest.raises(ValueError, match=r"batch 0 .*no X for 'seq'"):
        twin.fit(bad, loss=losses, epochs=1, verbose=0)


def test_a_model_of_two_inputs_and_one_output_fits_validates_and_evaluates():
    a, b = nnkit.Input((4,), name="a"), nnkit.Input((4,), name="b")
    model = nnkit.Model([a, b], nnkit.Dense(8, 2)(nnkit.Concatenate()([a, b])), dtype="float64", seed=0)
    A, B, y = RNG.standard_normal((20, 4)), RNG.standard_normal((20, 4)), np.arange(20) % 2
    first, _ = grads_of(model, [A[:15], B[:15]], y[:15], "cross_entropy")  # the training part, before the step
    history = model.fit([A, B], y, loss="cross_entropy", epochs=1, batch_size=20, shuffle=False, verbose=0,
                        validation_split=0.25)
    assert {"loss", "output_loss", "output_accuracy", "val_loss", "val_output_accuracy"} <= set(history)
    close(history["loss"][0], first, rtol=1e-12)  # one batch: the epoch's loss is its loss before the update
    close(history["output_loss"][0], history["loss"][0], rtol=1e-12)
    scored = model.evaluate([A[15:], B[15:]], y[15:], "cross_entropy")  # the validation part, after it
    close(history["val_loss"][0], scored["loss"], rtol=1e-12)
    assert model.predict([A, B]).shape == (20, 2)
