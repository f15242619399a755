"""The learner's view: one step explained with its numbers, equal to the real step's."""
import copy
import subprocess
import sys

import numpy as np
import pytest

import nnkit
from nnkit.explain import worked_example

from helpers import to_np


def test_worked_example_prints_the_tutorials_numbers_with_the_descent_sign():
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
    from nnkit.cli import main

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
