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
import dataclasses
import math
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
from ..data.checks import check_int
from .optim import get_optimizer
from .settings import FitSettings
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
    loss = model.outputs_loss(loss) if getattr(model, "multi", False) else get_loss(loss)
    metric_fns = get_metrics(metrics, loss)
    multi = getattr(model, "multi", False)
    if (data.is_stream(X, y) and not data.is_ragged(X) and not multi) or \
            (multi and y is None and not isinstance(X, (list, tuple, dict))):  # a stream: a batch at a time, in order
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
        default = data.n_rows(X) if not is_sparse(X) else 4096
        bs = default if batch_size is None else check_int("batch_size", batch_size, 1)
        with model.policy.activate():
            sums = data.batch_sums(model, X, T, loss, metric_fns, bs, W, M)
    if sums is None:
        raise ValueError("evaluate got no rows: X is empty")
    (host,), _ = read_stats(model.backend, [sums])
    return host.logs(metric_fns)


def fit(model, X, y=None, settings=None, **options):
    """See :meth:`nnkit.Sequential.fit`: ``settings`` a :class:`~nnkit.training.settings.FitSettings`, or its
    fields as keywords."""
    run = _Run(model, X, y, FitSettings(**options) if settings is None else settings)
    history, hooks = History(), run.hooks
    for cb in hooks:
        cb.history = history
    for cb in hooks:
        cb.on_train_begin()
    if run.on_cpu:
        cpu_threads.apply_default()  # one BLAS thread per physical core, unless the user chose
    with _StopFlag() as stop, run.model.policy.activate():
        for epoch in range(run.start, run.end):
            logs = _epoch(run, epoch, stop, history)
            if logs is None:  # interrupted (Ctrl-C): the history so far
                break
            if any([bool(cb.on_epoch_end(epoch, dict(logs))) for cb in hooks]):
                history.stopped_epoch = epoch
                break
            if stop.terminated:  # at an epoch's end (or data-parallel): the checkpoint was just written
                _terminate(run, run.model, None, epoch + 1, hooks)
            if stop.raised:
                history.interrupted = True
                break
    for cb in sorted(hooks, key=lambda cb: not isinstance(cb, EarlyStopping)):  # weights restored, then saved
        cb.on_train_end()
    return history


def _epoch(run, epoch, stop, history):
    """One epoch: its batches through the step, then its logs read once (None when Ctrl-C cut it short).  The
    epoch's start is kept to undo it: a bad streamed batch, a diverged loss or SIGTERM puts it back."""
    model, hooks = run.model, run.hooks
    t0, safe = time.perf_counter(), (model.step_state(run.optimizer, copy=True),
                                     copy.deepcopy(model.state.rng.bit_generator.state))
    model.reseed()  # random layers: this epoch's device generator, from the model's seed
    for cb in hooks:
        cb.on_epoch_begin(epoch)
    try:
        sums, seen = run.whole_epoch_batches() if run.whole else run.batch_by_batch(epoch, stop)
        run.step.flush()  # accumulate=N: the epoch's last, shorter group of batches
    except data.BatchError:  # a bad streamed batch: back to the epoch's start, then say which batch
        run.step.reset()
        model.load_step_state(safe[0], run.optimizer)
        raise
    short = run.n is None or seen < run.n
    if stop.terminated and not run.parallel and short:
        _terminate(run, model, safe, epoch, hooks)  # raises Terminated
    if stop.raised and short:
        history.interrupted = True
        return None
    logs = run.epoch_logs(sums, stop)  # the epoch's one device -> host read
    if not all(math.isfinite(v) for v in logs.values()):
        model.load_step_state(safe[0], run.optimizer)
        raise TrainingDivergedError(
            f"training diverged in epoch {epoch + 1}: the loss became {logs['loss']} (logs: {logs}); "
            f"the model keeps the weights of epoch {epoch}. Try a lower learning rate (now "
            f"{run.optimizer.lr:g}), gradient clipping (clip_norm=) or standardised inputs")
    model.state.epoch = epoch + 1
    wall = time.perf_counter() - t0
    history.append({**logs, "time": wall})
    if run.probe is not None:  # the first epoch: were the cores ours? (warns once per process)
        cpu_threads.check_oversubscribed(_forward_pass(model, *run.probe), wall)
        run.probe = None
    return logs


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
        model.state.rng.bit_generator.state = safe[1]
    if path is not None and run.rank == 0:
        ckpt.save(model, path)
    for cb in hooks:
        cb.on_train_end()
    where = f"the checkpoint {os.fspath(path)!r} holds epoch {epoch}; resume=True continues from there" \
        if path is not None else "no checkpoint was given (checkpoint=, --checkpoint), so none was written"
    sys.stderr.write(f"nnkit: SIGTERM: training stopped after the current step; {where}\n")
    sys.stderr.flush()
    raise Terminated(143)


def _record_head(model, loss):
    """What a classifier's outputs mean, kept in ``model.info["head"]`` (softmax or sigmoid; export reads it)."""
    heads = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}
    if isinstance(model.info, dict):
        if loss.name in heads:
            model.info["head"] = heads[loss.name]
        else:
            model.info.pop("head", None)


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
    """One ``fit`` call: its settings checked before anything changes, its data (a :class:`nnkit.data.FitData`),
    optimizer, step and hooks."""

    def __init__(self, model, X, y, settings):
        self.settings = s = settings.checked()
        self.model, self.be, self.xp = model, model.backend, model.xp
        if getattr(model, "multi", False):  # several outputs: one loss of them all, each logged
            self.loss = model.outputs_loss(s.loss, s.loss_weights)
            for what, given in (("compile", s.compile or None), ("comm", s.comm)):
                if given is not None:
                    raise ValueError(f"{what}= takes a model of one input and one output for now")
        elif isinstance(s.loss, (dict, list, tuple)) or s.loss_weights is not None:
            raise ValueError("a loss per output and loss_weights are for a model of several outputs")
        else:
            self.loss = s.loss
        s = self.settings = dataclasses.replace(s, loss=self.loss)
        _record_head(model, self.loss)
        self.metric_fns = get_metrics(s.metrics, s.loss)
        by_name = isinstance(s.optimizer, str)
        optimizer = s.optimizer
        if by_name and model.state.optimizer is not None and type(model.state.optimizer) is type(get_optimizer(optimizer)):
            optimizer = model.state.optimizer  # a second fit goes on with the same optimizer state
        optimizer = get_optimizer(optimizer)
        self._communicator(s.comm)
        if s.checkpoint is not None and self.rank == 0:
            check_writable(s.checkpoint, "checkpoint")  # now, not after the first epoch
        self.checkpoint, self.batch_size = s.checkpoint, s.batch_size
        self.data = data.FitData(model, s.loss, self.metric_fns, s.batch_size, s.shuffle, s.epochs, self.rank,
                                 self.size, s.bucket, s.steps_per_epoch)
        self.data.load(X, y, s.sample_weight, s.validation_data, s.validation_split, s.class_weight, s.lengths)
        self.data.compiled = bool(s.compile)  # batches of sequences padded to a few lengths: one trace each
        self.n, self.batches = self.data.n, self.data.batches
        model.state.optimizer = self.optimizer = optimizer = self._resume(optimizer, keep_hyperparameters=not by_name)
        if self.parallel:
            dist.sync_model(self.comm, model)  # rank 0's weights and shuffle generator everywhere
        watchers = [cb.on_gradients for cb in s.callbacks if callable(getattr(cb, "on_gradients", None))]
        self.log_every_n_steps = s.log_every_n_steps
        self.step = make_step(model, s.loss, optimizer, regularizer=s.regularizer, metric_fns=self.metric_fns,
                              comm=self.comm if self.parallel else None, compile=s.compile, grad_hooks=watchers,
                              accumulate=s.accumulate)
        self.hooks = self._hooks(s, optimizer)
        watching = [cb for cb in self.hooks if overrides_on_batch_end(cb)]
        self.per_batch = [(cb.on_batch_end, _takes_logs(cb.on_batch_end)) for cb in watching]
        self.steps = 0  # counted over the whole fit, for the logging steps
        # compile=True: an epoch runs whole, one compiled loop on the device, when nothing needs each batch
        self.whole = self.step.epoch is not None and self.data.whole_epochs() and not self.log_every_n_steps \
            and not any(_needs_every_batch(cb) for cb in watching)
        self.on_cpu = not self.be.on_cuda
        # the BLAS threads are judged on an eager step's CPU: a compiled step runs on its compiler's threads
        self.judges_threads = self.on_cpu and not s.compile
        self.probe = None  # the first batch of the first epoch (X, mask): what the oversubscription check times

    def _communicator(self, comm):
        """The communicator of data-parallel fit (checked), this process's rank and the number of ranks."""
        self.comm = comm = dist.check_comm(comm)
        self.parallel = comm is not None and comm.size > 1
        collected = [name for name, m in self.metric_fns if m.collect]
        if collected and self.parallel:
            raise ValueError(f"metric(s) {', '.join(collected)} need every score of the epoch, which data-parallel "
                             "fit keeps on each rank apart: evaluate them after training (model.evaluate)")
        self.rank, self.size = (comm.rank, comm.size) if self.parallel else (0, 1)

    def _resume(self, optimizer, keep_hyperparameters):
        """The epochs to run (``start``, ``end``) and the optimizer: with ``resume`` and an existing checkpoint,
        restored from it — by name, the checkpoint's optimizer, hyperparameters and all; an instance keeps its
        own hyperparameters and takes the saved moments and step counts."""
        s, model = self.settings, self.model
        if s.resume and os.path.exists(os.fspath(s.checkpoint)):
            ckpt.restore(model, s.checkpoint, optimizer, keep_hyperparameters=keep_hyperparameters)
            self.start, self.end = model.state.epoch, s.epochs
            return model.state.optimizer
        self.start, self.end = model.state.epoch, (model.state.epoch + s.epochs if not s.resume else s.epochs)
        return optimizer

    def _hooks(self, s, optimizer):
        """The callbacks in the order they run: the progress bar (a user's own replaces fit's), the checkpoint
        writer, the user's callbacks, early stopping — each told the model, optimizer and the logs to come."""
        lead = self.rank == 0  # the rank that prints and writes checkpoints
        own = [cb for cb in s.callbacks if isinstance(cb, ProgbarLogger)]
        progress = own[0] if own else ProgbarLogger(int(s.verbose) if lead else 0)
        if not lead:
            progress.verbose = 0
        progress.setup(self.data.n_batches(), self.end, self.start)
        hooks = ([] if own else [progress]) + ([ModelCheckpoint(s.checkpoint)] if s.checkpoint is not None else []) \
            + s.callbacks + ([s.early_stopping] if s.early_stopping is not None else [])
        names = ["loss"] + [m for m, _ in self.metric_fns]
        log_names = names + ([f"val_{n}" for n in names] if self.data.has_validation else [])
        for cb in hooks:
            cb.model, cb.optimizer, cb.comm = self.model, optimizer, self.comm if self.parallel else None
            cb.log_names = log_names  # what the epoch logs will hold: callbacks that monitor one check it now
            for hook in ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_train_end"):
                if not callable(getattr(cb, hook, None)):  # a duck-typed callback may define only some hooks
                    setattr(cb, hook, getattr(Callback(), hook))
        return hooks

    def whole_epoch_batches(self):
        """(sums, rows seen) of an epoch run whole (:meth:`whole_epoch`), the batch hooks called once after it."""
        sums = self.whole_epoch()
        self.steps += self.data.n_batches()
        for hook, takes_logs in self.per_batch:  # those that need no more: once, after the last batch
            hook(self.data.n_batches() - 1, None) if takes_logs else hook()
        return sums, self.n

    def batch_by_batch(self, epoch, stop):
        """(sums, rows seen) of an epoch step by step: each batch through the step, the batch hooks after each
        (with logs on the logging steps), stopped after the step in progress by Ctrl-C."""
        sums, seen, every = None, 0, self.log_every_n_steps
        for i, (xb, tb, wb, mb, share, seen) in enumerate(self.batches()):
            if self.judges_threads and epoch == self.start and i == 0:
                self.probe = (xb, mb)
            batch = self.step(xb, tb, share, wb, mb)
            sums = sums if batch is None else sums + batch
            self.steps += 1
            if self.per_batch:
                logs = self.step_logs(batch) if every and self.steps % every == 0 else None
                for hook, takes_logs in self.per_batch:
                    hook(i, logs) if takes_logs else hook()
            if stop.raised and not self.parallel:  # ranks agree on stopping at the epoch's end
                break
        return sums, seen

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
