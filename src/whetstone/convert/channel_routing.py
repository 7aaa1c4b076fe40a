"""How a deployable graph routes channels: concatenations, channel slices and splits, moves (views,
transposes, shuffles) and gates of spikes by spikes, each as synapses of weight 1 (or a coincidence neuron),
fused into the layers that compute their parts once the graph is complete. A part of :mod:`.graph_builder`'s
builder (:class:`ChannelRouting` is one of its bases): the rest of its calls are layers, poolings and spikes."""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import numpy as np
import torch

from ..graph.nodes import (
    WEIGHTED_NODES,
    AffineNode,
    Conv2dNode,
    DeployError,
    GraphNode,
    SpikeNode,
    SumPool2dNode,
    consumers,
    dense_weight,
)
from ..nn.tracing import describe_call
from .graph_term import Term

__all__ = ["ChannelRouting"]


class ChannelRouting:
    """The builder's handlers of calls that route channels (mixed into :class:`~.graph_builder._GraphBuilder`,
    whose state and bookkeeping they use: ``nodes``, ``alias``, ``origin``, ``placements``, ``_terms``...)."""

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
        if len(parts) == 1:  # torch.cat([x], 1), as a DenseNet's first layer of a block writes it, is x
            self.alias[fx_node] = self.alias[parts[0]]
            return
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
                terms.append(Term(name, term.scale if spikes else 1.0))
            offset += width
        self.alias[fx_node] = terms

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
        self, fx_node: torch.fx.Node, channels: np.ndarray, shape: tuple[int, ...], stem: str, sources: list[Term]
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
            terms.append(Term(name))
        self.alias[fx_node] = terms

    def settle_routings(self) -> None:
        """Once the graph is complete: placements fused into the layers that compute their parts, chains of
        routings composed into one, routings fused into the one layer that reads them, and the scales left on
        routings moved into their readers; what stays is weight-1 synapses of spikes."""
        self._fuse_placements()
        self._compose_routings()
        self._fuse_routing_into_readers()
        self._move_routing_scales_into_readers()

    def _fuse_placements(self) -> None:
        """A placement whose input is a layer that feeds nothing else becomes part of that layer: its weights and
        bias written into the placed channels (zero elsewhere), repeated until none is left to fuse (a selection
        of a shuffle of a concatenation becomes one layer). So does a placement behind a sum pooling of such a
        layer (a DenseNet transition's output), the pooling then over the whole's channels: a placement moves
        channels, which commutes with pooling each channel. Placements of spikes stay (weight-1 synapses)."""
        while True:
            users = consumers(self.nodes)
            found = None
            for placement in (node for node in self.nodes if node.name in self.placements):
                source = self._graph_node(placement.inputs[0])
                if isinstance(source, WEIGHTED_NODES) and self._read_once(source, users):
                    found = placement, source, None
                elif isinstance(source, SumPool2dNode) and self._read_once(source, users):
                    layer = self._graph_node(source.inputs[0])
                    if isinstance(layer, WEIGHTED_NODES) and self._read_once(layer, users):
                        found = (placement, layer, source) if isinstance(placement, Conv2dNode) else None
                if found is not None:
                    break
            if found is None:
                return
            placement, source, pool = found
            fused = _fused(placement, source)
            if pool is not None:  # the layer keeps its own positions, before the pooling
                fused = dataclasses.replace(fused, shape=(placement.shape[0], *source.shape[1:]))
            self.nodes[self.nodes.index(source)] = fused
            self.nodes.remove(placement)
            result = fused.name
            if pool is not None:  # the pooling now sums the whole's channels, which the placement filled
                pooled = dataclasses.replace(pool, inputs=[fused.name], shape=(placement.shape[0], *pool.shape[1:]))
                self.nodes[self.nodes.index(pool)] = pooled
                result = pooled.name
            for node in self.nodes:
                node.inputs = [result if name == placement.name else name for name in node.inputs]
            if self.output == placement.name:
                self.output = result

    def _read_once(self, node: GraphNode, users: dict[str, list[GraphNode]]) -> bool:
        """Whether ``node`` feeds one node alone and is not the network's output (so it may be fused away)."""
        return len(users[node.name]) == 1 and node.name != self.output

    def _fuse_routing_into_readers(self) -> None:
        """A placement or channel selection (weight-only synapses from each position to the same position) read
        by one layer alone becomes part of that layer's weights, which then read the routed values themselves.
        Left between the two, the routing's weights (a calibrated spike's scale) would compose with the layer's
        after a chip's quantization, into weights that are not integers."""
        while True:
            users = consumers(self.nodes)
            found = next(
                (
                    (routing, users[routing.name][0])
                    for routing in self.nodes
                    if routing.name in self.placements
                    and self._read_once(routing, users)
                    and users[routing.name][0].inputs == [routing.name]
                    and _pointwise(routing, users[routing.name][0])
                ),
                None,
            )
            if found is None:
                return
            routing, reader = found
            matrix = _matrix(routing)  # (routed, source)
            if isinstance(reader, AffineNode):
                weight = reader.weight @ matrix
                fused = dataclasses.replace(reader, inputs=list(routing.inputs), weight=weight.astype(np.float32))
            else:
                weight = np.einsum("okhw,kc->ochw", dense_weight(reader.weight, reader.groups), matrix)
                fused = dataclasses.replace(
                    reader, inputs=list(routing.inputs), weight=weight.astype(np.float32), groups=1
                )
            self.nodes[self.nodes.index(reader)] = fused
            self.nodes.remove(routing)

    def _compose_routings(self) -> None:
        """A routing read by a routing (a selection of a concatenation, a shuffle of a split) becomes one routing
        from the first one's source: the product of their weights. The first stays only while others read it."""
        while True:
            by_name = {node.name: node for node in self.nodes}
            found = next(
                (
                    (outer, by_name[outer.inputs[0]])
                    for outer in self.nodes
                    if outer.name in self.placements
                    and len(outer.inputs) == 1
                    and outer.inputs[0] in self.placements
                    and outer.inputs[0] in by_name
                    and _pointwise(by_name[outer.inputs[0]], outer)  # the inner one, into a node of its kind
                    and _pointwise(outer, outer)  # and the outer one pointwise too
                ),
                None,
            )
            if found is None:
                return
            outer, inner = found
            product = _matrix(outer) @ _matrix(inner)
            shape = (len(product), product.shape[1], *outer.weight.shape[2:])
            composed = dataclasses.replace(outer, inputs=list(inner.inputs), weight=product.reshape(shape))
            self.nodes[self.nodes.index(outer)] = composed
            if not consumers(self.nodes)[inner.name] and inner.name != self.output:
                self.nodes.remove(inner)

    def _move_routing_scales_into_readers(self) -> None:
        """A layer that reads routings alone, each read by it alone, whose synapses into each of its input channels
        all weigh one value (a calibrated spike's scale): that value moves into the layer's weights for the
        channel and the routings keep weight 1. A ShuffleNet unit's convolution reads a split of a shuffled
        concatenation of two layers' spikes, each with its own scale; left on the routings, the scales would
        compose with a chip's integer weights into weights that are not integers."""
        users = consumers(self.nodes)
        by_name = {node.name: node for node in self.nodes}
        for index, reader in enumerate(self.nodes):
            if reader.name in self.placements or not isinstance(reader, WEIGHTED_NODES):
                continue
            routings = [by_name[name] for name in reader.inputs]
            if not all(
                r.name in self.placements and _pointwise(r, reader) and users[r.name] == [reader] for r in routings
            ):
                continue
            matrices = [_matrix(routing) for routing in routings]  # (reader's input channels, source's)
            scale = _one_value_per_row(matrices)
            if scale is None or np.all(scale == 1.0):
                continue
            for routing, matrix in zip(routings, matrices, strict=True):
                moved = (matrix / scale[:, None]).reshape(routing.weight.shape).astype(np.float32)
                self.nodes[self.nodes.index(routing)] = dataclasses.replace(routing, weight=moved)
            self.nodes[index] = dataclasses.replace(reader, weight=_scaled_inputs(reader, scale))

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
        self._add(fx_node, node, Term(name, scale))

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


def _matrix(routing: GraphNode) -> np.ndarray:
    """A pointwise routing's weights as a (routed, source) matrix."""
    return routing.weight.reshape(len(routing.weight), -1)


def _one_value_per_row(matrices: list[np.ndarray]) -> np.ndarray | None:
    """The one nonzero value of each row across ``matrices`` (1 for a row without any), or None where a row
    has two."""
    values = np.ones(len(matrices[0]))
    for row in range(len(values)):
        nonzero = np.unique(np.concatenate([matrix[row][matrix[row] != 0] for matrix in matrices]))
        if len(nonzero) > 1:
            return None
        if len(nonzero):
            values[row] = nonzero[0]
    return values


def _scaled_inputs(layer: GraphNode, scale: np.ndarray) -> np.ndarray:
    """``layer``'s weights with input channel (feature) ``c`` multiplied by ``scale[c]`` (grouped convolutions
    too: each output channel reads its own group's inputs)."""
    if isinstance(layer, AffineNode):
        return (layer.weight * scale[None, :]).astype(np.float32)
    out_channels, per_group = layer.weight.shape[:2]
    group = np.arange(out_channels) // (out_channels // layer.groups)
    columns = group[:, None] * per_group + np.arange(per_group)[None, :]
    return (layer.weight * scale[columns][:, :, None, None]).astype(np.float32)


def _pointwise(routing: GraphNode, reader: GraphNode) -> bool:
    """Whether ``routing`` is weight-only synapses from each position to the same position (a 1x1 convolution
    without bias, or a Linear without bias) into ``reader``, a layer of the same kind that can absorb it."""
    if np.any(routing.bias):
        return False
    if isinstance(routing, AffineNode):
        return isinstance(reader, AffineNode)
    return (
        isinstance(routing, Conv2dNode)
        and isinstance(reader, Conv2dNode)
        and routing.weight.shape[2:] == (1, 1)
        and routing.groups == 1
        and tuple(routing.stride) == (1, 1)
        and tuple(routing.padding) == (0, 0)
    )
