"""Layer calls on symbolic tensors: the graph a :class:`nnkit.Model` is built from.

``x = Input((8,))`` is a symbolic tensor — a shape without the batch, no values; calling a layer on symbolic
tensors records a :class:`Node` (the layer, the tensors it reads) and returns its output tensor, whose shape is
checked now, with the node named in the error.  A layer called at several nodes is one layer (one set of
parameters); a tensor read by several nodes fans out.  The model walks these nodes forward in the order they
were recorded and backward in reverse (:mod:`nnkit.models.sequential`).
"""
from __future__ import annotations

import itertools

__all__ = ["SymbolicTensor", "Input", "Node", "call_layer", "is_symbolic", "ShapeError", "fmt_shape", "Plan",
           "walk_forward", "walk_backward", "build_plan"]


class ShapeError(ValueError):
    """An input shape a layer cannot take (a ``ValueError``); the model adds which layer and what it got."""


def fmt_shape(shape):
    """``(B, 25, 10)`` for the shape (25, 10) without its batch; unknown sizes as ``?``."""
    return "(B" + "".join(f", {'?' if n is None else n}" for n in shape) + ")"


_ids = itertools.count()


class SymbolicTensor:
    """A tensor of a graph being built: ``shape`` (without the batch; None for a free size), the ``node`` that
    gives it (None for an :func:`Input`) and a ``name``."""

    def __init__(self, shape, node=None, name=None):
        self.shape, self.node, self.name = tuple(shape), node, name
        self.id = next(_ids)  # the order of creation: a node's output is newer than its inputs

    def __repr__(self):
        return f"<SymbolicTensor {self.name!r} shape=(batch, {', '.join(map(str, self.shape))})>"


def Input(shape, name=None):  # noqa: N802 — Keras' name for it
    """A graph's input: a symbolic tensor of ``shape`` (without the batch: ``(64,)`` for rows of 64 features,
    ``(3, 32, 32)`` for images, ``(None, 16)`` for sequences of any length).  ``name`` names it (the key of a dict
    of inputs; default ``input_1``, ``input_2``, ... in the model)."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"Input shape must be a tuple of sizes (without the batch), got {shape!r}") from None
    if not shape or any(not (d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0)) for d in shape):
        raise ValueError(f"Input shape must be positive sizes or None (without the batch), got {shape!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"Input name must be a string, got {name!r}")
    return SymbolicTensor(shape, None, name)


class Node:
    """One call of ``layer`` on the symbolic tensors ``inputs`` (a list; ``as_list``: the layer takes them as a
    list, as the merge layers do), giving ``output``."""

    def __init__(self, layer, inputs, as_list):
        self.layer, self.inputs, self.as_list = layer, inputs, as_list
        shapes = [t.shape for t in inputs]
        try:
            shape = layer.output_shape(shapes if as_list else shapes[0])
        except ShapeError as exc:
            got = ", ".join(f"{t.name or 'a tensor'} {fmt_shape(t.shape)}" for t in inputs)
            raise ValueError(f"{layer!r} called on {got}: it {exc}") from None
        self.output = SymbolicTensor(shape, self, None)


def is_symbolic(x):
    """True for a symbolic tensor, or a list/tuple of them."""
    if isinstance(x, SymbolicTensor):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, SymbolicTensor) for t in x)


def call_layer(layer, inputs):
    """``layer(inputs)`` on symbolic tensors: the node recorded, its output tensor returned."""
    takes_list = getattr(layer, "takes_list", False)
    if isinstance(inputs, SymbolicTensor):
        if takes_list:
            raise TypeError(f"{layer!r} takes a list of tensors, e.g. {type(layer).__name__}()([a, b])")
        return Node(layer, [inputs], False).output
    if not is_symbolic(inputs):
        raise TypeError(f"a layer is called on symbolic tensors (nnkit.Input(...) or another layer's output) to "
                        f"build a graph, got {type(inputs).__name__}; to compute on arrays, use a model's predict")
    if not takes_list:
        if len(inputs) == 1:
            return Node(layer, list(inputs), False).output
        raise TypeError(f"{layer!r} takes one tensor, got a list of {len(inputs)}: merge them first "
                        "(nnkit.Concatenate(), nnkit.Add(), ...)")
    return Node(layer, list(inputs), True).output


class Plan:
    """A graph compiled for walking: ``layers`` (each once, in the order of first use), ``steps`` — one
    :class:`Step` a node, in a topological order — and the value slots of the ``inputs`` and ``outputs``.  A
    chain of layers (``Sequential``) is the plan whose node i reads slot i and writes slot i + 1."""

    def __init__(self, layers, steps, inputs, outputs, n_values):
        self.layers, self.steps, self.inputs, self.outputs, self.n_values = layers, steps, inputs, outputs, n_values
        self.chain = len(inputs) == 1 and len(outputs) == 1 and all(
            s.layer == i and s.srcs == (i,) and s.dst == i + 1 and not s.as_list for i, s in enumerate(steps)) \
            and len(steps) == len(layers)
        self.shared = {i for i in range(len(layers)) if sum(s.layer == i for s in steps) > 1}
        for i, s in enumerate(steps):
            s.shared, s.index = s.layer in self.shared, i
        # what the walks read, node by node: (layer, its one input's slot, output slot, its inputs' slots when it
        # takes a list (else None), shared, the step)
        self.forward_order = [(layers[s.layer], s.srcs[0], s.dst, s.srcs if s.as_list else None, s.shared, s)
                              for s in steps]
        self.backward_order = [(layer, src, dst, srcs, shared, s.need_dx, s)
                               for layer, src, dst, srcs, shared, s in self.forward_order[::-1]]

    @classmethod
    def chain_of(cls, layers, first_param_layer):
        """The plan of ``layers`` applied in order (``first_param_layer``: nodes before it need no dX)."""
        steps = [Step(i, (i,), i + 1, False, i > first_param_layer) for i in range(len(layers))]
        return cls(list(layers), steps, [0], [len(layers)], len(layers) + 1)


class Step:
    """Node ``layer`` (an index into the plan's layers) reading the value slots ``srcs`` (a list when
    ``as_list``), writing slot ``dst``; ``need_dx``: some parameter lies upstream, so its inputs' gradients are
    wanted.  A layer called at several nodes (``shared``) keeps each call's saved activations in ``saved``."""

    def __init__(self, layer, srcs, dst, as_list, need_dx):
        self.layer, self.srcs, self.dst, self.as_list, self.need_dx = layer, tuple(srcs), dst, as_list, need_dx
        self.shared, self.saved = False, None

    def __getstate__(self):
        return {**self.__dict__, "saved": None}  # a call's activations are training scratch: they stay behind


def walk_shapes(plan, in_shapes, strict=True):
    """The shape (without the batch) of every value slot of the plan for its inputs' shapes ``in_shapes``: the
    nodes' ``output_shape`` in order.  ``strict``: a node that cannot take what it gets is a ShapeError naming it;
    else its value (and what depends on it) is None, as is everything downstream of an unknown input."""
    shapes = [None] * plan.n_values
    for slot, shape in zip(plan.inputs, in_shapes):
        shapes[slot] = None if shape is None else tuple(shape)
    for i, node in enumerate(plan.steps):
        got = [shapes[v] for v in node.srcs]
        if any(g is None for g in got):
            continue
        layer = plan.layers[node.layer]
        try:
            shapes[node.dst] = tuple(layer.output_shape(got if node.as_list else got[0]))
        except ShapeError as exc:
            if strict:
                raise ShapeError(f"node {i} {layer!r} {exc}, but it gets {', '.join(map(fmt_shape, got))}") from None
    return shapes


def saved_activations(layer):
    """What ``layer`` (and the layers inside it) kept from its last forward pass, for :func:`restore`."""
    return [sub._cache for sub in layer.sublayers()]


def restore(layer, saved):
    for sub, cache in zip(layer.sublayers(), saved):
        sub._cache = cache


def walk_forward(plan, inputs, train, masks=None, each=None):
    """The plan's nodes applied in order to ``inputs`` (one array a graph input): the list of its outputs.
    ``masks`` (one a graph input, or None): the padding masks (B, T) of variable-length sequences, handed to the
    layers that take one (``takes_mask``) as each node passes its input's on; ``each(i, layer, X, Y)`` sees every
    node's input and output (``nnkit.models.explanation``).  A layer called at several nodes keeps each call's
    activations apart (its node's ``saved``)."""
    values = [None] * plan.n_values
    for slot, X in zip(plan.inputs, inputs):
        values[slot] = X
    if masks is not None and any(m is not None for m in masks) or each is not None:
        return _walk_forward_masked(plan, values, train, masks or [None] * len(plan.inputs), each)
    for layer, src, dst, srcs, shared, step in plan.forward_order:
        Y = layer.forward(values[src] if srcs is None else [values[v] for v in srcs], train=train)
        if shared and train:
            step.saved = saved_activations(layer)
        values[dst] = Y
    return [values[v] for v in plan.outputs]


def _walk_forward_masked(plan, values, train, masks, each):
    """:func:`walk_forward` with the padding masks passed along (and ``each`` called)."""
    mask_of = [None] * plan.n_values
    for slot, m in zip(plan.inputs, masks):
        mask_of[slot] = m
    for i, (layer, src, dst, srcs, shared, step) in enumerate(plan.forward_order):
        X = values[src] if srcs is None else [values[v] for v in srcs]
        mask = mask_of[step.srcs[0]]
        Y = layer.forward(X, train=train, mask=mask) if mask is not None and layer.takes_mask \
            else layer.forward(X, train=train)
        if shared and train:
            step.saved = saved_activations(layer)
        if each is not None:
            each(i, layer, X, Y)
        values[dst] = Y
        if mask is not None:
            mask_of[dst] = layer.output_mask(mask)
    return [values[v] for v in plan.outputs]


def walk_backward(plan, d_outputs, need_inputs=False, each=None):
    """The chain rule over the plan, in reverse: ``d_outputs`` (∂L/∂ each graph output, None for one the loss
    does not read) through each node's backward pass.  A value read by several nodes receives the sum of their
    gradients; a layer called at several nodes gets the sum of its calls' parameter gradients (in ``grads``).
    Returns ∂L/∂ each graph input when ``need_inputs`` (None where nothing reached it), else None.
    ``each(i, layer, dY, need_dX) -> dX``, when given, runs node i's backward pass in the layer's place
    (``nnkit.models.explanation``: the layer's ``explain_backward``)."""
    grads = [None] * plan.n_values
    for slot, d in zip(plan.outputs, d_outputs):
        if d is not None:
            grads[slot] = d if grads[slot] is None else grads[slot] + d
    summed = {}
    for layer, src, dst, srcs, shared, need, step in plan.backward_order:
        dY = grads[dst]
        if dY is None:  # nothing downstream of this node reaches the loss
            continue
        grads[dst] = None  # read: free it
        if shared:
            restore(layer, step.saved)
        need = need or need_inputs
        dX = layer.backward(dY, need_dX=need) if each is None else each(step.index, layer, dY, need)
        if shared:
            _add_grads(layer, summed)
        if not need or dX is None:
            continue
        if srcs is None:
            grads[src] = dX if grads[src] is None else grads[src] + dX
        else:
            for v, d in zip(srcs, dX):
                grads[v] = d if grads[v] is None else grads[v] + d
    for sub, g in summed.values():
        sub.grads = g
    return [grads[v] for v in plan.inputs] if need_inputs else None


def _add_grads(layer, summed):
    """Add ``layer``'s (and its parts') gradients of this call to ``summed`` ({id: (layer, grads)}): copies, since
    the next call's backward may write its gradients into the same arrays."""
    for sub in layer.sublayers():
        if not sub.grads:
            continue
        xp = sub.xp
        mine = summed.get(id(sub))
        if mine is None:
            summed[id(sub)] = (sub, {k: xp.asarray(g, copy=True) for k, g in sub.grads.items()})
        else:
            acc = mine[1]
            for k, g in sub.grads.items():
                acc[k] = g if k not in acc else acc[k] + g


MAX_NODES = 100_000  # a graph (or a saved graph's description) with more nodes is refused before anything is built


def named(tensors, what):
    """``(names or None, [tensors])`` of a model's inputs or outputs given as a tensor, a list or a dict name →
    tensor (a TypeError naming ``what`` for anything else)."""
    if isinstance(tensors, SymbolicTensor):
        return None, [tensors]
    if isinstance(tensors, dict):
        if not tensors or not all(isinstance(k, str) and isinstance(t, SymbolicTensor) for k, t in tensors.items()):
            raise TypeError(f"{what} as a dict must map names (str) to symbolic tensors, got {tensors!r}")
        return list(tensors), list(tensors.values())
    if is_symbolic(tensors):
        return None, list(tensors)
    raise TypeError(f"{what} must be a symbolic tensor (nnkit.Input(...) or a layer's output), a list or a dict of "
                    f"them, got {type(tensors).__name__}")


def build_plan(inputs, outputs, has_params):
    """The :class:`Plan` of the graph from ``inputs`` to ``outputs`` (lists of symbolic tensors): the nodes the
    outputs depend on, in the order they were recorded (which is topological: a node's output is made after its
    inputs).  ``has_params(layer)``: whether a layer has parameters (a node needs its inputs' gradients when one
    lies upstream).  An output that needs a tensor that is not among the inputs, an input no output uses, or the
    same tensor given twice as an input is a ValueError naming it."""
    if len({id(t) for t in inputs}) != len(inputs):
        raise ValueError("the same Input is given twice among the model's inputs")
    nodes, seen, stack = {}, set(), list(outputs)
    given = {id(t) for t in inputs}
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t.node is None:
            if id(t) not in given:
                raise ValueError(f"the outputs depend on {t!r}, which is not among the model's inputs: add it to "
                                 "inputs=")
            continue
        if id(t) in given:
            continue  # an inner tensor given as an input: the graph starts there
        nodes[id(t)] = t.node
        if len(nodes) > MAX_NODES:
            raise ValueError(f"the graph has more than {MAX_NODES:,} nodes")
        stack.extend(t.node.inputs)
    unused = [t for t in inputs if id(t) not in seen]
    if unused:
        raise ValueError(f"input {unused[0].name or unused[0]!r} is not used by any output")
    order = sorted(nodes.values(), key=lambda n: n.output.id)
    slot = {id(t): k for k, t in enumerate(inputs)}
    layers, index = [], {}
    for n in order:
        slot[id(n.output)] = len(slot)
        if id(n.layer) not in index:
            index[id(n.layer)] = len(layers)
            layers.append(n.layer)
    upstream = [False] * len(slot)  # some parameter lies upstream of the value
    steps = []
    for n in order:
        srcs = [slot[id(t)] for t in n.inputs]
        need = any(upstream[v] for v in srcs)
        upstream[slot[id(n.output)]] = need or has_params(n.layer)
        steps.append(Step(index[id(n.layer)], srcs, slot[id(n.output)], n.as_list, need))
    return Plan(layers, steps, [slot[id(t)] for t in inputs], [slot[id(t)] for t in outputs], len(slot))
