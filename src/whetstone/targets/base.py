"""What every export target shares: the :class:`Target` record, the graph rewrites targets need before a
file is written, the check of a file in its consumer's own software (:class:`Verification`) and the chip
fit report (:class:`FitReport`)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..export.nir import GENERIC, NirStyle
from ..graph.nodes import (
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
from ..graph.quantization import Registers, quantize

__all__ = ["FitCheck", "FitReport", "Target", "Verification", "average_pools", "chain_only", "positive_thresholds"]


@dataclass(frozen=True)
class FitCheck:
    """One limit of a chip, checked against one part of the graph."""

    part: str  # the layer (or "network") checked
    limit: str  # what the chip allows
    value: str  # what the graph needs
    fits: bool
    source: str  # where the limit is published


@dataclass
class FitReport:
    """Whether a graph fits a chip, limit by limit (see :meth:`table`)."""

    chip: str
    checks: list[FitCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(check.fits for check in self.checks)

    def failures(self) -> list[FitCheck]:
        return [check for check in self.checks if not check.fits]

    def table(self) -> str:
        """A plain-text table: part, limit, needed, fits, source; then the notes and the verdict."""
        rows = [("part", "limit", "needed", "fits", "source")]
        rows += [(c.part, c.limit, c.value, "yes" if c.fits else "NO", c.source) for c in self.checks]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
        lines += [f"note: {note}" for note in self.notes]
        verdict = "fits" if self.fits else f"does NOT fit ({len(self.failures())} limit(s) exceeded)"
        return "\n".join([*lines, f"{self.chip}: the network {verdict}"])


@dataclass
class Verification:
    """A file run in its consumer's own software, against the reference simulator, on the same images."""

    consumer: str
    samples: int
    spikes_equal: int  # samples whose every output spike is the simulator's
    classes_equal: int  # samples decoded to the simulator's class
    accuracy: float | None = None  # of the consumer's classes, when labels were given
    decided: int | None = None  # samples with no membrane within float32 rounding of a threshold (float graphs)
    decided_spikes_equal: int | None = None  # of those, the samples whose every output spike is the simulator's

    @property
    def agreement(self) -> float:
        return self.classes_equal / self.samples

    def line(self) -> str:
        accuracy = f"; accuracy {self.accuracy:.2%}" if self.accuracy is not None else ""
        rounding = ""
        if self.decided is not None and self.decided < self.samples:
            rounding = (f" ({self.decided_spikes_equal:,} of the {self.decided:,} images where no membrane lies within "
                        "float32 rounding of a threshold)")  # fmt: skip
        return (f"{self.consumer}: the same class as the simulator on {self.classes_equal:,} of {self.samples:,} images, "
                f"the same output spikes on {self.spikes_equal:,}{rounding}{accuracy}")  # fmt: skip


@dataclass(frozen=True)
class Target:
    """An export target: the software (and chip) a file is written for.

    ``prepare`` rewrites the graph into the forms that software reads (and refuses, naming the layer, what
    it cannot express); ``style`` says how the NIR file is written; ``run`` runs a file in that software for
    one time step and returns its output spikes (N, width), or is None where the software cannot run here
    (``unavailable`` says why); ``fit`` checks a graph against the chip's published limits.
    """

    name: str
    consumer: str
    summary: str
    style: NirStyle = GENERIC
    aliases: tuple[str, ...] = ()
    prepare: Callable[[SpikingGraph], SpikingGraph] = lambda graph: graph
    run: Callable[[Path, np.ndarray], np.ndarray] | None = None
    unavailable: str = ""
    fit: Callable[[SpikingGraph], FitReport] | None = None
    format: str = "nir"
    write: Callable[[SpikingGraph, Path, bool], Path] | None = None  # a writer of its own (graph, path, replace)
    runs_in_time: bool = False  # writes and runs graphs with recurrent edges and membranes carried over steps
    #: For a format that does not hold its graph: refuse (ValueError) a reference the file was not written from.
    check_reference: Callable[[Path, SpikingGraph], None] | None = None

    def with_style(self, **changes: Any) -> Target:
        return dataclasses.replace(self, style=dataclasses.replace(self.style, **changes))


# -- graph rewrites --------------------------------------------------------------------------------
def replace_nodes(graph: SpikingGraph, nodes: Sequence[GraphNode]) -> SpikingGraph:
    """``graph`` with these nodes, its output, key, metadata and readout kept."""
    return SpikingGraph(list(nodes), graph.output, graph.key.copy(), dict(graph.metadata), graph.readout)


def average_pools(graph: SpikingGraph, target: str) -> SpikingGraph:
    """Sum pooling as average pooling, for software that reads AvgPool2d: each pooling's window ``k`` moves
    into what reads it (a spiking layer's threshold over ``k``, a layer's weights times ``k``), exactly."""
    users = graph.consumers()
    factor: dict[str, float] = {}  # a node whose output is k times smaller than before, by k
    nodes: list[GraphNode] = []
    for node in graph.nodes:
        scales = {factor[name] for name in node.inputs if name in factor}
        if isinstance(node, SumPool2dNode):
            if node.inputs[0] in factor:
                raise DeployError(f"{node.name}: two poolings in a row cannot be written for {target}")
            factor[node.name] = float(node.kernel_size[0] * node.kernel_size[1])
            node = AvgPool2dNode(node.name, node.inputs, node.shape, node.kernel_size, node.stride, node.padding)
        elif scales:
            if len(scales) > 1 or len(node.inputs) > 1:
                raise DeployError(f"{node.name}: sums a pooled input with others; {target} cannot express it exactly")
            (k,) = scales
            if isinstance(node, FlattenNode):
                factor[node.name] = k
            elif isinstance(node, SpikeNode):
                node = dataclasses.replace(node, threshold=(node.threshold / np.float32(k)).astype(np.float32))
            elif isinstance(node, (AffineNode, Conv2dNode)):
                node = dataclasses.replace(node, weight=(node.weight * np.float32(k)).astype(np.float32))
            else:
                raise DeployError(f"{node.name}: a {node.op} after sum pooling cannot be written for {target}")
        nodes.append(node)
    if any(name in factor and not users[name] for name in factor):
        raise DeployError(f"the output is pooled: {target} cannot express it")
    return replace_nodes(graph, nodes)


def chain_only(graph: SpikingGraph, target: str) -> SpikingGraph:
    """Refuse a graph that is not a plain chain (a skip connection, a node read twice, a recurrent edge)."""
    recurrent = {edge for pair in graph.delayed_edges() for edge in pair}
    users = graph.consumers()
    for node in graph.nodes:
        if len(node.inputs) > 1 or len(users[node.name]) > 1:
            what = "a recurrent edge, read a step later" if node.name in recurrent else "a skip connection"
            raise DeployError(f"{node.name}: {target} runs layers in a chain only; this graph branches here ({what})")
    return graph


def dense_only(graph: SpikingGraph, target: str) -> SpikingGraph:
    """Keep only dense layers (a leading flatten is dropped: the input is given flat); refuse the rest."""
    nodes: list[GraphNode] = []
    flat = int(np.prod(graph.input_shape))
    renamed: dict[str, str] = {}
    for node in graph.nodes:
        if isinstance(node, InputNode):
            nodes.append(dataclasses.replace(node, shape=(flat,)))
        elif isinstance(node, FlattenNode) and node.inputs == ["input"]:
            renamed[node.name] = "input"
        elif isinstance(node, (AffineNode, SpikeNode)):
            nodes.append(dataclasses.replace(node, inputs=[renamed.get(name, name) for name in node.inputs]))
        else:
            raise DeployError(f"{node.name}: {target} has dense layers only; this layer is a {node.op}")
    return chain_only(replace_nodes(graph, nodes), target)


def positive_thresholds(graph: SpikingGraph, target: str) -> SpikingGraph:
    """Refuse spiking layers whose threshold is not positive (the software divides by it)."""
    for node in graph.nodes:
        if isinstance(node, SpikeNode) and not np.all(node.threshold > 0):
            raise DeployError(
                f"{node.name}: {target} needs positive thresholds, this layer fires at {float(node.threshold.min()):g}"
            )
    return graph


def no_padded_pools(graph: SpikingGraph, target: str) -> SpikingGraph:
    for node in graph.nodes:
        if isinstance(node, (SumPool2dNode, MaxPool2dNode)) and node.padding != (0, 0):
            raise DeployError(f"{node.name}: {target} pools without padding; this pooling pads by {node.padding}")
    return graph


# -- what a graph needs of a chip ------------------------------------------------------------------
@dataclass(frozen=True)
class Population:
    """A spiking layer as a chip sees it: its neurons and the synapses into them."""

    name: str
    neurons: int
    shape: tuple[int, ...]
    synapses: int  # into this layer, dense count (every weight, zeros included)
    fan_in: int  # synapses into one neuron
    weights: int  # stored weight values (a convolution shares its kernel)
    sources: tuple[GraphNode, ...]  # the weighted layers (or skip connections) feeding it
    pooled: bool  # a spiking layer that only ORs a window of spikes (max pooling), no weights
    reads_pixels: bool  # fed by the real-valued input (the encoder's layer)


def populations(graph: SpikingGraph) -> list[Population]:
    """Every spiking layer of ``graph`` with its synapses (max pooling counts as a layer of its own: on a
    chip it is neurons firing on a window count)."""
    by_name = {node.name: node for node in graph.nodes}
    result = []
    for node in graph.nodes:
        if isinstance(node, MaxPool2dNode):
            k = node.kernel_size[0] * node.kernel_size[1]
            neurons = int(np.prod(node.shape))
            result.append(Population(node.name, neurons, node.shape, neurons * k, k, 0, (node,), True, False))
            continue
        if not isinstance(node, SpikeNode):
            continue
        sources = tuple(by_name[name] for name in node.inputs)
        synapses = fan_in = weights = 0
        for source in sources:
            layer = by_name[source.inputs[0]] if isinstance(source, SumPool2dNode) else source
            if isinstance(layer, AffineNode):
                synapses += layer.weight.size
                fan_in += layer.weight.shape[1]
                weights += layer.weight.size
            elif isinstance(layer, Conv2dNode):
                per_neuron = int(np.prod(layer.weight.shape[1:]))
                synapses += per_neuron * int(np.prod(layer.shape))
                fan_in += per_neuron
                weights += layer.weight.size
            else:  # a skip connection of spikes: one synapse per unit
                synapses += int(np.prod(node.shape))
                fan_in += 1
        # The encoder reads the real-valued input (directly, or through a sum pooling of it); a skip connection
        # from the encoder's own spiking layer carries spikes.
        reads_pixels = any(s.name == graph.encoder or (isinstance(s, SumPool2dNode) and s.inputs[0] == graph.encoder)
                           for s in sources)  # fmt: skip
        result.append(Population(node.name, int(np.prod(node.shape)), node.shape, synapses, fan_in, weights, sources, False,
                                 reads_pixels))  # fmt: skip
    return result


def branches(nir_graph: Any) -> bool:
    """True when a NIR graph is not a plain chain (some node has two inputs or two outputs)."""
    outgoing, incoming = Counter(a for a, _ in nir_graph.edges), Counter(b for _, b in nir_graph.edges)
    return any(count > 1 for count in (*outgoing.values(), *incoming.values()))


def torch_module_of(nir_graph: Any, import_node: Callable[[Any], Any]) -> Any:
    """The NIR graph as a torch module built from ``import_node`` (a consumer's own node mapping) by
    nirtorch's graph interpreter, which runs a branching graph in a correct (topological) order."""
    import nir
    import nirtorch

    node_map = {type(n): import_node for n in nir_graph.nodes.values() if not isinstance(n, (nir.Input, nir.Output))}
    return nirtorch.nir_to_torch(nir_graph, node_map)


def at_most_bits(
    graph: SpikingGraph,
    bits: int,
    per_channel: bool = True,
    registers: Registers | None = None,
    one_threshold: bool = False,
    target: str = "",
    threshold_bits: int | None = None,
) -> SpikingGraph:
    """``graph`` if its weights are integers of at most ``bits`` bits already, else quantized to ``bits``
    (:func:`~whetstone.graph.quantization.quantize` with ``per_channel`` and the chip's ``registers``).
    ``one_threshold``: the chip holds one threshold per layer, so a layer whose channels have thresholds of
    their own (fed through a sum pooling) is quantized with one scale for the layer, and a graph that was
    quantized that way already is refused by ``target`` and layer name. ``threshold_bits``: the chip holds each
    threshold in a signed state of that many bits (a file read back is checked against it)."""
    held = weight_bits(graph)
    if held is not None and held <= bits:
        _check_integers(graph, held, threshold_bits)  # a file read back holds what it says it holds
        if one_threshold:
            for spike in graph.spiking_nodes():
                if np.unique(spike.threshold).size > 1:
                    raise DeployError(
                        f"{spike.name}: {target} holds one threshold per layer, and this layer's vary by channel; "
                        "quantize with one scale per layer (quantize(graph, bits, per_channel=False))"
                    )
        return graph
    quantized = quantize(graph, bits, per_channel=per_channel, registers=registers)
    if one_threshold and any(np.unique(spike.threshold).size > 1 for spike in quantized.spiking_nodes()):
        quantized = quantize(graph, bits, per_channel=False, registers=registers)
    return quantized


def _check_integers(graph: SpikingGraph, bits: int, threshold_bits: int | None = None) -> None:
    """``DeployError`` naming the layer unless every weight is an integer of at most ``bits`` bits and every
    threshold within ``threshold_bits`` bits where given (a file edited or damaged after export says
    otherwise). Thresholds need not be integers: an OR of spikes (a max pooling) fires on a count >= 0.5."""
    if threshold_bits:
        most = 2 ** (threshold_bits - 1) - 1
        for spike in graph.spiking_nodes():
            threshold = np.asarray(spike.threshold, dtype=np.float64)
            if np.abs(threshold).max(initial=0.0) > most:
                raise DeployError(
                    f"{spike.name}: a threshold of {float(np.abs(threshold).max()):g} does not fit the chip's "
                    f"{threshold_bits}-bit states (|T| <= {most})"
                )
    limit = 2 ** (bits - 1) - 1
    for node in graph.nodes:
        if isinstance(node, (AffineNode, Conv2dNode)):
            weight = np.asarray(node.weight, dtype=np.float64)
            bad = weight[(weight != np.round(weight)) | (np.abs(weight) > limit)]
            if bad.size:
                raise DeployError(
                    f"{node.name}: a weight of {float(bad.flat[0]):g} is not an integer within the {bits}-bit weights "
                    f"(|w| <= {limit}) the graph says it holds"
                )


def weight_bits_check(graph: SpikingGraph, bits: int, source: str) -> FitCheck:
    """The chip's weight precision against the graph's (a float graph is quantized on export)."""
    held = weight_bits(graph)
    needed = f"{held} bits" if held else "float (export quantizes)"
    return FitCheck("network", f"weights <= {bits} bits", needed, held is None or held <= bits, source)


def weight_bits(graph: SpikingGraph) -> int | None:
    """The bits of the graph's integer weights (from :func:`~whetstone.graph.quantization.quantize`), or None if float."""
    bits = graph.metadata.get("quantized_bits")
    return int(bits) if bits is not None else None
