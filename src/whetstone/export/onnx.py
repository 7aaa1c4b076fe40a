"""Export a :class:`~whetstone.graph.nodes.SpikingGraph` to ONNX: the binary network as standard operators.

Each spiking layer is ``Cast(GreaterOrEqual(v, theta), float)``; a node with several inputs sums them
(``Sum``); max pooling is ``MaxPool`` (over spikes, a logical OR); sum pooling an all-ones depthwise ``Conv``. The model has one input ``input``
(N, *input_shape) of float32 pixels in [0, 1] and three outputs: ``spikes`` (the N-hot output code),
``logits`` (``(2 spikes - 1) @ (2 key - 1)^T``) and ``label`` (the argmax, ties to the lowest index).
It runs with ONNX Runtime or any other ONNX backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..graph.nodes import (
    AffineNode,
    Conv2dNode,
    DeployError,
    FlattenNode,
    InputNode,
    MaxPool2dNode,
    Pool2dNode,
    SpikeNode,
    SpikingGraph,
    SumPool2dNode,
)
from ..utils.checks import install_hint
from ..utils.files import atomic_write

__all__ = ["OPSET", "to_onnx", "write_onnx"]

#: ONNX operator set used; GreaterOrEqual needs 12, everything here is stable since 13.
OPSET = 17


def _require_onnx():
    try:
        import onnx
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"ONNX export needs the 'onnx' package: {install_hint('export', 'onnx onnxruntime')}"
        ) from error
    return onnx


def to_onnx(graph: SpikingGraph):
    """Build the ``onnx.ModelProto`` of ``graph`` (checked with ``onnx.checker``)."""
    _require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def summed(node_name: str, inputs: list[str]) -> str:
        if len(inputs) == 1:
            return inputs[0]
        nodes.append(helper.make_node("Sum", inputs, [f"{node_name}_in"], name=f"{node_name}_sum"))
        return f"{node_name}_in"

    for node in graph.nodes:
        name = node.name
        if isinstance(node, InputNode):
            continue
        x = summed(name, node.inputs)
        if isinstance(node, AffineNode):
            nodes.append(
                helper.make_node(
                    "Gemm",
                    [x, constant(f"{name}_weight", node.weight), constant(f"{name}_bias", node.bias)],
                    [name],
                    name=name,
                    transB=1,
                )
            )
        elif isinstance(node, Conv2dNode):
            pad_y, pad_x = node.padding
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, constant(f"{name}_weight", node.weight), constant(f"{name}_bias", node.bias)],
                    [name],
                    name=name,
                    kernel_shape=list(node.weight.shape[2:]),
                    strides=list(node.stride),
                    dilations=list(node.dilation),
                    pads=[pad_y, pad_x, pad_y, pad_x],
                    group=node.groups,
                )
            )
        elif isinstance(node, SumPool2dNode):  # an all-ones depthwise convolution: exact counts
            channels, pad_y, pad_x = node.shape[0], *node.padding
            ones = constant(f"{name}_ones", np.ones((channels, 1, *node.kernel_size), dtype=np.float32))
            nodes.append(
                helper.make_node(
                    "Conv", [x, ones], [name], name=name, kernel_shape=list(node.kernel_size),
                    strides=list(node.stride), pads=[pad_y, pad_x, pad_y, pad_x], group=channels,
                )
            )  # fmt: skip
        elif isinstance(node, Pool2dNode):
            maximum = isinstance(node, MaxPool2dNode)
            pad_y, pad_x = node.padding
            nodes.append(
                helper.make_node(
                    "MaxPool" if maximum else "AveragePool",
                    [x],
                    [name],
                    name=name,
                    kernel_shape=list(node.kernel_size),
                    strides=list(node.stride),
                    pads=[pad_y, pad_x, pad_y, pad_x],
                    **({} if maximum else {"count_include_pad": 1}),
                )
            )
        elif isinstance(node, FlattenNode):
            nodes.append(helper.make_node("Flatten", [x], [name], name=name, axis=1))
        elif isinstance(node, SpikeNode):
            threshold = constant(f"{name}_threshold", node.threshold.astype(np.float32))
            nodes.append(helper.make_node("GreaterOrEqual", [x, threshold], [f"{name}_fired"], name=f"{name}_compare"))
            nodes.append(helper.make_node("Cast", [f"{name}_fired"], [name], name=name, to=TensorProto.FLOAT))
        else:
            raise DeployError(f"{name}: {type(node).__name__} has no ONNX mapping")

    tail, outputs = decoder_nodes(graph, graph.output, constant)
    return checked_model(
        graph, nodes + tail, initializers, outputs, "whetstone",
        f"Single-time-step binary spiking network; '{graph.encoder}' is the encoder of real-valued input "
        "(pixels in [0, 1]); every spiking layer is Cast(GreaterOrEqual(v, theta)).",
    )  # fmt: skip


def checked_model(graph: SpikingGraph, nodes: list, initializers: list, outputs: list, name: str, doc: str):
    """The ONNX model of ``nodes`` reading ``graph``'s input (float, batch ``N``), checked by onnx."""
    onnx = _require_onnx()
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *graph.input_shape])]
    model = helper.make_model(
        helper.make_graph(nodes, name, inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="whetstone-snn",
    )
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def decoder_nodes(graph: SpikingGraph, output: str, constant: Callable[[str, np.ndarray], str]) -> tuple[list, list]:
    """The nodes that read the output spikes (the float tensor ``output``) into the three outputs
    ``spikes``, ``logits`` and ``label``, and those outputs' value infos."""
    from onnx import TensorProto, helper

    width = graph.key.shape[1]
    signed_key = constant("signed_key_t", (2.0 * graph.key.astype(np.float32) - 1.0).T.copy())
    two, one = constant("two", np.float32(2.0)), constant("one", np.float32(1.0))
    nodes = [
        helper.make_node("Flatten", [output], ["spikes"], name="spikes", axis=1),
        helper.make_node("Mul", ["spikes", two], ["spikes_x2"], name="spikes_x2"),
        helper.make_node("Sub", ["spikes_x2", one], ["signed_spikes"], name="signed_spikes"),
        helper.make_node("MatMul", ["signed_spikes", signed_key], ["logits"], name="logits"),
        helper.make_node("ArgMax", ["logits"], ["label"], name="label", axis=1, keepdims=0, select_last_index=0),
    ]
    outputs = [
        helper.make_tensor_value_info("spikes", TensorProto.FLOAT, ["N", width]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", graph.key.shape[0]]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
    ]
    return nodes, outputs


def write_onnx(graph: SpikingGraph, path: str | Path, replace: bool = True) -> Path:
    """Write ``graph`` as an ONNX file, atomically (a full disk leaves no half-written file); returns the path."""
    return atomic_write(path, to_onnx(graph).SerializeToString(), replace)
