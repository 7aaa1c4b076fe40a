"""From a PyTorch model to a :class:`~whetstone.graph.nodes.SpikingGraph`: :func:`to_spiking_graph` folds batch
norm, traces the model with torch.fx and turns each traced call into typed graph nodes, checking that every
value passed on is exactly what a single-time-step integrate-and-fire network computes.

Average pooling (also ``AdaptiveAvgPool2d``) is sum pooling whose ``1 / window`` is folded, exactly, into the
weights of the layer it feeds or into the threshold of the spiking layer it feeds; uneven adaptive windows
fold into a following Linear. A model may max-pool the membrane potentials right before a spiking
activation (``conv - pool - spike``); since a threshold is monotone, that is written exactly as spike, then
max pooling. Concatenation along channels is a sum of placements (synapses of weight 1 into each part's
channels of the whole), fused into the layer that computes a part wherever that layer feeds nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..graph.nodes import (
    READOUTS,
    WEIGHTED_NODES,
    AffineNode,
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
from ..nn.activations import SpikingActivation
from ..nn.decode import SoftmaxDecode
from ..nn.sharpen import set_model_sharpness
from ..nn.tracing import describe_call, fold_batchnorm, trace, why_untraceable
from ..utils.checks import allocation_failure, fits_in_memory, sizes
from .channel_routing import ChannelRouting
from .graph_pooling import MAX_POOLS, Pooling
from .graph_term import Term, pair, traced_shape

__all__ = ["check_deployable", "to_spiking_graph"]


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def _bias(module: nn.Module, size: int) -> np.ndarray:
    return _array(module.bias) if module.bias is not None else np.zeros(size, np.float32)


class _GraphBuilder(ChannelRouting, Pooling):
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
        self.alias: dict[torch.fx.Node, list[Term]] = {}
        self.origin: dict[str, str | None] = {}
        self.output: str | None = None
        # Max pooling of potentials whose only user is a spiking activation: fx node -> (input shape, node to add).
        self.pools_before_spike: dict[torch.fx.Node, tuple[tuple[int, ...], MaxPool2dNode]] = {}
        # Nodes that place one concatenated part in its channels (see concatenate): fused away where they can be.
        self.placements: set[str] = set()
        # Channel splits (x.chunk(2, 1)): fx node -> the channel ranges of its pieces.
        self.pieces: dict[torch.fx.Node, list[range]] = {}
        # Reshapes to shapes no layer holds (a shuffle's 5-D view): fx node -> (the value moved, element numbers).
        self.pending: dict[torch.fx.Node, tuple[torch.fx.Node, torch.Tensor]] = {}
        self.names = _call_names(traced.graph)

    # -- the walk ------------------------------------------------------------------------------
    def build(self) -> SpikingGraph:
        for fx_node in self.traced.graph.nodes:
            self._handler(fx_node)(fx_node)
        self.settle_routings()
        if self.output is not None and self.readout == "membrane":
            self.key = torch.eye(int(np.prod(self._graph_node(self.output).shape)))
        if self.output is None or self.key is None:
            raise DeployError("model has no SoftmaxDecode and no key was given")
        key = _array(self.key)
        width = int(np.prod(self._graph_node(self.output).shape))
        if key.ndim != 2 or key.shape[1] != width:
            raise DeployError(f"key of shape {key.shape} does not match the {width} output units of {self.output!r}")
        graph = SpikingGraph(self.nodes, self.output, key, readout=self.readout).check()  # NaN weights, names, key
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
        if fx_node.op == "call_function" and fx_node.target in MAX_POOLS:
            return self.max_pool
        if fx_node.op == "call_function" and fx_node.target is nn.functional.avg_pool2d:
            return self.avg_pool
        if fx_node.target in _PRODUCTS:
            return self.product
        if (fx_node.op == "call_method" and fx_node.target == "mean") or (
            fx_node.op == "call_function" and fx_node.target is torch.mean
        ):
            return self.spatial_mean
        if fx_node.op == "call_function" and fx_node.target in (torch.cat, torch.concat):
            return self.concatenate
        if "value" in fx_node.meta:  # arithmetic on sizes (x.size(), c // groups): known for this input shape
            return self.size_arithmetic
        if fx_node.target in _MOVES:
            return self.move
        if fx_node.target in _SPLITS:
            return self.split
        if fx_node.op == "call_function" and fx_node.target is operator.getitem and fx_node.args[0] in self.pieces:
            return self.piece
        if fx_node.op == "call_function" and fx_node.target is operator.getitem and fx_node.args[0] in self.alias:
            return self.take
        return self.unsupported_call

    # -- helpers -------------------------------------------------------------------------------
    def _name(self, fx_node: torch.fx.Node) -> str:
        """The graph node name of a traced call (see :func:`_call_names`)."""
        return self.names[fx_node]

    def _graph_node(self, name: str) -> GraphNode:
        return next(n for n in self.nodes if n.name == name)

    def _add(self, fx_node: torch.fx.Node, node: GraphNode, term: Term | None = None) -> None:
        self.nodes.append(node)
        self.alias[fx_node] = [term or Term(node.name)]
        if isinstance(node, SpikeNode):
            self.origin[node.name] = None
        elif isinstance(node, (MaxPool2dNode, FlattenNode)):
            self.origin[node.name] = self.origin[node.inputs[0]]
        else:
            self.origin[node.name] = node.name

    _shape = staticmethod(traced_shape)

    def _terms(self, fx_node: torch.fx.Node) -> list[Term]:
        arg = fx_node.args[0] if fx_node.args else None
        if not isinstance(arg, torch.fx.Node):
            raise DeployError(f"{fx_node.name}: expected a tensor input, got {arg!r}")
        if arg in self.pending:
            raise DeployError(
                f"{describe_call(fx_node)} reads values reshaped to {tuple(self.pending[arg][1].shape[1:])}, which no "
                "layer of the graph holds: reshape back to (channels, height, width) or flatten first"
            )
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

    def _require_synaptic(self, terms: list[Term], layer: str) -> None:
        """A weighted layer's synapses carry binary spikes, or the network's input (the encoder): never the
        real values of another linear layer, which no integrate-and-fire network passes between layers."""
        for term in terms:
            origin = self.origin[term.name]
            if not self._spikes_or_input(term.name):
                raise DeployError(
                    f"{layer} receives the real-valued output of {origin!r}, not binary spikes: put a spiking activation "
                    f"between them (e.g. nn.ReLU after {origin!r}, then spikify and train), so that {layer}'s synapses "
                    "carry spikes"
                )

    def _spikes_or_input(self, name: str) -> bool:
        """Whether node ``name`` passes on spikes or the input, also as window counts (sum pooling of them)."""
        origin = self.origin[name]
        if origin is None:
            return True
        node = self._graph_node(origin)
        if isinstance(node, SumPool2dNode):
            return all(self._spikes_or_input(source) for source in node.inputs)
        return isinstance(node, InputNode)

    def _common_scale(self, fx_node: torch.fx.Node, terms: list[Term]) -> float:
        """The one scale of several summands of spikes (a concatenation of calibrated layers' spikes)."""
        scales = {term.scale for term in terms}
        if len(scales) != 1 or any(term.spatial is not None for term in terms):
            raise DeployError(
                f"{describe_call(fx_node)} reads the sum or concatenation of spikes of different weights "
                f"({sorted(scales)}: layers calibrated to different scales, or pooled over different windows), which "
                "one set of synapses cannot fold: give the joined layers one scale (whetstone.calibrate does for "
                "concatenated ones), or let each reach a spiking layer of its own"
            )
        return scales.pop()

    def _one_term(self, fx_node: torch.fx.Node, what: str, terms: list[Term] | None = None) -> Term:
        terms = self._terms(fx_node) if terms is None else terms
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
            raise DeployError(f"{self._name(fx_node)}: Linear must receive flat (N, features) input")
        weight, terms = _array(module.weight), self._terms(fx_node)
        if len(terms) > 1 and not all(term.plain for term in terms):  # scaled spikes, concatenated: one scale
            weight, terms = weight * np.float32(self._common_scale(fx_node, terms)), [Term(t.name) for t in terms]
        if not all(term.plain for term in terms):  # average pooling before it: fold it into the weights (exact)
            term = self._one_term(fx_node, self._name(fx_node))
            weight = weight * np.float32(term.scale)
            if term.spatial is not None:  # (out, C, h*w) @ (h*w, H*W) -> (out, C, H*W): each input's share
                channels = term.spatial_shape[0]
                weight = (weight.reshape(len(weight), channels, -1) @ term.spatial).reshape(len(weight), -1)
            terms = [Term(term.name)]
        self._require_synaptic(terms, self._name(fx_node))
        bias = _bias(module, module.out_features)
        self._add(fx_node, AffineNode(self._name(fx_node), [t.name for t in terms], self._shape(fx_node), weight, bias))

    def conv2d(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        if module.padding_mode != "zeros":
            raise DeployError(f"{self._name(fx_node)}: only zero padding can be exported, got {module.padding_mode!r}")
        # torch resolves padding="same"/"valid" into this (left, right, top, bottom) tuple.
        left, right, top, bottom = module._reversed_padding_repeated_twice
        if left != right or top != bottom:
            raise DeployError(f"{self._name(fx_node)}: asymmetric padding cannot be exported")
        weight, terms = _array(module.weight), self._terms(fx_node)
        if len(terms) > 1 and not all(term.plain for term in terms):  # scaled spikes, concatenated: one scale
            weight, terms = weight * np.float32(self._common_scale(fx_node, terms)), [Term(t.name) for t in terms]
        if not all(term.plain for term in terms):
            term = self._one_term(fx_node, self._name(fx_node))
            if term.spatial is not None:
                raise DeployError(
                    f"{self._name(fx_node)}: receives adaptive average pooling with uneven windows, which folds only into a "
                    "following Linear; pool to a size that divides the input, or flatten before a Linear"
                )
            weight, terms = weight * np.float32(term.scale), [Term(term.name)]
        self._require_synaptic(terms, self._name(fx_node))
        self._add(fx_node, Conv2dNode(
            self._name(fx_node), [t.name for t in terms], self._shape(fx_node), weight, _bias(module, module.out_channels),
            pair(module.stride), (top, left), pair(module.dilation), module.groups,
        ))  # fmt: skip

    def spike(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        if not module.is_binary:
            raise DeployError(
                f"{self._name(fx_node)}: {type(module).__name__} has sharpness {module.get_sharpness():.4g}; "
                "only fully sharpened layers (sharpness 1) are integrate-and-fire neurons"
            )
        pool = self.pools_before_spike.pop(fx_node.args[0], None)
        shape = pool[0] if pool else self._shape(fx_node)
        # A calibrated layer fires on x >= level * threshold and its spikes weigh `level` (folded downstream).
        threshold = np.full(shape, module.spike_threshold * np.float32(module.level_value), dtype=np.float32)
        out = module.level_value
        terms = self._terms(fx_node)
        if any(term.spatial is not None for term in terms):
            raise DeployError(f"{self._name(fx_node)}: receives adaptive average pooling with uneven windows, which folds "
                              "only into a following Linear")  # fmt: skip
        if len({term.scale for term in terms}) == 1 and terms[0].scale != 1.0:  # s v >= theta <=> v >= theta / s
            threshold = threshold / np.float32(terms[0].scale)  # (a pooling's 1 / k, a calibrated layer's scale)
        elif not all(term.plain for term in terms):  # several summands, some averaged: explicit synapses for those
            terms = [self._scaled_synapses(fx_node, term, shape) if not term.plain else term for term in terms]
        # Several inputs are summed into the neuron: a skip connection is just more synapses.
        name = self._name(fx_node)
        self._add(fx_node, SpikeNode(name, [t.name for t in terms], shape, threshold), Term(name, out))
        if pool:  # a step is monotone, so step(max(v)) == max(step(v)): fire first, then OR the window
            pooled = dataclasses.replace(pool[1], inputs=[name])
            self._add(fx_node, pooled, Term(pooled.name, out))

    def _scaled_synapses(self, fx_node: torch.fx.Node, term: Term, shape: tuple[int, ...]) -> Term:
        """One synapse of weight ``term.scale`` per unit (a 1x1 depthwise convolution) from ``term``'s node."""
        channels = shape[0]
        name = f"{self._name(fx_node)}.scale_{term.name}"
        weight = np.full((channels, 1, 1, 1), term.scale, dtype=np.float32)
        node = Conv2dNode(
            name, [term.name], shape, weight, np.zeros(channels, np.float32), (1, 1), (0, 0), (1, 1), channels
        )
        self.nodes.append(node)
        self.origin[name] = name
        return Term(name)

    def flatten_module(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        _check_flatten(self._name(fx_node), module.start_dim, module.end_dim)
        self._flatten(fx_node, self._name(fx_node))

    def flatten_call(self, fx_node: torch.fx.Node) -> None:
        start = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get("start_dim", 0)
        end = fx_node.args[2] if len(fx_node.args) > 2 else fx_node.kwargs.get("end_dim", -1)
        _check_flatten(self._name(fx_node), start, end)
        self._flatten(fx_node, self._name(fx_node))

    def _flatten(self, fx_node: torch.fx.Node, name: str, terms: list[Term] | None = None) -> None:
        term = self._one_term(fx_node, name, terms)
        # A pending uneven pooling is applied by the Linear after this flatten: flatten what it reads.
        shape = (int(np.prod(term.spatial_shape)),) if term.spatial is not None else self._shape(fx_node)
        self._add(fx_node, FlattenNode(name, [term.name], shape), dataclasses.replace(term, name=name))

    def decoder(self, fx_node: torch.fx.Node) -> None:
        inputs = self._plain(fx_node, f"the decoder {self._name(fx_node)!r}")
        if any(name in self.placements for name in inputs):
            raise DeployError(f"the decoder {self._name(fx_node)!r} reads a concatenation: give it one spiking layer")
        self._require_binary(inputs, f"the decoder {self._name(fx_node)!r}")
        self.output = _single(inputs, "the decoder")
        self.key = self.modules[fx_node.target].key
        self.alias[fx_node] = []

    def size_arithmetic(self, fx_node: torch.fx.Node) -> None:
        """``x.size()``, ``c // groups``: numbers fixed by the input shape, not values of the network."""
        self.alias[fx_node] = []

    def skip_sum(self, fx_node: torch.fx.Node) -> None:
        terms = [a for a in fx_node.args if isinstance(a, torch.fx.Node)]
        if len(terms) != len(fx_node.args) or fx_node.kwargs:
            raise DeployError(f"{fx_node.name}: only sums of layer outputs (skip connections) can be exported")
        self.alias[fx_node] = [term for node in terms for term in self.alias[node]]

    def upsample(self, fx_node: torch.fx.Node) -> None:
        raise DeployError(
            f"{self._name(fx_node)}: up-sampling (nn.Upsample) cannot be exported: NIR has no up-sampling node and no "
            "neuromorphic toolchain reads one; the network runs in PyTorch only (a transposed convolution would be "
            "a Conv2d with stride < 1, which NIR cannot express either)"
        )

    def unsupported_module(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        raise DeployError(
            f"{self._name(fx_node)}: {type(module).__name__} has no single-time-step spiking equivalent "
            "(supported: Linear, Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, spiking activations, batch "
            "norm (folded into the weights), Identity, Dropout)"
        )

    def unsupported_call(self, fx_node: torch.fx.Node) -> None:
        name = fx_node.target if isinstance(fx_node.target, str) else getattr(fx_node.target, "__name__", "")
        why = _WHY_NOT.get(name, "has no single-time-step spiking equivalent in whetstone")
        raise DeployError(
            f"{describe_call(fx_node)} {why}; what deploys: Linear, Conv2d, pooling, flatten, `+` (skip connections), "
            "concatenation and selection of channels, a product of spikes (a gate), a positive constant factor, "
            "spiking activations, batch norm after a layer, a sum, a concatenation or a pooling"
        )


#: Why common operations do not deploy, and what to do instead.
_WHY_NOT = {
    "mul": "multiplies in a way no neuron computes (only a positive constant factor, or spikes by spikes, deploy)",
    "mul_": "multiplies in a way no neuron computes (only a positive constant factor, or spikes by spikes, deploy)",
    "truediv": "divides by a value of the network, which no neuron computes",
    "interpolate": "up-samples, which NIR cannot express",
}


#: Which builder method handles a module, by type (first match).
_MODULE_RULES: list[tuple[type | tuple[type, ...], str]] = [
    ((nn.Identity, nn.Dropout), "passthrough"),
    (nn.Linear, "linear"),
    (nn.Conv2d, "conv2d"),
    (SpikingActivation, "spike"),
    ((nn.MaxPool2d, nn.AdaptiveMaxPool2d), "max_pool"),
    (nn.AvgPool2d, "avg_pool"),
    (nn.AdaptiveAvgPool2d, "adaptive_avg_pool"),
    (nn.Flatten, "flatten_module"),
    (SoftmaxDecode, "decoder"),
    (nn.Upsample, "upsample"),
]


#: Products: a value times a constant (a scale, folded into the synapses), or two spike trains (a gate).
_PRODUCTS = {operator.mul, operator.imul, torch.mul, "mul", "mul_", operator.truediv, operator.itruediv, torch.div,
             "div", "div_"}  # fmt: skip

#: Calls that only move a tensor's elements, and calls that split one into pieces.
_MOVES = {"view", "reshape", "transpose", "permute", "contiguous", torch.reshape, torch.transpose, torch.permute}
_SPLITS = {"chunk", "split", torch.chunk, torch.split}


class _ShapesAndSizes(ShapeProp):
    """Shape propagation that also keeps, in ``node.meta["value"]``, every number a call computes from sizes
    (``x.size()``, ``c // groups``): fixed for the input shape, so data-moving calls can be replayed."""

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, (int, torch.Size)) or (
            isinstance(result, tuple) and result and all(isinstance(v, int) for v in result)
        ):
            n.meta["value"] = result
        return result


def _call_names(graph: torch.fx.Graph) -> dict[torch.fx.Node, str]:
    """A unique name per traced call: the module path of a module call (``pool``; a module called again, such
    as one ``nn.MaxPool2d`` used after every convolution, ``pool_1``, ``pool_2``, ...), else the called
    function's name under the module whose forward calls it (``layer1.0.add``; ``layer1.0.add_1`` for its
    second ``+``)."""
    names: dict[torch.fx.Node, str] = {}
    modules = {str(node.target) for node in graph.nodes if node.op == "call_module"}
    seen: set[str] = set()
    for node in graph.nodes:
        if node.op == "call_module":
            stem = str(node.target)
        else:
            owner = list((node.meta.get("nn_module_stack") or {}).values())
            call = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.name)
            stem = f"{owner[-1][0]}.{call}" if owner and owner[-1][0] and node.op != "placeholder" else node.name
        name, index = stem, 0
        while name in seen or (index and name in modules):  # a later call: the next free number
            index += 1
            name = f"{stem}_{index}"
        seen.add(name)
        names[node] = name
    return names


def _float32_on_the_cpu(model: nn.Module) -> nn.Module:
    """``model``, or a float32 copy on the CPU where that is exact (half and bfloat16 weights, any device):
    the graph holds float32. Weights on the meta device (no values) or in float64 (which would round) are
    refused naming the dtype or device."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise DeployError(
            f"{type(model).__name__}'s weights are on the meta device (shapes without values): load them first, "
            "e.g. model.load_state_dict(state, assign=True)"
        )
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    if torch.float64 in dtypes:
        raise DeployError(
            f"{type(model).__name__}'s weights are float64; the graph holds float32, which would round them: "
            "convert with model.float() first"
        )
    if dtypes <= {torch.float32} and all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)  # float16 and bfloat16 widen exactly


def to_spiking_graph(
    model: nn.Module, input_shape: tuple[int, ...], key: torch.Tensor | None = None, readout: str = "spikes"
) -> SpikingGraph:
    """Fold batch norm and convert a fully sharpened model into a :class:`SpikingGraph`.

    A model that runs in time (a recurrent network) builds its own graph: a module of it with a method
    ``spiking_graph(key, prefix)`` (:class:`~whetstone.nn.recurrent.RecurrentSpiking`) returns it.

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
    try:
        input_shape = sizes(input_shape, "input_shape")
    except ValueError as error:
        raise DeployError(str(error)) from None
    model = _float32_on_the_cpu(model)
    try:
        folded = fold_batchnorm(model)
    except ValueError as error:
        raise DeployError(str(error)) from None
    try:
        traced = trace(folded)
    except Exception as error:  # noqa: BLE001 - whatever torch.fx raises: one line, with what it means
        raise DeployError(f"cannot trace {type(model).__name__} with torch.fx: {why_untraceable(error)}") from None
    try:
        fits_in_memory(4 * math.prod(input_shape), "input_shape", input_shape)  # one float32 sample
    except ValueError as error:
        raise DeployError(str(error)) from None
    example = torch.zeros(1, *input_shape)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback of a failure itself
            _ShapesAndSizes(traced).propagate(example)
    except Exception as error:  # noqa: BLE001 - whatever the model raises on this shape: one line
        cause = error.__cause__ or error  # ShapeProp wraps the model's own error in a dump of the node
        reason = " ".join(str(cause).split())[:300] or type(cause).__name__
        if allocation_failure(cause):  # a layer's output at this size: said once, not tried again
            raise DeployError(
                f"input_shape {input_shape}: a forward pass at this size {allocation_failure(cause)}"
            ) from None
        try:
            with torch.no_grad():
                folded(example)
        except Exception:  # noqa: BLE001 - the model itself refuses the shape: say that
            raise DeployError(f"model does not accept input of shape {input_shape}: {reason}") from None
        raise DeployError(
            f"{type(model).__name__} runs on input of shape {input_shape}, but its traced graph does not ({reason}): "
            "torch.fx fixed a Python branch or a shape while tracing; write that part with tensor operations"
        ) from None
    return _GraphBuilder(traced, input_shape, key, readout).build()


def check_deployable(model: nn.Module, input_shape: tuple[int, ...]) -> SpikingGraph:
    """Check, before any training, that ``model`` will deploy once sharpened: a copy is set to sharpness 1
    and converted. Returns that graph; raises :class:`DeployError` naming the first layer that will not
    deploy (an unsupported layer, a real-valued output, a missing decoder), with the reason."""
    probe = copy.deepcopy(model).eval()
    set_model_sharpness(probe, 1.0)
    return to_spiking_graph(probe, input_shape)


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
