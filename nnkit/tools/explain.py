"""The worked example: a 2-2-2 sigmoid network, every number of one step of it written out (``nnkit explain
--example worked``, :func:`worked_example`) — the explanation itself is :meth:`nnkit.Sequential.explain`'s
(:mod:`nnkit.models.explanation`)."""
from __future__ import annotations

import numpy as np

from ..layers import Dense, Sigmoid
from ..models import Sequential
from ..models.explanation import Explanation, explain
from ..training.optim import SGD

__all__ = ["Explanation", "explain", "worked_example"]


# -- the worked example -------------------------------------------------------------------
WORKED_STATE = {
    "0.W": [[0.10, 0.03], [0.15, 0.08]],  # column j feeds hidden unit j: H1 = w1·x1 + w2·x2 + b1
    "0.b": [0.05, 0.05],
    "2.W": [[0.18, 0.11], [0.06, 0.26]],  # Y1 = w5·H1 + w6·H2 + b2
    "2.b": [0.42, 0.42],
}
WORKED_NAMES = {"0.W[0, 0]": "w1", "0.W[1, 0]": "w2", "0.W[0, 1]": "w3", "0.W[1, 1]": "w4",
                "2.W[0, 0]": "w5", "2.W[1, 0]": "w6", "2.W[0, 1]": "w7", "2.W[1, 1]": "w8"}


def worked_example():
    """A 2-2-2 sigmoid network (inputs 0.95, 0.06; targets 0.05, 0.82; E = ½‖t − o‖²; η = 0.01), one step of it
    explained: ``(model, report)``.  Its weights are named w1 … w8 as H1 = w1·x1 + w2·x2 + b1, H2 = w3·x1 + w4·x2 + b1,
    Y1 = w5·H1 + w6·H2 + b2, Y2 = w7·H1 + w8·H2 + b2; the update is descent, w ← w − η·∂E/∂w."""
    model = Sequential([Dense(2, 2), Sigmoid(), Dense(2, 2), Sigmoid()], dtype="float64", seed=0)
    model.load_state_dict({k: np.array(v) for k, v in WORKED_STATE.items()})
    report = explain(model, np.array([[0.95, 0.06]]), np.array([[0.05, 0.82]]), "mse", SGD(0.01),
                     names=WORKED_NAMES)
    report.title = "The worked example: a 2-2-2 sigmoid network, E = ½‖t − o‖², η = 0.01"
    report.sections[0][1].append(("the weights by name: H1 = w1·x1 + w2·x2 + b1, "
                                  "Y1 = w5·H1 + w6·H2 + b2 (w1 = W0[0, 0], w2 = W0[1, 0], w5 = W2[0, 0], "
                                  "w6 = W2[1, 0])", None, None))
    report.sections[-1][1].append(("∂E/∂w5 = 0.0729519972 (to four digits 0.07295, not 0.07289); an update "
                                   "that *adds* it climbs the error, descent subtracts it: w5 = 0.18 − 0.01·0.0729519972 = 0.179270480", None, None))
    return model, report
