"""The fit loop: feed batches, run the step, read the epoch once, call the hooks.

The data path is :mod:`nnkit.data`: in-memory data is validated once and sent to the device once; streams
are read, checked and copied a batch at a time.  Inside an epoch nothing is read back: the
step (:mod:`nnkit.training.step`) returns per-batch loss and metric sums as 0-d device arrays, added up there
and read together, in one transfer, when the epoch ends.  Shuffles are drawn on the host from the
model's generator (the same order on every backend) and sent once per epoch as an index array.
Progress, checkpoints, early stopping and schedules are callbacks (:mod:`nnkit.callbacks`).
"""
from __future__ import annotations

import copy
import math
import numbers
import os
import signal
import sys
import threading
import time

from . import checkpoint as ckpt
from .. import data
from . import distributed as dist
from .callbacks import (Callback, EarlyStopping, History, ModelCheckpoint, ProgbarLogger, _Progress,  # noqa: F401
                        overrides_on_batch_end)
from ..backends import is_sparse
from ..backends import threads as cpu_threads
from ..data.files import check_writable
from ..losses import get_loss
from ..metrics import BatchStats, get_metrics, read_stats
from .optim import check_int, get_optimizer
from .step import make_step

__all__ = ["fit", "evaluate", "History", "Callback", "EarlyStopping", "TrainingDivergedError", "Terminated"]


class TrainingDivergedError(ValueError):
    """The epoch loss became NaN or infinite; the model keeps its last finite weights (a ``ValueError``)."""


class _StopFlag:
    """Ctrl-C or SIGTERM during fit sets a flag; the loop stops after the current step (a second Ctrl-C
    aborts).  SIGTERM — what SLURM and Kubernetes send before a kill — also sets ``terminated``."""

    def __init__(self):
        self.raised = self.terminated = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGTERM:
            self.terminated = self.raised = True
            return
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False


class Terminated(SystemExit):
    """``fit`` ended by SIGTERM: the checkpoint holds the state at the start of the epoch that was running (a
    ``SystemExit`` with status 143, 128 + SIGTERM, so the process ends as a terminated one does)."""


def evaluate(model, X, y, loss, metrics=None, batch_size=None, sample_weight=None, lengths=None):
    """``{"loss": float, metric: float}`` of ``model`` on (X, y) — means weighted by ``sample_weight``
    when given, over the valid positions of a per-position output: one host read."""
    loss = get_loss(loss)
    metric_fns = get_metrics(metrics, loss)
    if data.is_stream(X, y) and not data.is_ragged(X):  # read a batch at a time, in order
        if lengths is not None:
            raise ValueError("lengths= is for padded arrays in memory; a stream's batches bring their sequences "
                             "as lists of arrays of their own lengths")
        bs = 4096 if batch_size is None else check_int("batch_size", batch_size, 1)
        reader = data.FitData(model, loss, metric_fns, bs)
        with model.policy.activate():
            sums = reader.stream_sums(data.make_stream(X, y, sample_weight))
    else:
        reader = data.FitData(model, loss, metric_fns, 1)
        X, T, W, M, _, _, _ = reader._inputs(X, y, sample_weight, lengths, "X")
        default = X.shape[0] if not is_sparse(X) else 4096
        bs = default if batch_size is None else check_int("batch_size", batch_size, 1)
        with model.policy.activate():
            sums = data.batch_sums(model, X, T, loss, metric_fns, bs, W, M)
    if sums is None:
        raise ValueError("evaluate got no rows: X is empty")
    (host,), _ = read_stats(model.backend, [sums])
    return host.logs(metric_fns)


def fit(model, X, y, *, loss, optimizer="adam", epochs=10, batch_size=32, shuffle=True,
        validation_data=None, validation_split=0.0, early_stopping=None, callbacks=(), metrics=None,
        verbose=1, checkpoint=None, resume=False, regularizer=None, comm=None, compile=False, sample_weight=None,
        log_every_n_steps=None, class_weight=None, accumulate=1, lengths=None, bucket=False, steps_per_epoch=None):
    """See :meth:`nnkit.Sequential.fit`."""
    run = _Run(model, X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data, validation_split,
               early_stopping, callbacks, metrics, verbose, checkpoint, resume, regularizer, comm, compile,
               sample_weight, log_every_n_steps, class_weight, accumulate, lengths, bucket, steps_per_epoch)
    model, be, xp, hooks, history = run.model, run.be, run.xp, run.hooks, History()
    watching = [cb for cb in hooks if overrides_on_batch_end(cb)]
    per_batch = [(cb.on_batch_end, _takes_logs(cb.on_batch_end)) for cb in watching]
    every, steps = run.log_every_n_steps, 0  # steps: counted over the whole fit, for the logging steps
    # compile=True: an epoch runs whole, one compiled loop on the device, when nothing needs each batch
    whole = run.step.epoch is not None and run.data.whole_epochs() and not every \
        and not any(_needs_every_batch(cb) for cb in watching)
    for cb in hooks:
        cb.history = history
    for cb in hooks:
        cb.on_train_begin()
    on_cpu, probe = not be.on_cuda, None
    if on_cpu:
        cpu_threads.apply_default()  # one BLAS thread per physical core, unless the user chose
    with _StopFlag() as stop, model.policy.activate():
        for epoch in range(run.start, run.end):
            # the epoch's start, to undo it: the step state and the shuffle generator
            t0, safe = time.perf_counter(), (model.step_state(run.optimizer, copy=True),
                                             copy.deepcopy(model.rng.bit_generator.state))
            model.reseed()  # random layers: this epoch's device generator, from the model's seed
            for cb in hooks:
                cb.on_epoch_begin(epoch)
            sums, seen = None, 0
            try:
                if whole:
                    sums, seen = run.whole_epoch(), run.n
                    steps += run.data.n_batches()
                    for hook, takes_logs in per_batch:  # those that need no more: once, after the last batch
                        hook(run.data.n_batches() - 1, None) if takes_logs else hook()
                for i, (xb, tb, wb, mb, share, seen) in enumerate(() if whole else run.batches()):
                    if on_cpu and epoch == run.start and i == 0:
                        probe = (xb, mb)  # the first batch: what the oversubscription check times
                    batch = run.step(xb, tb, share, wb, mb)
                    sums = sums if batch is None else sums + batch
                    steps += 1
                    if per_batch:
                        logs = run.step_logs(batch) if every and steps % every == 0 else None
                        for hook, takes_logs in per_batch:
                            hook(i, logs) if takes_logs else hook()
                    if stop.raised and not run.parallel:  # ranks agree on stopping at the epoch's end
                        break
                run.step.flush()  # accumulate=N: the epoch's last, shorter group of batches
            except data.BatchError:  # a bad streamed batch: back to the epoch's start, then say which batch
                run.step.reset()
                model.load_step_state(safe[0], run.optimizer)
                raise
            if stop.terminated and not run.parallel and (run.n is None or seen < run.n):
                _terminate(run, model, safe, epoch, hooks)  # raises Terminated
            if stop.raised and (run.n is None or seen < run.n):
                history.interrupted = True
                break
            logs = run.epoch_logs(sums, stop)  # the epoch's one device -> host read
            if not all(math.isfinite(v) for v in logs.values()):
                model.load_step_state(safe[0], run.optimizer)
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch + 1}: the loss became {logs['loss']} (logs: {logs}); "
                    f"the model keeps the weights of epoch {epoch}. Try a lower learning rate (now "
                    f"{run.optimizer.lr:g}), gradient clipping (clip_norm=) or standardised inputs")
            model.epoch = epoch + 1
            wall = time.perf_counter() - t0
            history.append({**logs, "time": wall})
            if probe is not None:  # the first epoch: were the cores ours? (warns once per process)
                cpu_threads.check_oversubscribed(_forward_pass(model, *probe), wall)
                probe = None
            if any([bool(cb.on_epoch_end(epoch, dict(logs))) for cb in hooks]):
                history.stopped_epoch = epoch
                break
            if stop.terminated:  # at an epoch's end (or data-parallel): the checkpoint was just written
                _terminate(run, model, None, epoch + 1, hooks)
            if stop.raised:
                history.interrupted = True
                break
    for cb in sorted(hooks, key=lambda cb: not isinstance(cb, EarlyStopping)):  # weights restored, then saved
        cb.on_train_end()
    return history


def _forward_pass(model, X, mask):
    """One inference pass over the batch ``X`` that waits for its result: the probe that times the threads."""
    def run():
        model.backend.synchronize(model.forward_batch(X, False, mask))
    return run


def _terminate(run, model, safe, epoch, hooks):
    """SIGTERM: with a checkpoint, the epoch in progress rolled back to its start (weights, optimizer, loss scale,
    the shuffle generator) — so that ``resume=True`` redoes it exactly as an uninterrupted run does — and the
    checkpoint written atomically (without one, the model keeps its last finished step); a line on standard error,
    and the process ended (:class:`Terminated`)."""
    path = run.checkpoint
    if safe is not None and path is not None:  # without a checkpoint the model keeps its last finished step
        model.load_step_state(safe[0], run.optimizer)
        model.rng.bit_generator.state = safe[1]
    if path is not None and run.rank == 0:
        ckpt.save(model, path)
    for cb in hooks:
        cb.on_train_end()
    where = f"the checkpoint {os.fspath(path)!r} holds epoch {epoch}; resume=True continues from there" \
        if path is not None else "no checkpoint was given (checkpoint=, --checkpoint), so none was written"
    sys.stderr.write(f"nnkit: SIGTERM: training stopped after the current step; {where}\n")
    sys.stderr.flush()
    raise Terminated(143)


def _needs_every_batch(cb):
    """Whether the ``on_batch_end`` of a callback that has its own must run after every batch
    (:meth:`Callback.needs_every_batch`; a duck-typed callback that defines ``on_batch_end`` does)."""
    asks = getattr(cb, "needs_every_batch", None)
    return bool(asks()) if callable(asks) else True


def _takes_logs(hook):
    """True when a callback's ``on_batch_end`` takes (batch, logs); False for one written as ``on_batch_end()``."""
    import inspect

    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class _Run:
    """One ``fit`` call's settings, checked before anything changes; its data is a :class:`nnkit.data.FitData`."""

    def __init__(self, model, X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data,
                 validation_split, early_stopping, callbacks, metrics, verbose, checkpoint, resume,
                 regularizer, comm, compile, sample_weight=None, log_every_n_steps=None, class_weight=None,
                 accumulate=1, lengths=None, bucket=False, steps_per_epoch=None):
        self.model, self.be, self.xp = model, model.backend, model.xp
        self.loss = loss = get_loss(loss)
        heads = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}  # what a classifier's outputs mean
        if isinstance(model.info, dict):
            if loss.name in heads:
                model.info["head"] = heads[loss.name]
            else:
                model.info.pop("head", None)
        epochs = check_int("epochs", epochs, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        if validation_split and validation_data is not None:
            raise ValueError("pass either validation_data or validation_split, not both")
        self.metric_fns = get_metrics(metrics, loss)
        by_name = isinstance(optimizer, str)
        if by_name and model.optimizer is not None and type(model.optimizer) is type(get_optimizer(optimizer)):
            optimizer = model.optimizer  # a second fit goes on with the same optimizer state
        optimizer = get_optimizer(optimizer)
        if early_stopping is True:
            early_stopping = EarlyStopping()
        elif early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be an EarlyStopping, True or None, got {early_stopping!r}")
        callbacks = list(callbacks)
        for cb in callbacks:
            if not callable(getattr(cb, "on_epoch_end", None)):
                raise TypeError(f"callback {cb!r} has no on_epoch_end(epoch, logs) method")
        if verbose not in (0, 1, 2, True, False):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if resume and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=path")
        if regularizer is not None and not callable(getattr(regularizer, "value_and_grad", None)):
            raise TypeError(f"regularizer must be a penalty such as nnkit.optim.L2(1e-4) or nnkit.optim.L1(1e-5), "
                            f"got {regularizer!r}")
        self.comm = comm = dist.check_comm(comm)
        self.parallel = comm is not None and comm.size > 1
        collected = [name for name, m in self.metric_fns if m.collect]
        if collected and self.parallel:
            raise ValueError(f"metric(s) {', '.join(collected)} need every score of the epoch, which data-parallel "
                             "fit keeps on each rank apart: evaluate them after training (model.evaluate)")
        self.rank, self.size = (comm.rank, comm.size) if self.parallel else (0, 1)
        lead = self.rank == 0  # the rank that prints and writes checkpoints
        if checkpoint is not None and lead:
            check_writable(checkpoint, "checkpoint")  # now, not after the first epoch
        self.checkpoint = checkpoint
        self.data = data.FitData(model, loss, self.metric_fns, self.batch_size, shuffle, epochs, self.rank,
                                 self.size, bucket,
                                 None if steps_per_epoch is None else check_int("steps_per_epoch", steps_per_epoch, 1))
        self.data.load(X, y, sample_weight, validation_data, validation_split, class_weight, lengths)
        self.data.compiled = bool(compile)  # batches of sequences padded to a few lengths: one trace each
        self.n, self.batches = self.data.n, self.data.batches

        if resume and os.path.exists(os.fspath(checkpoint)):
            # by name: the checkpoint's optimizer, hyperparameters and all; an instance keeps its own
            # hyperparameters and takes the saved moments and step counts
            ckpt.restore(model, checkpoint, optimizer, keep_hyperparameters=not by_name)
            optimizer = model.optimizer
            self.start, self.end = model.epoch, epochs
        else:
            self.start, self.end = model.epoch, (model.epoch + epochs if not resume else epochs)
        model.optimizer = self.optimizer = optimizer
        if self.parallel:
            dist.sync_model(comm, model)  # rank 0's weights and shuffle generator everywhere
        watchers = [cb.on_gradients for cb in callbacks if callable(getattr(cb, "on_gradients", None))]
        if log_every_n_steps is None:  # the finest a callback asks for (TensorBoard(every_n_steps=N))
            asked = [cb.log_every_n_steps for cb in callbacks if getattr(cb, "log_every_n_steps", None)]
            log_every_n_steps = min(asked) if asked else 0
        self.log_every_n_steps = check_int("log_every_n_steps", log_every_n_steps, 0)
        self.step = make_step(model, loss, optimizer, regularizer=regularizer, metric_fns=self.metric_fns,
                              comm=comm if self.parallel else None, compile=compile, grad_hooks=watchers,
                              accumulate=check_int("accumulate", accumulate, 1))

        own = [cb for cb in callbacks if isinstance(cb, ProgbarLogger)]  # a user's bar replaces fit's
        progress = own[0] if own else ProgbarLogger(int(verbose) if lead else 0)
        if not lead:
            progress.verbose = 0
        progress.setup(self.data.n_batches(), self.end, self.start)
        self.hooks = ([] if own else [progress]) + ([ModelCheckpoint(checkpoint)] if checkpoint is not None else []) \
            + callbacks + ([early_stopping] if early_stopping is not None else [])
        names = ["loss"] + [m for m, _ in self.metric_fns]
        log_names = names + ([f"val_{n}" for n in names] if self.data.has_validation else [])
        for cb in self.hooks:
            cb.model, cb.optimizer, cb.comm = model, optimizer, comm if self.parallel else None
            cb.log_names = log_names  # what the epoch logs will hold: callbacks that monitor one check it now
            for hook in ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_train_end"):
                if not callable(getattr(cb, hook, None)):  # a duck-typed callback may define only some hooks
                    setattr(cb, hook, getattr(Callback(), hook))

    def whole_epoch(self):
        """An epoch as one compiled loop over its full batches (the step's :meth:`~nnkit.training.step.Step.epoch`) and
        one step for its last, shorter batch: the epoch's summed :class:`nnkit.metrics.BatchStats`."""
        idx, last = self.data.epoch_plan()
        sums = None if idx is None else self.step.epoch(self.data.X, self.data.T, self.data.W, idx)
        if last is not None:
            sums = sums + self.step(last[0], last[1], 1.0, last[2], None)
        return sums

    def step_logs(self, batch):
        """A step's loss and metrics as Python floats (this rank's batch): the one read of a logging step."""
        if batch is None:
            return None
        (host,), _ = read_stats(self.be, [batch])
        return host.logs(self.metric_fns)

    def epoch_logs(self, sums, stop):
        """The epoch's logs as Python floats: its training sums (and the validation sums), in one read."""
        xp, be = self.xp, self.be
        nothing = self.nothing()
        parts = [nothing if sums is None else sums]  # None: this rank had no rows all epoch
        if self.data.has_validation:
            parts.append(self.data.validation_sums(nothing))
        if self.parallel:  # the epoch's sums and whether any rank was interrupted: one all-reduce
            flag = xp.asarray(1.0 if stop.raised else 0.0, dtype=be.dtype, device=be.device)
            host, (raised,) = read_stats(be, parts, [flag], reduce=self.comm.allreduce)
            stop.raised = stop.raised or bool(raised > 0)
        else:
            host, _ = read_stats(be, parts)
        logs = host[0].logs(self.metric_fns)
        if self.data.has_validation:
            logs.update(host[1].logs(self.metric_fns, "val_"))
        return logs

    def nothing(self):
        """Zero sums of the loss and every metric (a rank or a validation part with no rows), of their shapes."""
        k = (self.model.last_output_shape or (1,))[-1] if self.model.n_outputs is None else self.model.n_outputs
        return BatchStats.zeros(self.be, self.metric_fns, k)
