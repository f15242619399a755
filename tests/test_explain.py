"""The learner's view: one step explained with its numbers, equal to the real step's."""
import copy
import subprocess
import sys

import numpy as np
import pytest

import nnkit
from nnkit.tools.explain import worked_example

from helpers import to_np


def test_worked_example_prints_its_numbers_with_the_descent_sign():
    res = subprocess.run([sys.executable, "-m", "nnkit", "explain", "--example", "worked"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for number in ("0.538424", "0.52081", "0.63370", "0.648998", "0.184979383", "0.0729519972", "0.17927048",
                   "0.07289"):
        assert number in out, number
    assert "∂L/∂w5 = 0.0729519972" in out and "w5: 0.18 → 0.17927048" in out
    assert "descent subtracts" in out and "adds" in out


@pytest.mark.parametrize("opt", [nnkit.optim.SGD(0.1), nnkit.optim.Adam(1e-2)])
def test_report_numbers_are_the_real_steps_and_the_model_is_unchanged(opt, make_backend):
    be = make_backend("float64")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    model = nnkit.Sequential([nnkit.Dense(4, 5), nnkit.Tanh(), nnkit.Dense(5, 5), nnkit.ReLU(), nnkit.Dense(5, 3)],
                             backend=be, dtype="float64", seed=0)
    before = model.state_dict()
    report = model.explain(X, y, "cross_entropy", optimizer=opt)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed
    assert opt.state == {}
    value, grads = model.value_and_grad(X, y, "cross_entropy")
    v = report.values
    assert v["loss"] == pytest.approx(float(to_np(value)), rel=1e-14)
    for i in (0, 2, 4):
        np.testing.assert_allclose(v[f"dW{i}"], to_np(grads[f"{i}.W"]), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(v[f"db{i}"], to_np(grads[f"{i}.b"]), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(v["A1"], np.tanh(X @ before["0.W"] + before["0.b"]), rtol=1e-13)
    model.train_step(X, y, "cross_entropy", copy.deepcopy(opt))
    after = model.state_dict()
    for key in after:
        i, _, p = key.partition(".")
        np.testing.assert_allclose(v[f"{p}{i}_new"], after[key], rtol=1e-13, atol=1e-15)
    text, md = str(report), report.to_markdown()
    assert "dW2 = A1ᵀ·δ2" in text and "descent subtracts the gradient" in text or type(opt).__name__ == "Adam"
    assert md.startswith("## ") and "```" in md and report._repr_markdown_() == md


def test_large_layers_are_summarised_and_conv_models_explain_too():
    rng = np.random.default_rng(1)
    model = nnkit.Sequential.mlp([30, 40, 2], seed=0)
    text = str(model.explain(rng.normal(size=(8, 30)), rng.integers(0, 2, size=8), "cross_entropy"))
    assert "(30×40): mean" in text and "norm" in text and "min" in text
    cnn = nnkit.Sequential([nnkit.Conv1D(1, 2, 3), nnkit.ReLU(), nnkit.Flatten(), nnkit.Dense(16, 2)], seed=0)
    rep = cnn.explain(rng.normal(size=(3, 1, 10)), rng.integers(0, 2, size=3), "cross_entropy")
    assert "dW of layer 0" in str(rep) and rep.values["dW0"].shape == (2, 1, 3)


def test_cli_explains_a_saved_model_on_csv_rows(tmp_path):
    from nnkit.tools.cli import main

    model_path, data = tmp_path / "m.npz", tmp_path / "d.csv"
    assert main(["train", "--data", "spirals", "--hidden", "8", "--epochs", "2", "--save", str(model_path),
                 "--quiet"]) == 0
    assert main(["data", "spirals", "--rows", "10", "--out", str(data)]) == 0
    res = subprocess.run([sys.executable, "-m", "nnkit", "explain", str(model_path), str(data), "--rows", "3"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "batch of 3" in res.stdout and "dW0 = Xᵀ·δ0" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "nnkit", "explain", str(model_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_worked_example_function_gives_the_model_and_report():
    model, report = worked_example()
    assert report.values["dW2"][0, 0] == pytest.approx(0.0729519972, abs=1e-10)
    assert report.values["W2_new"][0, 0] == pytest.approx(0.17927048, abs=1e-9)
    assert model.state_dict()["2.W"][0, 0] == 0.18


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_a_recurrent_step_is_explained_per_time_step_on_variable_lengths(kind, make_backend):
    """‖h_t‖ and ‖∂L/∂h_t‖ at each time step, per direction, for a list of sequences of different lengths: the
    loss and gradients those of the real step, the norms those of PyTorch's states and gradients, step by step."""
    torch = pytest.importorskip("torch")
    be = make_backend("float64")
    rng = np.random.default_rng(3)
    lengths = [5, 2, 4, 1]
    seqs = [rng.normal(size=(n, 3)) for n in lengths]
    y = np.array([0, 1, 1, 0])
    layer = getattr(nnkit, kind)(3, 4, return_sequences=False)
    model = nnkit.Sequential([layer, nnkit.Dense(4, 2)], backend=be, dtype="float64", seed=0)
    report = model.explain(seqs, y, "cross_entropy")
    value, grads = model.value_and_grad(seqs, y, "cross_entropy")
    v = report.values
    assert v["loss"] == pytest.approx(float(to_np(value)), rel=1e-13)
    np.testing.assert_allclose(v["dweight_hh0"], to_np(grads["0.weight_hh"]), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(v["lengths"], lengths)
    assert v["h_norm0"].shape == v["dh_norm0"].shape == (5,)
    assert "‖∂L/∂h_t‖" in str(report) and "vanishing" in str(report)

    # PyTorch, one step at a time, each sequence's final state taken at its own last step
    sd = {k: torch.tensor(to_np(a), requires_grad=True) for k, a in model.state_dict().items()}
    X = torch.tensor(nnkit.data.pad_sequences(seqs)[0])
    h = torch.zeros(4, 4, dtype=torch.float64)
    c = torch.zeros_like(h)
    hs = []
    for t in range(5):
        a_ih = X[:, t] @ sd["0.weight_ih"].T + sd["0.bias_ih"]
        a_hh = h @ sd["0.weight_hh"].T + sd["0.bias_hh"]
        if kind == "RNN":
            h = torch.tanh(a_ih + a_hh)
        elif kind == "GRU":
            r = torch.sigmoid(a_ih[:, :4] + a_hh[:, :4])
            z = torch.sigmoid(a_ih[:, 4:8] + a_hh[:, 4:8])
            n = torch.tanh(a_ih[:, 8:] + r * a_hh[:, 8:])
            h = (1 - z) * n + z * h
        else:
            i, f, g, o = (a_ih + a_hh).split(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        h.retain_grad()
        hs.append(h)
    final = torch.stack([hs[n - 1][b] for b, n in enumerate(lengths)])
    out = final @ sd["1.W"] + sd["1.b"]
    torch.nn.functional.cross_entropy(out, torch.tensor(y)).backward()
    valid = torch.tensor([[t < n for t in range(5)] for n in lengths], dtype=torch.float64)
    want_h = [float((hs[t] * valid[:, t:t + 1]).detach().norm()) for t in range(5)]  # padded outputs count as zero
    want_dh = [float(hs[t].grad.norm()) for t in range(5)]
    np.testing.assert_allclose(v["h_norm0"], want_h, rtol=1e-12)
    np.testing.assert_allclose(v["dh_norm0"], want_dh, rtol=1e-12, atol=1e-300)


def test_a_bidirectional_layer_is_explained_per_direction_in_the_sequences_time_order():
    rng = np.random.default_rng(4)
    seqs = [rng.normal(size=(n, 2)) for n in (3, 6, 1)]
    model = nnkit.Sequential([nnkit.GRU(2, 3, bidirectional=True), nnkit.Dense(6, 2)], dtype="float64", seed=0)
    report = model.explain(seqs, [rng.integers(0, 2, size=n) for n in (3, 6, 1)], "cross_entropy")
    v = report.values
    for key in ("h_norm0", "h_norm0_reverse", "dh_norm0", "dh_norm0_reverse"):
        assert v[key].shape == (6,), key
    # time step 5 is padding in all but the second sequence: its reverse state and gradient come from that one only
    assert v["h_norm0_reverse"][5] > 0 and v["dh_norm0"][5] > 0
    assert "(reverse direction)" in str(report) and "the mean over the valid positions" in str(report)
