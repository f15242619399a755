"""``Model``: a graph of layer calls with a hand-written backward pass — and ``Sequential``, its chain."""
from __future__ import annotations

import math
import os

from typing import Any, Iterable

import numpy as np

from ..backends import Backend, get_backend, host_copy
from ..training.callbacks import History
from ..backends.functional import Array
from ..layers import Layer, ShapeError, check_input_shape, fmt_shape, infer_shapes, layer_from_config
from ..layers.core import mask_through, resolve_ties
from ..layers import graph as graph_module
from ..data.preprocessing import Preprocessing
from ..data import preprocessing as preprocessing_module
from ..losses import OutputsLoss, as_rows, get_loss
from ..backends.functional import namespace_of
from ..data.checks import check_int
from ..training.optim import Optimizer
from ..training.precision import LossScaler, get_policy
from . import architectures
from ..training import checkpoint
from .. import data
from ..training import step
from ..training import loop as training
from ..training.settings import FitSettings
from ..training.state import ModelState
_KEEP = object()  # "the model's own precision policy" (a default that None cannot be: None means none)

__all__ = ["Model", "Sequential", "load"]


class Model:
    """A network of layers as a graph, trained by backprop written by hand (Keras' functional API):

    .. code-block:: python

        x = nnkit.Input((8,))
        h = nnkit.Dense(8, 16)(x)
        y = nnkit.Dense(16, 2)(nnkit.ReLU()(h))
        model = nnkit.Model(x, y, seed=0)

    ``inputs`` and ``outputs`` are each a symbolic tensor, a list or a dict name → tensor; the options are
    :class:`Sequential`'s (``backend``, ``dtype``, ``seed``, ``precision``).  The forward pass walks the layer calls
    in the order they were made, the backward pass in reverse: where a tensor fans out to several calls its
    gradient is the sum of theirs, and a layer called at several places (one set of parameters) gets the sum of
    its calls' gradients — the chain rule's multivariable case.  ``Sequential`` is the chain of layers: the
    same walks.
    """

    _last_out = None  # the output shape (without B) of the batch shape checked last (per-position targets)
    _ties: list = []  # weights shared by two layers (TiedDense): [(key, the sharing layer)]
    name = None
    multi = False  # True for a model of several inputs or outputs (lists or dicts of arrays go in and come out)

    def __init__(self, inputs: Any, outputs: Any, name: str | None = None, *, backend: str | Any = "numpy",
                 dtype: str | None = None, seed: int | None = None, precision: str | None = None) -> None:
        in_names, ins = graph_module.named(inputs, "inputs")
        out_names, outs = graph_module.named(outputs, "outputs")
        plan = graph_module.build_plan(ins, outs, lambda layer: any(k == "params" for _, _, k, _ in layer.slots()))
        self.name = name
        self.input_names = in_names or [t.name or (f"input_{k + 1}" if len(ins) > 1 else "input")
                                        for k, t in enumerate(ins)]
        self.output_names = out_names or [f"output_{k + 1}" if len(outs) > 1 else "output"
                                          for k in range(len(outs))]
        for what, names in (("input", self.input_names), ("output", self.output_names)):
            if len(set(names)) != len(names):
                raise ValueError(f"two {what}s share a name: {names}")
        self._by_dict = (in_names is not None, out_names is not None)
        self.input_shapes = [t.shape for t in ins]
        self.output_shapes = [t.shape for t in outs]
        self._setup(plan, self.input_shapes[0] if len(ins) == 1 else None, backend, dtype, seed, precision)
        self.multi = len(ins) > 1 or len(outs) > 1
        if len(outs) == 1:
            self._out_shape = self.output_shapes[0]

    def _setup(self, plan, input_shape, backend, dtype, seed, precision):
        """What every model has: the plan's layers built on ``backend`` (drawing from the generator of ``seed``), the
        precision policy, the slots of the parameters and buffers, the training state."""
        layers = plan.layers
        _check_distinct(layers)
        self._ties = resolve_ties(layers)  # [(the shared weight's key, the layer that also uses it)]
        self.layers, self._plan = layers, plan
        self.input_shape = input_shape
        self._batch_shapes: dict[tuple, tuple] = {}  # input shape (without B) -> output shape, for the shapes already checked
        self._out_shape = None if self.input_shape is None or not plan.chain \
            else infer_shapes(layers, self.input_shape)[-1]
        self.backend = get_backend(backend, dtype=dtype)
        self.policy = get_policy(precision, self.backend)
        self.seed = seed
        rng = self.backend.rng(seed)
        for layer in layers:
            layer.build(self.backend, rng)
        self.info: dict[str, Any] = {}  # free-form JSON metadata saved with the model (the CLI keeps classes and scaling here)
        # backward stops at the first layer with parameters: nothing before it needs a gradient
        self._first_param_layer = next((i for i, l in enumerate(layers)
                                        if any(kind == "params" for _, _, kind, _ in l.slots())), 0)
        # "{layer index}.{name}" -> (owning layer, name) for every parameter (nested layers: "3.0.W") and
        # buffer, in order; built once, not per step
        slots: dict[str, tuple[Layer, str]] = {}
        buffer_slots: dict[str, tuple[Layer, str]] = {}
        for i, layer in enumerate(layers):
            for name, owner, kind, key in layer.slots():
                (slots if kind == "params" else buffer_slots)[f"{i}.{name}"] = (owner, key)
        # the training state: what the step, the loop, checkpoints and data-parallel fit share (one object)
        self.state = ModelState(slots, buffer_slots, rng,
                                LossScaler.init(self.backend) if self.policy.loss_scaling else None)
        self._wire()

    @property
    def plan(self) -> graph_module.Plan:
        """The compiled graph the walks follow (:class:`nnkit.layers.graph.Plan`): its layers, its nodes in order
        (``plan.forward_order``: layer, input slot, output slot, input slots of a list node, shared, node) and the
        slots of the inputs and outputs.  The exporters walk it."""
        return self._plan

    def value_shapes(self) -> list:
        """The shape (without the batch) of every value slot of the graph as far as the input shapes fix it (None
        where unknown): the inputs' first, then each node's output."""
        plan = self._plan
        return graph_module.walk_shapes(plan, self.input_shapes if not plan.chain else [self.known_input_shape],
                                        strict=False)

    def __call__(self, inputs: Any) -> Any:
        """A model is a layer: called on symbolic tensors inside another graph, it records one node that runs this
        whole graph (:class:`Submodel`; the same layers, weights and all — calling it twice shares them)."""
        layer = self.__dict__.get("_as_layer")
        if layer is None:
            if len(self._plan.outputs) != 1:
                raise ValueError(f"a model called inside a graph gives one tensor; this one has "
                                 f"{len(self._plan.outputs)} outputs")
            layer = self._as_layer = Submodel(self)
        return layer(inputs)

    @property
    def n_inputs(self) -> int:
        """The number of the model's inputs (one for a ``Sequential``)."""
        return len(self._plan.inputs)

    @property
    def n_output_tensors(self) -> int:
        """The number of the model's outputs (one for a ``Sequential``)."""
        return len(self._plan.outputs)

    def _wire(self):
        """Give the layers the backend's namespace, and random layers the model's device generator."""
        for layer in self.layers:
            for sub in layer.sublayers():
                sub.xp = self.backend.xp
                sub.random = self._uniform if sub.needs_random else None
                sub.policy = self.policy if self.policy.casts else None

    @property
    def needs_random(self):
        """True when a layer draws random numbers in training (Dropout)."""
        return any(sub.needs_random for layer in self.layers for sub in layer.sublayers())

    def reseed(self) -> None:
        """A new device generator for the random layers, seeded from the model's host generator (``fit``
        does this at the start of every epoch, so a resumed run draws what the uninterrupted run drew)."""
        if self.needs_random:
            self.state.random_key = self.backend.random_key(int(self.state.rng.integers(0, 2**63 - 1)))

    def _uniform(self, shape, dtype):
        """U[0, 1) of ``shape`` on the device, from the model's device generator."""
        state = self.state
        if state.random_key is None:
            self.reseed()
        u, state.random_key = self.backend.uniform(state.random_key, shape, dtype)
        return u

    @property
    def tokenizer(self):
        """The :class:`nnkit.text.CharTokenizer` saved with the model, or None; set it to attach one."""
        from ..data.text import CharTokenizer

        info = self.info.get("tokenizer")
        return None if info is None else CharTokenizer.from_info(info)

    @tokenizer.setter
    def tokenizer(self, tok):
        if tok is None:
            self.info.pop("tokenizer", None)
            return
        self.info["tokenizer"] = tok.to_info()

    def generate(self, prompt: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> Any:
        """Sample ``max_new_tokens`` tokens after ``prompt``, each from softmax(logits/temperature) of the last
        position (only the ``top_k`` largest logits kept when given), the context cropped to the model's
        block size (its ``PositionalEmbedding``'s max_len).

        ``prompt``: token ids (T,) or (B, T), or a str when the model has a :attr:`tokenizer` (the text is
        encoded, and the result decoded).  Returns the prompt and the new tokens, ids as a host int64 array (or
        the text).  Runs on the device: each token is drawn there (Gumbel-max sampling: argmax of
        logits/temperature + Gumbel noise, from a device generator seeded with ``seed``) and appended there;
        the host reads the tokens once, at the end.  The same ``seed`` gives the same text."""
        text = isinstance(prompt, str)
        if text:
            tok = self.tokenizer
            if tok is None:
                raise ValueError("a text prompt needs the model's tokenizer (model.tokenizer = "
                                 "nnkit.text.CharTokenizer.fit(text)); or pass token ids")
            if not prompt:
                raise ValueError("the prompt is empty: give at least one character to start from")
            prompt = tok.encode(prompt)
        ids = np.asarray(prompt)
        if ids.ndim not in (1, 2) or ids.shape[-1] == 0 or (ids.ndim == 2 and ids.shape[0] == 0):
            raise ValueError(f"the prompt must be token ids (T,) or (B, T) with T ≥ 1, got shape {ids.shape}")
        vocab = int(self.output_shape((1,))[-1] or 0)  # the logits' width
        if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"the prompt's token ids must be integers in [0, {vocab}) (the vocabulary)")
        n = check_int("max_new_tokens", max_new_tokens, 0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0.0 < float(temperature) < float("inf"):
            raise ValueError(f"temperature must be a positive number (1.0: the model's own distribution), "
                             f"got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        be, xp = self.backend, self.xp
        block = next((layer.max_len for layer in self.layers if hasattr(layer, "max_len")), None)
        X = be.asarray(ids.reshape(1, -1) if ids.ndim == 1 else ids, dtype=xp.int64)
        key = be.random_key(int(self.rng.integers(0, 2**63 - 1)) if seed is None else int(seed))
        k = None if top_k is None else min(top_k, vocab)
        for _ in range(n):
            context = X if block is None or X.shape[1] <= block else X[:, X.shape[1] - block:]
            logits = self.forward_batch(context, train=False)[:, -1, :] * (1.0 / float(temperature))  # (B, V)
            if k is not None and k < vocab:
                kth = xp.sort(logits, axis=-1, descending=True)[:, k - 1:k]
                logits = xp.where(logits < kth, xp.asarray(-xp.inf, dtype=logits.dtype, device=be.device), logits)
            u, key = be.uniform(key, tuple(logits.shape), logits.dtype)
            nxt = xp.argmax(logits - xp.log(-xp.log(u)), axis=-1)  # Gumbel-max: a draw from softmax(logits)
            X = xp.concat([X, xp.astype(nxt, X.dtype)[:, None]], axis=1)
        out = be.to_numpy(X)
        out = out[0] if ids.ndim == 1 else out
        return self.tokenizer.decode(out) if text else out

    def __setstate__(self, state):
        """Unpickling: the layers get the backend's namespace back (see ``Layer.__getstate__``); the training
        state's compiled steps and device generator stayed behind (:class:`ModelState`), rebuilt on use."""
        self.__dict__.update(state)
        if "_plan" not in state:  # pickled before models were graphs: a chain
            self._plan = graph_module.Plan.chain_of(self.layers, self._first_param_layer)
            self.input_names, self.output_names, self._by_dict = ["input"], ["output"], (False, False)
        if "state" not in state:  # pickled before the training state was one object
            old = self.__dict__
            self.state = ModelState(old.pop("_slots"), old.pop("_buffer_slots"), old.pop("rng"), old.pop("_scaler", None))
            self.state.epoch, self.state.optimizer = old.pop("epoch", 0), old.pop("optimizer", None)
            for gone in ("_random_key", "_compiled_steps"):
                old.pop(gone, None)
        self._wire()

    # -- properties ---------------------------------------------------------------
    @property
    def xp(self):
        return self.backend.xp

    @property
    def dtype(self):
        """The storage dtype of parameters, buffers and optimizer moments (``"float32"``, ``"float64"``)."""
        return self.backend.dtype_name

    @property
    def precision(self):
        """The precision policy's name (None, ``"mixed_bfloat16"``, ``"mixed_float16"``, ``"tf32"``)."""
        return self.policy.name

    @property
    def compute_dtype(self):
        """The dtype the matmuls run in (``"bfloat16"`` under ``mixed_bfloat16``; ``dtype`` without a policy)."""
        return self.policy.compute_dtype_name

    @property
    def loss_scale(self):
        """The current dynamic loss scale S (``mixed_float16``; one host read), else None."""
        scaler = self.state.scaler
        return None if scaler is None else self.backend.to_float(scaler["scale"])

    # -- views of the training state (``model.state``) ---------------------------------------------------
    @property
    def rng(self):
        """The host generator (initial weights, shuffles): ``state.rng``."""
        return self.state.rng

    @rng.setter
    def rng(self, rng):
        self.state.rng = rng

    @property
    def epoch(self) -> int:
        """The training epochs completed (saved in checkpoints): ``state.epoch``."""
        return self.state.epoch

    @epoch.setter
    def epoch(self, epoch):
        self.state.epoch = epoch

    @property
    def optimizer(self) -> Optimizer | None:
        """The optimizer ``fit`` used (saved with the model), or None: ``state.optimizer``."""
        return self.state.optimizer

    @optimizer.setter
    def optimizer(self, optimizer):
        self.state.optimizer = optimizer

    @property
    def _slots(self):
        return self.state.slots

    @property
    def _buffer_slots(self):
        return self.state.buffer_slots

    # -- the training step's state: what the step, the loop, checkpoints and data-parallel fit share ---------
    @property
    def compiled_steps(self) -> dict:
        """The compiled steps ``fit(compile=True)`` built for this model, by their settings: a later fit with the
        same ones reuses their traces (dropped when the model is pickled or moved)."""
        return self.state.compiled

    @property
    def random_key(self):
        """The device generator of the layers that draw in training (Dropout), or None; ``fit`` reseeds it from
        the model's seed at every epoch."""
        return self.state.random_key

    @random_key.setter
    def random_key(self, key):
        self.state.random_key = key

    @property
    def loss_scaler(self):
        """The dynamic loss scale's state ``{"scale", "good"}`` (device arrays) under ``mixed_float16``, else None
        (:class:`nnkit.precision.LossScaler`; ``loss_scale`` reads the scale as a float)."""
        return self.state.scaler

    @loss_scaler.setter
    def loss_scaler(self, scaler):
        self.state.scaler = scaler

    def step_state(self, optimizer: Optimizer, copy: bool = False) -> step.StepState:
        """Everything a training step reads besides the batch (:class:`nnkit.training.step.StepState`): the parameters,
        ``optimizer``'s moments and step counts, the buffers, the random key and the loss scale.  ``copy=True``
        gives a copy that later (in-place) steps do not touch — what ``fit`` keeps to undo an epoch."""
        return self.state.step_state(optimizer, self.backend, copy)

    def load_step_state(self, state: step.StepState, optimizer: Optimizer | None = None) -> None:
        """Make ``state`` the model's (parameters, buffers, random key, loss scale) and, given ``optimizer``, its
        moments and step counts: the one place a step's new state is written back."""
        self.state.load(state, optimizer)

    def params(self) -> dict[str, Array]:
        """Live parameter arrays keyed ``"{layer index}.{name}"`` (same keys as ``state_dict``)."""
        return self.state.params()

    def buffers(self) -> dict[str, Array]:
        """Live buffer arrays (running statistics: saved and moved, never trained), keyed like ``params()``."""
        return self.state.buffers()

    def clear_scratch(self) -> None:
        """Forget what the last forward and backward passes kept (every layer's cache and gradients)."""
        for layer in self.layers:
            for sub in layer.sublayers():
                sub._cache, sub.grads = None, {}

    def snapshot(self) -> dict[str, Array]:
        """Device copies of the parameters and buffers, for :meth:`assign` to put back later (the arrays themselves
        where the backend's arrays never change: JAX)."""
        return self.state.snapshot(self.backend)

    @property
    def n_params(self) -> int:
        """All the trained numbers of the model (frozen ones included)."""
        return sum(l.n_params for l in self.layers)

    # -- frozen layers: no update, no optimizer moments ------------------------------------------------
    def frozen_keys(self) -> set[str]:
        """The parameter keys (``"0.W"``, ``"3.1.b"``) that get no update: those of frozen layers
        (``layer.trainable = False``, :meth:`freeze`).  Asked once per step: a model with nothing frozen answers
        from one pass over its (fixed) layers and their parts."""
        every = self.__dict__.get("_every_layer")
        if every is None:  # built once (a model unpickled from before it existed builds it here)
            every = self._every_layer = [s for layer in self.layers for s in layer.sublayers()]
        if all(s.trainable for s in every):
            return set()
        return {f"{i}.{n}" for i, layer in enumerate(self.layers) for n in layer.frozen_names()}

    @property
    def n_trainable(self) -> int:
        """The numbers training updates (the model's parameters less the frozen layers')."""
        params, frozen = self.params(), self.frozen_keys()
        return sum(_size(p) for k, p in params.items() if k not in frozen)

    def freeze(self, *layers: int | Layer) -> Model:
        """Freeze ``layers`` (indices into ``model.layers`` or Layer objects; none given: every layer): their
        parameters keep their values in training and get no optimizer moments.  Returns self."""
        for layer in self._pick(layers):
            layer.trainable = False
        return self

    def unfreeze(self, *layers: int | Layer) -> Model:
        """Undo :meth:`freeze` for ``layers`` (none given: every layer, nested ones included).  Returns self."""
        for layer in self._pick(layers):
            for sub in layer.sublayers() if not layers else [layer]:
                sub.trainable = True
        return self

    def _pick(self, layers):
        if not layers:
            return list(self.layers)
        own = {id(s): s for layer in self.layers for s in layer.sublayers()}
        picked = []
        for which in layers:
            if isinstance(which, Layer):
                if id(which) not in own:
                    raise ValueError(f"{which!r} is not a layer of this model")
                picked.append(which)
            elif isinstance(which, int) and not isinstance(which, bool) and -len(self.layers) <= which < len(self.layers):
                picked.append(self.layers[which])
            else:
                raise ValueError(f"freeze/unfreeze take layer indices in [0, {len(self.layers)}) or the model's Layer "
                                 f"objects, got {which!r}")
        return picked

    # -- shapes ---------------------------------------------------------------------
    @property
    def n_features_in(self):
        """The number of input features of a model that takes tables (B, n); None for signals and images."""
        shape = self.input_shape
        return shape[0] if shape is not None and len(shape) == 1 else None

    @property
    def n_outputs(self):
        """The width K of the model's (B, K) output (None until a batch shows it, for a model whose input
        size the data decides)."""
        out = self._out_shape
        return out[0] if out is not None and len(out) == 1 else None

    @property
    def known_input_shape(self):
        """The input shape (without the batch) as far as it is known: ``input_shape``, or the first batch's
        when the data decided it (None before any)."""
        shape = self.input_shape
        if (shape is None or None in shape) and self._batch_shapes:
            return next(iter(self._batch_shapes))
        return shape

    def output_shape(self, in_shape: tuple[int | None, ...] | None = None) -> tuple[int | None, ...]:
        """The output shape (without the batch) for ``in_shape`` (default: the model's ``input_shape``)."""
        shape = self.input_shape if in_shape is None else tuple(in_shape)
        if shape is None:
            raise ValueError("the model's input shape is not known yet: pass input_shape= or give it data first")
        return self._output_shape(shape)

    def _output_shape(self, in_shape):
        """The output shape (without the batch) for input shape ``in_shape``: through a chain's layers
        (:func:`nnkit.layers.infer_shapes`) or a graph's nodes (:func:`nnkit.layers.graph.walk_shapes`); a
        ShapeError naming the layer or node that cannot take its input."""
        plan = self._plan
        if plan.chain:
            return infer_shapes(self.layers, in_shape)[-1]
        return graph_module.walk_shapes(plan, [in_shape])[plan.outputs[0]]

    def shape_checked(self, shape: tuple) -> bool:
        """True when batches of ``shape`` (without B) were checked already (the data path's hot path)."""
        return shape in self._batch_shapes

    @property
    def last_output_shape(self):
        """The output shape (without B) of the batch shape checked last — what per-position targets are
        shaped against — or None before any batch."""
        return self._last_out

    @property
    def example_output_shape(self):
        """The output shape (without B) the model gives one example, as far as it is known (None before)."""
        return self._out_shape

    def check_batch_shape(self, shape: tuple) -> None:
        """Check a batch's shape (without B) against ``input_shape`` and through every layer, once per shape;
        a bad one is a ValueError naming the layer (the model is unchanged)."""
        if shape in self._batch_shapes:
            self._last_out = self._batch_shapes[shape]
            return
        want = self.input_shape
        if want is not None:
            if len(want) == 1 and len(shape) == 1 and want[0] is not None and shape[0] != want[0]:
                raise ValueError(f"X has {shape[0]} features but the model expects {want[0]}")
            if len(want) == 1 and len(shape) != 1:
                raise ValueError(f"X must be 2-D (batch, features) with {want[0]} features, got shape "
                                 f"{fmt_shape(shape)}")
            if len(shape) != len(want) or any(w is not None and w != g for w, g in zip(want, shape)):
                raise ValueError(f"X has shape {fmt_shape(shape)} but the model expects {fmt_shape(want)}")
        if self.n_inputs != 1 or self.n_output_tensors != 1:
            raise ValueError(f"this model has {self.n_inputs} inputs and {self.n_output_tensors} outputs: give "
                             "them as a list or a dict of arrays")
        try:
            out = self._output_shape(shape)
        except ShapeError as exc:
            raise ValueError(f"X of shape {fmt_shape(shape)} does not fit the model: {exc}") from None
        if any(d is None for d in out):  # pragma: no cover - a known input gives known outputs
            raise ValueError(f"the model's output shape for {fmt_shape(shape)} is unknown: {fmt_shape(out)}")
        known = self._out_shape
        if known is not None and len(known) == len(out) and any(  # positions may vary (sequence lengths), K not
                a is not None and a != b for a, b in zip(known if len(out) == 1 else known[-1:],
                                                         out if len(out) == 1 else out[-1:])):
            raise ValueError(f"X of shape {fmt_shape(shape)} gives outputs {fmt_shape(out)}, but the model's "
                             f"outputs are {fmt_shape(self._out_shape)}")
        if self._out_shape is None or any(d is None for d in self._out_shape):
            self._out_shape = out
        self._batch_shapes[shape] = self._last_out = out

    # -- passes -------------------------------------------------------------------
    def forward_batch(self, X: Array, train: bool, mask: Array | None = None) -> Array:
        """The layers applied in order to a batch the data path prepared (``nnkit.data``); under a mixed policy X
        enters in the compute dtype and the
        output leaves in float32 (:mod:`nnkit.training.precision`).  ``mask`` (B, T): the padding of variable-length
        sequences, handed to the layers that take it (``takes_mask``) as each layer passes it on."""
        p, plan = self.policy, self._plan
        if len(plan.inputs) == 1:
            outs = graph_module.walk_forward(plan, [p.cast_input(X)], train, None if mask is None else [mask])
        else:
            outs = graph_module.walk_forward(plan, [p.cast_input(x) for x in X], train)
        # a model of several inputs or outputs gives a list (of one for one output): what its losses score
        return [p.cast_output(o) for o in outs] if self.multi else p.cast_output(outs[0])

    def output_mask(self, mask):
        """The padding mask of the model's output for an input mask (B, T): (B, T) when every layer keeps the
        positions (a per-position output: scored at the valid positions only), None when the output has none
        (a pooled or final state)."""
        if self._plan.chain:
            return mask_through(self.layers, mask)
        return None if mask is None else self._graph_mask(mask)

    def _graph_mask(self, mask):
        """The padding mask through the graph's nodes (a single-input, single-output graph)."""
        plan = self._plan
        masks = [None] * plan.n_values
        masks[plan.inputs[0]] = mask
        for node in plan.steps:
            m = masks[node.srcs[0]]
            masks[node.dst] = None if m is None else plan.layers[node.layer].output_mask(m)
        return masks[plan.outputs[0]]

    def score_weights(self, out, w=None, mask=None):
        """The weights ``out``'s rows are scored with: ``w`` (B,) or (B, ...), or None — times the output's padding
        mask when the input sequences were padded (``mask`` (B, T); 0 at a padded position).  A mask the output
        lost (a layer that moved positions) is an error, not padding scored as data."""
        if mask is None or out.ndim <= 2:
            return w
        om = self.output_mask(mask)
        if om is None or tuple(om.shape) != tuple(out.shape[:2]):
            moved = next((layer for layer in self.layers if layer.output_mask(mask) is None), None)
            raise ValueError(f"the model's outputs {tuple(out.shape)} are per position, but the padding of the "
                             f"sequences does not pass through {moved!r}: it cannot tell padded positions from "
                             "real ones; pad to equal lengths or score a pooled output")
        if w is None:
            return om
        return om * (w if w.ndim == 2 else self.xp.reshape(w, (-1, 1)))

    def score_rows(self, out, T, w=None, mask=None):
        """``(out (N, K), T, w)``: the output, targets and weights as the rows the metrics score — B rows of a
        (B, K) output, the N = B·T positions of a per-position output (B, T, K), weighted by
        :meth:`score_weights` (:func:`nnkit.losses.as_rows`).  Several outputs: the lists as they are (each output's
        metrics pick theirs: :class:`nnkit.metrics.OutputMetric`)."""
        if isinstance(out, list):
            return out, T, w
        return as_rows(out, T, self.score_weights(out, w, mask))

    def forward(self, X: Any, *, check_input: bool = True) -> Array:
        """Output of the last layer for X (B, in), keeping what ``backward`` needs."""
        return self.forward_batch(data.as_input(self, X, check_input), train=True)

    @property
    def first_param_layer(self) -> int:
        """The index of the first layer with parameters: the backward pass stops there (nobody needs ∂L/∂X)."""
        return self._first_param_layer

    def backward(self, dY: Array) -> dict[str, Array]:
        """Backpropagate ∂L/∂(output) (B, out) through the layers of the last ``forward``.

        Layer by layer, from the last: each receives ∂L/∂(its output) and hands
        ∂L/∂(its input) to the one before.  The first layer with parameters does
        not compute the ∂L/∂X nobody needs.  Returns the gradients keyed like
        ``state_dict()``.  A parameter a layer uses more than once (a tied or recurrent weight) receives
        the sum of its gradients: that is the layer's to form, before it stores ``grads``.
        """
        graph_module.walk_backward(self._plan, dY if isinstance(dY, list) else [dY])
        return self.gather_grads()

    def gather_grads(self) -> dict[str, Array]:
        """The layers' gradients of the last backward pass keyed like ``state_dict()``; a weight shared by a tied
        layer (``TiedDense``) gets the sum of both uses' gradients."""
        grads = {}
        for key, (layer, name) in self._slots.items():
            g = layer.grads.get(name)
            if g is not None:
                grads[key] = g
        for key, user in self._ties:
            if key in grads and "weight" in user.grads:
                grads[key] = grads[key] + user.grads["weight"]
        return grads

    def _backward(self, d_out, scaler=None):
        """∂L/∂θ in float32 from ∂L/∂out: into the compute dtype (times the loss scale S), backward, and
        back to float32 divided by S (:mod:`nnkit.training.precision`); plain ``backward`` without a policy."""
        p = self.policy
        if not p.casts and scaler is None:
            return self.backward(d_out)
        if isinstance(d_out, list):  # several outputs
            return p.unscale(self.backward([p.cast_grad_out(d, scaler) for d in d_out]), scaler)
        return p.unscale(self.backward(p.cast_grad_out(d_out, scaler)), scaler)

    def value_and_grad(self, X: Any, y: Any, loss: Any, *, check_input: bool = True,
                       regularizer: Any = None, lengths: Any = None,
                       loss_weights: Any = None) -> tuple[Array, dict[str, Array]]:
        """(loss, grads): the loss as a 0-d backend array (no host sync) and its gradients.

        ``grads`` maps ``"{layer}.{param}"`` to ∂L/∂param, shaped like the parameter.
        ``check_input=False`` skips the value checks (NaN, label range) that read
        device arrays; shapes are always checked.  ``regularizer`` (``nnkit.optim.L1``/``L2``)
        adds its penalty Ω(W) to the loss and ∂Ω/∂W to the weight gradients.  Sequences of different lengths:
        a list of (T_i, ...) arrays, or padded X with ``lengths`` (n,) (:func:`nnkit.data.sequences`).

        A model of several inputs takes X as a list (in the order of its inputs) or a dict by input name; of
        several outputs, y as a list or dict of each output's targets, ``loss`` one for all or a list/dict, and
        ``loss_weights`` c_k: L = Σ_k c_k L_k.
        """
        if self.multi:
            Xs, T, losses = self._multi_batch(X, y, loss, loss_weights, check_input)
            value, _, grads = self.loss_and_grads(Xs, T, losses, regularizer=regularizer, scaler=self.state.scaler)
            return value, grads
        loss = get_loss(loss)
        S = data.sequences(self, X, lengths, check_input)
        T = data.as_target(self, data.target_sequences(y, S.lengths), S.X.shape[0], loss, check_input)
        value, _, grads = self.loss_and_grads(S.X, T, loss, regularizer=regularizer, scaler=self.state.scaler,
                                              mask=S.M)
        return value, grads

    def loss_and_grads(self, X: Array, T: Array, loss: Any, *, regularizer: Any = None, w: Array | None = None,
                       scaler: Any = None, mask: Array | None = None) -> tuple[Array, Array, dict[str, Array]]:
        """``(L, output, ∂L/∂θ)`` for a batch the data path prepared (``nnkit.data.as_input``/``as_target``):
        forward, the loss (weighted by ``w`` (B,) or, per position, (B, T)), backward, and the penalty Ω of
        ``regularizer``.  A per-position output (B, T, K) is scored at each position (:meth:`score_rows`; the
        padding ``mask`` (B, T) leaves the padded ones out).  Nothing is read from the device.  ``scaler``
        (``mixed_float16``): the loss scale the backward pass runs under.
        """
        out = self.forward_batch(X, train=True, mask=mask)
        w = self.score_weights(out, w, mask)
        value, d_out = loss.value_and_grad(out, T) if w is None else loss.value_and_grad(out, T, w)
        grads = self._backward(d_out, scaler)
        if regularizer is not None:
            scale = None
            if getattr(regularizer, "per_batch", False):  # Ω / (batch size or its sum of weights)
                first = out[0] if isinstance(out, list) else out
                scale = 1.0 / math.prod(first.shape[:-1]) if w is None else 1.0 / self.xp.sum(w)
            value, grads = regularizer.add_to(self.params(), value, grads, scale)
        return value, out, grads

    def train_step(self, X: Any, y: Any, loss: Any, optimizer: Optimizer, *, check_input: bool = True,
                   regularizer: Any = None, lengths: Any = None, loss_weights: Any = None) -> Array:
        """One forward, backward and optimizer update; returns the 0-d loss (no host sync).

        The gradients are consumed by the update (used as scratch space); read gradients with
        :meth:`value_and_grad` (which says how a model of several inputs or outputs takes them).
        """
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an nnkit.optim.Optimizer (e.g. SGD(0.1)), got {optimizer!r}")
        if self.multi:
            Xs, T, loss = self._multi_batch(X, y, loss, loss_weights, check_input)
            mask = None
        else:
            loss = get_loss(loss)
            S = data.sequences(self, X, lengths, check_input)
            T = data.as_target(self, data.target_sequences(y, S.lengths), S.X.shape[0], loss, check_input)
            Xs, mask = S.X, S.M
        with self.policy.activate():
            value, _, state = step.train_step(self, self.step_state(optimizer), Xs, T, optimizer.lr,
                                              loss=loss, optimizer=optimizer, regularizer=regularizer, mask=mask)
        self.load_step_state(state, optimizer)
        return value

    def fit(self, X: Any, y: Any = None, *, loss: Any, optimizer: str | Optimizer = "adam", epochs: int = 10,
            batch_size: int = 32, shuffle: bool = True, validation_data: Any = None, validation_split: float = 0.0,
            early_stopping: Any = None, callbacks: Iterable[Any] = (), metrics: Any = None, verbose: int = 1,
            checkpoint: Any = None, resume: bool = False, regularizer: Any = None, comm: Any = None,
            compile: bool = False, sample_weight: Any = None, log_every_n_steps: int | None = None,
            class_weight: dict[int, float] | str | None = None, accumulate: int = 1, lengths: Any = None,
            bucket: bool = False, steps_per_epoch: int | None = None, loss_weights: Any = None) -> History:
        """Train on (X, y) in mini-batches; returns a :class:`nnkit.History`.

        X is what ``predict`` takes: raw rows when the model carries a :attr:`preprocessing` (it fills and scales
        them), and y may then hold class names (mapped through its classes; a name never seen is an error).

        * ``optimizer``: an ``nnkit.optim`` instance or ``"adam"``, ``"sgd"``, ``"adamw"``, ``"rmsprop"``.
          It becomes ``model.optimizer`` and is saved with the model.
        * Shuffles come from the model's seed (the same order on every backend); the last partial
          batch is used, and the epoch loss weights each batch by its size.
        * ``validation_split`` holds out the last fraction of rows (before shuffling);
          ``validation_data=(X_val, y_val)`` gives them explicitly.
        * ``metrics``: names — ``"accuracy"``, ``"top_k_accuracy"`` (``"top_3_accuracy"``), ``"precision"``,
          ``"recall"``, ``"f1"`` (with ``_macro``, ``_micro``, ``_weighted``), ``"auc"``, ``"r2"``, ``"mse"``,
          ``"mae"`` — :class:`nnkit.metrics.Metric` objects or functions ``(out, T, w) -> value``
          (:mod:`nnkit.metrics`; default: accuracy for classification losses).  ``history["val_..."]`` for the
          validation data.
        * ``early_stopping``: an :class:`nnkit.EarlyStopping` (or True for the defaults).
        * ``callbacks``: :class:`nnkit.Callback` objects (``on_train_begin()``, ``on_epoch_begin(epoch)``,
          ``on_batch_end(batch, logs)``, ``on_epoch_end(epoch, logs)`` — True stops — and ``on_train_end()``);
          ``logs`` reach ``on_batch_end`` every ``log_every_n_steps`` steps (default: the finest a callback
          asks for, e.g. ``TensorBoard(every_n_steps=N)``; else never), read from the device on those steps only
          and None in between;
          learning-rate schedules from ``nnkit.optim`` and :class:`nnkit.callbacks.LearningRateScheduler`
          are callbacks too.
        * ``verbose``: 0 silent, 1 a progress bar per epoch (tqdm, if installed), 2 a line per epoch.
        * ``checkpoint=path`` saves after every epoch (atomically); with ``resume=True`` an existing
          checkpoint is restored first and training goes on up to ``epochs`` in total.
        * Nothing is read from the device inside an epoch: losses and metrics are summed there and
          read once per epoch.  Ctrl-C stops after the current step and returns the history so far.
        * A non-finite epoch loss raises :class:`nnkit.TrainingDivergedError`, keeping the last finite
          weights.
        * ``comm``: a communicator from :mod:`nnkit.training.distributed` (MPI, NCCL) for data-parallel training:
          every rank passes the same data, ``batch_size`` is the global batch, each rank computes its
          slice and the gradients are summed in one all-reduce per step (see :mod:`nnkit.training.distributed`).
        * ``sample_weight`` (n,): each batch's loss is the weighted mean Σ w ℓ / Σ w (and so is its
          gradient); epoch losses and metrics are weighted means too.  ``validation_data`` may then be a
          triple ``(X_val, y_val, w_val)``.  ``class_weight`` (a dict {class: weight}, or ``"balanced"`` as
          scikit-learn computes it) multiplies the training rows' weights by their class's (arrays in memory).
        * ``accumulate=N``: one optimizer update every N batches, with their joined gradient — the same as one
          step on an N-times larger batch (to round-off, for every optimizer); the epoch's last group may be
          shorter.  Eager only (no ``compile``, communicator or ``mixed_float16``).  X may be a SciPy sparse matrix: it stays on the host and
          each batch is densified on its way to the device.
        * Sequences (:mod:`nnkit.layers.recurrent`): X (n, T, F) floats or (n, T) token ids (for an ``Embedding``);
          of different lengths, a list of (T_i, F) or (T_i,) arrays — padded to the longest, with a mask — or a
          padded array with ``lengths`` (n,) (:func:`nnkit.data.pad_sequences`).  Recurrent layers stop at each
          sequence's end; a per-position output (n, T, K) is scored at each valid position, against targets
          (n, T) of integer classes (a list of (T_i,) arrays for a list of sequences) or (n, T, K) values: the
          loss is the mean over the batch's valid positions (``sample_weight`` (n,) or (n, T) weighs them), as
          PyTorch's ``cross_entropy`` over the flattened tokens.  Each batch is cut to its own longest sequence (the
          recurrence runs no step that is padding in every row); ``bucket=True`` shuffles within buckets of 50
          batches sorted by length, so a batch holds similar lengths (sequences of 7 to 29 steps, batch 32: padding
          falls from 37 % to 1.3 % of the steps run; :func:`nnkit.data.bucketed`).  Under ``compile=True`` each
          batch is padded to one of at most 8 lengths (:func:`nnkit.data.compiled_length`): one trace each.
        * Data beyond memory (:mod:`nnkit.data`): X may be a memory-mapped array (``np.load(path,
          mmap_mode="r")``, with y an array or another memory-mapped file), read a batch at a time; or, with
          y omitted, a dataset (``len(ds)``, ``ds[indices] -> (X, y[, w])``), a re-iterable of batches
          ``(X, y[, w])`` (a torch DataLoader, a list of batches) or a function returning a generator.  The next
          batch is prepared in a background thread; a bad batch is an error naming it, and the model keeps
          the weights and optimizer state of the epoch's start.  ``validation_data`` may be streamed too,
          and ``validation_split`` on a memory-mapped array takes its last rows without copying them.
          ``steps_per_epoch=K`` (a dataset or a memory-mapped array): each epoch draws K batches of rows at random,
          with replacement, from the model's generator — how a language model samples its windows
          (:class:`nnkit.text.TokenWindows`) — instead of one pass over every row.
        * A model of several inputs or outputs (:class:`Model`) takes X as a list (in the order of its inputs) or a
          dict by input name, and y as a list or dict of each output's targets, in memory; ``loss`` one for all or a
          list/dict per output, ``loss_weights`` c_k (L = Σ_k c_k L_k), ``metrics`` one list for all or a dict per
          output; the logs name each output: ``"{output}_loss"``, ``"val_{output}_accuracy"``.
        * ``compile=True`` compiles the training step where the backend can (``jax.jit`` on JAX; the
          learning rate is passed in as a value, so schedules act; full and last batches are traced once
          each) and runs it eagerly elsewhere.  Callbacks (:mod:`nnkit.callbacks`) see every epoch.
        """
        return training.fit(self, X, y, FitSettings.of(locals()))  # the settings as one object, to the loop

    def evaluate(self, X: Any, y: Any, loss: Any, metrics: Any = None, batch_size: int | None = None,
                 sample_weight: Any = None, lengths: Any = None) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` as Python floats (one host read); means weighted by
        ``sample_weight`` (n,) when given — over the valid positions of a per-position output (sequences as
        in :meth:`fit`, ``lengths`` for padded ones).  X and y as :meth:`fit` takes them: raw rows for a model
        that carries a :attr:`preprocessing`, labels as indices or class names."""
        return training.evaluate(self, X, y, loss, metrics, batch_size, sample_weight, lengths)

    def save(self, path: Any) -> None:
        """Write architecture, weights, optimizer state, epoch and RNG state to one ``.npz`` (atomic)."""
        return checkpoint.save(self, path)

    def assign(self, new_params: dict[str, Array]) -> None:
        """The one place where parameter (and buffer) values are written back into the layers: ``new_params``
        maps keys of :meth:`params`/:meth:`buffers` to arrays of the model's backend (used as they are)."""
        self.state.assign(new_params)

    def predict(self, X: Any, batch_size: int | None = None, lengths: Any = None) -> Array:
        """The last layer's output for X, as an array of the model's backend (inference only).  X may be
        streamed (a memory-mapped array, a dataset, batches: :mod:`nnkit.data`): read a batch at a time
        (``batch_size``, default 4096 rows), the outputs joined (:func:`nnkit.data.predict`).  Sequences of
        different lengths (a list, or padded with ``lengths``) give a padded output, zero at the padding.  A model
        that carries a :attr:`preprocessing` takes raw rows (an array, a Table, a DataFrame by column name) and
        fills and scales them itself, as every other method does: one form of X for all of them.  A model of
        several inputs takes a list or a dict of arrays (in memory) and gives a list, or a dict by output name
        when its outputs were given as a dict; of several outputs, a list or dict of them."""
        if self.multi:
            return self._predict_multi(X, batch_size)
        return data.predict(self, X, batch_size, lengths)

    # -- several inputs and outputs ------------------------------------------------------------------

    def _listed(self, value, names, what):
        """``value`` — a list/tuple in the order of ``names``, or a dict by name — as a list; a wrong count, a
        missing or an unknown key is a ValueError that names it."""
        if isinstance(value, dict):
            missing = [n for n in names if n not in value]
            extra = [str(k) for k in value if k not in names]
            if missing or extra:
                parts = ([f"no {what} for {', '.join(map(repr, missing))}"] if missing else []) + \
                    ([f"unknown name(s) {', '.join(map(repr, extra))}"] if extra else [])
                raise ValueError(f"{what}: {'; '.join(parts)} (the model's are {', '.join(map(repr, names))})")
            return [value[n] for n in names]
        if isinstance(value, (list, tuple)) and len(value) == len(names):
            return list(value)
        got = f"a list of {len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
        raise ValueError(f"{what} must be a list of {len(names)} ({', '.join(map(repr, names))}) or a dict by name, "
                         f"got {got}")

    def inputs_of(self, X: Any, check_values: bool = True) -> tuple[list, int]:
        """(the inputs as arrays of the backend, in order, and the number of rows): each checked against its
        Input's shape, every input with the same rows; integer arrays stay integers (token ids)."""
        one = len(self.input_names) == 1 and not isinstance(X, dict) and \
            not (isinstance(X, (list, tuple)) and len(X) == 1)
        be, arrays = self.backend, [X] if one else self._listed(X, self.input_names, "X")
        out, rows = [], None
        for name, shape, a in zip(self.input_names, self.input_shapes, arrays):
            arr = data.host_or_native(self, a, f"input {name!r}")
            xp = namespace_of(arr)
            got = tuple(int(d) for d in arr.shape)
            if len(got) != 1 + len(shape) or any(w is not None and w != g for w, g in zip(shape, got[1:])):
                raise ValueError(f"input {name!r} has shape {got} but the model expects {fmt_shape(shape)}")
            if rows is None:
                rows = got[0]
            elif got[0] != rows:
                raise ValueError(f"input {name!r} has {got[0]} rows but input {self.input_names[0]!r} has {rows}: "
                                 "every input holds one row per example")
            if xp.isdtype(arr.dtype, "integral"):
                out.append(be.asarray(arr, dtype=be.xp.int64))
                continue
            if check_values and not bool(xp.all(xp.isfinite(arr))):
                raise ValueError(f"input {name!r} contains NaN or infinity")
            out.append(be.asarray(arr, dtype=be.dtype))
        if not rows:
            raise ValueError("X is empty: expected at least one row")
        return out, rows

    def outputs_loss(self, loss: Any, loss_weights: Any = None) -> OutputsLoss:
        """The loss of a model of several inputs or outputs (:class:`nnkit.losses.OutputsLoss`): ``loss`` one for
        every output, or a list/dict of each output's; ``loss_weights`` c_k (a list or dict; default 1)."""
        if isinstance(loss, OutputsLoss):
            return loss
        one = isinstance(loss, (str, type)) or not isinstance(loss, (list, tuple, dict))
        losses = [loss] * len(self.output_names) if one else self._listed(loss, self.output_names, "loss")
        weights = None if loss_weights is None else self._listed(loss_weights, self.output_names, "loss_weights")
        return OutputsLoss(losses, weights, list(self.output_names), [s[-1] for s in self.output_shapes])

    def targets_of(self, y: Any, loss: OutputsLoss, n: int, check_values: bool = True) -> list:
        """Each output's targets (a list or a dict by output name; one array for one output), checked against its
        shape and loss as ``fit`` checks a model's — an error names the output."""
        ys = self._listed(y, self.output_names, "y") if len(self.output_names) > 1 or isinstance(y, dict) else [y]
        T = []
        for name, shape, yk, lk in zip(self.output_names, self.output_shapes, ys, loss.losses):
            try:
                T.append(data.as_target(_OutputView(self, shape), yk, n, lk, check_values))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"output {name!r}: {exc}") from None
        return T

    def _multi_batch(self, X, y, loss, loss_weights, check_values):
        """(inputs, targets, the :class:`nnkit.losses.OutputsLoss`) of a batch for a model of several inputs or
        outputs."""
        Xs, n = self.inputs_of(X, check_values)
        total = self.outputs_loss(loss, loss_weights)
        return (Xs[0] if len(Xs) == 1 else Xs), self.targets_of(y, total, n, check_values), total

    def _predict_multi(self, X, batch_size):
        """The outputs for a model of several inputs or outputs, a batch at a time: a list (or a dict by output
        name when its outputs were given as one; the array itself for one output)."""
        Xs, n = self.inputs_of(X)
        bs = n if batch_size is None else check_int("batch_size", batch_size, 1)
        parts = [[] for _ in self._plan.outputs]
        with self.policy.activate():
            for s in range(0, n, bs):
                outs = self.forward_batch([x[s:s + bs] for x in Xs] if len(Xs) > 1 else Xs[0][s:s + bs], train=False)
                for k, o in enumerate(outs):
                    parts[k].append(o)
        xp = self.xp
        outs = [p[0] if len(p) == 1 else xp.concat(p, axis=0) for p in parts]
        if len(outs) == 1:
            return outs[0]
        return dict(zip(self.output_names, outs)) if self._by_dict[1] else outs

    # -- tables: raw rows in, class names out -------------------------------------------------
    @property
    def preprocessing(self):
        """The :class:`nnkit.data.preprocessing.Preprocessing` saved with the model (feature names, fills,
        scaling, classes), or None.  Set it to attach one; it is stored in ``info`` and saved."""
        return Preprocessing.from_info(self.info)

    @preprocessing.setter
    def preprocessing(self, pre):
        if pre is None:
            for key in preprocessing_module.INFO_KEYS:
                self.info.pop(key, None)
            return
        if pre.n_features is not None and pre.n_features != self.n_features_in:
            raise ValueError(f"the preprocessing has {pre.n_features} features but the model expects "
                             f"{self.n_features_in}")
        self.info.update(pre.to_info())

    def table_preprocessing(self):
        """The :attr:`preprocessing` when it changes the rows the network sees (column order by name, fills,
        scaling, text columns one-hot) — then every door takes raw rows and applies it — else None."""
        info = self.info
        if not isinstance(info, dict) or not any(info.get(k) is not None for k in
                                                 ("feature_names", "mean", "fill", "categories")):
            return None
        return self.preprocessing

    def predict_proba(self, X: Any, batch_size: int = 4096) -> Any:
        """Class probabilities for raw rows (NumPy, (n, K)): softmax of the outputs, or for one output σ as
        the two columns [1 − p, p] (as scikit-learn's ``predict_proba``).  A regression model has none."""
        pre = self.preprocessing
        if pre is not None and pre.task == "regression":
            raise ValueError("predict_proba is for classifiers; this model's preprocessing says regression: "
                             "use predict")
        return preprocessing_module.predict_labels(self, X, proba=True, batch_size=batch_size)[1]

    def predict_labels(self, X: Any, proba: bool = False, batch_size: int = 4096) -> Any:
        """Predictions for raw rows in one call — class names (or values for a regression model), and with
        ``proba=True`` the class probabilities — through the saved :attr:`preprocessing`
        (:func:`nnkit.data.preprocessing.predict_labels`, which documents the forms X may take)."""
        return preprocessing_module.predict_labels(self, X, proba=proba, batch_size=batch_size)

    # -- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"0.W": ndarray, "0.b": ndarray, ...}``: copies of the parameters (and buffers, e.g.
        ``"2.running_mean"``) as NumPy arrays on the host."""
        to_np = self.backend.to_numpy
        return {k: np.array(to_np(p), copy=True) for k, p in {**self.params(), **self.buffers()}.items()}

    def load_state_dict(self, state: dict[str, Any]) -> Model:
        """Load parameters from a dict like ``state_dict()``'s; every entry is checked before any is used."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict like model.state_dict(), got {type(state).__name__}")
        own = {**self.params(), **self.buffers()}
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if extra:
                parts.append(f"unexpected keys {extra}")
            raise ValueError(f"state dict does not fit this model: {'; '.join(parts)}")
        new = {}
        for key, p in own.items():
            value = state[key]
            if self.backend.owns(value):
                value = self.backend.to_numpy(value)
            value = data.numeric_host(value, f"state dict entry {key!r}")
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(
                    f"state dict entry {key!r} has shape {tuple(value.shape)}, expected {tuple(p.shape)}"
                )
            new[key] = value
        # np.array copies: the model owns its parameters (optimizers update them in place)
        self.assign({k: self.backend.asarray(np.array(v), dtype=self.backend.dtype) for k, v in new.items()})
        return self

    def to(self, backend: Any, device: Any = None, precision: Any = _KEEP) -> Model:
        """Move the parameters to another backend (name, module or Backend); returns self.

        The precision policy goes along (checked on the new backend before anything moves: a
        ``mixed_bfloat16`` model cannot go to NumPy); ``precision=`` sets another (None: none)."""
        state = self.state_dict()
        new = get_backend(backend, device=device, dtype=self.dtype)
        if precision is _KEEP:
            try:
                policy = get_policy(self.precision, new)
            except ValueError as exc:  # the kept policy: say how to move without it
                raise ValueError(f"{exc} (to move this {self.precision} model anyway, set another policy: "
                                 f".to({new.name!r}, precision=None))") from None
        else:
            policy = get_policy(precision, new)
        scaler = self.state.scaler
        scale = None if scaler is None else [self.backend.to_float(v) for v in scaler.values()]
        self.policy = policy
        self.state.scaler = None if not policy.loss_scaling else LossScaler.init(new, *(scale or ()))
        for layer in self.layers:
            layer.reset(new.xp)
        opt = self.optimizer
        if opt is not None:  # the optimizer's moments travel with the weights
            old = self.backend
            opt.state = {k: {n: (v if isinstance(v, int) else new.asarray(old.to_numpy(v), dtype=new.dtype))
                             for n, v in s.items()} for k, s in opt.state.items()}
        self.backend = new
        self.state.random_key, self.state.compiled = None, {}
        self._wire()
        self.load_state_dict(state)
        return self

    def clone(self, backend: Any = None, dtype: str | None = None, precision: Any = _KEEP) -> Model:
        """A new model with the same architecture and weights (optionally another backend, dtype or
        precision policy; by default the same policy)."""
        be = self.backend if backend is None else get_backend(backend, dtype=self.dtype)
        layers = [layer_from_config(c) for c in self.config()]
        for mine, theirs in zip((s for l in self.layers for s in l.sublayers()), (s for l in layers for s in l.sublayers())):
            theirs.trainable = mine.trainable
        options = {"backend": be, "dtype": dtype or self.dtype, "seed": 0,
                   "precision": self.precision if precision is _KEEP else precision}
        twin = Sequential(layers, input_shape=self.input_shape, **options) if self._plan.chain and \
            isinstance(self, Sequential) else Model.from_config(layers, self.graph_config() or {}, **options)
        return twin.load_state_dict(self.state_dict())

    def explain(self, X: Any, y: Any, loss: Any, optimizer: Optimizer | None = None, max_numbers: int = 64,
                lengths: Any = None) -> Any:
        """One training step on (X, y) explained with its numbers — forward formulas, the loss, the backward
        pass layer by layer and the update — without changing the model (see :mod:`nnkit.models.explanation`).
        ``str(report)`` is plain text; ``report.to_markdown()`` and Jupyter render it.  Variable-length
        sequences as ``fit`` takes them (a list, or padded X with ``lengths``); a recurrent layer is summarised
        per time step (‖h_t‖ and ‖∂L/∂h_t‖)."""
        from .explanation import explain

        if self.multi:
            raise ValueError(f"explain takes a model of one input and one output for now; this one has "
                             f"{self.n_inputs} inputs and {self.n_output_tensors} outputs")
        return explain(self, X, y, loss, optimizer=optimizer, max_numbers=max_numbers, lengths=lengths)

    # -- the ways out: ONNX and PyTorch (nnkit.export) ----------------------------------------------------
    def export(self, path: Any, *, classifier: bool | None = None, opset: int = 17, lengths: bool = False) -> Any:
        """Write the inference graph to ``path`` as ONNX (see :mod:`nnkit.export.onnx`); returns the
        ``onnx.ModelProto``.  ONNX Runtime's outputs equal ``predict``'s; the model's preprocessing (fill
        values, scaling) runs as nodes on raw features, and a classifier also outputs ``probabilities``.
        ``lengths=True`` adds a second input, ``lengths`` (batch,) int64, for padded variable-length sequences:
        the recurrent operators take it as their ``sequence_lens``, as ``predict(X, lengths=...)`` does."""
        from ..export.onnx import to_onnx

        return to_onnx(self, path, classifier=classifier, opset=opset, lengths=lengths)

    def to_torch(self, lengths: bool = False) -> Any:
        """A ``torch.nn.Sequential`` of PyTorch's own layers with this model's weights, in eval mode (see
        :mod:`nnkit.export.pytorch`).  ``lengths=True``: a module called ``net(x, lengths)`` on padded
        variable-length sequences, the recurrent layers run as packed sequences."""
        from ..export.pytorch import to_torch

        return to_torch(self, lengths=lengths)

    def config(self) -> list[dict[str, Any]]:
        """The layers as plain data: ``[{"type": "Dense", "in_features": 2, ...}, ...]`` (each once, in the order
        of first use; a graph's wiring is :meth:`graph_config`)."""
        return [layer.config() for layer in self.layers]

    def graph_config(self) -> dict[str, Any] | None:
        """How the layers are wired, as plain data (None for a :class:`Sequential`): the inputs' names and shapes,
        the nodes ``[layer index, [value slots read], takes a list]`` in order (the inputs are slots 0 .. n − 1,
        node k writes slot n + k), the output slots and names, and whether inputs and outputs were dicts."""
        if isinstance(self, Sequential):
            return None
        plan = self._plan
        return {"name": self.name,
                "inputs": [{"name": n, "shape": list(s)} for n, s in zip(self.input_names, self.input_shapes)],
                "nodes": [[st.layer, list(st.srcs), bool(st.as_list)] for st in plan.steps],
                "outputs": list(plan.outputs), "output_names": list(self.output_names),
                "by_dict": list(self._by_dict)}

    @classmethod
    def from_config(cls, layers: list[Layer], graph: dict[str, Any], **options: Any) -> Model:
        """The model of ``layers`` (without weights, as :meth:`config` lists them) wired as ``graph`` says
        (:meth:`graph_config`), with ``Model``'s options.  Everything is checked before any weight is made: a node
        reading a slot not yet written (so no cycle), an unknown layer or output slot, more than
        :data:`nnkit.layers.graph.MAX_NODES` nodes — a ValueError naming the node."""
        ins, outs, names = _checked_graph(graph, len(layers))
        tensors = [graph_module.Input(tuple(i["shape"]), i["name"]) for i in ins]
        for k, (li, srcs, as_list) in enumerate(graph["nodes"]):
            args = [tensors[v] for v in srcs]
            try:
                tensors.append(layers[li](args if as_list else args[0]))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"the graph's node {k}: {exc}") from None
        by_in, by_out = graph.get("by_dict") or (False, False)
        inputs = {t.name: t for t in tensors[:len(ins)]} if by_in else tensors[:len(ins)]
        outputs = {n: tensors[v] for n, v in zip(names, outs)} if by_out else [tensors[v] for v in outs]
        if not by_out and len(outs) == 1:
            outputs = outputs[0]
        if not by_in and len(ins) == 1:
            inputs = inputs[0]
        model = Model(inputs, outputs, graph.get("name"), **options)
        if not by_out:
            model.output_names = list(names)
        return model

    # -- display --------------------------------------------------------------------
    def summary(self) -> str:
        """A table of layers, output shapes (without the batch B) and parameter counts — for a graph, a row a node
        with the nodes it reads ("connected to", as Keras' summary)."""
        if not self._plan.chain:
            return self._graph_summary()
        shape = self.known_input_shape
        shapes = infer_shapes(self.layers, shape)[1:] if shape is not None else [None] * len(self.layers)
        rows = [("#", "layer", "output", "params")]
        if shape is not None:
            rows.append(("", "input", fmt_shape(shape), ""))
        for i, (layer, out) in enumerate(zip(self.layers, shapes)):
            frozen = " (frozen)" if layer.frozen_names() and layer.n_params else ""
            rows.append((str(i), repr(layer) + frozen, "(B, ...)" if out is None else fmt_shape(out),
                         f"{layer.n_params:,}"))
        w = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = ["  ".join(r[c].ljust(w[c]) if c < 3 else r[c].rjust(w[c]) for c in range(4)) for r in rows]
        rule = "-" * len(lines[0])
        trainable = self.n_trainable
        foot = f"total params: {self.n_params:,}   backend: {self.backend.name}   dtype: {self.dtype}"
        if trainable != self.n_params:
            foot = (f"total params: {self.n_params:,} (trainable {trainable:,}, frozen {self.n_params - trainable:,})"
                    f"   backend: {self.backend.name}   dtype: {self.dtype}")
        if self.precision is not None:
            foot += f"   precision: {self.precision} (compute {self.compute_dtype})"
        return "\n".join([lines[0], rule, *lines[1:], rule, foot])

    def _graph_summary(self):
        plan = self._plan
        names = {slot: name for slot, name in zip(plan.inputs, self.input_names)}
        shapes = self.value_shapes()
        rows = [("#", "layer", "output", "params", "connected to")]
        rows += [("", f"input {n!r}", fmt_shape(s), "", "") for n, s in zip(self.input_names, self.input_shapes)]
        counted = {}  # layer -> the node that counts its parameters (its first call)
        for i, node in enumerate(plan.steps):
            layer = plan.layers[node.layer]
            names[node.dst] = f"node {i}"
            params = f"{layer.n_params:,}" if node.layer not in counted else f"shared: node {counted[node.layer]}"
            counted.setdefault(node.layer, i)
            out = "(B, ...)" if shapes[node.dst] is None else fmt_shape(shapes[node.dst])
            rows.append((str(i), repr(layer), out, params, ", ".join(names[v] for v in node.srcs)))
        w = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = ["  ".join(r[c].rjust(w[c]) if c == 3 else r[c].ljust(w[c]) for c in range(5)).rstrip() for r in rows]
        rule = "-" * max(map(len, lines))
        outs = ", ".join(f"{n} = {names[v]}" for n, v in zip(self.output_names, plan.outputs))
        foot = (f"outputs: {outs}\ntotal params: {self.n_params:,}   backend: {self.backend.name}   "
                f"dtype: {self.dtype}" + ("" if self.precision is None else f"   precision: {self.precision}"))
        return "\n".join([lines[0], rule, *lines[1:], rule, foot])

    def __repr__(self):
        prec = "" if self.precision is None else f", precision={self.precision}"
        return (f"Model({repr(self.name) + ': ' if self.name else ''}{self.n_inputs} inputs, {self.n_output_tensors} outputs, "
                f"{len(self._plan.steps)} nodes, {len(self.layers)} layers)  # backend={self.backend.name}, "
                f"dtype={self.dtype}{prec}, params={self.n_params:,}")


class Sequential(Model):
    """A feed-forward network: layers applied in order, trained by backprop — the chain case of :class:`Model`
    (the same forward and backward walks).

    Parameters
    ----------
    layers : list of Layer
        E.g. ``[Dense(64, 128), ReLU(), Dense(128, 10)]``.  Sizes are checked here.
    backend : str, module or Backend
        ``"numpy"`` (default), ``"cupy"``, ``"torch"``, ``"jax"``, ``"array_api_strict"`` or an
        imported array module; see :func:`nnkit.get_backend`.
    dtype : ``"float32"`` or ``"float64"``; None (default) means float32, or the dtype of a
        :class:`Backend` passed as ``backend``
    seed : int or None
        Seeds the host generator that draws the initial weights (and the
        shuffles), so one seed gives the same model on every backend.
    precision : None, ``"mixed_bfloat16"``, ``"mixed_float16"`` or ``"tf32"``
        The precision policy (:mod:`nnkit.training.precision`): weights stay in ``dtype`` (float32), matmuls run
        in bfloat16/float16 (or TF32 on CUDA); softmax, the loss, normalisation statistics and the
        update stay in float32; ``mixed_float16`` scales the loss dynamically.  None (default)
        computes in ``dtype``.  A precision the backend cannot honour is a ValueError.

    input_shape : tuple, optional
        The input shape without the batch — ``(64,)`` for tables, ``(1, 40)`` for signals, ``(3, 32, 32)``
        for images; None (unknown) sizes allowed.  By default what the first layer's arguments fix (a
        Dense(64, ...) takes (64,), a Conv1D(1, ...) takes (1, None)); without either, the first batch
        decides.  Every new batch shape is checked through the layers, naming the layer that disagrees.

    Input ``X`` is (batch, *input_shape); NumPy input (or lists) is converted to the
    backend, arrays of the backend are used as they are.
    """

    def __init__(self, layers: Layer | Iterable[Layer], backend: str | Any = "numpy", dtype: str | None = None,
                 seed: int | None = None, precision: str | None = None,
                 input_shape: int | tuple[int | None, ...] | None = None) -> None:
        layers = list(layers) if not isinstance(layers, Layer) else [layers]
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {layer!r}, not an nnkit Layer (e.g. Dense(4, 8), ReLU())")
            if getattr(layer, "takes_list", False):
                raise TypeError(f"layer {i} {layer!r} merges several tensors: build a graph (nnkit.Input, "
                                "nnkit.Model) for it")
        _check_distinct(layers)
        first = next((i for i, l in enumerate(layers) if any(kind == "params" for _, _, kind, _ in l.slots())), 0)
        self.input_names, self.output_names = ["input"], ["output"]
        self._by_dict = (False, False)
        self._setup(graph_module.Plan.chain_of(layers, first), check_input_shape(input_shape, layers), backend,
                    dtype, seed, precision)

    @classmethod
    def mlp(cls, sizes: Iterable[int], activation: str | type = "relu", init: str | None = None,
            output_init: str = "glorot_uniform", dropout: float = 0.0, norm: str | None = None,
            residual: bool = False, **kwargs: Any) -> Sequential:
        """A multi-layer perceptron of :func:`nnkit.models.architectures.mlp` (which documents the arguments); other
        keyword arguments (``backend``, ``dtype``, ``seed``, ``precision``) go to the model."""
        return cls(architectures.mlp(sizes, activation, init, output_init, dropout, norm, residual), **kwargs)

    @classmethod
    def cnn(cls, input_shape: int | tuple[int, ...], channels: Iterable[int], hidden: Iterable[int] = (),
            n_outputs: int = 10, kernel_size: int = 3, pool: int = 2, activation: str | type = "relu",
            **kwargs: Any) -> Sequential:
        """A small convolutional network of :func:`nnkit.models.architectures.cnn` (which documents the arguments);
        other keyword arguments (``backend``, ``dtype``, ``seed``, ``precision``) go to the model."""
        layers = architectures.cnn(input_shape, channels, hidden, n_outputs, kernel_size, pool, activation)
        return cls(layers, input_shape=architectures.cnn_input_shape(input_shape), **kwargs)

    @classmethod
    def rnn(cls, input_shape: int | tuple[int | None, ...], kind: str = "gru", hidden: Iterable[int] = (32,),
            n_outputs: int = 10, bidirectional: bool = False, **kwargs: Any) -> Sequential:
        """A recurrent network of :func:`nnkit.models.architectures.rnn` (which documents the arguments); other keyword
        arguments (``backend``, ``dtype``, ``seed``, ``precision``) go to the model."""
        layers = architectures.rnn(input_shape, kind, hidden, n_outputs, bidirectional)
        return cls(layers, input_shape=architectures.rnn_input_shape(input_shape), **kwargs)

    @classmethod
    def gpt(cls, vocab_size: int, block_size: int, n_embd: int, n_layer: int, n_head: int, dropout: float = 0.0,
            tie_weights: bool = True, **kwargs: Any) -> Sequential:
        """nanoGPT's GPT (:func:`nnkit.models.architectures.gpt`): token and position embeddings, ``n_layer`` causal
        pre-norm Transformer blocks, a final LayerNorm and a head tied to the token embedding; nanoGPT's
        initialisation (N(0, 0.02²), the residual projections 0.02/√(2·n_layer)).  Other keyword arguments
        (``backend``, ``dtype``, ``seed``, ``precision``) go to the model.  Train it on
        :class:`nnkit.text.TokenWindows`; sample with :meth:`generate`."""
        model = cls(architectures.gpt(vocab_size, block_size, n_embd, n_layer, n_head, dropout, tie_weights),
                    **kwargs)
        return architectures.gpt_init(model, n_layer)

    @classmethod
    def from_torch(cls, module: Any, backend: Any = "numpy", dtype: str | None = None, seed: int | None = None,
                   precision: str | None = None, input_shape: Any = None) -> Sequential:
        """The nnkit model of a PyTorch ``nn.Sequential`` (Linear, the activations, BatchNorm1d, LayerNorm,
        Dropout, ...) with its weights and running statistics; other modules are refused by name.
        ``dtype`` defaults to the module's parameter dtype."""
        from ..export.pytorch import layers_from_torch

        layers, state, own_dtype = layers_from_torch(module)
        model = cls(layers, backend=backend, dtype=dtype or own_dtype, seed=seed, precision=precision,
                    input_shape=input_shape)
        model.load_state_dict(state)
        return model

    def __repr__(self):
        body = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        prec = "" if self.precision is None else f", precision={self.precision}"
        return f"Sequential({body}\n)  # backend={self.backend.name}, dtype={self.dtype}{prec}, params={self.n_params:,}"


class Submodel(Layer):
    r"""A model used as a layer of another graph: its nodes run inside the one node (``model(x)`` makes it).

    Forward: the inner graph's walk on the node's input(s).  Backward: the inner walk in reverse from dY, to the
    inner layers' gradients and — the chain rule through the whole sub-graph — to dX of each input.  Its layers are
    the inner model's (their parameters nest: the inner layer i's ``W`` is ``"{k}.{i}.W"`` in the outer model), so a
    trained encoder keeps its weights, and one model called at two nodes is one set of parameters.
    """

    def __init__(self, model=None, layers=None, graph=None, input_shape=None):
        super().__init__()
        if model is None:  # from a saved config: the inner model rebuilt (weights come from the checkpoint)
            layers = [layer_from_config(c) if isinstance(c, dict) else c for c in (layers or [])]
            if not layers:
                raise ValueError("a Submodel needs its layers")
            model = Sequential(layers, input_shape=input_shape) if graph is None else Model.from_config(layers, graph)
        self.inner = model
        self.takes_list = model.n_inputs > 1

    def children(self):
        return [(str(i), layer) for i, layer in enumerate(self.inner.layers)]

    def build(self, backend, rng):
        """The inner model's layers keep their weights (moved to ``backend`` when they live elsewhere)."""
        self.xp = backend.xp
        for _, owner, kind, key in self.slots():
            arrays = owner.params if kind == "params" else owner.buffers
            if not backend.owns(arrays[key]):
                arrays[key] = backend.asarray(np.asarray(host_copy(arrays[key])), dtype=backend.dtype)

    def input_shape(self):
        return self.inner.input_shape

    def output_shape(self, in_shape):
        inner = self.inner
        shapes = list(in_shape) if self.takes_list else [tuple(in_shape)]
        want = inner.input_shapes if hasattr(inner, "input_shapes") else [inner.input_shape]
        for got, need in zip(shapes, want):
            if need is not None and (len(got) != len(need) or any(
                    a is not None and b is not None and a != b for a, b in zip(got, need))):
                raise ShapeError(f"expects {fmt_shape(need)}")
        plan = inner.plan
        return graph_module.walk_shapes(plan, shapes)[plan.outputs[0]]

    def forward(self, X, train=True):
        """The inner graph's outputs for X (a list for a model of several inputs)."""
        plan = self.inner.plan
        out = graph_module.walk_forward(plan, list(X) if self.takes_list else [X], train)[0]
        if train and plan.shared:  # the inner shared layers' calls, kept with this call
            self._cache = [st.saved for st in plan.steps]
        return out

    def backward(self, dY, need_dX=True):
        """The inner walk in reverse: the inner layers' gradients and ∂L/∂X of each input (when needed)."""
        plan = self.inner.plan
        if plan.shared and self._cache is not None:
            for st, saved in zip(plan.steps, self._cache):
                st.saved = saved
        dXs = graph_module.walk_backward(plan, [dY], need_inputs=need_dX)
        if not need_dX:
            return None
        return dXs if self.takes_list else dXs[0]

    def config(self):
        inner = self.inner
        return {"type": "Submodel", "layers": inner.config(), "graph": inner.graph_config(),
                "input_shape": None if inner.input_shape is None else list(inner.input_shape)}

    def __repr__(self):
        return f"Submodel({self.inner.name or type(self.inner).__name__}: {len(self.inner.layers)} layers)"

    def to_onnx(self, g, x):
        """The inner nodes, in order, on the ONNX tensor(s) ``x``."""
        plan = self.inner.plan
        names = dict(zip(plan.inputs, list(x) if self.takes_list else [x]))
        for i, (layer, src, dst, srcs, _, _) in enumerate(plan.forward_order):
            names[dst] = g.layer(layer, names[src] if srcs is None else [names[v] for v in srcs], str(i))
        return names[plan.outputs[0]]

    def to_torch(self, ctx):
        """The inner model's module (``nnkit.export.pytorch.Graph``, or ``nn.Sequential`` for a chain)."""
        return self.inner.to_torch()

    @classmethod
    def torch_classes(cls, nn):
        from ..export.pytorch import _graph_class

        return (_graph_class(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        raise ctx.refuse("a graph module comes back into nnkit as a whole model, not as a layer of nn.Sequential")

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_cache", None)
        return {**state, "_cache": None}


class _OutputView:
    """One output of a model of several, as the target checks see a model (:func:`nnkit.data.as_target`): its
    shape, the backend and dtype; no preprocessing."""

    preprocessing = None

    def __init__(self, model, shape):
        self.backend, self.dtype = model.backend, model.dtype
        self.last_output_shape = self.example_output_shape = tuple(shape)
        self.n_outputs = shape[0] if len(shape) == 1 else None


def _checked_graph(graph, n_layers):
    """(inputs, output slots, output names) of a saved graph description, every part checked (types, counts,
    slots written before they are read) before anything is built; a ValueError naming what is wrong."""
    if not isinstance(graph, dict):
        raise ValueError(f"a graph description is a dict, got {type(graph).__name__}")
    ins, nodes, outs = graph.get("inputs"), graph.get("nodes"), graph.get("outputs")
    names = graph.get("output_names")
    if not isinstance(ins, list) or not ins or len(ins) > graph_module.MAX_NODES:
        raise ValueError("the graph's inputs must be a non-empty list")
    for i in ins:
        if not isinstance(i, dict) or not isinstance(i.get("name"), str) or not isinstance(i.get("shape"), list) \
                or not i["shape"] or len(i["shape"]) > 8 or not all(
                    d is None or (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 2**31)
                    for d in i["shape"]):
            raise ValueError(f"a graph input must be {{'name': str, 'shape': [sizes]}}, got {str(i)[:80]}")
    if not isinstance(nodes, list) or len(nodes) > graph_module.MAX_NODES:
        raise ValueError(f"the graph's nodes must be a list of at most {graph_module.MAX_NODES:,}")
    written = len(ins)
    for k, node in enumerate(nodes):
        if not (isinstance(node, list) and len(node) == 3 and isinstance(node[0], int) and
                not isinstance(node[0], bool) and 0 <= node[0] < n_layers and isinstance(node[1], list) and
                node[1] and isinstance(node[2], bool) and (node[2] or len(node[1]) == 1)):
            raise ValueError(f"node {k} must be [a layer index below {n_layers}, [slots read], takes a list], "
                             f"got {str(node)[:80]}")
        bad = [v for v in node[1] if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < written]
        if bad:
            raise ValueError(f"node {k} reads slot {bad[0]!r}, which no input or earlier node writes (slots "
                             f"0..{written - 1}): a graph is written in order, with no cycle")
        written += 1
    if not isinstance(outs, list) or not outs or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < written for v in outs):
        raise ValueError(f"the graph's outputs must be slots below {written}, got {str(outs)[:80]}")
    if not isinstance(names, list) or len(names) != len(outs) or not all(isinstance(n, str) for n in names):
        raise ValueError("the graph's output names must be one string an output")
    return ins, outs, names


def _size(a):
    n = 1
    for d in a.shape:
        n *= int(d)
    return n


def _check_distinct(layers):
    """Each layer object once in the model: a layer keeps its own forward cache and gradients, so an object used
    twice would silently give its weights the second use's gradient only."""
    seen = {}

    def walk(layer, where):
        if id(layer) in seen:
            raise ValueError(f"layer {where} is the same {type(layer).__name__} object as layer {seen[id(layer)]}: "
                             "each place in a model needs its own layer object (build another, e.g. Dense(4, 4) "
                             "again; weights shared between places are a layer's own to declare)")
        seen[id(layer)] = where
        for name, inner in layer.children():
            walk(inner, f"{where}.{name}")

    for i, layer in enumerate(layers):
        walk(layer, str(i))


def load(path: Any, backend: Any = None, precision: Any = _KEEP) -> Model:
    """Rebuild the model saved at ``path`` on ``backend`` (default ``"numpy"``).

    Weights, optimizer (as ``model.optimizer``), epoch counter, RNG state, precision policy and loss
    scale are restored (a policy the chosen backend cannot honour is a ValueError naming one that can;
    ``precision=None`` loads the weights without it, e.g. a ``mixed_bfloat16`` model on NumPy).  A file
    that is not a sound nnkit checkpoint raises :class:`nnkit.CheckpointError` (a ``ValueError``)
    naming the file and the problem, after reading no more than the members the model needs; memory
    stays within a small multiple of the model's size, whatever the file claims.
    """
    meta, layers, params, moments = checkpoint.read(path)
    options = {"backend": "numpy" if backend is None else backend, "dtype": meta["dtype"], "seed": meta.get("seed"),
               "precision": meta.get("precision") if precision is _KEEP else precision}
    graph = meta.get("graph")
    try:
        model = Sequential(layers, input_shape=meta.get("input_shape"), **options) if graph is None else \
            Model.from_config(layers, graph, **options)
    except ValueError as exc:
        if graph is None:
            raise
        raise checkpoint.CheckpointError(f"{os.fspath(path)!r}: the saved graph is not sound: {exc}") from None
    checkpoint.restore_into(model, meta, params, moments, path)
    return model
