"""The deployable form of a sharpened network: a small graph of integrate-and-fire layers.

:func:`to_spiking_graph` folds batch norm, traces the model with torch.fx and turns each traced call into
typed graph nodes, checking that every value passed on is exactly what a single-time-step
integrate-and-fire network computes. The resulting :class:`SpikingGraph` is what the reference simulator
(:mod:`whetstone.sim`) runs and what the NIR and ONNX exporters (:mod:`whetstone.export`) write, so all of
them share one reading of the model.

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

Time (:func:`whetstone.sim.simulate` with sequences): an input that names a node at or after this one in
``nodes`` is a recurrent edge read with a one-step delay (its value at the previous step; zeros at the
first), and a spiking node keeps ``leak`` times its membrane into the next step (reset to zero on a spike).
A graph with neither is the single-step network, whatever the number of steps.

Nodes are named after the module they come from (``features.2``), as everywhere else in whetstone. The
first linear layer receives the real-valued input (pixels scaled to [0, 1]): it is the encoder. Every
other value that crosses a layer boundary is a binary spike.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .activations import SpikingActivation
from .convert import fold_batchnorm, trace
from .decode import SoftmaxDecode

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
    "check_deployable",
    "quantize",
    "to_spiking_graph",
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
        users: dict[str, list[GraphNode]] = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            for name in node.inputs:
                users[name].append(node)
        return users

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


def _describe_threshold(threshold: np.ndarray) -> str:
    values = np.unique(threshold)
    return f"{values[0]:.6g}" if values.size == 1 else f"{values.size} values"


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def _bias(module: nn.Module, size: int) -> np.ndarray:
    return _array(module.bias) if module.bias is not None else np.zeros(size, np.float32)


@dataclass(frozen=True)
class _Term:
    """One summand of a value in the traced model: the output of graph node ``name``, times ``scale``,
    then (if ``spatial`` is set) averaged over uneven windows: a pending linear map, folded into the
    synapses that consume it (or, before a spike, into its threshold)."""

    name: str
    scale: float = 1.0
    spatial: np.ndarray | None = None  # (out positions, in positions) of an uneven adaptive average pooling
    spatial_shape: tuple[int, ...] = ()  # the (C, H, W) the map reads
    pooled_by: str = ""  # the average pooling the pending map comes from (for messages)

    @property
    def plain(self) -> bool:
        return self.scale == 1.0 and self.spatial is None


class _GraphBuilder:
    """Walks a traced model once, node by node; one method per kind of call (see :meth:`_handler`).

    ``alias`` maps each fx node to the terms whose sum it equals (a skip connection is a sum; Identity
    and Dropout pass their input on; average pooling is a sum pooling whose ``1 / window`` scale waits in
    the term for the synapses or the threshold that absorb it). ``origin`` says, per graph node, whether
    its output is binary spikes (None) or the real-valued output of which layer.
    """

    def __init__(
        self, traced: torch.fx.GraphModule, input_shape: tuple[int, ...], key: torch.Tensor | None, readout: str
    ) -> None:
        self.traced = traced
        self.readout = readout
        self.modules = dict(traced.named_modules())
        self.input_shape = tuple(input_shape)
        self.key = key
        self.nodes: list[GraphNode] = []
        self.alias: dict[torch.fx.Node, list[_Term]] = {}
        self.origin: dict[str, str | None] = {}
        self.output: str | None = None
        # Max pooling of potentials whose only user is a spiking activation: fx node -> (input shape, node to add).
        self.pools_before_spike: dict[torch.fx.Node, tuple[tuple[int, ...], MaxPool2dNode]] = {}

    # -- the walk ------------------------------------------------------------------------------
    def build(self) -> SpikingGraph:
        for fx_node in self.traced.graph.nodes:
            self._handler(fx_node)(fx_node)
        if self.output is not None and self.readout == "membrane":
            self.key = torch.eye(int(np.prod(self._graph_node(self.output).shape)))
        if self.output is None or self.key is None:
            raise DeployError("model has no SoftmaxDecode and no key was given")
        key = _array(self.key)
        width = int(np.prod(self._graph_node(self.output).shape))
        if key.ndim != 2 or key.shape[1] != width:
            raise DeployError(f"key of shape {key.shape} does not match the {width} output units of {self.output!r}")
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):  # impossible by construction: say so loudly if it ever happens
            raise DeployError(f"graph node names collide: {sorted(n for n in set(names) if names.count(n) > 1)}")
        graph = SpikingGraph(self.nodes, self.output, key, readout=self.readout)
        graph.metadata["encoder"] = graph.encoder
        _check_all_spikes_used(graph)
        return graph

    def _handler(self, fx_node: torch.fx.Node) -> Callable[[torch.fx.Node], None]:
        if fx_node.op == "placeholder":
            return self.placeholder
        if fx_node.op == "output":
            return self.output_node
        if fx_node.op == "call_module":
            module = self.modules[fx_node.target]
            for types, method in _MODULE_RULES:
                if isinstance(module, types):
                    return getattr(self, method)
            return self.unsupported_module
        if fx_node.op == "call_function" and fx_node.target in (operator.add, torch.add):
            return self.skip_sum
        if (fx_node.op == "call_function" and fx_node.target is torch.flatten) or (
            fx_node.op == "call_method" and fx_node.target == "flatten"
        ):
            return self.flatten_call
        if fx_node.op == "call_function" and fx_node.target is nn.functional.adaptive_avg_pool2d:
            return self.adaptive_avg_pool
        return self.unsupported_call

    # -- helpers -------------------------------------------------------------------------------
    def _graph_node(self, name: str) -> GraphNode:
        return next(n for n in self.nodes if n.name == name)

    def _add(self, fx_node: torch.fx.Node, node: GraphNode, term: _Term | None = None) -> None:
        self.nodes.append(node)
        self.alias[fx_node] = [term or _Term(node.name)]
        if isinstance(node, SpikeNode):
            self.origin[node.name] = None
        elif isinstance(node, (MaxPool2dNode, FlattenNode)):
            self.origin[node.name] = self.origin[node.inputs[0]]
        else:
            self.origin[node.name] = node.name

    @staticmethod
    def _shape(fx_node: torch.fx.Node) -> tuple[int, ...]:
        return tuple(fx_node.meta["tensor_meta"].shape[1:])

    def _terms(self, fx_node: torch.fx.Node) -> list[_Term]:
        arg = fx_node.args[0] if fx_node.args else None
        if not isinstance(arg, torch.fx.Node):
            raise DeployError(f"{fx_node.name}: expected a tensor input, got {arg!r}")
        return self.alias[arg]

    def _plain(self, fx_node: torch.fx.Node, what: str) -> list[str]:
        """The input names of a node that takes its inputs as they are (no pending scale or pooling)."""
        terms = self._terms(fx_node)
        for term in terms:
            if not term.plain:
                raise DeployError(
                    f"{what} receives the output of average pooling {term.pooled_by!r}, real values, not binary spikes: feed "
                    "the pooling to a spiking layer, a Linear or a Conv2d (which absorb it exactly)"
                )
        return [term.name for term in terms]

    def _require_binary(self, inputs: list[str], what: str) -> None:
        for name in inputs:
            if self.origin[name] is not None:
                raise DeployError(
                    f"{what} receives the real-valued output of {self.origin[name]!r}, not binary spikes: put a spiking "
                    "activation after it (a linear layer or average pooling must feed a spiking layer)"
                )

    def _one_term(self, fx_node: torch.fx.Node, what: str) -> _Term:
        terms = self._terms(fx_node)
        if len(terms) != 1:
            raise DeployError(f"{what}: expected one input, got the sum of {[t.name for t in terms]}")
        return terms[0]

    # -- one method per kind of call -----------------------------------------------------------
    def placeholder(self, fx_node: torch.fx.Node) -> None:
        self._add(fx_node, InputNode("input", [], self.input_shape))

    def output_node(self, fx_node: torch.fx.Node) -> None:
        if self.output is not None:
            return  # the decoder already named the output
        result = fx_node.args[0]
        if not isinstance(result, torch.fx.Node) or (self.key is None and self.readout == "spikes"):
            raise DeployError("model has no SoftmaxDecode and no key was given")
        inputs = self._plain(fx_node, "the output")
        if self.readout == "membrane":
            self.output = _single(inputs, "the output")
            if not isinstance(self._graph_node(self.output), WEIGHTED_NODES):
                raise DeployError(
                    f"readout='membrane' reads a Linear or Conv2d layer's potentials; the output is {self.output!r}, "
                    f"a {self._graph_node(self.output).op}"
                )
            return
        self._require_binary(inputs, "the output")
        self.output = _single(inputs, "the output")

    def passthrough(self, fx_node: torch.fx.Node) -> None:  # Identity, Dropout (eval mode)
        self.alias[fx_node] = self._terms(fx_node)

    def linear(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        if len(self._shape(fx_node.args[0])) != 1:
            raise DeployError(f"{fx_node.target}: Linear must receive flat (N, features) input")
        weight, terms = _array(module.weight), self._terms(fx_node)
        if not all(term.plain for term in terms):  # average pooling before it: fold it into the weights (exact)
            term = self._one_term(fx_node, fx_node.target)
            weight = weight * np.float32(term.scale)
            if term.spatial is not None:  # (out, C, h*w) @ (h*w, H*W) -> (out, C, H*W): each input's share
                channels = term.spatial_shape[0]
                weight = (weight.reshape(len(weight), channels, -1) @ term.spatial).reshape(len(weight), -1)
            terms = [_Term(term.name)]
        bias = _bias(module, module.out_features)
        self._add(fx_node, AffineNode(fx_node.target, [t.name for t in terms], self._shape(fx_node), weight, bias))

    def conv2d(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        if module.padding_mode != "zeros":
            raise DeployError(f"{fx_node.target}: only zero padding can be exported, got {module.padding_mode!r}")
        # torch resolves padding="same"/"valid" into this (left, right, top, bottom) tuple.
        left, right, top, bottom = module._reversed_padding_repeated_twice
        if left != right or top != bottom:
            raise DeployError(f"{fx_node.target}: asymmetric padding cannot be exported")
        weight, terms = _array(module.weight), self._terms(fx_node)
        if not all(term.plain for term in terms):
            term = self._one_term(fx_node, fx_node.target)
            if term.spatial is not None:
                raise DeployError(
                    f"{fx_node.target}: receives adaptive average pooling with uneven windows, which folds only into a "
                    "following Linear; pool to a size that divides the input, or flatten before a Linear"
                )
            weight, terms = weight * np.float32(term.scale), [_Term(term.name)]
        self._add(fx_node, Conv2dNode(
            fx_node.target, [t.name for t in terms], self._shape(fx_node), weight, _bias(module, module.out_channels),
            _pair(module.stride), (top, left), _pair(module.dilation), module.groups,
        ))  # fmt: skip

    def spike(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        if not module.is_binary:
            raise DeployError(
                f"{fx_node.target}: {type(module).__name__} has sharpness {module.get_sharpness():.4g}; "
                "only fully sharpened layers (sharpness 1) are integrate-and-fire neurons"
            )
        pool = self.pools_before_spike.pop(fx_node.args[0], None)
        shape = pool[0] if pool else self._shape(fx_node)
        threshold = np.full(shape, module.spike_threshold, dtype=np.float32)
        terms = self._terms(fx_node)
        if any(term.spatial is not None for term in terms):
            raise DeployError(f"{fx_node.target}: receives adaptive average pooling with uneven windows, which folds "
                              "only into a following Linear")  # fmt: skip
        if len(terms) == 1 and terms[0].scale != 1.0:  # s * v >= theta  <=>  v >= theta / s: the pooling's 1/k
            threshold = threshold / np.float32(terms[0].scale)
        elif not all(term.plain for term in terms):  # several summands, some averaged: explicit synapses for those
            terms = [self._scaled_synapses(fx_node, term, shape) if not term.plain else term for term in terms]
        # Several inputs are summed into the neuron: a skip connection is just more synapses.
        self._add(fx_node, SpikeNode(fx_node.target, [t.name for t in terms], shape, threshold))
        if pool:  # a step is monotone, so step(max(v)) == max(step(v)): fire first, then OR the window
            pooled = dataclasses.replace(pool[1], inputs=[fx_node.target])
            self._add(fx_node, pooled)

    def _scaled_synapses(self, fx_node: torch.fx.Node, term: _Term, shape: tuple[int, ...]) -> _Term:
        """One synapse of weight ``term.scale`` per unit (a 1x1 depthwise convolution) from ``term``'s node."""
        channels = shape[0]
        name = f"{fx_node.target}.scale_{term.name}"
        weight = np.full((channels, 1, 1, 1), term.scale, dtype=np.float32)
        node = Conv2dNode(
            name, [term.name], shape, weight, np.zeros(channels, np.float32), (1, 1), (0, 0), (1, 1), channels
        )
        self.nodes.append(node)
        self.origin[name] = name
        return _Term(name)

    def max_pool(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        settings = _pool_settings(fx_node.target, module)
        if _pair(module.dilation) != (1, 1):
            raise DeployError(f"{fx_node.target}: dilated max pooling cannot be exported")
        inputs = self._plain(fx_node, f"max pooling {fx_node.target!r}")
        node = MaxPool2dNode(fx_node.target, inputs, self._shape(fx_node), *settings)
        users = list(fx_node.users)
        if any(self.origin[i] is not None for i in inputs) and len(users) == 1 and _is_spike(users[0], self.modules):
            # Max pooling of membrane potentials straight into a spike: exported as spike, then pool.
            self.pools_before_spike[fx_node] = (self._shape(fx_node.args[0]), node)
            self.alias[fx_node] = [_Term(name) for name in inputs]
            return
        self._require_binary(inputs, f"max pooling {fx_node.target!r}")
        self._add(fx_node, node)

    def avg_pool(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        kernel, stride, padding = _pool_settings(fx_node.target, module)
        if module.divisor_override is not None or (padding != (0, 0) and not module.count_include_pad):
            raise DeployError(f"{fx_node.target}: only plain average pooling can be exported")
        self._sum_pool(fx_node, kernel, stride, padding)

    def adaptive_avg_pool(self, fx_node: torch.fx.Node) -> None:
        channels, height, width = self._shape(fx_node.args[0])
        _, out_h, out_w = self._shape(fx_node)
        if height % out_h == 0 and width % out_w == 0:  # even windows: an ordinary average pooling
            kernel = (height // out_h, width // out_w)
            self._sum_pool(fx_node, kernel, kernel, (0, 0))
            return
        name = _name(fx_node)
        term = self._one_term(fx_node, name)
        if not term.plain:
            raise DeployError(f"{name}: adaptive average pooling of already averaged values cannot be folded")
        spatial = _adaptive_average_matrix((height, width), (out_h, out_w))
        self.alias[fx_node] = [_Term(term.name, 1.0, spatial, (channels, height, width), name)]

    def _sum_pool(
        self, fx_node: torch.fx.Node, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
    ) -> None:
        """Average pooling = sum pooling (an exact count of the inputs) whose 1 / window scale waits in the term."""
        name = _name(fx_node)
        term = self._one_term(fx_node, name)
        if term.spatial is not None:
            raise DeployError(f"{name}: pooling of unevenly averaged values cannot be folded")
        node = SumPool2dNode(name, [term.name], self._shape(fx_node), kernel, stride, padding)
        self._add(fx_node, node, _Term(name, term.scale / (kernel[0] * kernel[1]), pooled_by=name))

    def flatten_module(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        _check_flatten(fx_node.target, module.start_dim, module.end_dim)
        self._flatten(fx_node, fx_node.target)

    def flatten_call(self, fx_node: torch.fx.Node) -> None:
        start = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get("start_dim", 0)
        end = fx_node.args[2] if len(fx_node.args) > 2 else fx_node.kwargs.get("end_dim", -1)
        _check_flatten(fx_node.name, start, end)
        self._flatten(fx_node, fx_node.name)

    def _flatten(self, fx_node: torch.fx.Node, name: str) -> None:
        term = self._one_term(fx_node, name)
        # A pending uneven pooling is applied by the Linear after this flatten: flatten what it reads.
        shape = (int(np.prod(term.spatial_shape)),) if term.spatial is not None else self._shape(fx_node)
        self._add(fx_node, FlattenNode(name, [term.name], shape), dataclasses.replace(term, name=name))

    def decoder(self, fx_node: torch.fx.Node) -> None:
        inputs = self._plain(fx_node, f"the decoder {fx_node.target!r}")
        self._require_binary(inputs, f"the decoder {fx_node.target!r}")
        self.output = _single(inputs, "the decoder")
        self.key = self.modules[fx_node.target].key
        self.alias[fx_node] = []

    def skip_sum(self, fx_node: torch.fx.Node) -> None:
        terms = [a for a in fx_node.args if isinstance(a, torch.fx.Node)]
        if len(terms) != len(fx_node.args) or fx_node.kwargs:
            raise DeployError(f"{fx_node.name}: only sums of layer outputs (skip connections) can be exported")
        self.alias[fx_node] = [term for node in terms for term in self.alias[node]]

    def upsample(self, fx_node: torch.fx.Node) -> None:
        raise DeployError(
            f"{fx_node.target}: up-sampling (nn.Upsample) cannot be exported: NIR has no up-sampling node and no "
            "neuromorphic toolchain reads one; the network runs in PyTorch only (a transposed convolution would be "
            "a Conv2d with stride < 1, which NIR cannot express either)"
        )

    def unsupported_module(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        raise DeployError(
            f"{fx_node.target}: {type(module).__name__} has no single-time-step spiking equivalent "
            "(supported: Linear, Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, spiking activations, batch "
            "norm (folded into the weights), Identity, Dropout)"
        )

    def unsupported_call(self, fx_node: torch.fx.Node) -> None:
        raise DeployError(
            f"{fx_node.name}: operation {fx_node.target!r} has no single-time-step spiking equivalent; "
            "use modules (nn.Flatten, pooling) and `+` for skip connections"
        )


def _name(fx_node: torch.fx.Node) -> str:
    """A graph node's name: the module path of a module call, else the traced call's own name."""
    return str(fx_node.target) if fx_node.op == "call_module" else fx_node.name


def _adaptive_average_matrix(size: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """The (out_h * out_w, h * w) matrix of ``nn.AdaptiveAvgPool2d(out)`` on one channel of size ``size``:
    window ``i`` spans ``floor(i * h / out_h)`` to ``ceil((i + 1) * h / out_h)``, as PyTorch computes it."""

    def windows(n: int, m: int) -> np.ndarray:
        matrix = np.zeros((m, n), dtype=np.float64)
        for i in range(m):
            start, stop = (i * n) // m, -((-(i + 1) * n) // m)
            matrix[i, start:stop] = 1.0 / (stop - start)
        return matrix

    rows, cols = windows(size[0], out[0]), windows(size[1], out[1])
    return np.kron(rows, cols).astype(np.float32)


#: Which builder method handles a module, by type (first match).
_MODULE_RULES: list[tuple[type | tuple[type, ...], str]] = [
    ((nn.Identity, nn.Dropout), "passthrough"),
    (nn.Linear, "linear"),
    (nn.Conv2d, "conv2d"),
    (SpikingActivation, "spike"),
    (nn.MaxPool2d, "max_pool"),
    (nn.AvgPool2d, "avg_pool"),
    (nn.AdaptiveAvgPool2d, "adaptive_avg_pool"),
    (nn.Flatten, "flatten_module"),
    (SoftmaxDecode, "decoder"),
    (nn.Upsample, "upsample"),
]


def _pool_settings(where: str, module: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    if module.ceil_mode:
        raise DeployError(f"{where}: ceil_mode=True pooling cannot be exported")
    return _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)


def to_spiking_graph(
    model: nn.Module, input_shape: tuple[int, ...], key: torch.Tensor | None = None, readout: str = "spikes"
) -> SpikingGraph:
    """Fold batch norm and convert a fully sharpened model into a :class:`SpikingGraph`.

    A model that runs in time (a recurrent network) builds its own graph: a module of it with a method
    ``spiking_graph(key, prefix)`` (:class:`~whetstone.recurrent.RecurrentSpiking`) returns it.

    Args:
        model: a spiking classifier (e.g. from :func:`~whetstone.create_model`): layers, spiking
            activations at sharpness 1 and, at the end, a :class:`~whetstone.SoftmaxDecode` (or pass
            ``key`` for a model that returns the output spikes itself).
        input_shape: shape of one input sample, e.g. ``(1, 28, 28)``.
        key: the decoder key when ``model`` has no ``SoftmaxDecode``.
        readout: ``"spikes"`` (N-hot output spikes) or ``"membrane"``: the model ends in a Linear (or
            Conv2d) whose values are the scores, read as the membrane potentials of neurons that never
            fire (a Q-network's action values).

    Raises:
        DeployError: naming the layer, when something cannot run exactly as integrate-and-fire neurons
            in one time step (an unsharpened activation, average pooling whose output is not turned into
            spikes, an unsupported operation, ...).
    """
    if readout not in READOUTS:
        raise DeployError(f"readout must be one of {READOUTS}, got {readout!r}")
    for path, module in model.named_modules():  # a model that runs in time writes its own graph
        if callable(getattr(module, "spiking_graph", None)):
            decoders = [m for m in model.modules() if isinstance(m, SoftmaxDecode)]
            return module.spiking_graph(key if key is not None or not decoders else decoders[0].key,
                                        f"{path}." if path else "")  # fmt: skip
    input_shape = tuple(int(v) for v in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise DeployError(f"input_shape must be positive sizes, e.g. (1, 28, 28), got {input_shape}")
    try:
        folded = fold_batchnorm(model)
    except ValueError as error:
        raise DeployError(str(error)) from None
    try:
        traced = trace(folded)
    except Exception as error:
        raise DeployError(f"cannot trace {type(model).__name__} with torch.fx: {str(error).splitlines()[0]}") from error
    example = torch.zeros(1, *input_shape)
    try:
        ShapeProp(traced).propagate(example)
    except Exception as error:  # noqa: BLE001 - whatever the model raises on this shape: one line
        raise DeployError(f"model does not accept input of shape {input_shape}: {str(error).splitlines()[0]}") from None
    return _GraphBuilder(traced, input_shape, key, readout).build()


def check_deployable(model: nn.Module, input_shape: tuple[int, ...]) -> SpikingGraph:
    """Check, before any training, that ``model`` will deploy once sharpened: a copy is set to sharpness 1
    and converted. Returns that graph; raises :class:`DeployError` naming the first layer that will not
    deploy (an unsupported layer, a real-valued output, a missing decoder), with the reason."""
    from .sharpen import set_model_sharpness

    probe = copy.deepcopy(model).eval()
    set_model_sharpness(probe, 1.0)
    return to_spiking_graph(probe, input_shape)


def _is_spike(fx_node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    return fx_node.op == "call_module" and isinstance(modules[fx_node.target], SpikingActivation)


def _single(inputs: list[str], where: str) -> str:
    if len(inputs) != 1:
        raise DeployError(f"{where}: expected one input, got the sum of {inputs}")
    return inputs[0]


def _check_flatten(where: str, start: int, end: int) -> None:
    if start != 1 or end != -1:
        raise DeployError(f"{where}: only flatten(start_dim=1, end_dim=-1) can be exported, got ({start}, {end})")


def _check_all_spikes_used(graph: SpikingGraph) -> None:
    users = graph.consumers()
    for node in graph.nodes:
        if not users[node.name] and node.name != graph.output and not isinstance(node, InputNode):
            raise DeployError(f"{node.name!r} feeds nothing that reaches the output")


def quantize(graph: SpikingGraph, bits: int = 8, input_levels: int = 255) -> SpikingGraph:
    """Integer weights: each spiking layer's synaptic weights and biases become integers, weights in
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, and its threshold an integer too.

    A spiking layer's output depends only on the sign of ``sum of its inputs - theta``, so each layer may
    be scaled freely: ``s = (2**(bits-1) - 1) / max|W|`` over all the synapses into it; weights are
    ``round(s W)``, the threshold ``T = round(s theta)`` and the biases ``round(s b)``, the first one
    corrected to ``round(s (sum b - theta)) + T - (the others)`` so that the comparison rounds once
    (bias currents are usually wider registers on chip). A skip connection of spikes (or of pooled
    spike counts) into the layer gets explicit synapses of weight ``round(s)`` (a 1x1 depthwise
    convolution). A layer fed by spikes or counts alone keeps weight 1 and fires at ``ceil(theta)``,
    exactly. Binary inputs times integer weights sum exactly in any float format, so every layer after
    the encoder is computed bit-exactly by every engine.

    The encoder sees pixels ``p / input_levels`` (``p`` integer), so its membrane, times
    ``input_levels``, is an integer and often lands exactly on the threshold, where float rounding
    would decide differently in each engine. Its bias gets ``+0.5 / input_levels``: exact ties then
    fire (as ``>=`` requires) with a margin that rounding cannot cross, and nothing else changes.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
    if isinstance(input_levels, bool) or not isinstance(input_levels, int) or input_levels < 1:
        raise ValueError(f"input_levels must be a positive integer, got {input_levels!r}")
    limit = 2 ** (bits - 1) - 1
    users = graph.consumers()
    by_name = {node.name: node for node in graph.nodes}
    replaced: dict[str, GraphNode] = {}
    inserted: dict[str, list[GraphNode]] = {}
    for spike in graph.spiking_nodes():
        thresholds = np.unique(spike.threshold)
        if thresholds.size != 1:
            raise DeployError(f"{spike.name!r}: quantize() needs one threshold per spiking layer")
        theta = float(thresholds[0])
        weighted, direct, others = [], [], []
        for name in spike.inputs:
            source = by_name[name]
            behind = by_name[source.inputs[0]] if isinstance(source, SumPool2dNode) else None
            if isinstance(source, WEIGHTED_NODES) or isinstance(behind, WEIGHTED_NODES):
                layer = source if isinstance(source, WEIGHTED_NODES) else behind
                if len(users[layer.name]) != 1:
                    raise DeployError(f"{layer.name!r}: quantize() needs each weighted layer to feed one spiking layer")
                weighted.append(layer)
                if layer is source:
                    direct.append(layer)
            else:
                others.append(source)  # spikes, or a count of spikes: integers already
        if not weighted:
            replaced[spike.name] = dataclasses.replace(spike, threshold=np.full_like(spike.threshold, np.ceil(theta)))
            continue
        largest = max([float(np.abs(layer.weight).max()) for layer in weighted] + [1.0] * len(others))
        scale = limit / max(largest, 1e-12)  # a skip connection's synapses (weight 1) count among the weights
        threshold = float(round(scale * theta))
        biases = {layer.name: np.round(layer.bias * scale) for layer in weighted}
        if direct:  # round the comparison once: the first direct layer carries sum(b) - theta
            first = direct[0].name
            rest = sum((bias for name, bias in biases.items() if name != first), start=np.zeros_like(biases[first]))
            total = sum((layer.bias for layer in weighted), start=np.zeros_like(weighted[0].bias))
            biases[first] = np.round((total - theta) * scale) + threshold - rest
        for layer in weighted:
            bias = biases[layer.name] + (0.5 / input_levels if layer.name == graph.encoder else 0.0)
            weight = np.clip(np.round(layer.weight * scale), -limit, limit)
            replaced[layer.name] = dataclasses.replace(
                layer, weight=weight.astype(np.float32), bias=bias.astype(np.float32)
            )
        inputs = list(spike.inputs)
        for source in others:  # a skip connection: synapses of weight round(s) from each unit to itself
            synapses = _identity_synapses(f"{spike.name}.from_{source.name}", source, float(max(1, round(scale))))
            inserted.setdefault(spike.name, []).append(synapses)
            inputs[inputs.index(source.name)] = synapses.name
        replaced[spike.name] = dataclasses.replace(
            spike, inputs=inputs, threshold=np.full_like(spike.threshold, threshold)
        )
    nodes: list[GraphNode] = []
    for node in graph.nodes:
        nodes += inserted.get(node.name, [])
        nodes.append(replaced.get(node.name, node))
    return SpikingGraph(
        nodes, graph.output, graph.key.copy(), {**graph.metadata, "quantized_bits": bits}, graph.readout
    )


def _identity_synapses(name: str, source: GraphNode, weight: float) -> GraphNode:
    """Synapses of one ``weight`` from each unit of ``source`` to the same unit of its consumer."""
    if len(source.shape) == 3:
        channels = source.shape[0]
        kernel = np.full((channels, 1, 1, 1), weight, dtype=np.float32)
        return Conv2dNode(
            name, [source.name], source.shape, kernel, np.zeros(channels, np.float32), (1, 1), (0, 0), (1, 1), channels
        )
    size = int(np.prod(source.shape))
    return AffineNode(
        name, [source.name], source.shape, np.eye(size, dtype=np.float32) * weight, np.zeros(size, np.float32)
    )


def graph_from_checkpoint(path: str, bits: int | None = None) -> tuple[SpikingGraph, nn.Module, dict[str, Any]]:
    """The deployable graph of a trained run (its folder or a checkpoint file), quantized to ``bits``
    if given; also returns the rebuilt PyTorch model and the loaded checkpoint."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .data import DATASETS

    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, str(path))
    run = checkpoint["run"]
    shape = run.get("model_options", {}).get("input_shape")
    if shape is None and run.get("dataset") not in DATASETS:
        raise ValueError(
            f"checkpoint {path} names no known dataset ({run.get('dataset')!r}): its input shape is unknown"
        )
    graph = to_spiking_graph(model, tuple(shape) if shape else DATASETS[run["dataset"]].image_shape)
    return (quantize(graph, bits) if bits else graph), model, checkpoint
