"""The deployable form of a sharpened network: a small graph of integrate-and-fire layers.

:func:`to_spiking_graph` folds batch norm, traces the model and checks that every value it passes on is
exactly what a single-time-step integrate-and-fire network can compute. The resulting
:class:`SpikingGraph` is what the reference simulator (:mod:`whetstone.sim`) runs and what the NIR and ONNX
exporters (:mod:`whetstone.export`) write, so all three share one reading of the model.

Semantics of a node (one time step, NIR's convention that a node sums all of its inputs):

- ``affine`` / ``conv2d`` / ``avgpool2d``: a linear map of the summed input (synapses and bias current).
- ``spike``: ``1[v >= threshold]``: an integrate-and-fire neuron, membrane reset after the step.
- ``maxpool2d``: over binary spikes, the logical OR of each window. A model may instead max-pool the
  membrane potentials right before a spiking activation (``conv - pool - spike``); since a threshold is
  monotone, that is exported exactly as ``spike - maxpool2d``.
- ``flatten``: a reshape (C, H, W) -> (C*H*W,).

The first linear layer receives the real-valued input (pixels scaled to [0, 1]): it is the encoder.
Every other value that crosses a layer boundary is a binary spike.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .activations import SpikingActivation
from .convert import fold_batchnorm, trace
from .decode import SoftmaxDecode

__all__ = ["DeployError", "GraphNode", "SpikingGraph", "quantize", "to_spiking_graph"]

#: Operations of a :class:`GraphNode` that are linear maps of their (summed) input.
LINEAR_OPS = ("affine", "conv2d", "avgpool2d")


class DeployError(ValueError):
    """The model cannot be deployed exactly as a single-time-step spiking network."""


@dataclass
class GraphNode:
    """One layer of a :class:`SpikingGraph`.

    Attributes:
        name: unique name (taken from the traced module path).
        op: one of ``input, affine, conv2d, avgpool2d, spike, maxpool2d, flatten``.
        inputs: names of the nodes whose outputs are summed to form this node's input.
        shape: output shape of one sample (no batch dimension).
        params: arrays (``weight``, ``bias``, ``threshold``) and settings (``stride``, ``padding``, ...).
    """

    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpikingGraph:
    """A network of integrate-and-fire layers with its N-hot decoder.

    ``nodes`` are in topological order, starting with the single ``input`` node; ``output`` names the
    binary node read by the decoder, whose ``key`` is a {0, 1} array (classes, width).
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
        return next(n.name for n in self.nodes if n.op in LINEAR_OPS)

    def spiking_nodes(self) -> list[GraphNode]:
        return [n for n in self.nodes if n.op == "spike"]

    def decode(self, spikes: np.ndarray) -> np.ndarray:
        """Class logits ``(2 spikes - 1) @ (2 key - 1)^T`` (integers, as float32)."""
        signed = 2.0 * np.asarray(spikes, dtype=np.float32) - 1.0
        return signed @ (2.0 * self.key.astype(np.float32) - 1.0).T

    def summary(self) -> str:
        """One line per node: name, operation, inputs and output shape."""
        lines = []
        for n in self.nodes:
            extra = f" threshold={_describe_threshold(n.params['threshold'])}" if n.op == "spike" else ""
            lines.append(f"{n.name:<24} {n.op:<10} <- {', '.join(n.inputs) or '-':<24} {n.shape}{extra}")
        return "\n".join(lines)


def _describe_threshold(threshold: np.ndarray) -> str:
    values = np.unique(threshold)
    return f"{values[0]:.6g}" if values.size == 1 else f"{values.size} values"


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


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
    folded = fold_batchnorm(model)
    try:
        traced = trace(folded)
    except Exception as error:
        raise DeployError(f"cannot trace {type(model).__name__} with torch.fx: {error}") from error
    example = torch.zeros(1, *input_shape)
    try:
        ShapeProp(traced).propagate(example)
    except Exception as error:
        raise DeployError(f"model does not accept input of shape {tuple(input_shape)}: {error}") from error
    modules = dict(traced.named_modules())

    nodes: list[GraphNode] = []
    # fx node -> names of graph nodes whose sum it equals ([] for a constant zero / no-op chain).
    alias: dict[torch.fx.Node, list[str]] = {}
    # For each graph node: None if its output is binary spikes, else the layer whose real-valued output it carries.
    origin: dict[str, str | None] = {}
    output_name: str | None = None
    decoder_key: torch.Tensor | None = key
    # Max pooling of real values whose only user is a spiking activation: (input shape, name, settings).
    pools_before_spike: dict[torch.fx.Node, tuple[tuple[int, ...], str, dict[str, Any]]] = {}

    def shape_of(fx_node: torch.fx.Node) -> tuple[int, ...]:
        return tuple(fx_node.meta["tensor_meta"].shape[1:])

    def source(fx_node: torch.fx.Node) -> list[str]:
        arg = fx_node.args[0]
        if not isinstance(arg, torch.fx.Node):
            raise DeployError(f"{fx_node.name}: expected a tensor input, got {arg!r}")
        return alias[arg]

    def add(name: str, op: str, inputs: list[str], shape: tuple[int, ...], **params: Any) -> None:
        nodes.append(GraphNode(name, op, inputs, shape, params))
        alias[current] = [name]
        if op == "spike":
            origin[name] = None
        elif op in ("maxpool2d", "flatten"):
            origin[name] = origin[inputs[0]]
        else:
            origin[name] = name

    def require_binary(inputs: list[str], what: str) -> None:
        for name in inputs:
            if origin[name] is not None:
                raise DeployError(
                    f"{what} receives the real-valued output of {origin[name]!r}, not binary spikes: put a spiking "
                    "activation after it (a linear layer or average pooling must feed a spiking layer)"
                )

    for current in traced.graph.nodes:
        if current.op == "placeholder":
            add("input", "input", [], tuple(input_shape))
        elif current.op == "output":
            result = current.args[0]
            if output_name is None:
                if decoder_key is None or not isinstance(result, torch.fx.Node):
                    raise DeployError("model has no SoftmaxDecode and no key was given")
                inputs = alias[result]
                require_binary(inputs, "the output")
                output_name = _merge(inputs, "the output")
        elif current.op == "call_module":
            module = modules[current.target]
            inputs = source(current)
            name = current.target.replace(".", "_")
            if isinstance(module, (nn.Identity, nn.Dropout)):
                alias[current] = inputs
            elif isinstance(module, nn.Linear):
                if len(shape_of(current.args[0])) != 1:
                    raise DeployError(f"{current.target}: Linear must receive flat (N, features) input")
                bias = _array(module.bias) if module.bias is not None else np.zeros(module.out_features, np.float32)
                add(name, "affine", inputs, shape_of(current), weight=_array(module.weight), bias=bias)
            elif isinstance(module, nn.Conv2d):
                if module.padding_mode != "zeros":
                    raise DeployError(f"{current.target}: only zero padding can be exported, got {module.padding_mode!r}")
                # torch resolves padding="same"/"valid" into this (left, right, top, bottom) tuple.
                left, right, top, bottom = module._reversed_padding_repeated_twice
                if left != right or top != bottom:
                    raise DeployError(f"{current.target}: asymmetric padding cannot be exported")
                pad = (top, left)
                bias = _array(module.bias) if module.bias is not None else np.zeros(module.out_channels, np.float32)
                add(
                    name, "conv2d", inputs, shape_of(current), weight=_array(module.weight), bias=bias,
                    stride=_pair(module.stride), padding=pad, dilation=_pair(module.dilation), groups=module.groups,
                )
            elif isinstance(module, SpikingActivation):
                if not module.is_binary:
                    raise DeployError(
                        f"{current.target}: {type(module).__name__} has sharpness {module.get_sharpness():.4g}; "
                        "only fully sharpened layers (sharpness 1) are integrate-and-fire neurons"
                    )
                pool = pools_before_spike.pop(current.args[0], None)
                shape = pool[0] if pool else shape_of(current)
                threshold = np.full(shape, module.spike_threshold, dtype=np.float32)
                # Several inputs are summed into the neuron: a skip connection is just more synapses.
                add(name, "spike", inputs, shape, threshold=threshold)
                if pool:  # a step is monotone, so step(max(v)) == max(step(v)): fire first, then OR the window
                    add(pool[1], "maxpool2d", [name], shape_of(current), **pool[2])
            elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
                if module.ceil_mode:
                    raise DeployError(f"{current.target}: ceil_mode=True pooling cannot be exported")
                params = {
                    "kernel_size": _pair(module.kernel_size),
                    "stride": _pair(module.stride or module.kernel_size),
                    "padding": _pair(module.padding),
                }
                if isinstance(module, nn.MaxPool2d):
                    if _pair(module.dilation) != (1, 1):
                        raise DeployError(f"{current.target}: dilated max pooling cannot be exported")
                    users = list(current.users)
                    if any(origin[i] is not None for i in inputs) and len(users) == 1 and _is_spike(users[0], modules):
                        # Max pooling of membrane potentials straight into a spike: exported as spike, then pool.
                        pools_before_spike[current] = (shape_of(current.args[0]), name, params)
                        alias[current] = inputs
                        continue
                    require_binary(inputs, f"max pooling {current.target!r}")
                    add(name, "maxpool2d", inputs, shape_of(current), **params)
                else:
                    if module.divisor_override is not None or (params["padding"] != (0, 0) and not module.count_include_pad):
                        raise DeployError(f"{current.target}: only plain average pooling can be exported")
                    add(name, "avgpool2d", [_merge(inputs, current.target)], shape_of(current), **params)
            elif isinstance(module, nn.Flatten):
                _check_flatten(current.target, module.start_dim, module.end_dim)
                add(name, "flatten", [_merge(inputs, current.target)], shape_of(current))
            elif isinstance(module, SoftmaxDecode):
                require_binary(inputs, f"the decoder {current.target!r}")
                output_name = _merge(inputs, "the decoder")
                decoder_key = module.key
                alias[current] = []
            else:
                raise DeployError(
                    f"{current.target}: {type(module).__name__} has no single-time-step spiking equivalent "
                    "(supported: Linear, Conv2d, MaxPool2d, AvgPool2d, Flatten, spiking activations, batch norm "
                    "folded into the layer before it, Identity, Dropout)"
                )
        elif current.op == "call_function" and current.target in (operator.add, torch.add):
            terms = [a for a in current.args if isinstance(a, torch.fx.Node)]
            if len(terms) != len(current.args) or current.kwargs:
                raise DeployError(f"{current.name}: only sums of layer outputs (skip connections) can be exported")
            alias[current] = [n for t in terms for n in alias[t]]
        elif (current.op == "call_function" and current.target is torch.flatten) or (
            current.op == "call_method" and current.target == "flatten"
        ):
            start = current.args[1] if len(current.args) > 1 else current.kwargs.get("start_dim", 0)
            end = current.args[2] if len(current.args) > 2 else current.kwargs.get("end_dim", -1)
            _check_flatten(current.name, start, end)
            add(current.name, "flatten", [_merge(source(current), current.name)], shape_of(current))
        else:
            raise DeployError(
                f"{current.name}: operation {current.target!r} has no single-time-step spiking equivalent; "
                "use modules (nn.Flatten, pooling) and `+` for skip connections"
            )

    if output_name is None or decoder_key is None:
        raise DeployError("model has no SoftmaxDecode and no key was given")
    key_array = _array(decoder_key)
    width = int(np.prod(nodes[[n.name for n in nodes].index(output_name)].shape))
    if key_array.shape[1] != width:
        raise DeployError(f"key width {key_array.shape[1]} does not match the {width} output units of {output_name!r}")
    graph = SpikingGraph(nodes, output_name, key_array)
    graph.metadata["encoder"] = graph.encoder
    _check_all_spikes_used(graph)
    return graph


def _is_spike(fx_node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    return fx_node.op == "call_module" and isinstance(modules[fx_node.target], SpikingActivation)


def _merge(inputs: list[str], where: str) -> str:
    if len(inputs) != 1:
        raise DeployError(f"{where}: expected one input, got the sum of {inputs}")
    return inputs[0]


def _check_flatten(where: str, start: int, end: int) -> None:
    if start != 1 or end != -1:
        raise DeployError(f"{where}: only flatten(start_dim=1, end_dim=-1) can be exported, got ({start}, {end})")


def _check_all_spikes_used(graph: SpikingGraph) -> None:
    used = {i for n in graph.nodes for i in n.inputs} | {graph.output}
    for node in graph.nodes:
        if node.name not in used and node.op != "input":
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
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
    if not isinstance(input_levels, int) or input_levels < 1:
        raise ValueError(f"input_levels must be a positive integer, got {input_levels!r}")
    limit = 2 ** (bits - 1) - 1
    consumers: dict[str, list[GraphNode]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)
    new_nodes = []
    thresholds: dict[str, float] = {}
    for node in graph.nodes:
        if node.op in ("affine", "conv2d"):
            users = consumers.get(node.name, [])
            if len(users) != 1 or users[0].op != "spike" or users[0].inputs != [node.name]:
                raise DeployError(f"{node.name!r}: quantize() needs each weighted layer to feed one spiking layer alone")
            theta = float(np.unique(users[0].params["threshold"])[0])
            scale = limit / max(float(np.abs(node.params["weight"]).max()), 1e-12)
            threshold = float(round(scale * theta))
            weight = np.round(node.params["weight"] * scale).astype(np.float32)
            bias = np.round((node.params["bias"] - theta) * scale) + threshold
            if node.name == graph.encoder:
                bias = bias + 0.5 / input_levels
            bias = bias.astype(np.float32)
            thresholds[node.name] = threshold
            new_nodes.append(replace(node, params={**node.params, "weight": weight, "bias": bias}))
        elif node.op == "spike" and node.inputs[0] in thresholds:
            threshold = np.full_like(node.params["threshold"], thresholds[node.inputs[0]])
            new_nodes.append(replace(node, params={**node.params, "threshold": threshold}))
        elif node.op == "spike":
            raise DeployError(f"{node.name!r}: quantize() supports spiking layers fed by one Linear/Conv2d only")
        else:
            new_nodes.append(node)
    return SpikingGraph(new_nodes, graph.output, graph.key.copy(), {**graph.metadata, "quantized_bits": bits})

