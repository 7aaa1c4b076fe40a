"""From a PyTorch model to a :class:`~whetstone.graph.SpikingGraph`: :func:`to_spiking_graph` folds batch
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .activations import SpikingActivation
from .checks import sizes
from .decode import SoftmaxDecode
from .graph import (
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
    dense_weight,
)
from .sharpen import set_model_sharpness
from .tracing import describe_call, fold_batchnorm, trace, why_untraceable

__all__ = ["check_deployable", "to_spiking_graph"]


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
        self._fuse_placements()
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
        if fx_node.op == "call_function" and fx_node.target in _MAX_POOLS:
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

    def _require_synaptic(self, terms: list[_Term], layer: str) -> None:
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

    def _common_scale(self, fx_node: torch.fx.Node, terms: list[_Term]) -> float:
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

    def _one_term(self, fx_node: torch.fx.Node, what: str, terms: list[_Term] | None = None) -> _Term:
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
            weight, terms = weight * np.float32(self._common_scale(fx_node, terms)), [_Term(t.name) for t in terms]
        if not all(term.plain for term in terms):  # average pooling before it: fold it into the weights (exact)
            term = self._one_term(fx_node, self._name(fx_node))
            weight = weight * np.float32(term.scale)
            if term.spatial is not None:  # (out, C, h*w) @ (h*w, H*W) -> (out, C, H*W): each input's share
                channels = term.spatial_shape[0]
                weight = (weight.reshape(len(weight), channels, -1) @ term.spatial).reshape(len(weight), -1)
            terms = [_Term(term.name)]
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
            weight, terms = weight * np.float32(self._common_scale(fx_node, terms)), [_Term(t.name) for t in terms]
        if not all(term.plain for term in terms):
            term = self._one_term(fx_node, self._name(fx_node))
            if term.spatial is not None:
                raise DeployError(
                    f"{self._name(fx_node)}: receives adaptive average pooling with uneven windows, which folds only into a "
                    "following Linear; pool to a size that divides the input, or flatten before a Linear"
                )
            weight, terms = weight * np.float32(term.scale), [_Term(term.name)]
        self._require_synaptic(terms, self._name(fx_node))
        self._add(fx_node, Conv2dNode(
            self._name(fx_node), [t.name for t in terms], self._shape(fx_node), weight, _bias(module, module.out_channels),
            _pair(module.stride), (top, left), _pair(module.dilation), module.groups,
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
        # A calibrated layer fires on x >= scale * threshold and its spikes weigh `scale` (folded downstream).
        threshold = np.full(shape, module.spike_threshold * np.float32(module.scale), dtype=np.float32)
        out = float(module.scale)
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
        self._add(fx_node, SpikeNode(name, [t.name for t in terms], shape, threshold), _Term(name, out))
        if pool:  # a step is monotone, so step(max(v)) == max(step(v)): fire first, then OR the window
            pooled = dataclasses.replace(pool[1], inputs=[name])
            self._add(fx_node, pooled, _Term(pooled.name, out))

    def _scaled_synapses(self, fx_node: torch.fx.Node, term: _Term, shape: tuple[int, ...]) -> _Term:
        """One synapse of weight ``term.scale`` per unit (a 1x1 depthwise convolution) from ``term``'s node."""
        channels = shape[0]
        name = f"{self._name(fx_node)}.scale_{term.name}"
        weight = np.full((channels, 1, 1, 1), term.scale, dtype=np.float32)
        node = Conv2dNode(
            name, [term.name], shape, weight, np.zeros(channels, np.float32), (1, 1), (0, 0), (1, 1), channels
        )
        self.nodes.append(node)
        self.origin[name] = name
        return _Term(name)

    def _pool_module(self, fx_node: torch.fx.Node, kind: type) -> nn.Module:
        """The pooling module a call stands for: the module itself, or one built from a functional call's
        constant arguments (``F.max_pool2d(x, 2)``, ``F.avg_pool2d(out, out.size(3))``); an adaptive max
        pooling with even windows is the max pooling of those windows."""
        if fx_node.op == "call_module" and not isinstance(self.modules[fx_node.target], nn.AdaptiveMaxPool2d):
            return self.modules[fx_node.target]
        settings = {key: self._constant(fx_node, value) for key, value in fx_node.kwargs.items()}
        names = _POOL_ARGUMENTS[fx_node.target if fx_node.target in _POOL_ARGUMENTS else kind]
        settings.update(zip(names, (self._constant(fx_node, a) for a in fx_node.args[1:])))
        if settings.pop("return_indices", False):
            raise DeployError(f"{describe_call(fx_node)} returns the indices of the maxima, which no neuron computes")
        if fx_node.target is nn.functional.adaptive_max_pool2d or fx_node.op == "call_module":
            (_, height, width), (_, out_h, out_w) = self._shape(fx_node.args[0]), self._shape(fx_node)
            if height % out_h or width % out_w:
                raise DeployError(f"{describe_call(fx_node)}: adaptive max pooling with uneven windows ({height}x{width} -> "
                                  f"{out_h}x{out_w}) cannot be exported; pool to a size that divides the input")  # fmt: skip
            return nn.MaxPool2d((height // out_h, width // out_w))
        return kind(**settings)

    def _constant(self, fx_node: torch.fx.Node, value: Any) -> Any:
        """An argument of a call as the number it is for this input shape (``out.size(3)`` is one)."""
        if not isinstance(value, torch.fx.Node):
            return value
        if "value" not in value.meta:
            raise DeployError(f"{describe_call(fx_node)} takes an argument computed from the data, not from sizes")
        return value.meta["value"]

    def max_pool(self, fx_node: torch.fx.Node) -> None:
        module = self._pool_module(fx_node, nn.MaxPool2d)
        settings = _pool_settings(fx_node, module)
        if _pair(module.dilation) != (1, 1):
            raise DeployError(f"{self._name(fx_node)}: dilated max pooling cannot be exported")
        terms = self._terms(fx_node)
        spikes = all(term.spatial is None and self.origin[term.name] is None for term in terms)
        scale = self._common_scale(fx_node, terms) if spikes else 1.0  # max(s x) = s max(x): OR, still scaled
        inputs = [t.name for t in terms] if spikes else self._plain(fx_node, f"max pooling {self._name(fx_node)!r}")
        node = MaxPool2dNode(self._name(fx_node), inputs, self._shape(fx_node), *settings)
        users = list(fx_node.users)
        if any(self.origin[i] is not None for i in inputs) and len(users) == 1 and _is_spike(users[0], self.modules):
            # Max pooling of membrane potentials straight into a spike: exported as spike, then pool.
            self.pools_before_spike[fx_node] = (self._shape(fx_node.args[0]), node)
            self.alias[fx_node] = [_Term(name) for name in inputs]
            return
        self._require_binary(inputs, f"max pooling {self._name(fx_node)!r}")
        self._add(fx_node, node, _Term(node.name, scale))

    def avg_pool(self, fx_node: torch.fx.Node) -> None:
        module = self._pool_module(fx_node, nn.AvgPool2d)
        kernel, stride, padding = _pool_settings(fx_node, module)
        if module.divisor_override is not None or (padding != (0, 0) and not module.count_include_pad):
            raise DeployError(f"{self._name(fx_node)}: only plain average pooling can be exported")
        self._sum_pool(fx_node, kernel, stride, padding)

    def adaptive_avg_pool(self, fx_node: torch.fx.Node) -> None:
        channels, height, width = self._shape(fx_node.args[0])
        _, out_h, out_w = self._shape(fx_node)
        if height % out_h == 0 and width % out_w == 0:  # even windows: an ordinary average pooling
            kernel = (height // out_h, width // out_w)
            self._sum_pool(fx_node, kernel, kernel, (0, 0))
            return
        name = self._name(fx_node)
        term = self._one_term(fx_node, name)
        if not term.plain:
            raise DeployError(f"{name}: adaptive average pooling of already averaged values cannot be folded")
        spatial = _adaptive_average_matrix((height, width), (out_h, out_w))
        self.alias[fx_node] = [_Term(term.name, 1.0, spatial, (channels, height, width), name)]

    def _sum_pool(
        self, fx_node: torch.fx.Node, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
    ) -> None:
        """Average pooling = sum pooling (an exact count of the inputs) whose 1 / window scale waits in the term."""
        name = self._name(fx_node)
        terms = self._terms(fx_node)  # a sum (a concatenation's placements) pools as one: pooling is linear
        if any(term.spatial is not None for term in terms) or len({term.scale for term in terms}) != 1:
            raise DeployError(f"{name}: pooling of unevenly averaged values cannot be folded")
        node = SumPool2dNode(name, [term.name for term in terms], self._shape(fx_node), kernel, stride, padding)
        self._add(fx_node, node, _Term(name, terms[0].scale / (kernel[0] * kernel[1]), pooled_by=name))

    def spatial_mean(self, fx_node: torch.fx.Node) -> None:
        """``x.mean((2, 3))``: global average pooling (a sum over the whole map, its ``1 / (h w)`` folded into what
        reads it), then a flatten unless ``keepdim``."""
        source = self._shape(fx_node.args[0])
        dims = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get("dim")
        keepdim = fx_node.args[2] if len(fx_node.args) > 2 else fx_node.kwargs.get("keepdim", False)
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        if len(source) != 3 or sorted(d % 4 for d in dims) != [2, 3]:
            self.unsupported_call(fx_node)
        channels, height, width = source
        name = self._name(fx_node)
        term = self._one_term(fx_node, name)
        if term.spatial is not None:
            raise DeployError(f"{name}: the mean of unevenly averaged values cannot be folded")
        pool = SumPool2dNode(name if keepdim else f"{name}.sum", [term.name], (channels, 1, 1), (height, width),
                             (height, width), (0, 0))  # fmt: skip
        scaled = _Term(pool.name, term.scale / (height * width), pooled_by=name)
        if keepdim:
            self._add(fx_node, pool, scaled)
            return
        self.nodes.append(pool)
        self.origin[pool.name] = pool.name
        self._add(fx_node, FlattenNode(name, [pool.name], (channels,)), dataclasses.replace(scaled, name=name))

    def flatten_module(self, fx_node: torch.fx.Node) -> None:
        module = self.modules[fx_node.target]
        _check_flatten(self._name(fx_node), module.start_dim, module.end_dim)
        self._flatten(fx_node, self._name(fx_node))

    def flatten_call(self, fx_node: torch.fx.Node) -> None:
        start = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get("start_dim", 0)
        end = fx_node.args[2] if len(fx_node.args) > 2 else fx_node.kwargs.get("end_dim", -1)
        _check_flatten(self._name(fx_node), start, end)
        self._flatten(fx_node, self._name(fx_node))

    def _flatten(self, fx_node: torch.fx.Node, name: str, terms: list[_Term] | None = None) -> None:
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

    def concatenate(self, fx_node: torch.fx.Node) -> None:
        """``torch.cat`` along channels (or features) is a sum of placements: each part's values, through synapses
        of weight 1, into its own channels of the whole (a 1x1 convolution, or a Linear, zero elsewhere). Spikes
        stay spikes; a part that is a layer's real output has its placement fused into that layer's weights once
        the graph is complete (:meth:`_fuse_placements`), so no extra layer is left between neurons."""
        parts = fx_node.args[0] if fx_node.args else fx_node.kwargs.get("tensors")
        dim = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get("dim", 0)
        shape = self._shape(fx_node)
        if not isinstance(parts, (list, tuple)) or not all(isinstance(p, torch.fx.Node) for p in parts):
            self.unsupported_call(fx_node)
        if dim % (len(shape) + 1) != 1:
            raise DeployError(
                f"{describe_call(fx_node)} concatenates along dimension {dim}; only channels (dim=1) deploy"
            )
        stem, offset, terms = self._name(fx_node), 0, []
        for index, part in enumerate(parts):
            width = self._shape(part)[0]
            for number, term in enumerate(self.alias[part]):
                if term.spatial is not None:
                    raise DeployError(f"{stem}: concatenates unevenly averaged values, which cannot be folded")
                name = f"{stem}.part{index}" + (f"_{number}" if number else "")
                spikes = self.origin[term.name] is None  # placed by weight-1 synapses, spikes stay spikes
                weight = 1.0 if spikes else term.scale  # (a calibrated layer's spikes keep their scale in the term)
                self.nodes.append(_placement(name, term.name, weight, self._shape(part), shape, offset))
                self.origin[name] = self.origin[term.name]
                self.placements.add(name)
                terms.append(_Term(name, term.scale if spikes else 1.0))
            offset += width
        self.alias[fx_node] = terms

    def size_arithmetic(self, fx_node: torch.fx.Node) -> None:
        """``x.size()``, ``c // groups``: numbers fixed by the input shape, not values of the network."""
        self.alias[fx_node] = []

    @staticmethod
    def _replayed(fx_node: torch.fx.Node, index: torch.Tensor) -> Any:
        """A data-moving call replayed on ``index`` (element numbers) with the sizes it was traced with."""
        args = [a.meta["value"] if isinstance(a, torch.fx.Node) else a for a in fx_node.args[1:]]
        kwargs = {k: v.meta["value"] if isinstance(v, torch.fx.Node) else v for k, v in fx_node.kwargs.items()}
        if isinstance(fx_node.target, str):
            return getattr(index, fx_node.target)(*args, **kwargs)
        return fx_node.target(index, *args, **kwargs)

    def move(self, fx_node: torch.fx.Node) -> None:
        """``view``/``reshape``/``transpose``/``permute``/``contiguous``, alone or in a chain: nothing where the
        elements stay in order (or a flatten), weight-1 synapses into permuted channels where the chain permutes
        channels (ShuffleNet's shuffle); intermediate shapes wait for the rest of the chain; refused otherwise."""
        source = fx_node.args[0]
        if source in self.pending:
            base, index = self.pending[source]
        else:
            base, shape = source, self._shape(source)
            index = torch.arange(math.prod(shape), dtype=torch.float64).reshape(1, *shape)
        moved = self._replayed(fx_node, index)
        base_shape, shape = self._shape(base), tuple(moved.shape[1:])
        order = moved.reshape(-1).long().numpy()
        name = self._name(fx_node)
        if np.array_equal(order, np.arange(len(order))) and shape == base_shape:
            self.alias[fx_node] = self.alias[base]
        elif np.array_equal(order, np.arange(len(order))) and len(shape) == 1 and len(base_shape) > 1:
            self._flatten(fx_node, name, self.alias[base])
        elif len(shape) == 3 and shape == base_shape:
            channels = order.reshape(shape)[:, 0, 0] // (shape[1] * shape[2])
            if not np.array_equal(order.reshape(shape), _channel_gather(channels, shape)):
                raise DeployError(
                    f"{describe_call(fx_node)} moves values between positions; only a permutation of channels deploys"
                )
            self._select(fx_node, channels, shape, f"{name}.order", self.alias[base])
        else:
            self.pending[fx_node] = (base, moved)  # an intermediate shape: the calls that follow resolve it

    def split(self, fx_node: torch.fx.Node) -> None:
        """``x.chunk(n, 1)`` / ``x.split(size, 1)``: each piece a range of channels, taken by :meth:`piece`."""
        shape = self._shape(fx_node.args[0])
        pieces = self._replayed(fx_node, torch.arange(math.prod(shape), dtype=torch.float64).reshape(1, *shape))
        dims = {tuple(piece.shape[2:]) == tuple(shape[1:]) for piece in pieces}
        if dims != {True} or len(shape) != 3:
            raise DeployError(f"{describe_call(fx_node)} splits other than along channels; only channel splits deploy")
        starts = [int(piece.reshape(-1)[0]) // (shape[1] * shape[2]) for piece in pieces]
        self.pieces[fx_node] = [
            range(start, start + piece.shape[1]) for start, piece in zip(starts, pieces, strict=True)
        ]
        self.alias[fx_node] = []

    def piece(self, fx_node: torch.fx.Node) -> None:
        split, index = fx_node.args
        channels = np.array(self.pieces[split][index])
        source = split.args[0]
        self._select(fx_node, channels, self._shape(source), f"{self._name(fx_node)}.take", self.alias[source])

    def take(self, fx_node: torch.fx.Node) -> None:
        """``x[:, :8]``, ``x[:, idx]``: a selection of channels (or features), as weight-1 synapses into the taken
        ones; anything that takes positions or samples is refused."""
        source = fx_node.args[0]
        shape = self._shape(source)
        taken = self._replayed(fx_node, torch.arange(math.prod(shape), dtype=torch.float64).reshape(1, *shape))
        if not isinstance(taken, torch.Tensor) or taken.dim() != len(shape) + 1 or taken.shape[0] != 1:
            raise DeployError(f"{describe_call(fx_node)} indexes other than a selection of channels; only that deploys")
        order = taken.reshape(-1).long().numpy()
        if len(shape) == 3:
            channels = order.reshape(taken.shape[1:])[:, 0, 0] // (shape[1] * shape[2])
            if tuple(taken.shape[2:]) != shape[1:] or not np.array_equal(
                order.reshape(taken.shape[1:]), _channel_gather(channels, shape)
            ):
                raise DeployError(f"{describe_call(fx_node)} takes positions, not whole channels; only a selection "
                                  "of channels deploys")  # fmt: skip
        else:
            channels = order
        self._select(fx_node, channels, shape, f"{self._name(fx_node)}.take", self.alias[source])

    def _select(
        self, fx_node: torch.fx.Node, channels: np.ndarray, shape: tuple[int, ...], stem: str, sources: list[_Term]
    ) -> None:
        """Output channel ``k`` is input channel ``channels[k]``: weight-1 synapses (a 1x1 convolution) from each
        of ``sources`` (the terms of the value moved)."""
        terms = []
        for number, term in enumerate(sources):
            if term.spatial is not None:
                raise DeployError(f"{stem}: moves unevenly averaged values, which cannot be folded")
            matrix = np.zeros((len(channels), shape[0]), dtype=np.float32)
            matrix[np.arange(len(channels)), channels] = term.scale
            name = stem + (f"_{number}" if number else "")
            self.nodes.append(_routing(name, term.name, matrix, (len(channels), *shape[1:])))
            self.origin[name] = self.origin[term.name]  # moved spikes are spikes
            self.placements.add(name)
            terms.append(_Term(name))
        self.alias[fx_node] = terms

    def _fuse_placements(self) -> None:
        """A placement whose input is a layer that feeds nothing else becomes part of that layer: its weights and
        bias written into the placed channels (zero elsewhere), repeated until none is left to fuse (a selection
        of a shuffle of a concatenation becomes one layer). Placements of spikes stay (weight-1 synapses)."""
        while True:
            users: dict[str, int] = {node.name: 0 for node in self.nodes}
            for node in self.nodes:
                for name in node.inputs:
                    users[name] += 1
            candidates = (
                (placement, self._graph_node(placement.inputs[0]))
                for placement in self.nodes
                if placement.name in self.placements
            )
            found = next(
                (
                    (placement, source)
                    for placement, source in candidates
                    if isinstance(source, WEIGHTED_NODES) and users[source.name] == 1 and source.name != self.output
                ),
                None,
            )
            if found is None:
                return
            placement, source = found
            fused = _fused(placement, source)
            self.nodes[self.nodes.index(source)] = fused
            self.nodes.remove(placement)
            for node in self.nodes:
                node.inputs = [fused.name if name == placement.name else name for name in node.inputs]
            if self.output == placement.name:
                self.output = fused.name

    def product(self, fx_node: torch.fx.Node) -> None:
        """``x * c`` or ``x / c`` with a positive constant ``c``: a scale, folded into the synapses (or threshold) that
        read it. ``a * g`` of two spike trains (a squeeze-and-excitation gate: spikes times a per-channel spike):
        ``1`` exactly where both fire, the integrate-and-fire neuron ``1[a + g >= 1.5]``, the gate's spikes
        reaching every position it covers through weight-1 synapses."""
        left, right = fx_node.args[:2]
        dividing = fx_node.target in (operator.truediv, operator.itruediv, torch.div, "div", "div_")
        values = [arg for arg in (left, right) if isinstance(arg, torch.fx.Node) and "value" not in arg.meta]
        if len(values) == 1 and not fx_node.kwargs:
            constant = self._constant(fx_node, right if values[0] is left else left)
            if dividing and values[0] is not left:
                raise DeployError(
                    f"{describe_call(fx_node)} divides by a value of the network, which no neuron computes"
                )
            if isinstance(constant, bool) or not isinstance(constant, (int, float)) or not 0 < constant < math.inf:
                raise DeployError(f"{describe_call(fx_node)} multiplies by {constant!r}; only a positive number folds into "
                                  "the synapses (a tensor of factors, or a negative one, does not)")  # fmt: skip
            factor = 1.0 / constant if dividing else float(constant)
            terms = self.alias[values[0]]
            self.alias[fx_node] = [dataclasses.replace(term, scale=term.scale * factor) for term in terms]
            return
        if len(values) != 2 or dividing or fx_node.kwargs:
            self.unsupported_call(fx_node)
        self._gate(fx_node, values)

    def _gate(self, fx_node: torch.fx.Node, operands: list[torch.fx.Node]) -> None:
        name, shape, inputs, scale = self._name(fx_node), self._shape(fx_node), [], 1.0
        for operand in operands:
            terms = self.alias[operand]
            term = terms[0] if len(terms) == 1 else None
            if term is None or term.spatial is not None or self.origin[term.name] is not None:
                source = self.origin[term.name] if term is not None else None
                what = f"the real-valued output of {source!r}" if source else "a value that is not binary spikes"
                raise DeployError(
                    f"{describe_call(fx_node)} multiplies {what}: a product is deployable only between spikes (a gate of "
                    "spikes by spikes is one neuron that fires where both do); put a spiking activation before the "
                    "product (e.g. an nn.ReLU on the gated value), or build the model without the gate"
                )
            scale *= term.scale  # (s a)(r g) = s r (a AND g): the product of calibrated spikes weighs s r
            inputs.append(self._broadcast(f"{name}.spread{len(inputs)}", term.name, self._shape(operand), shape))
        node = SpikeNode(name, inputs, shape, np.full(shape, 1.5, dtype=np.float32))
        self._add(fx_node, node, _Term(name, scale))

    def _broadcast(self, name: str, source: str, given: tuple[int, ...], shape: tuple[int, ...]) -> str:
        """``source`` (spikes of shape ``given``) where a product broadcasts it to ``shape``: itself where the
        shapes agree, else weight-1 synapses from each unit to every position it covers (a convolution of a
        1x1 map whose kernel spans the whole map, padded to give every position)."""
        if given == shape:
            return source
        if len(shape) != 3 or len(given) != 3 or any(g not in (1, s) for g, s in zip(given, shape, strict=True)):
            raise DeployError(f"{name}: a gate of shape {given} cannot be spread over values of shape {shape}")
        channels, kernel = shape[0], (shape[1] // given[1], shape[2] // given[2])
        groups = channels if given[0] == channels else 1
        weight = np.ones((channels, given[0] // groups, *kernel), dtype=np.float32)
        padding = (kernel[0] - 1, kernel[1] - 1)
        node = Conv2dNode(
            name, [source], shape, weight, np.zeros(channels, np.float32), (1, 1), padding, (1, 1), groups
        )
        self.nodes.append(node)
        self.origin[name] = None  # spikes moved by weight-1 synapses stay spikes
        self.placements.add(name)
        return name

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


#: The arguments of F.max_pool2d and F.avg_pool2d after the input, in order (they differ from the modules').
_POOL_ARGUMENTS = {
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    nn.functional.adaptive_max_pool2d: ("output_size", "return_indices"),
}
#: Functional max poolings (with constant arguments, as modules would hold them).
_MAX_POOLS = {nn.functional.max_pool2d, torch.max_pool2d, nn.functional.adaptive_max_pool2d}
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


def _channel_gather(channels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The element indices of taking input channel ``channels[k]`` as output channel ``k`` (positions kept)."""
    positions = np.arange(shape[1] * shape[2]).reshape(1, shape[1], shape[2])
    return channels[:, None, None] * (shape[1] * shape[2]) + positions


def _placement(
    name: str, source: str, weight: float, part: tuple[int, ...], whole: tuple[int, ...], offset: int
) -> GraphNode:
    """Synapses of ``weight`` from each unit of ``source`` (of shape ``part``) to the same unit, ``offset``
    channels on, of ``whole``: a 1x1 convolution for (C, H, W) values, a Linear for flat ones."""
    matrix = np.zeros((whole[0], part[0]), dtype=np.float32)
    matrix[offset + np.arange(part[0]), np.arange(part[0])] = weight
    return _routing(name, source, matrix, whole)


def _routing(name: str, source: str, matrix: np.ndarray, shape: tuple[int, ...]) -> GraphNode:
    """Synapses ``matrix`` (out, in) from ``source`` to each position of a value of ``shape``, no bias: a 1x1
    convolution for (C, H, W) values, a Linear for flat ones."""
    bias = np.zeros(len(matrix), np.float32)
    if len(shape) == 3:
        return Conv2dNode(name, [source], shape, matrix[:, :, None, None].copy(), bias, (1, 1), (0, 0), (1, 1), 1)
    return AffineNode(name, [source], shape, matrix.copy(), bias)


def _fused(placement: GraphNode, layer: GraphNode) -> GraphNode:
    """``layer`` followed by ``placement`` as one layer of the same name (grouped convolutions made dense)."""
    matrix = placement.weight.reshape(len(placement.weight), -1)  # (whole, part)
    if isinstance(layer, AffineNode):
        return dataclasses.replace(layer, shape=placement.shape, weight=matrix @ layer.weight, bias=matrix @ layer.bias)
    fused = np.einsum("oc,cikl->oikl", matrix, dense_weight(layer.weight, layer.groups)).astype(np.float32)
    return dataclasses.replace(layer, shape=placement.shape, weight=fused, bias=matrix @ layer.bias, groups=1)


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
    ((nn.MaxPool2d, nn.AdaptiveMaxPool2d), "max_pool"),
    (nn.AvgPool2d, "avg_pool"),
    (nn.AdaptiveAvgPool2d, "adaptive_avg_pool"),
    (nn.Flatten, "flatten_module"),
    (SoftmaxDecode, "decoder"),
    (nn.Upsample, "upsample"),
]


def _pool_settings(
    fx_node: torch.fx.Node, module: nn.Module
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Kernel, stride and padding of a pooling; ``ceil_mode=True`` is refused only where it changes the output
    (a partial window at the edge), since the node is written with floor's arithmetic."""
    kernel, stride, padding = (_pair(module.kernel_size), _pair(module.stride or module.kernel_size),
                               _pair(module.padding))  # fmt: skip
    if module.ceil_mode:
        size = _GraphBuilder._shape(fx_node.args[0])[1:]
        floor = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(size, padding, kernel, stride, strict=True))
        if floor != _GraphBuilder._shape(fx_node)[1:]:
            raise DeployError(
                f"{describe_call(fx_node)}: ceil_mode=True adds a partial window at the edge here ({size} -> "
                f"{_GraphBuilder._shape(fx_node)[1:]}, not {floor}), which cannot be exported; use ceil_mode=False"
            )
    return kernel, stride, padding


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
    example = torch.zeros(1, *input_shape)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback of a failure itself
            _ShapesAndSizes(traced).propagate(example)
    except Exception as error:  # noqa: BLE001 - whatever the model raises on this shape: one line
        cause = error.__cause__ or error  # ShapeProp wraps the model's own error in a dump of the node
        reason = " ".join(str(cause).split())[:300] or type(cause).__name__
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
