"""Integer weights and thresholds for a :class:`~whetstone.graph.nodes.SpikingGraph` (:func:`quantize`): what
chips hold and what the 8-bit engines (:mod:`whetstone.graph.integer`, the ``onnx-int8`` writer) compute exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..utils.checks import boolean, int_in, positive_int
from .nodes import WEIGHTED_NODES, AffineNode, Conv2dNode, DeployError, GraphNode, SpikingGraph, SumPool2dNode

__all__ = ["Registers", "quantize"]


@dataclass(frozen=True)
class Registers:
    """What a chip's registers hold for a spiking layer fed by spikes, in units of one integer weight step:
    :func:`quantize` lowers a layer's (or a channel's) scale until its numbers fit, so the file a target
    writes always loads, at the cost of a little precision where a register binds.

    Args:
        bias: the largest ``|b - T|`` (a unit's integer bias less its integer threshold): Loihi 2's 13-bit
            bias mantissa, or a 16-bit threshold that a bias moves into (Xylo, Speck).
        current: the largest synaptic input a unit may receive, all its excitatory (or all its inhibitory)
            synapses active at once, bias and threshold included: Loihi 2's 24-bit current.
    """

    bias: int | None = None
    current: int | None = None


def quantize(
    graph: SpikingGraph,
    bits: int = 8,
    input_levels: int = 255,
    encoder_bits: int | None = None,
    per_channel: bool = True,
    registers: Registers | None = None,
) -> SpikingGraph:
    """Integer weights: each spiking layer's synaptic weights and biases become integers, weights in
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, and its threshold an integer too.

    A spiking layer's output depends only on the sign of ``sum of its inputs - theta``, so each layer may
    be scaled freely: ``s = (2**(bits-1) - 1) / max|W|`` over all the synapses into it; weights are
    ``round(s W)``, the threshold ``T = round(s theta)`` and the biases ``round(s b)``, the first one
    corrected to ``floor(s (sum b - theta)) + T - (the others)``. Over spikes the weighted sum ``S`` is an
    integer, and ``S + s (b - theta) >= 0`` holds exactly where ``S + floor(s (b - theta)) >= 0``: the
    integer layer computes what the float layer with the rounded weights computes, whatever the bits (so
    :mod:`~whetstone.nn.quantization_aware` training is what the chip runs). The encoder's sum is a multiple
    of ``1 / input_levels``, so its bias is floored to that step. A skip connection of spikes (or of pooled
    spike counts) into the layer gets explicit synapses of weight ``round(s)`` (a 1x1 depthwise
    convolution). A layer fed by spikes or counts alone keeps weight 1 and fires at ``ceil(theta)``,
    exactly. Binary inputs times integer weights sum exactly in any float format, so every layer after
    the encoder is computed bit-exactly by every engine.

    The encoder sees pixels ``p / input_levels`` (``p`` integer), so its membrane, times
    ``input_levels``, is an integer and often lands exactly on the threshold, where float rounding
    would decide differently in each engine. Its bias gets ``+0.5 / input_levels``: exact ties then
    fire (as ``>=`` requires) with a margin that rounding cannot cross, and nothing else changes.

    ``encoder_bits`` gives the spiking layer that reads the pixels a precision of its own (Akida's input
    layer holds 8-bit weights, its other layers 4); the graph's ``quantized_bits`` is then the larger.
    ``per_channel`` scales each output channel (unit, for a dense layer) by its own largest weight where
    the layer has no skip connection, which is finer where the precision is low. The layer keeps one
    threshold (the largest ``round(s_c theta)``) and each channel's bias carries the difference, exactly,
    so any chip with a bias per neuron holds it (a layer fed through a sum pooling, whose biases would be
    counted once per window, gets a threshold per channel instead). ``registers`` (a
    :class:`Registers`) lowers the scale of a layer fed by spikes, or of a channel, until its biases and
    currents fit the chip's registers.
    """
    int_in(bits, "bits", 2, 16)
    positive_int(input_levels, "input_levels")
    boolean(per_channel, "per_channel")
    if encoder_bits is not None:
        int_in(encoder_bits, "encoder_bits", 2, 16)
    if registers is not None and not isinstance(registers, Registers):
        raise ValueError(f"registers must be a whetstone.graph.quantization.Registers or None, got {registers!r}")
    users = graph.consumers()
    by_name = {node.name: node for node in graph.check().nodes}
    replaced: dict[str, GraphNode] = {}
    inserted: dict[str, list[GraphNode]] = {}
    for spike in graph.spiking_nodes():
        thresholds = np.unique(spike.threshold)
        if thresholds.size != 1:
            raise DeployError(f"{spike.name!r}: quantize() needs one threshold per spiking layer")
        theta = float(thresholds[0])
        weighted, direct, others, window = [], [], [], {}
        for name in spike.inputs:
            source = by_name[name]
            behind = by_name[source.inputs[0]] if isinstance(source, SumPool2dNode) else None
            if isinstance(source, WEIGHTED_NODES) or isinstance(behind, WEIGHTED_NODES):
                layer = source if isinstance(source, WEIGHTED_NODES) else behind
                if len(users[layer.name]) != 1:
                    raise DeployError(f"{layer.name!r}: quantize() needs each weighted layer to feed one spiking layer")
                weighted.append(layer)
                window[layer.name] = 1 if layer is source else int(np.prod(source.kernel_size))
                if layer is source:
                    direct.append(layer)
            else:
                others.append(source)  # spikes, or a count of spikes: integers already
        if not weighted:
            replaced[spike.name] = dataclasses.replace(spike, threshold=np.full_like(spike.threshold, np.ceil(theta)))
            continue
        reads_pixels = any(layer.name == graph.encoder for layer in weighted)
        limit = 2 ** ((encoder_bits if reads_pixels and encoder_bits else bits) - 1) - 1
        channels = len(weighted[0].bias)
        own = per_channel and not others
        largest = np.max([np.abs(layer.weight).reshape(channels, -1).max(axis=1) for layer in weighted], axis=0)
        largest = np.maximum(largest.astype(np.float64), 1.0 if others else 1e-12)  # a skip's synapses weigh 1
        scale = limit / largest
        if registers is not None and not reads_pixels:
            scale = np.minimum(scale, _register_scale(registers, weighted, window, len(others), theta))
        if not own:
            scale = np.full(channels, scale.min())
        threshold = np.round(scale * theta)
        biases = {layer.name: np.round(layer.bias * scale) for layer in weighted}
        if direct:  # the first direct layer carries sum(b) - theta, rounded down: exact for integer sums
            first = direct[0].name
            rest = sum((bias for name, bias in biases.items() if name != first), start=np.zeros_like(biases[first]))
            total = sum((layer.bias.astype(np.float64) for layer in weighted), start=np.zeros(channels))
            shared = threshold.max()  # one threshold for the layer: each channel's bias carries its own
            step = input_levels if reads_pixels else 1  # the sums are integers (spikes) or multiples of 1/levels
            biases[first] = np.floor((total - theta) * scale * step) / step + shared - rest
            threshold = np.full(channels, shared)
        for layer in weighted:
            bias = biases[layer.name] + (0.5 / input_levels if layer.name == graph.encoder else 0.0)
            weight = np.clip(np.round(layer.weight * scale.reshape(-1, *[1] * (layer.weight.ndim - 1))), -limit, limit)
            replaced[layer.name] = dataclasses.replace(
                layer, weight=weight.astype(np.float32), bias=bias.astype(np.float32)
            )
        inputs = list(spike.inputs)
        for source in others:  # a skip connection: synapses of weight round(s) from each unit to itself
            synapses = _identity_synapses(f"{spike.name}.from_{source.name}", source, float(max(1, round(scale[0]))))
            inserted.setdefault(spike.name, []).append(synapses)
            inputs[inputs.index(source.name)] = synapses.name
        per_unit = np.broadcast_to(threshold.reshape(-1, *[1] * (len(spike.shape) - 1)), spike.shape)
        replaced[spike.name] = dataclasses.replace(spike, inputs=inputs, threshold=per_unit.astype(np.float32).copy())
    nodes: list[GraphNode] = []
    for node in graph.nodes:
        nodes += inserted.get(node.name, [])
        nodes.append(replaced.get(node.name, node))
    return SpikingGraph(
        nodes,
        graph.output,
        graph.key.copy(),
        {**graph.metadata, "quantized_bits": max(bits, encoder_bits or 0)},
        graph.readout,
    )


def _register_scale(
    registers: Registers, weighted: list[GraphNode], window: dict[str, int], skips: int, theta: float
) -> np.ndarray:
    """Per channel, the largest scale whose integers fit ``registers``, with room for the roundings."""
    channels = len(weighted[0].bias)
    total = sum((np.asarray(layer.bias, np.float64) for layer in weighted), start=np.zeros(channels))
    bound = np.full(channels, np.inf)
    if registers.bias is not None:  # |round(s (b - theta))| plus the threshold's own rounding
        bound = np.minimum(bound, (registers.bias - 2) / np.maximum(np.abs(total - theta), 1e-12))
    if registers.current is not None:  # every synapse of one sign at once, each rounded up by 1/2 at most
        weights = [np.abs(layer.weight).reshape(channels, -1) * window[layer.name] for layer in weighted]
        fan_in = sum(w.shape[1] * window[layer.name] for w, layer in zip(weights, weighted, strict=True)) + skips
        reach = sum(w.sum(axis=1) for w in weights) + skips + np.abs(total) + 2 * abs(theta)
        bound = np.minimum(bound, (registers.current - fan_in / 2 - 4) / np.maximum(reach, 1e-12))
    if np.any(bound < 1):
        raise DeployError(
            f"{weighted[0].name!r}: its biases or currents do not fit the chip's registers ({registers}) even with "
            "weights of 1"
        )
    return bound


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
