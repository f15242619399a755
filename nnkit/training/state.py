"""A model's training state as one object: what the step, the loop, checkpoints and data-parallel ``fit`` read and
write — the parameters and buffers (live views of the layers' arrays, by key), the optimizer with its moments,
the host generator, the device generator of random layers, the loss scale, the epoch count and the compiled
steps.  The model holds one (``model.state``); its own attributes of the same names are views of it."""
from __future__ import annotations

from typing import Any

from .step import StepState

__all__ = ["ModelState"]


class ModelState:
    """The training state of one model.

    * ``slots`` / ``buffer_slots`` — ``{"{layer}.{name}": (owning layer, name)}``: where each parameter and buffer
      lives (the layers hold the arrays; :meth:`params`, :meth:`buffers` read them, :meth:`assign` writes them);
    * ``optimizer`` — set by ``fit`` (its moments and step counts in ``optimizer.state``), saved with the model;
    * ``rng`` — the host generator: initial weights, shuffles (saved in checkpoints, shared by data-parallel ranks);
    * ``random_key`` — the device generator of the layers that draw in training (Dropout), reseeded every epoch;
    * ``scaler`` — the dynamic loss scale ``{"scale", "good"}`` under ``mixed_float16``, else None;
    * ``epoch`` — the training epochs completed;
    * ``compiled`` — the compiled steps ``fit(compile=True)`` built, by their settings (not pickled).
    """

    def __init__(self, slots: dict, buffer_slots: dict, rng: Any, scaler: Any = None) -> None:
        self.slots, self.buffer_slots = slots, buffer_slots
        self.rng, self.scaler = rng, scaler
        self.random_key = None
        self.optimizer = None
        self.epoch = 0
        self.compiled: dict = {}

    def params(self) -> dict:
        """Live parameter arrays by key."""
        return {key: layer.params[name] for key, (layer, name) in self.slots.items()}

    def buffers(self) -> dict:
        """Live buffer arrays (running statistics: saved and moved, never trained) by key."""
        return {key: layer.buffers[name] for key, (layer, name) in self.buffer_slots.items()}

    def assign(self, new: dict) -> None:
        """Write parameter and buffer values back into the layers (the one place it happens): ``new`` maps keys
        of :meth:`params`/:meth:`buffers` to arrays of the model's backend, used as they are."""
        slots = self.slots
        for key, value in new.items():
            slot = slots.get(key)
            if slot is None:
                layer, name = self.buffer_slots[key]
                layer.buffers[name] = value
            else:
                layer, name = slot
                layer.params[name] = value

    def snapshot(self, backend) -> dict:
        """Device copies of the parameters and buffers, for :meth:`assign` to put back later (the arrays themselves
        where the backend's arrays never change: JAX)."""
        live = {**self.params(), **self.buffers()}
        if backend.immutable:
            return live
        xp = backend.xp
        return {k: xp.asarray(p, copy=True) for k, p in live.items()}

    def step_state(self, optimizer, backend, copy: bool = False) -> StepState:
        """What a training step reads besides the batch (:class:`nnkit.training.step.StepState`); ``copy=True``
        gives a copy that later (in-place) steps do not touch — what ``fit`` keeps to undo an epoch."""
        if copy:
            live = self.snapshot(backend)
            params = {k: live[k] for k in self.slots}
            buffers = {k: live[k] for k in self.buffer_slots}
            scaler = None if self.scaler is None else dict(self.scaler)
            return StepState(params, optimizer.snapshot_state(), buffers, self.random_key, scaler)
        return StepState(self.params(), optimizer.state, self.buffers(), self.random_key, self.scaler)

    def load(self, state: StepState, optimizer=None) -> None:
        """Make ``state`` the model's (parameters, buffers, random key, loss scale) and, given ``optimizer``, its
        moments and step counts: the one place a step's new state is written back."""
        self.assign({**state.params, **state.buffers})
        self.random_key = state.key
        self.scaler = state.scaler
        if optimizer is not None:
            optimizer.state = state.opt

    def __getstate__(self):
        """Pickling: compiled steps (traced functions) and the device generator stay behind."""
        return {**self.__dict__, "compiled": {}, "random_key": None}
