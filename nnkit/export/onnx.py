"""ONNX export: the inference graph of a :class:`nnkit.Sequential`, layer by layer, in ONNX's own operators.

Each layer declares its own nodes (``Layer.to_onnx(g, x)``, in the layer's file); this module walks the model
and asks each one through a :class:`Graph`.  A layer of your own exports the same way once it declares them.
The graph computes exactly what ``model.predict`` computes (inference mode: BatchNorm with its running
statistics, Dropout as the identity), in the model's storage dtype (a mixed-precision model exports its
float32 master weights).  The built-in forms:

==================  ==============================================================================
nnkit               ONNX (opset 17)
==================  ==============================================================================
Dense               ``MatMul(X, W) + b``  (W is (in, out), as nnkit stores it)
ReLU, Sigmoid,      ``Relu``, ``Sigmoid``, ``Tanh``, ``LeakyRelu(alpha)``, ``Elu(alpha)``,
Tanh, LeakyReLU,    ``Softmax(axis=-1)``, ``Identity``
ELU, Softmax,
Identity
GELU (tanh form)    ``½·x·(1 + tanh(c·(x + 0.044715·x³)))``, the same operations in the same order as nnkit
SiLU                ``x·Sigmoid(x)``
Softplus            ``Relu(x) + Log(1 + Exp(−|x|))`` (the stable form nnkit uses)
BatchNorm           ``BatchNormalization`` with the running mean and variance (inference form)
LayerNorm           ``LayerNormalization(axis=−1)``
Residual            the inner layers, then ``Add(X, f(X))``
Dropout             ``Identity``
Conv1D/2D           ``Conv`` (W in the same (O, C, *k) layout, pads, strides, dilations)
MaxPool1D/2D        ``MaxPool``;  AvgPool1D/2D: ``AveragePool(count_include_pad=1)``
GlobalAvgPool       ``GlobalAveragePool`` then ``Flatten``
Flatten, Reshape    ``Flatten(axis=1)``, ``Reshape([0, *shape])``
RNN, GRU, LSTM      ``RNN``/``GRU`` (``linear_before_reset=1``)/``LSTM`` with the gate rows reordered (z r h; i o f c)
==================  ==============================================================================

Inputs and outputs: ``input`` (batch, *input_shape) with a dynamic batch dimension (and dynamic sizes where
the model's input shape leaves them open), ``output`` — the last
layer's output, what ``predict`` returns — and, for a classifier (a model whose preprocessing says
``task="classification"``, one ``fit`` with a cross-entropy loss — which records its head, softmax or sigmoid,
in ``model.info["head"]`` — or ``classifier=True``), ``probabilities``: softmax of the outputs (σ for a sigmoid
head or a single output, as ``predict_proba`` gives).  The file's ``metadata_props`` carry the class names, the
feature names and the probabilities' head as JSON.  A model that carries a
:class:`nnkit.Preprocessing` takes *raw* features: its fill values replace NaNs (``Where(IsNaN(x), fill,
x)``) and its scaling ``(x − mean)/std`` runs as nodes before the first layer.  A model with text columns
takes the numeric columns in ``input`` and each text column as a string input (batch,) named after it, one-hot
encoded by ``ai.onnx.ml.OneHotEncoder`` (``metadata_props["text_columns"]`` lists them); a missing text cell
has no form there (fill it before feeding).
"""
from __future__ import annotations

import json
import os

import numpy as np
import array_api_compat

from ..backends import host_copy
from ..data.files import VERSION, atomic_write

__all__ = ["to_onnx", "OPSET", "Graph"]

OPSET = 17


class Graph:
    """The ONNX graph being written: nodes and initializers with fresh names, in the model's dtype.  Each layer's
    ``to_onnx(g, x)`` emits its nodes through these methods and returns its output's name."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, dtype
        self.nodes, self.inits, self.n = [], [], 0
        self.lengths = self.mask = None  # variable lengths: the int32 sequence_lens (batch,) and the (batch, T) mask
        self.where = ""  # the layer being emitted ("3", "3.0" inside a Residual), for the error naming it

    def name(self, hint):
        """A fresh tensor or node name."""
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value, hint="c"):
        """An initializer holding ``value`` (host data, or an array of any backend: copied to the host) in the
        model's dtype; its name."""
        name = self.name(hint)
        host = host_copy(value) if array_api_compat.is_array_api_obj(value) else value
        self.inits.append(self.numpy_helper.from_array(np.asarray(host, dtype=self.dtype), name))
        return name

    def ints(self, values, hint="shape"):
        """An int64 initializer (shapes, axes); its name."""
        name = self.name(hint)
        self.inits.append(self.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def param(self, layer, name):
        """An initializer holding ``layer.params[name]`` (copied to the host); its name."""
        return self.const(layer.params[name], name)

    def buffer(self, layer, name):
        """An initializer holding ``layer.buffers[name]`` (running statistics); its name."""
        return self.const(layer.buffers[name], name)

    def op(self, kind, inputs, hint=None, outputs=1, **attrs):
        """A node of operator ``kind`` on the named ``inputs``; its output's name (a list of ``outputs`` names
        when it has more than one)."""
        outs = [self.name(hint or kind.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(kind, list(inputs), outs, name=self.name(kind), **attrs))
        return outs[0] if outputs == 1 else outs

    def layer(self, layer, x, where):
        """``layer`` applied to tensor ``x`` (its own ``to_onnx``); ``where`` names it ("3", or "0" inside the
        layer being emitted).  A layer without an ONNX form is a ValueError naming it and the layers that have
        one."""
        outer = self.where
        self.where = f"{outer}.{where}" if outer else where
        try:
            if layer.to_onnx is None:
                from ..layers import LAYER_TYPES

                known = ", ".join(n for n, c in LAYER_TYPES.items() if c.to_onnx is not None)
                raise ValueError(f"layer {self.where} {layer!r} cannot be exported to ONNX: {type(layer).__name__} "
                                 f"declares no ONNX form (a to_onnx method; exportable: {known})")
            return layer.to_onnx(self, x)
        finally:
            self.where = outer


def to_onnx(model, path=None, *, classifier=None, opset=OPSET, input_name="input", output_name="output",
            lengths=False):
    """The ONNX ``ModelProto`` of ``model``'s inference graph; written to ``path`` (atomically) when given.

    ``classifier`` (default: the model's preprocessing says ``task="classification"``) adds the
    ``probabilities`` output.  ``lengths=True``: padded variable-length sequences (batch, T, ...) come with a
    second input ``lengths`` (batch,) int64; the recurrent layers pass it to ONNX's RNN/GRU/LSTM as
    ``sequence_lens`` (each sequence stops at its end, as in ``predict``), and a per-position output is zero at
    the padding, as ``predict`` gives it.  Needs the ``onnx`` package (``pip install 'nnkit[onnx]'``).  A layer
    with no ONNX form is a ValueError naming it, raised before anything is written.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx package: pip install 'nnkit[onnx]'") from None
    if not isinstance(opset, int) or opset < OPSET:
        raise ValueError(f"opset must be an integer >= {OPSET} (LayerNormalization), got {opset!r}")
    dtype = np.float64 if model.dtype == "float64" else np.float32
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    g = Graph(helper, numpy_helper, dtype)
    if len(model.plan.inputs) > 1 or len(model.plan.outputs) > 1:
        return _graph_to_onnx(model, g, onnx, helper, elem, opset, path)
    pre = model.preprocessing
    x, text_inputs = _preprocessed_input(g, pre, input_name, elem)
    if lengths:
        _lengths_input(model, g, input_name)
    x = _walk(model, g, [x])[0]
    if lengths and model.output_mask(object()) is not None:  # a per-position output: zero at the padding
        mask = g.op("Unsqueeze", [g.op("Cast", [g.mask], "mask_f", to=elem), g.ints([-1], "axes")], "mask_k")
        x = g.op("Mul", [x, mask], "masked")
    g.nodes.append(helper.make_node("Identity", [x], [output_name], name="output"))
    in_shape = model.input_shape if model.input_shape is not None else model.known_input_shape
    out_shape = model.output_shape(in_shape) if in_shape is not None else (model.n_outputs,)
    out_dims = ["batch"] + [f"out{i + 1}" if d is None else d for i, d in enumerate(out_shape)]
    outputs = [helper.make_tensor_value_info(output_name, elem, out_dims)]
    head = model.info.get("head") if isinstance(model.info, dict) else None  # what fit trained: softmax or sigmoid
    if classifier is None:
        classifier = (pre is not None and pre.task == "classification") or head in ("softmax", "sigmoid")
    if classifier:
        kind = "Sigmoid" if head == "sigmoid" or (head is None and model.n_outputs == 1) else "Softmax"
        g.nodes.append(helper.make_node(kind, [output_name], ["probabilities"], name="probabilities",
                                        **({"axis": -1} if kind == "Softmax" else {})))
        outputs.append(helper.make_tensor_value_info("probabilities", elem, out_dims))
    if in_shape is None:
        raise ValueError("the model's input shape is not known: pass input_shape= to Sequential (or give it "
                         "data) before exporting")
    in_dims = ["batch"] + [f"dim{i + 1}" if d is None else d for i, d in enumerate(in_shape)]
    inputs = [helper.make_tensor_value_info(
        input_name, TensorProto.INT64 if getattr(model.layers[0], "takes_ids", False) else elem, in_dims)]
    if text_inputs:  # the numeric columns in ``input``, each text column in an input of its own
        numeric = len(pre.categories) - len(text_inputs)
        inputs = ([helper.make_tensor_value_info(input_name, elem, ["batch", numeric])] if numeric else []) + \
            [helper.make_tensor_value_info(name, TensorProto.STRING, ["batch"]) for name in text_inputs]
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
    graph = helper.make_graph(g.nodes, "nnkit", inputs, outputs, initializer=g.inits)
    opsets = [helper.make_opsetid("", int(opset))] + ([helper.make_opsetid("ai.onnx.ml", 3)] if text_inputs else [])
    proto = helper.make_model(graph, opset_imports=opsets,
                              producer_name="nnkit", producer_version=_version())
    proto.ir_version = min(proto.ir_version, 9)  # readable by ONNX Runtime releases of the last two years
    props = {"producer": "nnkit"}  # what a serving system needs to read the outputs: JSON in metadata_props
    if pre is not None and pre.classes is not None:
        props["classes"] = json.dumps([c if isinstance(c, (int, float, str)) else str(c) for c in pre.classes])
    if pre is not None and pre.feature_names is not None:
        props["feature_names"] = json.dumps(pre.feature_names)
    if text_inputs:
        props["text_columns"] = json.dumps(text_inputs)
    if classifier:
        props["probabilities"] = kind.lower()
    helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        data = proto.SerializeToString()
        atomic_write(os.fspath(path), lambda f: f.write(data))
    return proto


def _walk(model, g, inputs):
    """The model's nodes emitted in order on the ONNX tensors ``inputs`` (one a graph input): the output tensors'
    names.  Node i is named "i" in errors (the layer's index, for a chain); a layer called at several nodes emits
    its nodes (and weights) at each."""
    plan = model.plan
    names = dict(zip(plan.inputs, inputs))
    for i, (layer, src, dst, srcs, _, _) in enumerate(plan.forward_order):
        names[dst] = g.layer(layer, names[src] if srcs is None else [names[v] for v in srcs], str(i))
    return [names[v] for v in plan.outputs]


def _graph_to_onnx(model, g, onnx, helper, elem, opset, path):
    """A graph of several inputs or outputs: an ONNX input a model input (its name), an output a model output (its
    name), the nodes between (:func:`_walk`); no preprocessing, lengths or probabilities."""
    TensorProto = onnx.TensorProto
    shapes = model.value_shapes()
    plan = model.plan
    outs = _walk(model, g, list(model.input_names))
    for name, tensor in zip(model.output_names, outs):
        g.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"output_{name}"))

    def dims(shape, what):
        return ["batch"] + [f"{what}{i + 1}" if d is None else d for i, d in enumerate(shape)]

    ids = {v for layer, src, _, srcs, _, _ in plan.forward_order if getattr(layer, "takes_ids", False)
           for v in ([src] if srcs is None else srcs)}
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64 if slot in ids else elem, dims(s, f"{n}_"))
              for n, s, slot in zip(model.input_names, model.input_shapes, plan.inputs)]
    outputs = [helper.make_tensor_value_info(n, elem, dims(shapes[v] or (), f"{n}_"))
               for n, v in zip(model.output_names, plan.outputs)]
    graph = helper.make_graph(g.nodes, "nnkit", inputs, outputs, initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))], producer_name="nnkit",
                              producer_version=_version())
    proto.ir_version = min(proto.ir_version, 9)
    helper.set_model_props(proto, {"producer": "nnkit", "inputs": json.dumps(model.input_names),
                                   "outputs": json.dumps(model.output_names)})
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        data = proto.SerializeToString()
        atomic_write(os.fspath(path), lambda f: f.write(data))
    return proto


def _preprocessed_input(g, pre, input_name, elem):
    """(the tensor the first layer reads, the names of the text columns' inputs): the raw features through the
    preprocessing's nodes — NaN filled (``Where(IsNaN(x), fill, x)``), scaled ``(x − mean)/std`` — and, for a
    model with text columns, ``input`` holding the numeric columns only, each text column a string input
    (batch,) of its own name one-hot encoded by ``ai.onnx.ml.OneHotEncoder`` (an unseen category: all zeros with
    ``handle_unknown="ignore"``, else ONNX Runtime's error), joined after them as ``transform`` joins them."""
    x = input_name
    if pre is None:
        return x, []
    text = pre.text_columns
    keep = [j for j in range(pre.n_columns or 0) if j not in text]
    fill, mean, std = ((None if a is None else a[keep]) for a in (pre.fill, pre.mean, pre.std)) if text else \
        (pre.fill, pre.mean, pre.std)
    if fill is not None and len(fill):
        x = g.op("Where", [g.op("IsNaN", [x]), g.const(fill, "fill"), x], "filled")
    if mean is not None and len(mean):
        x = g.op("Div", [g.op("Sub", [x, g.const(mean, "mean")]), g.const(std, "std")], "scaled")
    if not text:
        return x, []
    names = [pre.feature_names[j] if pre.feature_names else f"x{j}" for j in text]
    clash = [n for n in names if n in (input_name, "lengths")]
    if clash:
        raise ValueError(f"text column {clash[0]!r} would share its name with an input: export with another "
                         "input_name=")
    parts = [x] if keep else []
    for j, name in zip(text, names):
        hot = g.op("OneHotEncoder", [name], f"{name}_onehot", domain="ai.onnx.ml", cats_strings=pre.categories[j],
                   zeros=int(pre.handle_unknown == "ignore"))
        parts.append(hot if elem == g.helper.np_dtype_to_tensor_dtype(np.dtype(np.float32)) else
                     g.op("Cast", [hot], f"{name}_cast", to=elem))
    return g.op("Concat", parts, "features", axis=1), names


def _lengths_input(model, g, input_name):
    """The ``lengths`` input's nodes: ``g.lengths``, int32 (batch,) for the recurrent operators' sequence_lens, and
    ``g.mask`` (batch, T) bool, 1 at t < length.  Refused for a model whose mask-taking layers have no ONNX form
    for it (the recurrent layers read ``g.lengths``, SequencePool ``g.mask``)."""
    for i, layer in enumerate(model.layers):
        if getattr(layer, "takes_mask", False) and not getattr(layer, "onnx_lengths", False):
            raise ValueError(f"layer {i} {layer!r} cannot take the lengths of variable-length sequences in ONNX "
                             "(its class declares no onnx_lengths; RNN, GRU, LSTM and SequencePool do): export "
                             "without lengths= "
                             "and feed sequences of one length")
    g.lengths = g.op("Cast", ["lengths"], "sequence_lens", to=6)  # TensorProto.INT32
    steps = g.op("Gather", [g.op("Shape", [input_name], "input_shape"), g.ints(1, "time_axis")], "steps")
    t = g.op("Range", [g.ints(0, "zero"), steps, g.ints(1, "one")], "t")
    g.mask = g.op("Less", [g.op("Unsqueeze", [t, g.ints([0], "axes")], "t_row"),
                           g.op("Unsqueeze", ["lengths", g.ints([1], "axes")], "lengths_col")], "mask")


def _version():
    return VERSION
