"""Export a quantized :class:`~whetstone.graph.nodes.SpikingGraph` to ONNX as integer arithmetic: 8-bit
activations times 8-bit weights, summed exactly in 32 bits, the CPU's int8 kernels.

Every activation is a ``uint8`` tensor ``u`` standing for ``u / 255``: the input pixels (``p / 255``,
``QuantizeLinear``) and the spikes (``255`` for a spike). A weighted layer and the spiking layer it feeds
are one ``QLinearConv`` (a Linear is a 1x1 convolution): the accumulator ``acc = sum(u w)`` is exactly
``255 (W x)``, and the layer fires where ``acc + 255 (b - theta) >= 0``. With the bias input set to
``1 - ceil(-255 (b - theta))`` that is where ``acc + bias >= 1``, and an output scale of 1/65536 maps it to
``255`` (saturated) and everything else to ``0``: the comparison is exact, ties included, so the file gives
the reference simulator's spikes on every image whose pixels are multiples of 1/255 (8-bit images).
Max pooling of spikes is ``MaxPool`` on ``uint8``. The outputs are those of :mod:`whetstone.export.onnx`.

It takes graphs from :func:`~whetstone.graph.quantization.quantize` with at most 8 bits, whose weighted layers each feed
one spiking layer alone (chains of convolutions, linears, max pooling and flatten); a skip connection or
a sum pooling is refused by layer name (write the float ONNX file for those).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..graph.integer import check_integer_chain
from ..graph.nodes import AffineNode, FlattenNode, MaxPool2dNode, SpikeNode, SpikingGraph
from ..utils.files import atomic_write
from .onnx import _require_onnx, checked_model, decoder_nodes

__all__ = ["to_integer_onnx", "write_integer_onnx"]

LEVELS = 255  # a uint8 activation u stands for u / LEVELS
OUTPUT_SCALE = 1.0 / 65536  # (acc + bias) * (1/255) / OUTPUT_SCALE >= 257 for acc + bias >= 1: saturates to 255


def _spike_bias(bias: np.ndarray, threshold: float) -> np.ndarray:
    """The int32 bias that makes ``acc + bias >= 1`` exactly where ``acc / 255 + b >= theta``."""
    shifted = LEVELS * (bias.astype(np.float64) - threshold)
    return np.array([1 - math.ceil(-value) for value in shifted], dtype=np.int32)


def to_integer_onnx(graph: SpikingGraph):
    """Build the integer ``onnx.ModelProto`` of a quantized ``graph`` (see the module docstring)."""
    _require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    check_integer_chain(graph, "integer ONNX", "write the float ONNX file for this graph")
    nodes, initializers = [], []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    scale = constant("u8_scale", np.float32(1.0 / LEVELS))
    zero = constant("u8_zero", np.uint8(0))
    weight_scale, weight_zero = constant("w_scale", np.float32(1.0)), constant("w_zero", np.int8(0))
    out_scale = constant("spike_scale", np.float32(OUTPUT_SCALE))
    nodes.append(helper.make_node("QuantizeLinear", ["input", scale, zero], ["input_u8"], name="input_u8"))
    tensor = {"input": "input_u8"}  # graph node -> its uint8 tensor
    by_name = {node.name: node for node in graph.nodes}
    for node in graph.nodes:
        name = node.name
        if isinstance(node, SpikeNode):
            layer = by_name[node.inputs[0]]
            x = tensor[layer.inputs[0]]
            bias = constant(f"{name}_bias", _spike_bias(layer.bias, float(node.threshold.flat[0])))
            weight = layer.weight.astype(np.int8)
            attributes = {}
            if isinstance(layer, AffineNode):  # a 1x1 convolution over (N, features, 1, 1)
                shape = constant(f"{name}_shape", np.array([0, -1, 1, 1], dtype=np.int64))
                nodes.append(helper.make_node("Reshape", [x, shape], [f"{name}_in"], name=f"{name}_in"))
                x, weight = f"{name}_in", weight[:, :, None, None]
            else:
                pad_y, pad_x = layer.padding
                attributes = {"kernel_shape": list(layer.weight.shape[2:]), "strides": list(layer.stride),
                              "dilations": list(layer.dilation), "pads": [pad_y, pad_x, pad_y, pad_x],
                              "group": layer.groups}  # fmt: skip
            inputs = [
                x,
                scale,
                zero,
                constant(f"{name}_weight", weight),
                weight_scale,
                weight_zero,
                out_scale,
                zero,
                bias,
            ]
            out = f"{name}_u8" if isinstance(layer, AffineNode) else name
            nodes.append(helper.make_node("QLinearConv", inputs, [out], name=name, **attributes))
            if isinstance(layer, AffineNode):
                nodes.append(helper.make_node("Flatten", [out], [name], name=f"{name}_flat", axis=1))
            tensor[name] = name
        elif isinstance(node, MaxPool2dNode):
            pad_y, pad_x = node.padding
            nodes.append(helper.make_node("MaxPool", [tensor[node.inputs[0]]], [name], name=name,
                                          kernel_shape=list(node.kernel_size), strides=list(node.stride),
                                          pads=[pad_y, pad_x, pad_y, pad_x]))  # fmt: skip
            tensor[name] = name
        elif isinstance(node, FlattenNode):
            nodes.append(helper.make_node("Flatten", [tensor[node.inputs[0]]], [name], name=name, axis=1))
            tensor[name] = name
    levels = constant("levels", np.float32(LEVELS))
    nodes.append(
        helper.make_node(
            "Cast", [tensor[graph.output]], ["output_u8_as_float"], name="output_float", to=TensorProto.FLOAT
        )
    )
    nodes.append(helper.make_node("Div", ["output_u8_as_float", levels], ["output_spikes"], name="output_spikes"))
    tail, outputs = decoder_nodes(graph, "output_spikes", constant)
    return checked_model(
        graph, nodes + tail, initializers, outputs, "whetstone-integer",
        f"Single-time-step binary spiking network in integer arithmetic ({graph.metadata['quantized_bits']}-bit "
        "weights, uint8 activations u = 255 x, one QLinearConv per spiking layer); pixels must be multiples of 1/255.",
    )  # fmt: skip


def write_integer_onnx(graph: SpikingGraph, path: str | Path, replace: bool = True) -> Path:
    """Write the integer ONNX file of a quantized ``graph``, atomically; returns the path."""
    return atomic_write(path, to_integer_onnx(graph).SerializeToString(), replace)
