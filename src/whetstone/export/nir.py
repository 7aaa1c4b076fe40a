"""Export a :class:`~whetstone.deploy.SpikingGraph` to the Neuromorphic Intermediate Representation
(NIR, PyPI ``nir``), and read such a file back.

Mapping (one time step; NIR sums all edges into a node):

- ``affine`` -> ``nir.Affine``, ``conv2d`` -> ``nir.Conv2d``, ``avgpool2d`` -> ``nir.AvgPool2d``.
- ``spike`` -> ``nir.IF(r=1, v_threshold, v_reset=0)``. NIR and its simulators fire on ``v > v_threshold``
  while Whetstone fires on ``v >= theta``; the file stores ``v_threshold`` as the float32 just below
  ``theta``, which makes the two identical for every float32 membrane.
- ``maxpool2d`` (an OR of binary spikes; NIR has no max pooling) -> ``nir.AvgPool2d`` followed by an IF
  firing when the window's mean exceeds half of ``1 / window size``, i.e. when any input spiked.
- ``flatten`` -> ``nir.Flatten(start_dim=0)`` (NIR shapes have no batch dimension).

The decoder key and a note on the encoder (the first layer receives real-valued pixels in [0, 1]) are
stored in the graph's metadata.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from ..deploy import DeployError, GraphNode, SpikingGraph

__all__ = ["read_nir", "run_in_snntorch", "to_nir", "write_nir"]

_ENCODER_NOTE = (
    "node '{name}' is the encoder: it receives real-valued input (pixels scaled to [0, 1]) as current; every "
    "other edge carries binary spikes. Simulate a single time step from zero membrane potential."
)
_DECODE_NOTE = (
    "class = argmax over classes of (2 * output_spikes - 1) @ (2 * whetstone_key - 1)^T (ties: lowest index)"
)


def _require_nir():
    try:
        import nir
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("NIR export needs the 'nir' package: pip install 'whetstone-snn[export]'") from error
    return nir


def _below(value: np.ndarray) -> np.ndarray:
    """The largest float32 strictly below each value: ``v > below(t)`` iff ``v >= t`` for float32 ``v``."""
    return np.nextafter(np.asarray(value, dtype=np.float32), np.float32(-np.inf))


def _if_node(nir, threshold: np.ndarray):
    threshold = np.asarray(threshold, dtype=np.float32)
    return nir.IF(
        r=np.ones_like(threshold), v_threshold=_below(threshold), v_reset=np.zeros_like(threshold),
    )


def to_nir(graph: SpikingGraph):
    """Build the ``nir.NIRGraph`` of ``graph`` (see the module docstring for the mapping)."""
    nir = _require_nir()
    nodes, edges = {}, []
    shapes = {n.name: n.shape for n in graph.nodes}
    for node in graph.nodes:
        p = node.params
        if node.op == "input":
            nodes["input"] = nir.Input(input_type={"input": np.array(node.shape)})
        elif node.op == "affine":
            nodes[node.name] = nir.Affine(weight=p["weight"], bias=p["bias"])
        elif node.op == "conv2d":
            nodes[node.name] = nir.Conv2d(
                input_shape=tuple(shapes[node.inputs[0]][1:]), weight=p["weight"], stride=p["stride"],
                padding=p["padding"], dilation=p["dilation"], groups=p["groups"], bias=p["bias"],
            )
        elif node.op in ("avgpool2d", "maxpool2d"):
            pool = nir.AvgPool2d(
                kernel_size=np.array(p["kernel_size"]), stride=np.array(p["stride"]), padding=np.array(p["padding"])
            )
            if node.op == "avgpool2d":
                nodes[node.name] = pool
            else:
                window = p["kernel_size"][0] * p["kernel_size"][1]
                nodes[f"{node.name}_sum"] = pool
                # A window mean of k / window with k >= 1 spikes must fire, k = 0 must not.
                nodes[node.name] = _if_node(nir, np.full(node.shape, 0.5 / window, dtype=np.float32))
                edges.append((f"{node.name}_sum", node.name))
                for source in node.inputs:
                    edges.append((source, f"{node.name}_sum"))
                continue
        elif node.op == "spike":
            nodes[node.name] = _if_node(nir, p["threshold"])
        elif node.op == "flatten":
            nodes[node.name] = nir.Flatten(input_type={"input": np.array(shapes[node.inputs[0]])}, start_dim=0)
        else:
            raise DeployError(f"{node.name}: operation {node.op!r} has no NIR mapping")
        edges.extend((source, node.name) for source in node.inputs)
    nodes["output"] = nir.Output(output_type={"output": np.array(shapes[graph.output])})
    edges.append((graph.output, "output"))
    metadata = {
        "producer": "whetstone-snn",
        "whetstone_key": graph.key.astype(np.float32),
        "encoder": _ENCODER_NOTE.format(name=graph.encoder),
        "decode": _DECODE_NOTE,
        "spike_rule": "IF thresholds are stored just below theta: NIR's v > v_threshold equals Whetstone's v >= theta",
    }
    if "quantized_bits" in graph.metadata:
        metadata["quantized_bits"] = int(graph.metadata["quantized_bits"])
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def write_nir(graph: SpikingGraph, path: str | Path) -> Path:
    """Write ``graph`` as a NIR (HDF5) file; returns the path."""
    nir = _require_nir()
    path = Path(path)
    nir.write(path, to_nir(graph))
    return path


def read_nir(path: str | Path) -> SpikingGraph:
    """Read a NIR file written by :func:`write_nir` (or any NIR graph of the same node types: Affine,
    Conv2d, AvgPool2d, Flatten, IF with ``r = 1`` and ``v_reset = 0``) back into a :class:`SpikingGraph`.

    A NIR file carries no batch dimension and no decoder, so the key must be in the graph's metadata
    under ``whetstone_key``.
    """
    nir = _require_nir()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no NIR file at {path}")
    try:
        source = nir.read(path)
    except Exception as error:
        raise ValueError(f"{path} is not a readable NIR file: {error}") from error
    if "whetstone_key" not in source.metadata:
        raise ValueError(f"{path}: the graph metadata has no 'whetstone_key' (decoder key); was it written by whetstone?")
    incoming: dict[str, list[str]] = {name: [] for name in source.nodes}
    for a, b in source.edges:
        incoming[b].append(a)
    order = _topological(source.nodes, source.edges)
    nodes: list[GraphNode] = []
    shapes: dict[str, tuple[int, ...]] = {}
    output = None
    for name in order:
        n = source.nodes[name]
        inputs = incoming[name]
        if isinstance(n, nir.Input):
            shape = tuple(int(v) for v in next(iter(n.input_type.values())))
            nodes.append(GraphNode(name, "input", [], shape))
        elif isinstance(n, nir.Output):
            (output,) = inputs
            continue
        elif isinstance(n, nir.Affine):
            nodes.append(GraphNode(name, "affine", inputs, (n.weight.shape[0],), {
                "weight": np.asarray(n.weight, np.float32), "bias": np.asarray(n.bias, np.float32)}))
        elif isinstance(n, nir.Conv2d):
            c, h, w = shapes[inputs[0]]
            k = n.weight.shape[2:]
            stride, pad, dil = (tuple(int(v) for v in np.broadcast_to(x, 2)) for x in (n.stride, n.padding, n.dilation))
            out = tuple((size + 2 * p - d * (kk - 1) - 1) // s + 1 for size, p, d, kk, s in zip((h, w), pad, dil, k, stride))
            nodes.append(GraphNode(name, "conv2d", inputs, (n.weight.shape[0], *out), {
                "weight": np.asarray(n.weight, np.float32), "bias": np.asarray(n.bias, np.float32),
                "stride": stride, "padding": pad, "dilation": dil, "groups": int(n.groups)}))
        elif isinstance(n, nir.AvgPool2d):
            c, h, w = shapes[inputs[0]]
            k, s, p = (tuple(int(v) for v in np.broadcast_to(x, 2)) for x in (n.kernel_size, n.stride, n.padding))
            out = tuple((size + 2 * pp - kk) // ss + 1 for size, pp, kk, ss in zip((h, w), p, k, s))
            nodes.append(GraphNode(name, "avgpool2d", inputs, (c, *out), {"kernel_size": k, "stride": s, "padding": p}))
        elif isinstance(n, nir.Flatten):
            size = int(np.prod(shapes[inputs[0]]))
            nodes.append(GraphNode(name, "flatten", inputs, (size,)))
        elif isinstance(n, nir.IF):
            if not (np.all(n.r == 1) and (n.v_reset is None or np.all(n.v_reset == 0))):
                raise ValueError(f"{path}: IF node {name!r} must have r = 1 and v_reset = 0")
            threshold = np.nextafter(np.asarray(n.v_threshold, np.float32), np.float32(np.inf))
            nodes.append(GraphNode(name, "spike", inputs, shapes[inputs[0]], {"threshold": threshold}))
        else:
            raise ValueError(f"{path}: node {name!r} of type {type(n).__name__} is not supported")
        shapes[name] = nodes[-1].shape
    if output is None:
        raise ValueError(f"{path}: the graph has no Output node")
    metadata = {k: v for k, v in source.metadata.items() if k != "whetstone_key"}
    return SpikingGraph(nodes, output, np.asarray(source.metadata["whetstone_key"], np.float32), metadata)


def run_in_snntorch(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Import the NIR file with snnTorch's importer and run it for one time step; returns the output
    spikes (N, width) as a numpy array. An independent consumer of our NIR files.

    Works around two importer behaviours of snnTorch 1.0 (see its ``import_nir``): IF nodes become
    ``snn.Leaky`` modules with ``init_hidden=False``, which return tuples the next layer cannot take,
    and ``nir.Flatten(start_dim=0)`` becomes ``nn.Flatten(0)``, which would flatten the batch too.
    """
    nir = _require_nir()
    import snntorch
    import snntorch.utils
    import torch
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # the importer prints progress notes
        network = import_from_nir(nir.read(Path(path)))
    for module in network.modules():
        if isinstance(module, snntorch.Leaky):
            module.init_hidden = True
        elif isinstance(module, torch.nn.Flatten):
            module.start_dim = 1
    snntorch.utils.reset(network)  # zero membrane: a single step from rest
    with torch.no_grad():
        out = network(torch.as_tensor(np.asarray(images, dtype=np.float32)))
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(len(images), -1).numpy()


def _topological(nodes: dict, edges: list[tuple[str, str]]) -> list[str]:
    pending = {name: 0 for name in nodes}
    for _, b in edges:
        pending[b] += 1
    ready = [name for name, count in pending.items() if count == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for a, b in edges:
            if a == name:
                pending[b] -= 1
                if pending[b] == 0:
                    ready.append(b)
    if len(order) != len(nodes):
        raise ValueError("the NIR graph has a cycle; only feed-forward graphs are supported")
    return order
