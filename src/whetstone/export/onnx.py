"""Export a :class:`~whetstone.deploy.SpikingGraph` to ONNX: the binary network as standard operators.

Each spiking layer is ``Cast(GreaterOrEqual(v, theta), float)``; a node with several inputs sums them
(``Sum``); max pooling is ``MaxPool`` (over spikes, a logical OR). The model has one input ``input``
(N, *input_shape) of float32 pixels in [0, 1] and three outputs: ``spikes`` (the N-hot output code),
``logits`` (``(2 spikes - 1) @ (2 key - 1)^T``) and ``label`` (the argmax, ties to the lowest index).
It runs with ONNX Runtime or any other ONNX backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..deploy import DeployError, SpikingGraph

__all__ = ["OPSET", "to_onnx", "write_onnx"]

#: ONNX operator set used; GreaterOrEqual needs 12, everything here is stable since 13.
OPSET = 17


def _require_onnx():
    try:
        import onnx
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'whetstone-snn[export]'") from error
    return onnx


def to_onnx(graph: SpikingGraph):
    """Build the ``onnx.ModelProto`` of ``graph`` (checked with ``onnx.checker``)."""
    onnx = _require_onnx()
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
        p, name = node.params, node.name
        if node.op == "input":
            continue
        x = summed(name, node.inputs)
        if node.op == "affine":
            nodes.append(helper.make_node(
                "Gemm", [x, constant(f"{name}_weight", p["weight"]), constant(f"{name}_bias", p["bias"])], [name],
                name=name, transB=1,
            ))
        elif node.op == "conv2d":
            kernel = list(p["weight"].shape[2:])
            nodes.append(helper.make_node(
                "Conv", [x, constant(f"{name}_weight", p["weight"]), constant(f"{name}_bias", p["bias"])], [name],
                name=name, kernel_shape=kernel, strides=list(p["stride"]), dilations=list(p["dilation"]),
                pads=[p["padding"][0], p["padding"][1], p["padding"][0], p["padding"][1]], group=p["groups"],
            ))
        elif node.op in ("maxpool2d", "avgpool2d"):
            op = "MaxPool" if node.op == "maxpool2d" else "AveragePool"
            extra = {} if op == "MaxPool" else {"count_include_pad": 1}
            nodes.append(helper.make_node(
                op, [x], [name], name=name, kernel_shape=list(p["kernel_size"]), strides=list(p["stride"]),
                pads=[p["padding"][0], p["padding"][1], p["padding"][0], p["padding"][1]], **extra,
            ))
        elif node.op == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [name], name=name, axis=1))
        elif node.op == "spike":
            threshold = constant(f"{name}_threshold", p["threshold"].astype(np.float32))
            nodes.append(helper.make_node("GreaterOrEqual", [x, threshold], [f"{name}_fired"], name=f"{name}_compare"))
            nodes.append(helper.make_node("Cast", [f"{name}_fired"], [name], name=name, to=TensorProto.FLOAT))
        else:
            raise DeployError(f"{name}: operation {node.op!r} has no ONNX mapping")

    width = graph.key.shape[1]
    signed_key = constant("signed_key_t", (2.0 * graph.key.astype(np.float32) - 1.0).T.copy())
    two, one = constant("two", np.float32(2.0)), constant("one", np.float32(1.0))
    nodes += [
        helper.make_node("Flatten", [graph.output], ["spikes"], name="spikes", axis=1),
        helper.make_node("Mul", ["spikes", two], ["spikes_x2"], name="spikes_x2"),
        helper.make_node("Sub", ["spikes_x2", one], ["signed_spikes"], name="signed_spikes"),
        helper.make_node("MatMul", ["signed_spikes", signed_key], ["logits"], name="logits"),
        helper.make_node("ArgMax", ["logits"], ["label"], name="label", axis=1, keepdims=0, select_last_index=0),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *graph.input_shape])]
    outputs = [
        helper.make_tensor_value_info("spikes", TensorProto.FLOAT, ["N", width]),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", graph.key.shape[0]]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "whetstone", inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="whetstone-snn",
    )
    model.doc_string = (
        f"Single-time-step binary spiking network; '{graph.encoder}' is the encoder of real-valued input "
        "(pixels in [0, 1]); every spiking layer is Cast(GreaterOrEqual(v, theta))."
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(graph: SpikingGraph, path: str | Path) -> Path:
    """Write ``graph`` as an ONNX file; returns the path."""
    onnx = _require_onnx()
    path = Path(path)
    onnx.save(to_onnx(graph), path)
    return path
