"""The training step, written once: forward, loss, backward, penalty, gradient all-reduce, optimizer update.

:func:`train_step` is a function of explicit state — a :class:`StepState` (parameters, optimizer moments
and step counts, room for layer buffers and a random key) and the learning rate as a value — returning
the new state.  ``Sequential.train_step``, ``fit`` and data-parallel ``fit`` all run it:

* **eager** (every backend): on NumPy, CuPy and torch the parameters and moments are updated in place,
  so the "new" state holds the very same arrays (the buffers stay put from step to step); on immutable
  arrays (JAX, array-api-strict) new arrays are returned; the caller writes the new state back into the model
  in one place (``model.load_step_state``);
* **compiled** (:func:`make_step` with ``compile=True``): the step becomes a pure function
  ``(params, moments, buffers, key, X, T, lr) -> (batch sums, params, moments, buffers, key)`` that the
  backend compiles
  (``jax.jit`` on JAX).  The learning rate is an argument, so schedules keep acting; shapes are the
  only thing traced, so an epoch's full batches and its last, shorter batch are traced once each,
  never again in later epochs.
"""
from __future__ import annotations

from .distributed import allreduce_grads
from ..backends.functional import own_kernel
from ..metrics import BatchStats
from .precision import LossScaler

__all__ = ["StepState", "train_step", "batch_grads", "update", "make_step", "Step", "EagerStep", "CompiledStep",
           "AccumulatingStep"]


class StepState:
    """Everything a training step reads and writes besides the batch (a model hands its own out with
    ``model.step_state(optimizer)`` and takes one back with ``model.load_step_state(state, optimizer)``).

    * ``params``  -- ``{"0.W": array, ...}``, the trained parameters;
    * ``opt``     -- the optimizer's per-parameter state ``{"0.W": {"t": ..., "m": ..., ...}}``;
    * ``buffers`` -- carried, never trained layer state (running statistics), ``{}`` when none;
    * ``key``     -- a random key for layers that draw inside the step (None when none do);
    * ``scaler``  -- the dynamic loss scale ``{"scale", "good"}`` under ``mixed_float16``, else None.
    """

    __slots__ = ("params", "opt", "buffers", "key", "scaler")

    def __init__(self, params, opt, buffers=None, key=None, scaler=None):
        self.params, self.opt = params, opt
        self.buffers = {} if buffers is None else buffers
        self.key = key
        self.scaler = scaler


def train_step(model, state, X, T, lr, *, loss, optimizer, regularizer=None, metric_fns=None, comm=None,
               share=1.0, w=None, grad_hooks=(), mask=None):
    """One training step: ``(value, sums, new_state)``.

    The model's layers must hold ``state.params`` (``make_step``'s compiled form puts them there).
    With ``X`` None (a rank with no rows of this global batch) the gradient is zero.

    1. forward Z = layers(X) and the loss L(Z, T) with ∂L/∂Z;
    2. backward: ∂L/∂θ for every parameter (``Sequential.backward``);
    3. penalty Ω(W) added to L and ∂Ω/∂W to the weight gradients (``regularizer``);
    4. data-parallel: Σ_r share_r·∇L_r in one all-reduce (``comm``; ``share`` = B_r / B);
    5. the optimizer update with learning rate ``lr``; the new state is returned for the caller to write back
       (``model.load_step_state``), with the buffers and random key the layers moved on during the pass.

    Under a mixed precision policy the backward pass runs in the compute dtype and the gradients are
    float32 from step 3 on (:mod:`nnkit.precision`).  With loss scaling (``state.scaler``) the
    backward pass runs on S·∂L/∂out, the gradients are divided by S, and when any of them is inf/NaN
    the update is undone on the device — parameters, moments and step counts keep their values —
    and S halves (``LossScaler``); no host read decides it.

    ``w`` (B,) weighs the examples: L = Σ w_n ℓ_n / Σ w_n.  ``value`` is the 0-d loss; ``sums`` is the batch's
    :class:`nnkit.metrics.BatchStats` (Σw, Σw·L, the metrics' statistics) when ``metric_fns`` (a list of
    ``(name, fn)``) is given, else None.  A per-position output (B, T, K) is scored at its B·T positions
    (``w`` may be (B, T); ``mask`` (B, T), the padding of variable-length sequences, is 0 at padded positions),
    so Σw counts the valid positions.  Nothing is read from the device.
    """
    value, sums, grads = batch_grads(model, state, X, T, loss=loss, regularizer=regularizer,
                                        metric_fns=metric_fns, w=w, mask=mask)
    return (value, sums) + (update(model, state, grads, lr, optimizer=optimizer, comm=comm, share=share,
                                   grad_hooks=grad_hooks),)


def batch_grads(model, state, X, T, *, loss, regularizer=None, metric_fns=None, w=None, mask=None):
    """Steps 1–3 of :func:`train_step`: ``(value, sums, grads)`` for one batch, the frozen layers' gradients left
    out (they get no update); ``sums`` (with ``metric_fns``) the batch's :class:`nnkit.metrics.BatchStats`, whose
    ``weight`` — the rows (positions) or Σw — is what the batch's mean divides by.  Nothing is written."""
    sums = value = None
    if X is None:
        xp = model.xp
        grads = {k: xp.zeros_like(p) for k, p in state.params.items()}
    else:
        value, out, grads = model.loss_and_grads(X, T, loss, regularizer=regularizer, w=w, scaler=state.scaler,
                                                 mask=mask)
        if metric_fns is not None:
            rows, targets, weights = model.score_rows(out, T, w, mask)
            sums = BatchStats.of_batch(rows, targets, value, loss, metric_fns, weights)
    frozen = model.frozen_keys()
    if frozen:  # frozen layers: no update, no moments (their gradients are not used)
        grads = {k: g for k, g in grads.items() if k not in frozen}
    return value, sums, grads


def update(model, state, grads, lr, *, optimizer, comm=None, share=1.0, grad_hooks=()):
    """Steps 4–5 of :func:`train_step`: the all-reduce, the gradient watchers and the optimizer's update (undone on
    the device when loss scaling finds inf/NaN); the new :class:`StepState`, for the caller to write back."""
    if comm is not None:
        grads = allreduce_grads(comm, grads, share)
    for hook in grad_hooks:  # watchers (GradientStats): the gradients and the parameters before the update
        hook(grads, state.params)
    scaler = state.scaler
    if scaler is None:
        params, opt = optimizer.apply(state.params, grads, state.opt, lr, scratch_grads=True)
    else:  # a step with inf/NaN gradients is undone on the device (after the all-reduce: every rank agrees)
        xp = model.xp
        trained = {k: state.params[k] for k in grads}
        optimizer.init_states(state.opt, trained, model.backend)
        ok = LossScaler.all_finite(xp, grads)
        before = LossScaler.copy(xp, {"p": trained, "o": state.opt})
        params, opt = optimizer.apply(state.params, grads, state.opt, lr, scratch_grads=True)
        params = LossScaler.keep_if(xp, ok, params, before["p"])
        opt = LossScaler.keep_if(xp, ok, opt, before["o"])
        scaler = LossScaler.update(xp, scaler, ok)
    # the buffers and the random key as the layers moved them on during this step's pass
    return StepState(params, opt, model.state.buffers(), model.state.random_key, scaler)


class Step:
    """What :func:`make_step` returns: ``step(X, T, share=1.0, w=None, mask=None) -> BatchStats | None`` runs
    one batch through the model and its optimizer.  ``compiled`` says whether the step is compiled, ``traces``
    how often it was traced; ``flush()`` ends an epoch (the last group of accumulated batches), ``reset()``
    forgets what an epoch undone had begun.  :meth:`epoch` runs a whole epoch of in-memory batches at once
    where the step can (a compiled step on a backend with a loop primitive) and is None elsewhere."""

    compiled = False
    traces = 0

    def __call__(self, X, T, share=1.0, w=None, mask=None):
        raise NotImplementedError

    def flush(self):
        """The epoch's end: nothing to do but for an accumulating step."""

    def reset(self):
        """An epoch undone: nothing kept but by an accumulating step."""

    epoch = None


class EagerStep(Step):
    """:func:`train_step` on the model's own state, run as it comes (NumPy, CuPy, torch; any backend with
    ``compile=False``)."""

    def __init__(self, model, loss, optimizer, regularizer, metric_fns, comm, grad_hooks):
        self.model, self.loss, self.optimizer, self.regularizer = model, loss, optimizer, regularizer
        self.metric_fns, self.comm, self.grad_hooks = metric_fns, comm, grad_hooks

    def __call__(self, X, T, share=1.0, w=None, mask=None):
        model, optimizer = self.model, self.optimizer
        _, sums, state = train_step(model, model.step_state(optimizer), X, T, optimizer.lr, loss=self.loss,
                                    optimizer=optimizer, regularizer=self.regularizer, metric_fns=self.metric_fns,
                                    comm=self.comm, share=share, w=w, grad_hooks=self.grad_hooks, mask=mask)
        model.load_step_state(state, optimizer)
        return sums


class AccumulatingStep(Step):
    """Gradient accumulation: ``accumulate`` batches' gradients summed as Σ_b W_b·g_b (W_b the batch's rows or
    Σw), then one update with Σ_b W_b·g_b / Σ_b W_b — the mean gradient of the batches taken together, i.e.
    one step on a batch ``accumulate`` times larger (to round-off, for every optimizer: clipping, moments and
    decay see the joined gradient).  The penalty Ω is added once per update, as on the larger batch."""

    def __init__(self, model, loss, optimizer, regularizer, metric_fns, grad_hooks, every):
        self.model, self.loss, self.optimizer, self.regularizer = model, loss, optimizer, regularizer
        self.metric_fns, self.grad_hooks, self.every = metric_fns, grad_hooks, every
        self.sum, self.weight, self.count = None, None, 0

    def __call__(self, X, T, share=1.0, w=None, mask=None):
        model = self.model
        state = model.step_state(self.optimizer)
        _, sums, grads = batch_grads(model, state, X, T, loss=self.loss, metric_fns=self.metric_fns, w=w,
                                     mask=mask)
        if X is not None:
            weight = sums.weight  # the batch's rows (positions) or Σw
            if isinstance(weight, float):  # a 0-d array: the penalty's value is built from it at the flush
                weight = model.xp.asarray(weight, dtype=model.backend.dtype, device=model.backend.device)
            scaled = {k: g * weight for k, g in grads.items()}
            if self.sum is None:
                self.sum, self.weight = scaled, weight
            else:
                self.sum = {k: self.sum[k] + g for k, g in scaled.items()}
                self.weight = self.weight + weight
        self.count += 1
        if self.count >= self.every:
            self.flush()
        return sums

    def reset(self):
        """Drop what was accumulated (an epoch undone after a bad batch)."""
        self.sum, self.weight, self.count = None, None, 0

    def flush(self):
        """The update of the batches accumulated so far (the epoch's last, shorter group too)."""
        if self.sum is None:
            self.count = 0
            return
        model, opt = self.model, self.optimizer
        grads = {k: g / self.weight for k, g in self.sum.items()}
        if self.regularizer is not None:
            scale = (1.0 / self.weight) if getattr(self.regularizer, "per_batch", False) else None
            _, grads = self.regularizer.add_to(model.params(), self.weight * 0.0, grads, scale)
        model.load_step_state(update(model, model.step_state(opt), grads, opt.lr, optimizer=opt,
                                     grad_hooks=self.grad_hooks), opt)
        self.sum, self.weight, self.count = None, None, 0


class CompiledStep(Step):
    """:func:`train_step` as a pure function of its state, compiled by the backend (``jax.jit``):
    ``(params, moments, buffers, key, scale, X, T, lr, w, mask) -> (batch sums, params, moments, buffers, key,
    scale)``.  The learning rate is an argument, so schedules keep acting; shapes are the only thing traced, so
    an epoch's full batches and its last, shorter batch are traced once each, never again in later epochs.

    While it is traced the layers hold the traced parameters and keep traced values in their caches; once the
    trace is done the model gets its own arrays back and the caches are emptied, so nothing traced outlives the
    trace.

    :meth:`epoch` runs an epoch's full batches as one compiled loop (the backend's ``scan``: ``lax.scan`` on
    JAX): the data already on the device, the epoch's order sent once as (batches, B) row indices, each batch's
    rows gathered inside the loop (no second copy of the data), the state carried from batch to batch on the
    device and the batches' sums added there — one dispatch for the epoch instead of one per batch.  The last,
    shorter batch is one more call of the compiled step."""

    compiled = True

    def __init__(self, model, loss, optimizer, regularizer, metric_fns):
        self.model, self.loss, self.optimizer, self.regularizer = model, loss, optimizer, regularizer
        self.metric_fns = metric_fns
        be = model.backend
        self._step = be.compile(self._pure)
        self._epoch = be.compile(self._pure_epoch) if own_kernel(model.xp, "scan") is not None else None
        if self._epoch is None:
            self.epoch = None

    def _pure(self, params, opt, buffers, key, scaler, X, T, lr, w, mask):
        """One step as a pure function (see the class docstring); runs only while the backend traces it."""
        model = self.model
        self.traces += 1
        before, given = model.step_state(self.optimizer), StepState(params, opt, buffers, key, scaler)
        try:
            model.load_step_state(given)
            _, sums, state = train_step(model, given, X, T, lr,
                                        loss=self.loss, optimizer=self.optimizer, regularizer=self.regularizer,
                                        metric_fns=self.metric_fns, w=w, mask=mask)
            stats = None if sums is None else sums.as_tuple()  # plain arrays: what a compiled function returns
            return stats, {**params, **state.params}, state.opt, state.buffers, state.key, state.scaler
        finally:  # nothing traced stays in the model
            model.load_step_state(before)
            model.clear_scratch()

    def _pure_epoch(self, params, opt, buffers, key, scaler, X, T, W, idx, lr):
        """The full batches of an epoch: ``idx`` (batches, B) row indices, one step per row of ``idx`` carried
        through the backend's loop; returns the sums over the batches and the state after the last."""
        xp = self.model.xp

        def body(carry, rows):  # one batch: its rows gathered here, so the data is never copied whole
            p, o, b, k, s = carry
            xb, tb = xp.take(X, rows, axis=0), xp.take(T, rows, axis=0)
            wb = None if W is None else xp.take(W, rows, axis=0)
            stats, p, o, b, k, s = self._pure(p, o, b, k, s, xb, tb, lr, wb, None)
            return (p, o, b, k, s), stats

        (params, opt, buffers, key, scaler), (weight, loss, metrics) = xp.scan(
            body, (params, opt, buffers, key, scaler), idx)
        collect = [m.collect for _, m in self.metric_fns]  # per batch (batches, ...): summed, or joined (collected)
        metrics = [[xp.reshape(a[0], (-1,) + tuple(a[0].shape[2:]))] if c else xp.sum(a, axis=0)
                   for a, c in zip(metrics, collect)]
        return (xp.sum(weight, axis=0), xp.sum(loss, axis=0), metrics), params, opt, buffers, key, scaler

    def _state(self):
        model = self.model
        state = model.step_state(self.optimizer)
        if state.key is None and model.needs_random:
            model.reseed()
            state = model.step_state(self.optimizer)
        return state.params, state.opt, state.buffers, state.key, state.scaler

    def _keep(self, out):
        """The compiled function's new state written back into the model and optimizer; the sums."""
        sums, params, opt, buffers, key, scaler = out
        self.model.load_step_state(StepState(params, opt, buffers, key, scaler), self.optimizer)
        return None if sums is None else BatchStats.from_tuple(sums, self.metric_fns)

    def __call__(self, X, T, share=1.0, w=None, mask=None):
        return self._keep(self._step(*self._state(), X, T, self.optimizer.lr, w, mask))

    def epoch(self, X, T, W, idx):
        """One compiled loop over the full batches ``idx`` (batches, B) of the device arrays X, T and W (or None);
        the batches' summed :class:`nnkit.metrics.BatchStats`."""
        return self._keep(self._epoch(*self._state(), X, T, W, idx, self.optimizer.lr))


def make_step(model, loss, optimizer, *, regularizer=None, metric_fns=(), comm=None, compile=False, grad_hooks=(),
              accumulate=1):
    """The :class:`Step` ``fit`` runs: an :class:`EagerStep`, a :class:`CompiledStep` (``compile=True`` where
    the backend compiles, ``Backend.compile``: JAX's ``jax.jit``) or, with ``accumulate=N``, an
    :class:`AccumulatingStep` that updates every N batches with their joined gradient.
    """
    metric_fns = list(metric_fns)
    if accumulate > 1:
        if comm is not None or compile:
            raise ValueError("accumulate > 1 runs eagerly on one process: use compile=False and no communicator")
        if model.policy.loss_scaling:
            raise ValueError("accumulate > 1 with mixed_float16's loss scaling is not supported: use "
                             "mixed_bfloat16, or accumulate=1")
        return AccumulatingStep(model, loss, optimizer, regularizer, metric_fns, grad_hooks, accumulate)
    be = model.backend
    if not compile or not be.compiles:
        return EagerStep(model, loss, optimizer, regularizer, metric_fns, comm, grad_hooks)
    if comm is not None:
        raise ValueError("compile=True with a communicator (data-parallel fit) is not supported: the "
                         "all-reduce runs outside the compiled step; use compile=False with comm")
    if grad_hooks:
        raise ValueError("compile=True with a callback that watches gradients (GradientStats) is not supported: "
                         "a compiled step has no gradients to show; use compile=False")
    frozen = model.frozen_keys()
    trained = {k: p for k, p in model.params().items() if k not in frozen}
    optimizer.init_states(optimizer.state, trained, be)  # every moment exists, t arrays: one trace
    key = (id(be), tuple(sorted(frozen)), model.precision, type(loss), repr(regularizer), tuple(n for n, _ in metric_fns), id(optimizer),
           tuple(sorted((k, repr(v)) for k, v in optimizer.hyperparameters().items() if k != "lr")))
    cache = model.state.compiled  # fit after fit reuses the traces
    if key not in cache:
        cache[key] = CompiledStep(model, loss, optimizer, regularizer, metric_fns)
    return cache[key]
