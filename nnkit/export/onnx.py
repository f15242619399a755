"""ONNX export: the inference graph of a :class:`nnkit.Sequential`, layer by layer, in ONNX's own operators.

The graph computes exactly what ``model.predict`` computes (inference mode: BatchNorm with its running
statistics, Dropout as the identity), in the model's storage dtype (a mixed-precision model exports its
float32 master weights):

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
==================  ==============================================================================

Inputs and outputs: ``input`` (batch, *input_shape) with a dynamic batch dimension (and dynamic sizes where
the model's input shape leaves them open), ``output`` — the last
layer's output, what ``predict`` returns — and, for a classifier (a model whose preprocessing says
``task="classification"``, or ``classifier=True``), ``probabilities``: softmax of the outputs (σ for a
single output, as ``predict_labels(proba=True)`` gives).  A model that carries a
:class:`nnkit.Preprocessing` takes *raw* features: its fill values replace NaNs (``Where(IsNaN(x), fill,
x)``) and its scaling ``(x − mean)/std`` runs as nodes before the first layer.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..backend import host_copy
from ..files import atomic_write

__all__ = ["to_onnx", "OPSET"]

OPSET = 17


class _Graph:
    """Nodes and initializers of one graph, with fresh names."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, dtype
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value, hint="c"):
        name = self.name(hint)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value, dtype=self.dtype), name))
        return name

    def op(self, kind, inputs, hint=None, **attrs):
        out = self.name(hint or kind.lower())
        self.nodes.append(self.helper.make_node(kind, list(inputs), [out], name=self.name(kind), **attrs))
        return out


def _layer(g, layer, x, where):
    """Emit ``layer`` applied to tensor ``x``; return the output tensor's name."""
    kind = type(layer).__name__

    def p(name):  # the layer's arrays, copied to the host as NumPy
        return np.asarray(host_copy(layer.params[name]), dtype=g.dtype)

    def buf(name):
        return np.asarray(host_copy(layer.buffers[name]), dtype=g.dtype)

    if kind == "Dense":
        return g.op("Add", [g.op("MatMul", [x, g.const(p("W"), "W")]), g.const(p("b"), "b")], "dense")
    simple = {"ReLU": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "Identity": "Identity", "Dropout": "Identity"}
    if kind in simple:
        return g.op(simple[kind], [x])
    if kind == "LeakyReLU":
        return g.op("LeakyRelu", [x], alpha=float(layer.alpha))
    if kind == "ELU":
        return g.op("Elu", [x], alpha=float(layer.alpha))
    if kind == "Softmax":
        return g.op("Softmax", [x], axis=-1)
    if kind == "SiLU":
        return g.op("Mul", [x, g.op("Sigmoid", [x])], "silu")
    if kind == "Softplus":
        e = g.op("Exp", [g.op("Neg", [g.op("Abs", [x])])])
        return g.op("Add", [g.op("Relu", [x]), g.op("Log", [g.op("Add", [e, g.const(1.0, "one")])])], "softplus")
    if kind == "GELU":  # A = ½·Z·(1 + t), t = tanh(c·(Z + k·Z³)): nnkit's own order of operations
        z3 = g.op("Mul", [g.op("Mul", [x, x]), x])
        u = g.op("Mul", [g.const(math.sqrt(2.0 / math.pi), "c"),
                         g.op("Add", [x, g.op("Mul", [g.const(0.044715, "k"), z3])])])
        t = g.op("Tanh", [u])
        return g.op("Mul", [g.op("Mul", [g.const(0.5, "half"), x]), g.op("Add", [g.const(1.0, "one"), t])], "gelu")
    if kind == "BatchNorm":
        return g.op("BatchNormalization", [x, g.const(p("gamma"), "gamma"), g.const(p("beta"), "beta"),
                                           g.const(buf("running_mean"), "mean"), g.const(buf("running_var"), "var")],
                    "batchnorm", epsilon=float(layer.eps))
    if kind == "LayerNorm":
        return g.op("LayerNormalization", [x, g.const(p("gamma"), "gamma"), g.const(p("beta"), "beta")],
                    "layernorm", axis=-1, epsilon=float(layer.eps))
    if kind in ("Conv1D", "Conv2D"):  # ONNX's Conv takes W as (O, C, *k), nnkit's (and PyTorch's) layout
        return g.op("Conv", [x, g.const(p("W"), "W"), g.const(p("b"), "b")], "conv",
                    kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                    pads=list(layer.padding) * 2, dilations=list(layer.dilation))
    if kind in ("MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D"):
        attrs = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=list(layer.padding) * 2)
        if kind.startswith("Avg"):
            return g.op("AveragePool", [x], "avgpool", count_include_pad=1, **attrs)
        return g.op("MaxPool", [x], "maxpool", **attrs)
    if kind == "GlobalAvgPool":
        return g.op("Flatten", [g.op("GlobalAveragePool", [x])], "globalavgpool", axis=1)
    if kind == "Flatten":
        return g.op("Flatten", [x], "flatten", axis=1)
    if kind == "Reshape":  # 0 keeps the batch size
        shape = np.asarray([0, *layer.shape], dtype=np.int64)
        name = g.name("shape")
        g.inits.append(g.numpy_helper.from_array(shape, name))
        return g.op("Reshape", [x, name], "reshape")
    if kind == "Residual":
        f = x
        for j, inner in enumerate(layer.layers):
            f = _layer(g, inner, f, f"{where}.{j}")
        return g.op("Add", [x, f], "residual")
    raise ValueError(f"layer {where} {layer!r} cannot be exported to ONNX: nnkit knows no ONNX form for "
                     f"{kind} (exportable: Dense, the activations, BatchNorm, LayerNorm, Dropout, Residual, "
                     f"Conv1D/2D, MaxPool1D/2D, AvgPool1D/2D, GlobalAvgPool, Flatten, Reshape)")


def to_onnx(model, path=None, *, classifier=None, opset=OPSET, input_name="input", output_name="output"):
    """The ONNX ``ModelProto`` of ``model``'s inference graph; written to ``path`` (atomically) when given.

    ``classifier`` (default: the model's preprocessing says ``task="classification"``) adds the
    ``probabilities`` output.  Needs the ``onnx`` package (``pip install 'nnkit[onnx]'``).  A layer with
    no ONNX form is a ValueError naming it, raised before anything is written.
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
    g = _Graph(helper, numpy_helper, dtype)
    x = input_name
    pre = model.preprocessing
    if pre is not None and pre.fill is not None:
        x = g.op("Where", [g.op("IsNaN", [x]), g.const(pre.fill, "fill"), x], "filled")
    if pre is not None and pre.mean is not None:
        x = g.op("Div", [g.op("Sub", [x, g.const(pre.mean, "mean")]), g.const(pre.std, "std")], "scaled")
    for i, layer in enumerate(model.layers):
        x = _layer(g, layer, x, str(i))
    g.nodes.append(helper.make_node("Identity", [x], [output_name], name="output"))
    out_dims = ["batch", model.n_outputs if model.n_outputs is not None else "outputs"]
    outputs = [helper.make_tensor_value_info(output_name, elem, out_dims)]
    if classifier is None:
        classifier = pre is not None and pre.task == "classification"
    if classifier:
        kind = "Sigmoid" if model.n_outputs == 1 else "Softmax"
        g.nodes.append(helper.make_node(kind, [output_name], ["probabilities"], name="probabilities",
                                        **({"axis": -1} if kind == "Softmax" else {})))
        outputs.append(helper.make_tensor_value_info("probabilities", elem, out_dims))
    in_shape = model.input_shape if model.input_shape is not None else next(iter(model._batch_shapes), None)
    if in_shape is None:
        raise ValueError("the model's input shape is not known: pass input_shape= to Sequential (or give it "
                         "data) before exporting")
    in_dims = ["batch"] + [f"dim{i + 1}" if d is None else d for i, d in enumerate(in_shape)]
    graph = helper.make_graph(g.nodes, "nnkit", [helper.make_tensor_value_info(input_name, elem, in_dims)],
                              outputs, initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="nnkit", producer_version=_version())
    proto.ir_version = min(proto.ir_version, 9)  # readable by ONNX Runtime releases of the last two years
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        data = proto.SerializeToString()
        atomic_write(os.fspath(path), lambda f: f.write(data))
    return proto


def _version():
    from .. import __version__

    return __version__
