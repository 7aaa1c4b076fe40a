"""The deployable form of a sharpened network: a small graph of integrate-and-fire layers.

:func:`to_spiking_graph` folds batch norm, traces the model with torch.fx and turns each traced call into
typed graph nodes, checking that every value passed on is exactly what a single-time-step
integrate-and-fire network computes. The resulting :class:`SpikingGraph` is what the reference simulator
(:mod:`whetstone.sim`) runs and what the NIR and ONNX exporters (:mod:`whetstone.export`) write, so all of
them share one reading of the model.

Semantics of a node (one time step, NIR's convention that a node sums all of its inputs):

- :class:`AffineNode` / :class:`Conv2dNode` / :class:`AvgPool2dNode`: a linear map of the summed input
  (synapses and bias current).
- :class:`SpikeNode`: ``1[v >= threshold]``: an integrate-and-fire neuron, membrane reset after the step.
- :class:`MaxPool2dNode`: over binary spikes, the logical OR of each window. A model may instead max-pool
  the membrane potentials right before a spiking activation (``conv - pool - spike``); since a threshold
  is monotone, that is exported exactly as spike, then max pooling.
- :class:`FlattenNode`: a reshape (C, H, W) -> (C*H*W,).

Nodes are named after the module they come from (``features.2``), as everywhere else in whetstone. The
first linear layer receives the real-valued input (pixels scaled to [0, 1]): it is the encoder. Every
other value that crosses a layer boundary is a binary spike.
"""

from __future__ import annotations

import dataclasses
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
    """Average pooling (zero padding counted), a linear map."""

    op: ClassVar[str] = "avgpool2d"


@dataclass(eq=False, repr=False)
class SpikeNode(GraphNode):
    """Integrate-and-fire neurons in one step: ``1[v >= threshold]`` (one threshold per unit)."""

    threshold: np.ndarray
    op: ClassVar[str] = "spike"


@dataclass(eq=False, repr=False)
class FlattenNode(GraphNode):
    """A reshape to one dimension per sample."""

    op: ClassVar[str] = "flatten"


#: Nodes that are linear maps of their (summed) input; the first of them is the encoder.
LINEAR_NODES = (AffineNode, Conv2dNode, AvgPool2dNode)
#: Nodes with synaptic weights.
WEIGHTED_NODES = (AffineNode, Conv2dNode)


@dataclass(repr=False)
class SpikingGraph:
    """A network of integrate-and-fire layers with its N-hot decoder.

    ``nodes`` are in topological order, starting with the single :class:`InputNode`; ``output`` names
    the binary node read by the decoder, whose ``key`` is a {0, 1} array (classes, width).
    """

    nodes: list[GraphNode]
    output: str
    key: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

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

    def consumers(self) -> dict[str, list[GraphNode]]:
        """For each node name, the nodes it feeds."""
        users: dict[str, list[GraphNode]] = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            for name in node.inputs:
                users[name].append(node)
        return users

    def decode(self, spikes: np.ndarray) -> np.ndarray:
        """Class logits ``(2 spikes - 1) @ (2 key - 1)^T`` (integers, as float32)."""
        signed = 2.0 * np.asarray(spikes, dtype=np.float32) - 1.0
        return signed @ (2.0 * self.key.astype(np.float32) - 1.0).T

    def summary(self) -> str:
        """One line per node: name, type, inputs, output shape (and thresholds), then the decoder."""
        lines = []
        for n in self.nodes:
            extra = f" threshold={_describe_threshold(n.threshold)}" if isinstance(n, SpikeNode) else ""
            lines.append(f"{n.name:<24} {n.op:<10} <- {', '.join(n.inputs) or '-':<24} {n.shape}{extra}")
        classes, width = self.key.shape
        lines.append(
            f"decoder: {classes} classes from the {width} spikes of {self.output!r}; encoder: {self.encoder!r}"
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


class _GraphBuilder:
    """Walks a traced model once, node by node; one method per kind of call (see :meth:`_handler`).

    ``alias`` maps each fx node to the graph nodes whose sum it equals (a skip connection is a sum;
    Identity and Dropout pass their input on). ``origin`` says, per graph node, whether its output is
    binary spikes (None) or the real-valued output of which layer.
    """

    def __init__(self, traced: torch.fx.GraphModule, input_shape: tuple[int, ...], key: torch.Tensor | None) -> None:
        self.traced = traced
        self.modules = dict(traced.named_modules())
        self.input_shape = tuple(input_shape)
        self.key = key
        self.nodes: list[GraphNode] = []
        self.alias: dict[torch.fx.Node, list[str]] = {}
        self.origin: dict[str, str | None] = {}
        self.output: str | None = None
        # Max pooling of potentials whose only user is a spiking activation: fx node -> (input shape, node to add).
        self.pools_before_spike: dict[torch.fx.Node, tuple[tuple[int, ...], MaxPool2dNode]] = {}

    # -- the walk ------------------------------------------------------------------------------
    def build(self) -> SpikingGraph:
        for fx_node in self.traced.graph.nodes:
            self._handler(fx_node)(fx_node)
        if self.output is None or self.key is None:
            raise DeployError("model has no SoftmaxDecode and no key was given")
        key = _array(self.key)
        width = int(np.prod(self._graph_node(self.output).shape))
        if key.ndim != 2 or key.shape[1] != width:
            raise DeployError(f"key of shape {key.shape} does not match the {width} output units of {self.output!r}")
        graph = SpikingGraph(self.nodes, self.output, key)
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
        return self.unsupported_call

    # -- helpers -------------------------------------------------------------------------------
    def _graph_node(self, name: str) -> GraphNode:
        return next(n for n in self.nodes if n.name == name)

    def _add(self, fx_node: torch.fx.Node, node: GraphNode) -> None:
        self.nodes.append(node)
        self.alias[fx_node] = [node.name]
        if isinstance(node, SpikeNode):
            self.origin[node.name] = None
        elif isinstance(node, (MaxPool2dNode, FlattenNode)):
            self.origin[node.name] = self.origin[node.inputs[0]]
        else:
            self.origin[node.name] = node.name

    @staticmethod
    def _shape(fx_node: torch.fx.Node) -> tuple[int, ...]:
        return tuple(fx_node.meta["tensor_meta"].shape[1:])

    def _inputs(self, fx_node: torch.fx.Node) -> list[str]:
        arg = fx_node.args[0] if fx_node.args else None
        if not isinstance(arg, torch.fx.Node):
            raise DeployError(f"{fx_node.name}: expected a tensor input, got {arg!r}")
        return self.alias[arg]

    def _require_binary(self, inputs: list[str], what: str) -> None:
        for name in inputs:
            if self.origin[name] is not None:
                raise DeployError(
                    f"{what} receives the real-valued output of {self.origin[name]!r}, not binary spikes: put a spiking "
                    "activation after it (a linear layer or average pooling must feed a spiking layer)"
                )

    # -- one method per kind of call -----------------------------------------------------------
    def placeholder(self, fx_node: torch.fx.Node) -> None:
        self._add(fx_node, InputNode("input", [], self.input_shape))

    def output_node(self, fx_node: torch.fx.Node) -> None:
        if self.output is not None:
            return  # the decoder already named the output
        result = fx_node.args[0]
        if self.key is None or not isinstance(result, torch.fx.Node):
            raise DeployError("model has no SoftmaxDecode and no key was given")
        inputs = self.alias[result]
        self._require_binary(inputs, "the output")
        self.output = _single(inputs, "the output")

    def passthrough(self, fx_node: torch.fx.Node) -> None:  # Identity, Dropout (eval mode)
        self.alias[fx_node] = self._inputs(fx_node)

    def linear(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        if len(self._shape(fx_node.args[0])) != 1:
            raise DeployError(f"{fx_node.target}: Linear must receive flat (N, features) input")
        self._add(fx_node, AffineNode(fx_node.target, self._inputs(fx_node), self._shape(fx_node), _array(module.weight),
                                      _bias(module, module.out_features)))  # fmt: skip

    def conv2d(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        if module.padding_mode != "zeros":
            raise DeployError(f"{fx_node.target}: only zero padding can be exported, got {module.padding_mode!r}")
        # torch resolves padding="same"/"valid" into this (left, right, top, bottom) tuple.
        left, right, top, bottom = module._reversed_padding_repeated_twice
        if left != right or top != bottom:
            raise DeployError(f"{fx_node.target}: asymmetric padding cannot be exported")
        self._add(fx_node, Conv2dNode(
            fx_node.target, self._inputs(fx_node), self._shape(fx_node), _array(module.weight), _bias(module, module.out_channels),
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
        # Several inputs are summed into the neuron: a skip connection is just more synapses.
        self._add(fx_node, SpikeNode(fx_node.target, self._inputs(fx_node), shape, threshold))
        if pool:  # a step is monotone, so step(max(v)) == max(step(v)): fire first, then OR the window
            pooled = dataclasses.replace(pool[1], inputs=[fx_node.target])
            self._add(fx_node, pooled)

    def max_pool(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        settings = _pool_settings(fx_node.target, module)
        if _pair(module.dilation) != (1, 1):
            raise DeployError(f"{fx_node.target}: dilated max pooling cannot be exported")
        inputs = self._inputs(fx_node)
        node = MaxPool2dNode(fx_node.target, inputs, self._shape(fx_node), *settings)
        users = list(fx_node.users)
        if any(self.origin[i] is not None for i in inputs) and len(users) == 1 and _is_spike(users[0], self.modules):
            # Max pooling of membrane potentials straight into a spike: exported as spike, then pool.
            self.pools_before_spike[fx_node] = (self._shape(fx_node.args[0]), node)
            self.alias[fx_node] = inputs
            return
        self._require_binary(inputs, f"max pooling {fx_node.target!r}")
        self._add(fx_node, node)

    def avg_pool(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        settings = _pool_settings(fx_node.target, module)
        if module.divisor_override is not None or (settings[2] != (0, 0) and not module.count_include_pad):
            raise DeployError(f"{fx_node.target}: only plain average pooling can be exported")
        inputs = [_single(self._inputs(fx_node), fx_node.target)]
        self._add(fx_node, AvgPool2dNode(fx_node.target, inputs, self._shape(fx_node), *settings))

    def flatten_module(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        _check_flatten(fx_node.target, module.start_dim, module.end_dim)
        self._add(
            fx_node, FlattenNode(fx_node.target, [_single(self._inputs(fx_node), fx_node.target)], self._shape(fx_node))
        )

    def flatten_call(self, fx_node: torch.fx.Node) -> None:
        start = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get("start_dim", 0)
        end = fx_node.args[2] if len(fx_node.args) > 2 else fx_node.kwargs.get("end_dim", -1)
        _check_flatten(fx_node.name, start, end)
        self._add(
            fx_node, FlattenNode(fx_node.name, [_single(self._inputs(fx_node), fx_node.name)], self._shape(fx_node))
        )

    def decoder(self, fx_node: torch.fx.Node) -> None:
        inputs = self._inputs(fx_node)
        self._require_binary(inputs, f"the decoder {fx_node.target!r}")
        self.output = _single(inputs, "the decoder")
        self.key = self.modules[fx_node.target].key
        self.alias[fx_node] = []

    def skip_sum(self, fx_node: torch.fx.Node) -> None:
        terms = [a for a in fx_node.args if isinstance(a, torch.fx.Node)]
        if len(terms) != len(fx_node.args) or fx_node.kwargs:
            raise DeployError(f"{fx_node.name}: only sums of layer outputs (skip connections) can be exported")
        self.alias[fx_node] = [name for term in terms for name in self.alias[term]]

    def unsupported_module(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        raise DeployError(
            f"{fx_node.target}: {type(module).__name__} has no single-time-step spiking equivalent "
            "(supported: Linear, Conv2d, MaxPool2d, AvgPool2d, Flatten, spiking activations, batch norm "
            "folded into the layer before it, Identity, Dropout)"
        )

    def unsupported_call(self, fx_node: torch.fx.Node) -> None:
        raise DeployError(
            f"{fx_node.name}: operation {fx_node.target!r} has no single-time-step spiking equivalent; "
            "use modules (nn.Flatten, pooling) and `+` for skip connections"
        )


#: Which builder method handles a module, by type (first match).
_MODULE_RULES: list[tuple[type | tuple[type, ...], str]] = [
    ((nn.Identity, nn.Dropout), "passthrough"),
    (nn.Linear, "linear"),
    (nn.Conv2d, "conv2d"),
    (SpikingActivation, "spike"),
    (nn.MaxPool2d, "max_pool"),
    (nn.AvgPool2d, "avg_pool"),
    (nn.Flatten, "flatten_module"),
    (SoftmaxDecode, "decoder"),
]


def _pool_settings(where: str, module: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    if module.ceil_mode:
        raise DeployError(f"{where}: ceil_mode=True pooling cannot be exported")
    return _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)


def to_spiking_graph(model: nn.Module, input_shape: tuple[int, ...], key: torch.Tensor | None = None) -> SpikingGraph:
    """Fold batch norm and convert a fully sharpened model into a :class:`SpikingGraph`.

    Args:
        model: a spiking classifier (e.g. from :func:`~whetstone.create_model`): layers, spiking
            activations at sharpness 1 and, at the end, a :class:`~whetstone.SoftmaxDecode` (or pass
            ``key`` for a model that returns the output spikes itself).
        input_shape: shape of one input sample, e.g. ``(1, 28, 28)``.
        key: the decoder key when ``model`` has no ``SoftmaxDecode``.

    Raises:
        DeployError: naming the layer, when something cannot run exactly as integrate-and-fire neurons
            in one time step (an unsharpened activation, average pooling whose output is not turned into
            spikes, an unsupported operation, ...).
    """
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
    return _GraphBuilder(traced, input_shape, key).build()


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
    """Integer weights: each spiking layer's weights and bias become integers, weights in
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, and its threshold an integer too.

    A spiking layer's output depends only on the sign of ``W x + b - theta``, so each layer may be
    scaled freely: ``s = (2**(bits-1) - 1) / max|W|``; weights are ``round(s W)``, the threshold
    ``T = round(s theta)`` and the bias ``round(s (b - theta)) + T`` (bias currents are usually wider
    registers on chip). Binary inputs times integer weights sum exactly in any float format, so every
    layer after the encoder is computed bit-exactly by every engine.

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
    new_nodes: list[GraphNode] = []
    thresholds: dict[str, float] = {}
    for node in graph.nodes:
        if isinstance(node, WEIGHTED_NODES):
            spike = users[node.name]
            if len(spike) != 1 or not isinstance(spike[0], SpikeNode) or spike[0].inputs != [node.name]:
                raise DeployError(
                    f"{node.name!r}: quantize() needs each weighted layer to feed one spiking layer alone"
                )
            theta = float(np.unique(spike[0].threshold)[0])
            scale = limit / max(float(np.abs(node.weight).max()), 1e-12)
            threshold = float(round(scale * theta))
            bias = np.round((node.bias - theta) * scale) + threshold
            if node.name == graph.encoder:
                bias = bias + 0.5 / input_levels
            thresholds[node.name] = threshold
            new_nodes.append(dataclasses.replace(node, weight=np.round(node.weight * scale).astype(np.float32),
                                                 bias=bias.astype(np.float32)))  # fmt: skip
        elif isinstance(node, SpikeNode) and node.inputs[0] in thresholds:
            new_nodes.append(
                dataclasses.replace(node, threshold=np.full_like(node.threshold, thresholds[node.inputs[0]]))
            )
        elif isinstance(node, SpikeNode):
            raise DeployError(f"{node.name!r}: quantize() supports spiking layers fed by one Linear/Conv2d only")
        else:
            new_nodes.append(node)
    return SpikingGraph(new_nodes, graph.output, graph.key.copy(), {**graph.metadata, "quantized_bits": bits})


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
