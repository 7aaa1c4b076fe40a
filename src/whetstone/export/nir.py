"""Export a :class:`~whetstone.graph.SpikingGraph` to the Neuromorphic Intermediate Representation
(NIR, PyPI ``nir``), and read such a file back.

Mapping (one time step; NIR sums all edges into a node):

- ``AffineNode`` -> ``nir.Affine``, ``Conv2dNode`` -> ``nir.Conv2d`` (a grouped or depthwise convolution as its
  dense block-diagonal equivalent: nir 1.0.8 cannot read grouped ones back), ``SumPool2dNode`` ->
  ``nir.SumPool2d``, ``AvgPool2dNode`` -> ``nir.AvgPool2d``.
- ``SpikeNode`` -> ``nir.IF(r=1, v_threshold, v_reset=0)``. NIR and its simulators fire on
  ``v > v_threshold`` while Whetstone fires on ``v >= theta``; the file stores ``v_threshold`` as the
  float32 just below ``theta``, which makes the two identical for every float32 membrane.
- ``MaxPool2dNode`` (an OR of binary spikes; NIR has no max pooling) -> ``nir.AvgPool2d`` followed by an
  IF firing when the window's mean exceeds half of ``1 / window size``, i.e. when any input spiked.
- ``FlattenNode`` -> ``nir.Flatten(start_dim=0)`` (NIR shapes have no batch dimension).

NIR importers build PyTorch modules named after the nodes, so node names are written with ``_`` for
``.`` (``features.2`` -> ``features_2``); each node's metadata keeps the whetstone name, which
:func:`read_nir` restores. The decoder key and a note on the encoder (the first layer receives
real-valued pixels in [0, 1]) are stored in the graph's metadata.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write
from ..graph import (
    AffineNode,
    AvgPool2dNode,
    Conv2dNode,
    DeployError,
    FlattenNode,
    GraphNode,
    InputNode,
    MaxPool2dNode,
    SpikeNode,
    SpikingGraph,
    SumPool2dNode,
)

__all__ = ["read_nir", "run_in_snntorch", "to_nir", "write_nir"]

_ENCODER_NOTE = (
    "node '{name}' is the encoder: it receives real-valued input (pixels scaled to [0, 1]) as current; every "
    "other edge carries binary spikes. Simulate a single time step from zero membrane potential."
)
_DECODE_NOTE = "class = argmax over classes of (2 * output_spikes - 1) @ (2 * whetstone_key - 1)^T (ties: lowest index)"


def _require_nir():
    try:
        import nir
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("NIR export needs the 'nir' package: pip install 'whetstone-snn[export]'") from error
    return nir


def _below(value: np.ndarray) -> np.ndarray:
    """The largest float32 strictly below each value: ``v > below(t)`` iff ``v >= t`` for float32 ``v``."""
    return np.nextafter(np.asarray(value, dtype=np.float32), np.float32(-np.inf))


def _if_node(nir, threshold: np.ndarray, name: str):
    threshold = np.asarray(threshold, dtype=np.float32)
    return nir.IF(r=np.ones_like(threshold), v_threshold=_below(threshold), v_reset=np.zeros_like(threshold),
                  metadata={"whetstone_name": name})  # fmt: skip


def nir_name(name: str) -> str:
    """The NIR node name of a graph node (importers turn names into module attributes: no dots)."""
    return name.replace(".", "_")


class _NirWriter:
    """Builds the NIR nodes and edges of a graph; one method per node type (:data:`_WRITERS`)."""

    def __init__(self, nir: Any, graph: SpikingGraph) -> None:
        self.nir, self.graph = nir, graph
        self.shapes = {n.name: n.shape for n in graph.nodes}
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, node: GraphNode, nir_node: Any, inputs: list[str] | None = None, name: str | None = None) -> None:
        key = name or nir_name(node.name)
        if key in self.nodes:
            raise DeployError(f"two graph nodes are both named {key!r} in NIR; rename one of {node.name!r}'s modules")
        self.nodes[key] = nir_node
        self.edges.extend((nir_name(source), key) for source in (node.inputs if inputs is None else inputs))

    def meta(self, node: GraphNode) -> dict[str, str]:
        return {"whetstone_name": node.name}

    def input(self, node: InputNode) -> None:
        self.add(node, self.nir.Input(input_type={"input": np.array(node.shape)}), name="input")

    def affine(self, node: AffineNode) -> None:
        self.add(node, self.nir.Affine(weight=node.weight, bias=node.bias, metadata=self.meta(node)))

    def conv2d(self, node: Conv2dNode) -> None:
        # nir 1.0.8 takes a grouped convolution's input channels from weight.shape[1] (ignoring groups), so a
        # file with one fails nir's own type check when read: write it as the dense block-diagonal equivalent.
        weight = _dense(node.weight, node.groups)
        self.add(node, self.nir.Conv2d(
            input_shape=tuple(self.shapes[node.inputs[0]][1:]), weight=weight, stride=node.stride,
            padding=node.padding, dilation=node.dilation, groups=1, bias=node.bias, metadata=self.meta(node),
        ))  # fmt: skip

    def _pool(self, node: AvgPool2dNode | MaxPool2dNode, name: str) -> Any:
        return self.nir.AvgPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                                  padding=np.array(node.padding), metadata={"whetstone_name": name})  # fmt: skip

    def avgpool2d(self, node: AvgPool2dNode) -> None:
        self.add(node, self._pool(node, node.name))

    def sumpool2d(self, node: SumPool2dNode) -> None:
        self.add(node, self.nir.SumPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                                          padding=np.array(node.padding), metadata=self.meta(node)))  # fmt: skip

    def maxpool2d(self, node: MaxPool2dNode) -> None:
        window = node.kernel_size[0] * node.kernel_size[1]
        summed = f"{nir_name(node.name)}_sum"
        self.add(node, self._pool(node, f"{node.name}_sum"), name=summed)
        # A window mean of k / window with k >= 1 spikes must fire, k = 0 must not.
        self.add(node, _if_node(self.nir, np.full(node.shape, 0.5 / window, dtype=np.float32), node.name), inputs=[])
        self.edges.append((summed, nir_name(node.name)))

    def spike(self, node: SpikeNode) -> None:
        self.add(node, _if_node(self.nir, node.threshold, node.name))

    def flatten(self, node: FlattenNode) -> None:
        self.add(node, self.nir.Flatten(input_type={"input": np.array(self.shapes[node.inputs[0]])}, start_dim=0,
                                        metadata=self.meta(node)))  # fmt: skip


def _dense(weight: np.ndarray, groups: int) -> np.ndarray:
    """The (out, in, kh, kw) weights of a grouped convolution as one ungrouped convolution (zeros between groups)."""
    if groups == 1:
        return weight
    out_channels, per_group, kh, kw = weight.shape
    dense = np.zeros((out_channels, per_group * groups, kh, kw), dtype=weight.dtype)
    per_out = out_channels // groups
    for group in range(groups):
        rows, cols = slice(group * per_out, (group + 1) * per_out), slice(group * per_group, (group + 1) * per_group)
        dense[rows, cols] = weight[rows]
    return dense


#: The writer method of each node type.
_WRITERS: dict[type, Callable[[_NirWriter, Any], None]] = {
    InputNode: _NirWriter.input,
    AffineNode: _NirWriter.affine,
    Conv2dNode: _NirWriter.conv2d,
    AvgPool2dNode: _NirWriter.avgpool2d,
    SumPool2dNode: _NirWriter.sumpool2d,
    MaxPool2dNode: _NirWriter.maxpool2d,
    SpikeNode: _NirWriter.spike,
    FlattenNode: _NirWriter.flatten,
}


def to_nir(graph: SpikingGraph):
    """Build the ``nir.NIRGraph`` of ``graph`` (see the module docstring for the mapping)."""
    nir = _require_nir()
    writer = _NirWriter(nir, graph)
    for node in graph.nodes:
        write = _WRITERS.get(type(node))
        if write is None:
            raise DeployError(f"{node.name}: {type(node).__name__} has no NIR mapping")
        write(writer, node)
    writer.nodes["output"] = nir.Output(output_type={"output": np.array(graph.node(graph.output).shape)})
    writer.edges.append((nir_name(graph.output), "output"))
    metadata = {
        "producer": "whetstone-snn",
        "whetstone_key": graph.key.astype(np.float32),
        "encoder": _ENCODER_NOTE.format(name=nir_name(graph.encoder)),
        "decode": _DECODE_NOTE,
        "spike_rule": "IF thresholds are stored just below theta: NIR's v > v_threshold equals Whetstone's v >= theta",
    }
    if "quantized_bits" in graph.metadata:
        metadata["quantized_bits"] = int(graph.metadata["quantized_bits"])
    return nir.NIRGraph(nodes=writer.nodes, edges=writer.edges, metadata=metadata)


def write_nir(graph: SpikingGraph, path: str | Path) -> Path:
    """Write ``graph`` as a NIR (HDF5) file, atomically (built in memory, then renamed into place: a
    full disk leaves no half-written file); returns the path."""
    nir = _require_nir()
    buffer = io.BytesIO()
    nir.write(buffer, to_nir(graph))
    return atomic_write(path, buffer.getvalue())


def _array(value: Any, what: str, path: Path) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: NaN or infinite values in {what}")
    return array


def read_nir(path: str | Path) -> SpikingGraph:
    """Read a NIR file written by :func:`write_nir` (or any NIR graph of the same node types: Affine,
    Conv2d, AvgPool2d, Flatten, IF with ``r = 1`` and ``v_reset = 0``) back into a :class:`SpikingGraph`.

    A NIR file carries no batch dimension and no decoder, so the key must be in the graph's metadata
    under ``whetstone_key``. Every array is checked to be finite, and the graph to be acyclic with one
    input and one output; ``ValueError`` names what is wrong.
    """
    nir = _require_nir()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no NIR file at {path}")
    try:
        source = nir.read(path)
    except Exception as error:  # noqa: BLE001 - h5py and nir raise many kinds: one line
        raise ValueError(
            f"{path} is not a readable NIR file: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    if "whetstone_key" not in source.metadata:
        raise ValueError(
            f"{path}: the graph metadata has no 'whetstone_key' (decoder key); was it written by whetstone?"
        )
    key = _array(source.metadata["whetstone_key"], "the decoder key", path)
    if key.ndim != 2 or not np.isin(key, (0.0, 1.0)).all():
        raise ValueError(f"{path}: the decoder key must be a 2-D array of 0s and 1s, got shape {key.shape}")
    incoming: dict[str, list[str]] = {name: [] for name in source.nodes}
    for a, b in source.edges:
        if a not in incoming or b not in incoming:
            raise ValueError(f"{path}: edge {a!r} -> {b!r} names a node that does not exist")
        incoming[b].append(a)
    names = {
        name: str(getattr(node, "metadata", {}).get("whetstone_name", name)) for name, node in source.nodes.items()
    }
    if len(set(names.values())) != len(names):
        raise ValueError(f"{path}: two nodes share a name")
    nodes: list[GraphNode] = []
    shapes: dict[str, tuple[int, ...]] = {}
    output = None
    for key_name in _topological(source.nodes, source.edges, path):
        n, name = source.nodes[key_name], names[key_name]
        inputs = [names[i] for i in incoming[key_name]]
        if isinstance(n, nir.Input):
            node: GraphNode = InputNode(name, [], tuple(int(v) for v in next(iter(n.input_type.values()))))
        elif isinstance(n, nir.Output):
            if len(inputs) != 1:
                raise ValueError(f"{path}: the Output node must have one input, got {len(inputs)}")
            output = inputs[0]
            continue
        elif not inputs:
            raise ValueError(f"{path}: node {key_name!r} has no input")
        elif isinstance(n, nir.Affine):
            weight = _array(n.weight, f"the weights of {key_name!r}", path)
            node = AffineNode(
                name, inputs, (weight.shape[0],), weight, _array(n.bias, f"the bias of {key_name!r}", path)
            )
        elif isinstance(n, nir.Conv2d):
            c, h, w = shapes[inputs[0]]
            weight = _array(n.weight, f"the weights of {key_name!r}", path)
            k = weight.shape[2:]
            stride, pad, dil = (tuple(int(v) for v in np.broadcast_to(x, 2)) for x in (n.stride, n.padding, n.dilation))
            out = tuple(
                (size + 2 * p - d * (kk - 1) - 1) // s + 1 for size, p, d, kk, s in zip((h, w), pad, dil, k, stride)
            )
            node = Conv2dNode(name, inputs, (weight.shape[0], *out), weight, _array(n.bias, f"the bias of {key_name!r}", path),
                              stride, pad, dil, int(n.groups))  # fmt: skip
        elif isinstance(n, (nir.AvgPool2d, nir.SumPool2d)):
            c, h, w = shapes[inputs[0]]
            k, s, p = (tuple(int(v) for v in np.broadcast_to(x, 2)) for x in (n.kernel_size, n.stride, n.padding))
            out = tuple((size + 2 * pp - kk) // ss + 1 for size, pp, kk, ss in zip((h, w), p, k, s))
            kind = AvgPool2dNode if isinstance(n, nir.AvgPool2d) else SumPool2dNode
            node = kind(name, inputs, (c, *out), k, s, p)
        elif isinstance(n, nir.Flatten):
            node = FlattenNode(name, inputs, (int(np.prod(shapes[inputs[0]])),))
        elif isinstance(n, nir.IF):
            if not (np.all(n.r == 1) and (n.v_reset is None or np.all(n.v_reset == 0))):
                raise ValueError(f"{path}: IF node {key_name!r} must have r = 1 and v_reset = 0")
            threshold = np.nextafter(_array(n.v_threshold, f"the thresholds of {key_name!r}", path), np.float32(np.inf))
            node = SpikeNode(name, inputs, shapes[inputs[0]], np.broadcast_to(threshold, shapes[inputs[0]]).copy())
        else:
            raise ValueError(f"{path}: node {key_name!r} of type {type(n).__name__} is not supported")
        nodes.append(node)
        shapes[name] = node.shape
    if output is None:
        raise ValueError(f"{path}: the graph has no Output node")
    metadata = {k: v for k, v in source.metadata.items() if k != "whetstone_key"}
    return SpikingGraph(nodes, output, key, metadata)


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


def _topological(nodes: dict, edges: list[tuple[str, str]], path: Path) -> list[str]:
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
        cyclic = sorted(name for name, count in pending.items() if count > 0)
        raise ValueError(
            f"{path}: the graph has a cycle through {', '.join(cyclic[:4])}; only feed-forward graphs are supported"
        )
    return order
