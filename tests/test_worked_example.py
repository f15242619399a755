"""The worked 2-2-2 example: sigmoid on both layers, quadratic cost E = ½‖t − o‖², x = (0.95, 0.06),
t = (0.05, 0.82), one SGD step with η = 0.01.

The values below are the exact float64 ones (E = 0.184979383, not 0.184972; ∂E/∂w5 = 0.0729519972, not 0.07289),
and descent subtracts the gradient: w ← w − η·∂E/∂w.
"""
import numpy as np
import pytest

import nnkit
from nnkit.optim import SGD

from helpers import to_np

STATE = {
    "0.W": np.array([[0.10, 0.03], [0.15, 0.08]]),
    "0.b": np.array([0.05, 0.05]),
    "2.W": np.array([[0.18, 0.11], [0.06, 0.26]]),
    "2.b": np.array([0.42, 0.42]),
}
X = np.array([[0.95, 0.06]])
Y = np.array([[0.05, 0.82]])


def worked_model(backend):
    model = nnkit.Sequential([nnkit.Dense(2, 2), nnkit.Sigmoid(), nnkit.Dense(2, 2), nnkit.Sigmoid()],
                             backend=backend, dtype="float64")
    return model.load_state_dict(STATE)


def test_loss_and_gradients(make_backend):
    model = worked_model(make_backend())
    loss, grads = model.value_and_grad(X, Y, "mse")
    assert tuple(loss.shape) == ()
    assert float(to_np(loss)) == pytest.approx(0.1849793830, abs=1e-9)
    g = {k: to_np(v) for k, v in grads.items()}
    assert g["2.W"][0, 0] == pytest.approx(0.07295199720, abs=1e-9)  # w5
    assert g["0.W"][0, 0] == pytest.approx(0.004746395662, abs=1e-9)  # w1
    np.testing.assert_allclose(g["2.b"], [0.1354917033, -0.03895416697], rtol=0, atol=1e-9)
    assert set(g) == set(STATE)
    for k in STATE:
        assert g[k].shape == STATE[k].shape


def test_one_sgd_step_descends(make_backend):
    model = worked_model(make_backend())
    loss = model.train_step(X, Y, "mse", SGD(lr=0.01))
    assert float(to_np(loss)) == pytest.approx(0.1849793830, abs=1e-9)  # loss before the update
    W2 = model.state_dict()["2.W"]
    assert W2[0, 0] == pytest.approx(0.1792704800, abs=1e-9)  # 0.18 - 0.01 * 0.0729519972
    after = float(to_np(model.value_and_grad(X, Y, "mse")[0]))
    assert after < 0.1849793830
