"""What one ``fit`` call is told besides its data: :class:`FitSettings`, one object from ``Sequential.fit`` to
the loop (instead of two dozen arguments relayed from function to function), checked in one place before
anything changes."""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from ..data.checks import check_int
from ..losses import get_loss
from .callbacks import EarlyStopping

__all__ = ["FitSettings"]


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """The settings of one ``fit`` call, as :meth:`nnkit.Sequential.fit` documents each of them.

    Build it with the keywords of ``fit`` (``FitSettings(loss="cross_entropy", epochs=5)``); :meth:`checked`
    gives the same settings checked and in their working form (the loss object, the epochs an int, the
    callbacks a list, ``early_stopping=True`` an :class:`~nnkit.EarlyStopping`), or a ValueError/TypeError that
    names the setting."""

    loss: Any
    optimizer: Any = "adam"
    epochs: int = 10
    batch_size: int = 32
    shuffle: bool = True
    validation_data: Any = None
    validation_split: float = 0.0
    early_stopping: Any = None
    callbacks: Any = ()
    metrics: Any = None
    verbose: int = 1
    checkpoint: Any = None
    resume: bool = False
    regularizer: Any = None
    comm: Any = None
    compile: bool = False
    sample_weight: Any = None
    log_every_n_steps: int | None = None
    class_weight: Any = None
    accumulate: int = 1
    lengths: Any = None
    bucket: bool = False
    steps_per_epoch: int | None = None
    loss_weights: Any = None

    @classmethod
    def of(cls, arguments: dict) -> FitSettings:
        """The settings among ``arguments`` (a function's ``locals()``: its other names are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in arguments.items() if k in names})

    def checked(self) -> FitSettings:
        """These settings checked, in their working form (see the class docstring)."""
        loss = self.loss if isinstance(self.loss, (dict, list, tuple)) else get_loss(self.loss)  # per output: the model's
        epochs, batch_size = check_int("epochs", self.epochs, 1), check_int("batch_size", self.batch_size, 1)
        if isinstance(self.validation_split, bool) or not isinstance(self.validation_split, numbers.Real) \
                or not 0.0 <= self.validation_split < 1.0:
            raise ValueError(f"validation_split must be a number in [0, 1), got {self.validation_split!r}")
        if self.validation_split and self.validation_data is not None:
            raise ValueError("pass either validation_data or validation_split, not both")
        early = self.early_stopping
        if early is True:
            early = EarlyStopping()
        elif early is not None and not isinstance(early, EarlyStopping):
            raise TypeError(f"early_stopping must be an EarlyStopping, True or None, got {early!r}")
        callbacks = list(self.callbacks)
        for cb in callbacks:
            if not callable(getattr(cb, "on_epoch_end", None)):
                raise TypeError(f"callback {cb!r} has no on_epoch_end(epoch, logs) method")
        if self.verbose not in (0, 1, 2, True, False):
            raise ValueError(f"verbose must be 0, 1 or 2, got {self.verbose!r}")
        if self.resume and self.checkpoint is None:
            raise ValueError("resume=True needs checkpoint=path")
        if self.regularizer is not None and not callable(getattr(self.regularizer, "value_and_grad", None)):
            raise TypeError("regularizer must be a penalty such as nnkit.optim.L2(1e-4) or nnkit.optim.L1(1e-5), "
                            f"got {self.regularizer!r}")
        every = self.log_every_n_steps
        if every is None:  # the finest a callback asks for (TensorBoard(every_n_steps=N))
            asked = [cb.log_every_n_steps for cb in callbacks if getattr(cb, "log_every_n_steps", None)]
            every = min(asked) if asked else 0
        return dataclasses.replace(
            self, loss=loss, epochs=epochs, batch_size=batch_size, early_stopping=early, callbacks=callbacks,
            log_every_n_steps=check_int("log_every_n_steps", every, 0),
            accumulate=check_int("accumulate", self.accumulate, 1),
            steps_per_epoch=None if self.steps_per_epoch is None else
            check_int("steps_per_epoch", self.steps_per_epoch, 1))
