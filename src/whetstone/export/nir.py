"""Export a :class:`~whetstone.graph.nodes.SpikingGraph` to the Neuromorphic Intermediate Representation
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

A graph that runs in time (recurrent edges, leaky membranes) is written with its dynamics: a recurrent
edge is an edge of a cycle (NIR's form of recurrence; the graph metadata lists them under
``whetstone_delayed_edges``, each read one step late), and each spiking layer is ``nir.LIF`` with
``tau = dt / (1 - leak)``, ``r = tau / dt``, ``v_leak = 0`` at ``dt = whetstone_dt`` (1e-4 s, snnTorch's
import step): one Euler step of it is ``v = leak * v + input``, reset to 0 on a spike (a neuron with
``leak = 1`` is an IF). A membrane readout (``readout="membrane"``) ends in the linear layer itself.

NIR importers build PyTorch modules named after the nodes, so node names are written with ``_`` for
``.`` (``features.2`` -> ``features_2``); each node's metadata keeps the whetstone name, which
:func:`read_nir` restores. The decoder key and a note on the encoder (the first layer receives
real-valued pixels in [0, 1]) are stored in the graph's metadata.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..graph.nodes import (
    AffineNode,
    AvgPool2dNode,
    Conv2dNode,
    DeployError,
    FlattenNode,
    GraphNode,
    InputNode,
    MaxPool2dNode,
    Pool2dNode,
    SpikeNode,
    SpikingGraph,
    SumPool2dNode,
    dense_weight,
)
from ..utils.checks import install_hint
from ..utils.files import atomic_write

__all__ = ["GENERIC", "NirStyle", "nir_name", "read_nir", "to_nir", "write_nir"]

_ENCODER_NOTE = (
    "node '{name}' is the encoder: it receives real-valued input (pixels scaled to [0, 1]) as current; every "
    "other edge carries binary spikes. Simulate a single time step from zero membrane potential."
)
#: The time step at which a temporal graph's LIF nodes are written (snnTorch's NIR import uses 1e-4 s).
DT = 1e-4
_DECODE_NOTE = "class = argmax over classes of (2 * output_spikes - 1) @ (2 * whetstone_key - 1)^T (ties: lowest index)"


def _require_nir():
    try:
        import nir
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"NIR export needs the 'nir' package: {install_hint('export', 'nir')}") from error
    return nir


def _below(value: np.ndarray) -> np.ndarray:
    """The largest float32 strictly below each value: ``v > below(t)`` iff ``v >= t`` for float32 ``v``."""
    return np.nextafter(np.asarray(value, dtype=np.float32), np.float32(-np.inf))


@dataclass(frozen=True)
class NirStyle:
    """How a NIR file is written for the software that reads it (see :mod:`whetstone.targets`).

    ``fires_on`` is that software's comparison: with ``">"`` (NIR's own rule) each threshold is stored as the
    float32 just below the trained one, with ``">="`` as it is. ``pooling`` is the pooling node it reads:
    ``"sum"`` (``SumPool2d``; max pooling of spikes becomes ``SumPool2d`` + IF firing on a count of 0.5) or
    ``"avg"`` (``AvgPool2d``; max pooling becomes ``AvgPool2d`` + IF firing on ``0.5 / window``). ``neuron``
    is the node a spiking layer becomes: ``"IF"``, or ``"CubaLIF"`` for software with no IF node (with no
    synaptic decay, one step from rest of a current-based LIF is an IF). ``layout`` ``"hwc"`` orders a flattened feature map height,
    width, channel (channels-last software). ``run`` says how to run the file in one time step."""

    target: str = "generic"
    fires_on: str = ">"
    pooling: str = "sum"
    neuron: str = "IF"
    layout: str = "chw"
    run: str = "one time step from zero membrane potential, the input held for that step"

    @property
    def rule(self) -> str:
        return "v > v_threshold" if self.fires_on == ">" else "v >= v_threshold"


GENERIC = NirStyle()


def nir_name(name: str) -> str:
    """The NIR node name of a graph node: importers turn names into module attributes and HDF5 reads ``/`` as
    a path, so every character but letters, digits and ``_`` becomes ``_`` (the node's own name is kept in
    its metadata, and two that meet are refused by name)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class _NirWriter:
    """Builds the NIR nodes and edges of a graph; one method per node type (:data:`_WRITERS`)."""

    def __init__(self, nir: Any, graph: SpikingGraph, style: NirStyle) -> None:
        self.nir, self.graph, self.style = nir, graph, style
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
        weight, source = node.weight, self.graph.node(node.inputs[0])
        if self.style.layout == "hwc" and isinstance(source, FlattenNode):  # columns in (H, W, C) order
            weight = to_channels_last(weight, self.shapes[source.inputs[0]])
        self.add(node, self.nir.Affine(weight=weight, bias=node.bias, metadata=self.meta(node)))

    def conv2d(self, node: Conv2dNode) -> None:
        # nir 1.0.8 takes a grouped convolution's input channels from weight.shape[1] (ignoring groups), so a
        # file with one fails nir's own type check when read: write it as the dense block-diagonal equivalent.
        weight = dense_weight(node.weight, node.groups)
        self.add(node, self.nir.Conv2d(
            input_shape=tuple(self.shapes[node.inputs[0]][1:]), weight=weight, stride=node.stride,
            padding=node.padding, dilation=node.dilation, groups=1, bias=node.bias, metadata=self.meta(node),
        ))  # fmt: skip

    def _pool(self, node: Pool2dNode, name: str, summed: bool) -> Any:
        kind = self.nir.SumPool2d if summed else self.nir.AvgPool2d
        return kind(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride), padding=np.array(node.padding),
                    metadata={"whetstone_name": name})  # fmt: skip

    def avgpool2d(self, node: AvgPool2dNode) -> None:
        self.add(node, self._pool(node, node.name, summed=False))

    def sumpool2d(self, node: SumPool2dNode) -> None:
        if self.style.pooling != "sum":
            raise DeployError(
                f"{node.name}: {self.style.target} reads no sum pooling (its target turns it into AvgPool2d first)"
            )
        self.add(node, self._pool(node, node.name, summed=True))

    def maxpool2d(self, node: MaxPool2dNode) -> None:
        window = node.kernel_size[0] * node.kernel_size[1]
        summed = self.style.pooling == "sum"
        pooled = f"{nir_name(node.name)}_sum"
        self.add(node, self._pool(node, f"{node.name}_sum", summed), name=pooled)
        # A window count k (or mean k / window) with k >= 1 spikes must fire, k = 0 must not.
        threshold = np.full(node.shape, 0.5 if summed else 0.5 / window, dtype=np.float32)
        self.add(node, self._neuron(threshold, node.name), inputs=[])
        self.edges.append((pooled, nir_name(node.name)))

    def spike(self, node: SpikeNode) -> None:
        if self.graph.is_temporal and node.leak != 1:  # its membrane decays (leak 0: cleared) between steps
            threshold, stored = self._thresholds(node.threshold)
            tau = np.full_like(threshold, DT / (1.0 - node.leak))
            zeros = np.zeros_like(threshold)
            self.add(node, self.nir.LIF(tau=tau, r=tau / np.float32(DT), v_leak=zeros, v_threshold=stored,
                                        v_reset=zeros, metadata={**self.meta(node), "whetstone_leak": float(node.leak)}))  # fmt: skip
            return
        self.add(node, self._neuron(node.threshold, node.name))

    def _thresholds(self, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The thresholds as float32, and as stored for this style (just below them for ``v > v_threshold``)."""
        threshold = np.asarray(threshold, dtype=np.float32)
        return threshold, _below(threshold) if self.style.fires_on == ">" else threshold

    def _neuron(self, threshold: np.ndarray, name: str) -> Any:
        threshold, stored = self._thresholds(threshold)
        zeros, ones, meta = np.zeros_like(threshold), np.ones_like(threshold), {"whetstone_name": name}
        if self.style.neuron == "CubaLIF":  # no synaptic decay (tau_syn = inf): one step from rest is an IF
            return self.nir.CubaLIF(tau_syn=np.full_like(threshold, np.inf), tau_mem=ones, r=ones, v_leak=zeros,
                                    v_threshold=stored, v_reset=zeros, w_in=ones, metadata=meta)  # fmt: skip
        return self.nir.IF(r=ones, v_threshold=stored, v_reset=zeros, metadata=meta)

    def flatten(self, node: FlattenNode) -> None:
        self.add(node, self.nir.Flatten(input_type={"input": np.array(self.shapes[node.inputs[0]])}, start_dim=0,
                                        metadata=self.meta(node)))  # fmt: skip


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


def to_nir(graph: SpikingGraph, style: NirStyle = GENERIC):
    """Build the ``nir.NIRGraph`` of ``graph`` (see the module docstring for the mapping), written in
    ``style`` (by default the portable one; see :mod:`whetstone.targets` for each consumer's)."""
    nir = _require_nir()
    writer = _NirWriter(nir, graph, style)
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
        "encoder": _ENCODER_NOTE.format(name=nir_name(graph.encoder)).replace(
            "Simulate a single time step from zero membrane potential." if graph.is_temporal else "\0", ""
        ),
        "decode": _DECODE_NOTE,
        "whetstone_target": style.target,
        "threshold_rule": style.rule,
        "spike_rule": (
            "IF thresholds are stored just below theta: NIR's v > v_threshold equals Whetstone's v >= theta"
            if style.fires_on == ">"
            else "IF thresholds are stored as trained: the target fires on v >= v_threshold, as Whetstone does"
        ),
        "layout": style.layout,
        "run": style.run,
    }
    if "quantized_bits" in graph.metadata:
        metadata["quantized_bits"] = int(graph.metadata["quantized_bits"])
    if graph.is_temporal:
        delayed = ";".join(f"{nir_name(a)}>{nir_name(b)}" for a, b in graph.delayed_edges())
        metadata.update(whetstone_delayed_edges=delayed, whetstone_dt=DT, steps=int(graph.metadata.get("steps", 1)),
                        run="step by step, membranes carried (LIF with the leak of each layer), recurrent edges one "
                            "step late; the class is decoded from the output at the last step")  # fmt: skip
    if graph.readout != "spikes":
        metadata.update(whetstone_readout=graph.readout, decode="scores = the output layer's values (membrane "
                        "potentials of neurons that never fire); class = argmax")  # fmt: skip
    return nir.NIRGraph(nodes=writer.nodes, edges=writer.edges, metadata=metadata)


def write_nir(graph: SpikingGraph, path: str | Path, style: NirStyle = GENERIC, replace: bool = True) -> Path:
    """Write ``graph`` as a NIR (HDF5) file in ``style``, atomically (built in memory, then renamed into
    place: a full disk leaves no half-written file); returns the path."""
    nir = _require_nir()
    buffer = io.BytesIO()
    nir.write(buffer, to_nir(graph, style))
    return atomic_write(path, buffer.getvalue(), replace)


def to_channels_last(weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The columns of an Affine reading a flattened (C, H, W) map, reordered for a flattened (H, W, C) one."""
    if len(shape) != 3:
        return weight
    channels, height, width = shape
    return weight.reshape(len(weight), channels, height, width).transpose(0, 2, 3, 1).reshape(len(weight), -1).copy()


def from_channels_last(weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`to_channels_last`."""
    if len(shape) != 3:
        return weight
    channels, height, width = shape
    return weight.reshape(len(weight), height, width, channels).transpose(0, 3, 1, 2).reshape(len(weight), -1).copy()


def _array(value: Any, what: str, path: Path) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: NaN or infinite values in {what}")
    return array


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


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
        source = nir.read(path, type_check=False)  # shapes are checked below, by layer name
    except Exception as error:  # noqa: BLE001 - h5py and nir raise many kinds: one line
        raise _unreadable(nir, path, error) from None
    _check_metadata(source.metadata, path)
    # Files of older versions say nothing of the rule: they stored thresholds just below theta.
    strict = str(source.metadata.get("threshold_rule", "v > v_threshold")) == "v > v_threshold"
    channels_last = str(source.metadata.get("layout", "chw")) == "hwc"
    lif_is_if = str(source.metadata.get("whetstone_target", "")) == "rockpool"  # CubaLIF with no synaptic decay
    if "whetstone_key" not in source.metadata:
        raise ValueError(
            f"{path}: the graph metadata has no 'whetstone_key' (decoder key); was it written by whetstone?"
        )
    key = _array(source.metadata["whetstone_key"], "the decoder key", path)
    readout = str(source.metadata.get("whetstone_readout", "spikes"))
    dt = float(source.metadata.get("whetstone_dt", DT))
    delayed = {
        tuple(edge.split(">")) for edge in str(source.metadata.get("whetstone_delayed_edges", "")).split(";") if edge
    }
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

    def read_threshold(neuron: Any, key_name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A neuron's thresholds, one per unit of ``shape``: theta itself where the file stored it just
        below theta for software that fires on ``v > v_threshold``."""
        threshold = _array(neuron.v_threshold, f"the thresholds of {key_name!r}", path)
        try:
            np.broadcast_shapes(threshold.shape, shape)
        except ValueError:
            raise ValueError(
                f"{path}: node {key_name!r} ({type(neuron).__name__}): v_threshold has shape {threshold.shape}, "
                f"but the layer before it gives {shape}"
            ) from None
        if strict:
            threshold = np.nextafter(threshold, np.float32(np.inf))
        return np.broadcast_to(threshold, shape).copy()

    nodes: list[GraphNode] = []
    shapes: dict[str, tuple[int, ...]] = {}
    output = None
    forward = [e for e in source.edges if tuple(e) not in delayed]
    for key_name in _topological(source.nodes, forward, path, frozenset(b for _, b in delayed)):
        try:
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
                source_node = next((node for node in nodes if node.name == inputs[0]), None)  # None: a recurrent edge
                if channels_last and isinstance(
                    source_node, FlattenNode
                ):  # columns in (H, W, C) order: back to (C, H, W)
                    weight = from_channels_last(weight, shapes[source_node.inputs[0]])
                node = AffineNode(
                    name, inputs, (weight.shape[0],), weight, _array(n.bias, f"the bias of {key_name!r}", path)
                )
            elif isinstance(n, nir.Conv2d):
                _check_geometry(path, key_name, "Conv2d", vars(n))
                c, h, w = shapes[inputs[0]]
                weight = _array(n.weight, f"the weights of {key_name!r}", path)
                k = weight.shape[2:]
                stride, pad, dil = (
                    tuple(int(v) for v in np.broadcast_to(x, 2)) for x in (n.stride, n.padding, n.dilation)
                )
                out = tuple(
                    (size + 2 * p - d * (kk - 1) - 1) // s + 1 for size, p, d, kk, s in zip((h, w), pad, dil, k, stride)
                )
                node = Conv2dNode(name, inputs, (weight.shape[0], *out), weight, _array(n.bias, f"the bias of {key_name!r}", path),
                                  stride, pad, dil, int(n.groups))  # fmt: skip
            elif isinstance(n, (nir.AvgPool2d, nir.SumPool2d)):
                _check_geometry(path, key_name, type(n).__name__, vars(n))
                c, h, w = shapes[inputs[0]]
                k, s, p = (tuple(int(v) for v in np.broadcast_to(x, 2)) for x in (n.kernel_size, n.stride, n.padding))
                out = tuple((size + 2 * pp - kk) // ss + 1 for size, pp, kk, ss in zip((h, w), p, k, s))
                kind = AvgPool2dNode if isinstance(n, nir.AvgPool2d) else SumPool2dNode
                node = kind(name, inputs, (c, *out), k, s, p)
            elif isinstance(n, nir.Flatten):
                node = FlattenNode(name, inputs, (int(np.prod(shapes[inputs[0]])),))
            elif isinstance(n, nir.IF) or (isinstance(n, nir.CubaLIF) and lif_is_if):
                if not (np.all(n.r == 1) and (n.v_reset is None or np.all(n.v_reset == 0))):
                    raise ValueError(f"{path}: {type(n).__name__} node {key_name!r} must have r = 1 and v_reset = 0")
                # In a file that runs in time an IF carries its membrane from step to step (leak 1).
                node = SpikeNode(name, inputs, shapes[inputs[0]], read_threshold(n, key_name, shapes[inputs[0]]),
                                 1.0 if "whetstone_dt" in source.metadata else 0.0)  # fmt: skip
            elif isinstance(n, nir.LIF):  # a temporal graph's neuron: v = leak * v + input for r = tau / dt, v_leak = 0
                tau = _array(n.tau, f"the time constants of {key_name!r}", path)
                leak = np.unique(1.0 - np.float32(dt) / tau)
                if leak.size != 1 or not (
                    np.allclose(n.r * dt / tau, 1) and np.all(n.v_leak == 0) and np.all(n.v_reset == 0)
                ):
                    raise ValueError(
                        f"{path}: LIF node {key_name!r} must have one tau, r = tau / dt, v_leak = 0 and v_reset = 0"
                    )
                leak_value = float(getattr(n, "metadata", {}).get("whetstone_leak", round(float(leak[0]), 6)))
                node = SpikeNode(
                    name, inputs, shapes[inputs[0]], read_threshold(n, key_name, shapes[inputs[0]]), leak_value
                )
            else:
                raise ValueError(f"{path}: node {key_name!r} of type {type(n).__name__} is not supported")
        except ValueError as error:
            if str(error).startswith(f"{path}:"):
                raise
            raise ValueError(f"{path}: node {key_name!r} ({type(n).__name__}) is malformed: {_reason(error)}") from None
        except (KeyError, TypeError, ZeroDivisionError, IndexError, AttributeError, OverflowError) as error:
            raise ValueError(f"{path}: node {key_name!r} ({type(n).__name__}) is malformed: {_reason(error)}") from None
        nodes.append(node)
        shapes[name] = node.shape
    if output is None:
        raise ValueError(f"{path}: the graph has no Output node")
    metadata = {k: v for k, v in source.metadata.items() if k != "whetstone_key"}
    try:
        return SpikingGraph(nodes, output, key, metadata, readout).check()
    except DeployError as error:  # two input nodes, an output naming nothing, ...: about the file
        raise ValueError(f"{path}: {error}") from None


#: The fields of NIR's convolution and pooling nodes that count pixels or groups, and the least each may be.
_GEOMETRY = {"kernel_size": 1, "stride": 1, "dilation": 1, "groups": 1, "padding": 0}


def _unreadable(nir: Any, path: Path, error: BaseException) -> ValueError:
    """Why NIR's reader refused ``path``, by node and field where the file's own data shows it: each node is
    checked and built alone, so a stride of 0 or thresholds of the wrong length are named as such, not by
    what they broke further on (an infinite size, an assertion)."""
    said = str(error).splitlines()[0] if str(error) else type(error).__name__
    try:
        import h5py
        from nir.serialization import hdf2dict

        with h5py.File(path, "r") as file:
            nodes = dict(hdf2dict(file["node"])["nodes"])
    except Exception:  # noqa: BLE001 - not even HDF5 laid out as NIR writes it: the reader's own words
        return ValueError(f"{path} is not a readable NIR file: {said}")
    for name, fields in nodes.items():
        kind = str(fields.get("type", "")) if isinstance(fields, dict) else ""
        known = getattr(nir, kind, None)
        if not (isinstance(known, type) and issubclass(known, nir.NIRNode)):
            return ValueError(f"{path}: node {name!r} has type {_shown(kind)}, which is not a NIR node type")
        try:
            _check_geometry(path, name, kind, fields)
        except ValueError as wrong:
            return wrong
        try:
            nir.dict2NIRNode(dict(fields))
        except Exception as node_error:  # noqa: BLE001 - each node type checks its own fields its own way
            shapes = ", ".join(f"{k} {np.shape(v)}" for k, v in fields.items() if np.ndim(v) > 0 and k != "type")
            said = " ".join(str(node_error).split()) or type(node_error).__name__
            return ValueError(f"{path}: node {name!r} ({kind}) is malformed: {said[:300]} ({shapes})")
    return ValueError(f"{path} is not a readable NIR file: {said}")


def _check_geometry(path: Path, name: str, kind: str, fields: dict) -> None:
    """``ValueError`` naming the node and the field where a size, stride, padding or group count is not a whole
    number at least as large as it can be (a stride of 0 would make the layer's output infinite)."""
    for field, least in _GEOMETRY.items():
        value = np.asarray(fields.get(field, least))
        if value.dtype.kind not in "iuf" or not np.all(
            np.isfinite(value) & (value == np.round(value)) & (value >= least)
        ):
            raise ValueError(
                f"{path}: node {name!r} ({kind}): {field} is {_shown(value.tolist())}; it must be integers >= {least}"
            )


#: What each metadata value whetstone reads may be: (a check, what is allowed).
_METADATA = {
    "threshold_rule": (lambda v: str(v) in ("v > v_threshold", "v >= v_threshold"), "'v > v_threshold' or 'v >= v_threshold'"),
    "layout": (lambda v: str(v) in ("chw", "hwc"), "'chw' or 'hwc'"),
    "whetstone_readout": (lambda v: str(v) in ("spikes", "membrane"), "'spikes' or 'membrane'"),
    "whetstone_target": (lambda v: isinstance(v, str), "text (a target's name)"),
    "steps": (lambda v: _integer(v) and int(v) >= 1, "an integer >= 1"),
    "quantized_bits": (lambda v: _integer(v) and 2 <= int(v) <= 16, "an integer in [2, 16]"),
    "whetstone_dt": (lambda v: _number(v) and 0 < float(v) < np.inf, "a positive number"),
}  # fmt: skip


def _integer(value: Any) -> bool:
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, bool)
        or (isinstance(value, (float, np.floating)) and float(value).is_integer())
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_metadata(metadata: dict, path: Path) -> None:
    """``ValueError`` naming the field for a metadata value whetstone reads that cannot be what it wrote."""
    for name, (valid, allowed) in _METADATA.items():
        if name in metadata:
            value = metadata[name]
            if isinstance(value, np.generic) or isinstance(value, np.ndarray) and value.size == 1:
                value = value.item()  # as written: a plain number or text
            if isinstance(value, np.ndarray) or not valid(value):
                raise ValueError(f"{path}: metadata {name!r} is {_shown(value)}; it must be {allowed}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _topological(
    nodes: dict, edges: list[tuple[str, str]], path: Path, late: frozenset[str] = frozenset()
) -> list[str]:
    """The nodes in an order where each comes after its inputs along ``edges``; the ``late`` ones (the
    readers of a recurrent edge) as late as that allows, so the input and the encoder come first."""
    pending = {name: 0 for name in nodes}
    for _, b in edges:
        pending[b] += 1
    ready = [name for name, count in pending.items() if count == 0]
    order = []
    while ready:
        name = ready.pop(next((i for i, n in enumerate(ready) if n not in late), 0))
        order.append(name)
        for a, b in edges:
            if a == name:
                pending[b] -= 1
                if pending[b] == 0:
                    ready.append(b)
    if len(order) != len(nodes):
        cyclic = sorted(name for name, count in pending.items() if count > 0)
        raise ValueError(
            f"{path}: the graph has a cycle through {', '.join(cyclic[:4])} that its metadata does not list as recurrent "
            "(whetstone_delayed_edges)"
        )
    return order
