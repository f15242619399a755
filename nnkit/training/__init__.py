"""Training: one step written once, the loop that feeds it batches, and everything around them.

* :mod:`.step` — forward, loss, backward, penalty, gradient reduction and update as one function of explicit
  state (``train_step``), eager, accumulating or compiled;
* :mod:`.loop` — ``fit`` and ``evaluate``: batches in, the step, the epoch read once, the hooks;
* :mod:`.optim` — SGD, Adam, AdamW, RMSprop, clipping, L1/L2 — and the learning-rate schedules
  (:mod:`.schedules`), one public address for both: ``nnkit.optim``;
* :mod:`.callbacks` — progress, checkpoints, early stopping, logging, gradient statistics;
* :mod:`.checkpoint` — the ``.npz`` checkpoint (architecture, weights, optimizer state, RNG), never a pickle;
* :mod:`.precision` — the dtype policy (storage and compute dtypes) and the loss scaler;
* :mod:`.distributed` — data-parallel training: communicators and the gradient all-reduce.

Imports run downward: training uses the backends, the layers, the losses and metrics and the data path; the
models use training.
"""
from .loop import fit, evaluate, TrainingDivergedError, Terminated
from .callbacks import History, Callback, EarlyStopping

__all__ = ["fit", "evaluate", "History", "Callback", "EarlyStopping", "TrainingDivergedError", "Terminated"]
