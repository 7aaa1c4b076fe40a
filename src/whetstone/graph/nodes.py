"""The deployable form of a sharpened network: a small graph of integrate-and-fire layers.

A :class:`SpikingGraph` is what :func:`~whetstone.convert.graph_builder.to_spiking_graph` builds from a model,
what :func:`~whetstone.graph.quantization.quantize` makes integer, what the reference simulator
(:mod:`whetstone.graph.simulator`) runs and what the NIR and ONNX writers (:mod:`whetstone.export`) write, so all of
them share one reading of the model. This module holds the data only: typed nodes and the graph.

Semantics of a node (one time step, NIR's convention that a node sums all of its inputs):

- :class:`AffineNode` / :class:`Conv2dNode` / :class:`SumPool2dNode`: a linear map of the summed input
  (synapses and bias current; sum pooling counts). Average pooling (also ``AdaptiveAvgPool2d``) is sum
  pooling whose ``1 / window`` is folded, exactly, into the weights of the layer it feeds or into the
  threshold of the spiking layer it feeds; uneven adaptive windows fold into a following Linear.
- :class:`SpikeNode`: ``1[v >= threshold]``: an integrate-and-fire neuron, membrane reset after the step.
- :class:`MaxPool2dNode`: over binary spikes, the logical OR of each window. A model may instead max-pool
  the membrane potentials right before a spiking activation (``conv - pool - spike``); since a threshold
  is monotone, that is exported exactly as spike, then max pooling.
- :class:`FlattenNode`: a reshape (C, H, W) -> (C*H*W,).

Time (:func:`whetstone.graph.simulator.simulate` with sequences): an input that names a node at or after this one in
``nodes`` is a recurrent edge read with a one-step delay (its value at the previous step; zeros at the
first), and a spiking node keeps ``leak`` times its membrane into the next step (reset to zero on a spike).
A graph with neither is the single-step network, whatever the number of steps.

Nodes are named after the module they come from (``features.2``), as everywhere else in whetstone. The
first linear layer receives the real-valued input (pixels scaled to [0, 1]): it is the encoder. Every
other value that crosses a layer boundary is a binary spike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "AffineNode",
    "AvgPool2dNode",
    "Conv2dNode",
    "DeployError",
    "FlattenNode",
    "GraphNode",
    "InputNode",
    "MaxPool2dNode",
    "SpikeNode",
    "SpikingGraph",
    "SumPool2dNode",
    "dense_weight",
]


class DeployError(ValueError):
    """The model cannot be deployed exactly as a single-time-step spiking network."""


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array{value.shape}"
    return repr(value)


@dataclass(eq=False, repr=False)
class GraphNode:
    """One layer of a :class:`SpikingGraph`: its ``name``, the ``inputs`` whose outputs are summed into
    it, and the ``shape`` of its output for one sample (no batch dimension)."""

    name: str
    inputs: list[str]
    shape: tuple[int, ...]
    #: A short name of the node type (``input``, ``affine``, ``conv2d``, ``spike``, ...).
    op: ClassVar[str] = ""

    def __repr__(self) -> str:  # arrays by shape only: a graph prints in a screenful
        fields = ", ".join(f"{f.name}={_describe(getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


@dataclass(eq=False, repr=False)
class InputNode(GraphNode):
    """The network's input (real-valued, e.g. pixels in [0, 1])."""

    op: ClassVar[str] = "input"


@dataclass(eq=False, repr=False)
class AffineNode(GraphNode):
    """``weight @ x + bias``; ``weight`` is (out, in), as in ``torch.nn.Linear``."""

    weight: np.ndarray
    bias: np.ndarray
    op: ClassVar[str] = "affine"


@dataclass(eq=False, repr=False)
class Conv2dNode(GraphNode):
    """A 2-D convolution with zero padding, as ``torch.nn.Conv2d``."""

    weight: np.ndarray  # (out_channels, in_channels / groups, kh, kw)
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    op: ClassVar[str] = "conv2d"


@dataclass(eq=False, repr=False)
class Pool2dNode(GraphNode):
    """Base of the pooling nodes."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(eq=False, repr=False)
class MaxPool2dNode(Pool2dNode):
    """Max pooling of binary spikes: the logical OR of each window."""

    op: ClassVar[str] = "maxpool2d"


@dataclass(eq=False, repr=False)
class AvgPool2dNode(Pool2dNode):
    """Average pooling (zero padding counted), a linear map. (Read from NIR files; :func:`to_spiking_graph`
    writes average pooling as :class:`SumPool2dNode` with the 1 / window scale folded into what follows.)"""

    op: ClassVar[str] = "avgpool2d"


@dataclass(eq=False, repr=False)
class SumPool2dNode(Pool2dNode):
    """Sum pooling: each output is the sum of its window (zero padding adds nothing). Over spikes it is an
    exact count, the form neuromorphic toolchains read (NIR ``SumPool2d``)."""

    op: ClassVar[str] = "sumpool2d"


@dataclass(eq=False, repr=False)
class SpikeNode(GraphNode):
    """Integrate-and-fire neurons: ``1[v >= threshold]`` (one threshold per unit). Over time steps the
    membrane is ``v_t = leak * v_(t-1) + input_t``, reset to zero on a spike: ``leak = 0`` (the default)
    clears it after every step, Whetstone's neuron; ``leak = 1`` is an integrate-and-fire neuron that
    carries its membrane."""

    threshold: np.ndarray
    leak: float = 0.0
    op: ClassVar[str] = "spike"


@dataclass(eq=False, repr=False)
class FlattenNode(GraphNode):
    """A reshape to one dimension per sample."""

    op: ClassVar[str] = "flatten"


#: Nodes that are linear maps of their (summed) input; the first of them is the encoder.
LINEAR_NODES = (AffineNode, Conv2dNode, AvgPool2dNode, SumPool2dNode)
#: Nodes with synaptic weights.
WEIGHTED_NODES = (AffineNode, Conv2dNode)
#: How a graph's output is read: N-hot spikes through the key, or a linear layer's membrane potentials.
READOUTS = ("spikes", "membrane")


@dataclass(repr=False)
class SpikingGraph:
    """A network of integrate-and-fire layers with its N-hot decoder.

    ``nodes`` are in order of computation, starting with the single :class:`InputNode` (an input naming a
    later node is a recurrent edge, delayed one step); ``output`` names the node read by the decoder. With
    ``readout="spikes"`` it is binary and ``key`` is a {0, 1} array (classes, width) of N-hot codes; with
    ``readout="membrane"`` it is a linear layer whose values (membrane potentials of neurons that never fire)
    are the scores, and ``key`` is the identity.
    """

    nodes: list[GraphNode]
    output: str
    key: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    readout: str = "spikes"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")

    def check(self) -> SpikingGraph:
        """Check that the graph is well formed and holds numbers; returns it. :class:`DeployError` (one line,
        naming the node) for: not exactly one input node, first; a node name used twice; an input naming no
        node; NaN or infinite weights, biases, thresholds or key; a key that is not 0/1 (spike readout); an
        output that names no node. Whatever reads or writes a graph calls this first."""
        if not self.nodes or not isinstance(self.nodes[0], InputNode):
            raise DeployError("a graph's first node must be its input node")
        inputs = [n.name for n in self.nodes if isinstance(n, InputNode)]
        if len(inputs) != 1:
            raise DeployError(f"a graph has exactly one input node, this one has {len(inputs)}: {inputs}")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise DeployError(f"node names must be unique: {sorted({n for n in names if names.count(n) > 1})} repeat")
        shapes = {node.name: tuple(node.shape) for node in self.nodes}
        for node in self.nodes:
            missing = [name for name in node.inputs if name not in names]
            if missing:
                raise DeployError(f"{node.name!r} reads {missing}, which are not nodes of the graph")
            _check_geometry(node, shapes)
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                if isinstance(value, np.ndarray) and not np.isfinite(value).all():
                    raise DeployError(f"{node.name!r}: its {f.name} holds NaN or infinite values")
        if self.output not in names:
            raise DeployError(f"the output {self.output!r} is not a node of the graph")
        key = np.asarray(self.key)
        if key.ndim != 2 or not np.isfinite(key).all():
            raise DeployError(f"the decoder key must be a finite 2-D array, got shape {key.shape}")
        if self.readout == "spikes" and not np.isin(key, (0.0, 1.0)).all():
            raise DeployError("the decoder key of a spike readout must hold only 0s and 1s")
        units = int(np.prod(shapes[self.output]))
        if key.shape[1] != units:
            raise DeployError(
                f"the decoder key has {key.shape[1]} columns but the output {self.output!r} has {units} units"
            )
        return self

    def node(self, name: str) -> GraphNode:
        """The node called ``name``; ``KeyError`` listing the names if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r}; nodes are {[n.name for n in self.nodes]}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def encoder(self) -> str:
        """Name of the first linear layer: the one that receives real-valued input."""
        return next(n.name for n in self.nodes if isinstance(n, LINEAR_NODES))

    def spiking_nodes(self) -> list[SpikeNode]:
        return [n for n in self.nodes if isinstance(n, SpikeNode)]

    def delayed_edges(self) -> list[tuple[str, str]]:
        """The recurrent edges ``(source, target)``: inputs that name a node at or after their target in
        ``nodes``, read with a one-step delay."""
        position = {n.name: i for i, n in enumerate(self.nodes)}
        return [(name, n.name) for i, n in enumerate(self.nodes) for name in n.inputs if position[name] >= i]

    @property
    def is_temporal(self) -> bool:
        """Whether the graph has state across time steps (recurrent edges or leaky membranes): it then runs
        on sequences, and its steps are not independent."""
        return bool(self.delayed_edges()) or any(n.leak != 0 for n in self.spiking_nodes())

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of what one sample holds: ``(steps, *input_shape)`` for a temporal graph whose
        metadata gives ``steps`` (an image read row by row), else ``input_shape``."""
        steps = int(self.metadata.get("steps", 1)) if self.is_temporal else 1
        return (steps, *self.input_shape) if steps > 1 else tuple(self.input_shape)

    def as_steps(self, inputs: np.ndarray) -> np.ndarray:
        """``inputs`` as sequences (N, T, *input_shape). A temporal graph whose metadata gives ``steps``
        reads each sample's values in order, ``steps`` chunks of ``input_shape`` (an image row by row);
        sequences pass as they are, and a single-step graph's inputs become sequences of one step."""
        array = np.asarray(inputs)
        shape = tuple(self.input_shape)
        if array.ndim >= 2 and array.shape[2:] == shape and array.ndim == len(shape) + 2:
            return array
        steps = int(self.metadata.get("steps", 1))
        if array.ndim >= 1 and math.prod(array.shape[1:]) == steps * math.prod(shape) and len(array):
            return array.reshape(len(array), steps, *shape)
        raise ValueError(
            f"inputs must have shape (N, T, {', '.join(map(str, shape))}) or hold {steps} step(s) of "
            f"{shape} per sample, got {array.shape}"
        )

    def consumers(self) -> dict[str, list[GraphNode]]:
        """For each node name, the nodes it feeds."""
        return consumers(self.nodes)

    def decode(self, spikes: np.ndarray) -> np.ndarray:
        """Class scores: ``(2 spikes - 1) @ (2 key - 1)^T`` (integers, as float32), or the output layer's
        values themselves with ``readout="membrane"``."""
        if self.readout == "membrane":
            return np.asarray(spikes, dtype=np.float32)
        signed = 2.0 * np.asarray(spikes, dtype=np.float32) - 1.0
        return signed @ (2.0 * self.key.astype(np.float32) - 1.0).T

    def summary(self) -> str:
        """One line per node: name, type, inputs, output shape (and thresholds), then the decoder."""
        lines, delayed = [], set(self.delayed_edges())
        for n in self.nodes:
            extra = f" threshold={_describe_threshold(n.threshold)}" if isinstance(n, SpikeNode) else ""
            extra += f" leak={n.leak:g}" if isinstance(n, SpikeNode) and n.leak else ""
            inputs = ", ".join(f"{i}(t-1)" if (i, n.name) in delayed else i for i in n.inputs) or "-"
            lines.append(f"{n.name:<24} {n.op:<10} <- {inputs:<24} {n.shape}{extra}")
        classes, width = self.key.shape
        read = "spikes" if self.readout == "spikes" else "membrane potentials"
        lines.append(
            f"decoder: {classes} classes from the {width} {read} of {self.output!r}; encoder: {self.encoder!r}"
        )
        return "\n".join(lines)

    __repr__ = summary


def consumers(nodes: list[GraphNode]) -> dict[str, list[GraphNode]]:
    """For each name of ``nodes``, the nodes of ``nodes`` it feeds."""
    users: dict[str, list[GraphNode]] = {n.name: [] for n in nodes}
    for node in nodes:
        for name in node.inputs:
            users[name].append(node)
    return users


def dense_weight(weight: np.ndarray, groups: int) -> np.ndarray:
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


def _check_geometry(node: GraphNode, shapes: dict[str, tuple[int, ...]]) -> None:
    """``node`` computes something of the shapes it is given: every size at least 1, strides and kernels at
    least 1, weights that fit their (first) input. ``DeployError`` saying what does not."""
    source = shapes.get(node.inputs[0]) if node.inputs else None
    if any(size < 1 for size in node.shape):
        raise DeployError(f"{node.name!r}: its output would have shape {node.shape}")
    if isinstance(node, AffineNode):
        if node.weight.ndim != 2 or node.bias.shape != (node.weight.shape[0],):
            raise DeployError(
                f"{node.name!r}: weight {node.weight.shape} and bias {node.bias.shape} do not make an affine map"
            )
        if source is not None and node.weight.shape[1] != int(np.prod(source)):
            raise DeployError(f"{node.name!r}: its weight takes {node.weight.shape[1]} inputs but receives {source}")
    if isinstance(node, Conv2dNode):
        if node.weight.ndim != 4 or node.bias.shape != (node.weight.shape[0],) or node.groups < 1:
            raise DeployError(
                f"{node.name!r}: weight {node.weight.shape}, bias {node.bias.shape}, groups {node.groups}: not a convolution"
            )
        if min(node.stride + node.dilation) < 1 or min(node.padding) < 0:
            raise DeployError(f"{node.name!r}: stride {node.stride}, dilation {node.dilation}, padding {node.padding}")
        if source is not None and (len(source) != 3 or source[0] != node.weight.shape[1] * node.groups):
            raise DeployError(
                f"{node.name!r}: its weight takes {node.weight.shape[1] * node.groups} channels but receives {source}"
            )
    if isinstance(node, Pool2dNode) and (min(node.kernel_size + node.stride) < 1 or min(node.padding) < 0):
        raise DeployError(f"{node.name!r}: kernel {node.kernel_size}, stride {node.stride}, padding {node.padding}")


def _describe_threshold(threshold: np.ndarray) -> str:
    values = np.unique(threshold)
    return f"{values[0]:.6g}" if values.size == 1 else f"{values.size} values"
