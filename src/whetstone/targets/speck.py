"""``speck``: NIR for Sinabs, SynSense's toolchain for Speck and other DYNAP-CNN chips, and a fit report
against the DYNAP-CNN's published limits.

What Sinabs needs (measured with sinabs 3.1.3, nirtorch 2.6, nir 1.0.8): ``sinabs.from_nir(graph,
batch_size=N, num_timesteps=1)`` makes each IF an ``IAFSqueeze`` that fires on ``v >= threshold``
(thresholds stored as trained) with multi-spike output and subtract reset: set ``spike_fn = SingleSpike``
on each for binary spikes, then run one step. SumPool2d is read without padding; thresholds must be
positive (it sets ``min_v_mem = -threshold``). Chip limits (sinabs 3.1.3, ``backend/dynapcnn``): 9 cores,
each a weight layer, a spiking layer and optional sum pooling; per-core kernel memory 16/16/16/32/32/64/64/16/16
Ki words and neuron memory 64/64/64/32/32/16/16/16/16 Ki (``chips/dynapcnn.py``), kernel memory
``c * 2^(ceil log2(kx ky) + ceil log2 f)`` and neuron memory ``f * 2^(ceil log2 fx + ceil log2 fy)``
(``dynapcnn_layer.py``), 8-bit weights and 16-bit neuron states (``discretize.py``); the input is events
from a DVS sensor. Sinabs 3.1.3 pins nir<=1.0.4 (install with ``--no-deps`` plus pbr); mapping a network
onto a chip configuration needs samna, which downloads from SynSense's own index at import and so cannot
be installed here: the fit report computes the same memories and the core assignment itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..export.nir import NirStyle
from ..graph.nodes import AffineNode, Conv2dNode, FlattenNode, SpikingGraph
from ..graph.quantization import Registers
from .base import (
    FitCheck,
    FitReport,
    Population,
    Target,
    at_most_bits,
    branches,
    no_padded_pools,
    populations,
    positive_thresholds,
    torch_module_of,
    weight_bits,
    weight_bits_check,
)

STYLE = NirStyle(target="speck", fires_on=">=",
                 run="sinabs.from_nir(batch_size=N, num_timesteps=1); spike_fn=SingleSpike on every IAFSqueeze; one step")  # fmt: skip
SOURCE = "sinabs 3.1.3 backend/dynapcnn"
KERNEL_MEMORY = (16, 16, 16, 32, 32, 64, 64, 16, 16)  # Ki words per core (chips/dynapcnn.py)
NEURON_MEMORY = (64, 64, 64, 32, 32, 16, 16, 16, 16)
BIASES_PER_CORE = 1024
WEIGHT_BITS, STATE_BITS = 8, 16
#: A bias and a threshold are 16-bit states: weights are scaled per channel until they fit.
REGISTERS = Registers(bias=2 ** (STATE_BITS - 1) - 1)


def _log2_up(value: int) -> int:
    return math.ceil(math.log2(value)) if value > 1 else 0


def _memories(population: Population, graph: SpikingGraph) -> tuple[int, int, int]:
    """(kernel memory, neuron memory, output channels) of the core a population needs."""
    shape = population.shape if len(population.shape) == 3 else (population.shape[0], 1, 1)
    channels, height, width = shape
    neuron = channels * 2 ** (_log2_up(height) + _log2_up(width))
    kernel = 0
    for source in population.sources:
        if isinstance(source, Conv2dNode):
            c_in = source.weight.shape[1] * source.groups
            kernel += c_in * 2 ** (_log2_up(source.weight.shape[2] * source.weight.shape[3]) + _log2_up(channels))
        elif isinstance(source, AffineNode):  # a Linear runs as a convolution over the whole map it reads
            read = graph.node(source.inputs[0])
            map_shape = graph.node(read.inputs[0]).shape if isinstance(read, FlattenNode) else (source.weight.shape[1],)
            c_in, area = (map_shape[0], map_shape[1] * map_shape[2]) if len(map_shape) == 3 else (map_shape[0], 1)
            kernel += c_in * 2 ** (_log2_up(area) + _log2_up(channels))
        else:  # a skip connection, pooled counts or a pooling OR: an identity 1x1 convolution
            kernel += channels * 2 ** _log2_up(channels)
    return kernel, neuron, channels


def _assign(needs: list[tuple[int, int]]) -> list[int] | None:
    """A distinct core for each (kernel, neuron) need, or None (bipartite matching, Kuhn's algorithm)."""
    owner: dict[int, int] = {}

    def place(layer: int, seen: set[int]) -> bool:
        for core, (km, nm) in enumerate(zip(KERNEL_MEMORY, NEURON_MEMORY)):
            if core in seen or needs[layer][0] > km * 1024 or needs[layer][1] > nm * 1024:
                continue
            seen.add(core)
            if core not in owner or place(owner[core], seen):
                owner[core] = layer
                return True
        return False

    if len(needs) > len(KERNEL_MEMORY) or not all(place(layer, set()) for layer in range(len(needs))):
        return None
    return [core for layer in range(len(needs)) for core, holder in owner.items() if holder == layer]


def fit(graph: SpikingGraph) -> FitReport:
    """The graph against the DYNAP-CNN (Speck) limits, layer by layer, with the core each would take."""
    report = FitReport("Speck (DYNAP-CNN)")
    layers = populations(graph)
    memories = [_memories(p, graph) for p in layers]
    needs = [m[:2] for m in memories]
    assignment = _assign(needs)
    for index, (population, (kernel, neuron)) in enumerate(zip(layers, needs)):
        channels = memories[index][2]
        core = f" -> core {assignment[index]}" if assignment else ""
        fits = kernel <= max(KERNEL_MEMORY) * 1024 and neuron <= max(NEURON_MEMORY) * 1024
        report.checks.append(FitCheck(population.name, "kernel <= 64 Ki, neurons <= 64 Ki (per core)",
                                      f"kernel {kernel:,}, neurons {neuron:,}{core}", fits, f"{SOURCE}/chips/dynapcnn.py"))  # fmt: skip
        if channels > BIASES_PER_CORE:
            report.checks.append(FitCheck(population.name, f"<= {BIASES_PER_CORE} biases per core", f"{channels}", False,
                                          f"{SOURCE}/chips/dynapcnn.py"))  # fmt: skip
        if population.reads_pixels:
            report.checks.append(FitCheck(population.name, "input: DVS events (binary)", "real-valued pixels", False,
                                          f"{SOURCE}/connectivity_specs.py (dvs-weight edges)"))  # fmt: skip
        if len(population.sources) > 2:
            report.checks.append(FitCheck(population.name, "<= 2 inputs (a Merge)", f"{len(population.sources)}", False,
                                          f"{SOURCE}/connectivity_specs.py"))  # fmt: skip
    report.checks.append(FitCheck("network", f"<= {len(KERNEL_MEMORY)} cores, each layer on its own", f"{len(layers)} layers"
                                  + ("" if assignment or len(layers) > 9 else " (no assignment fits the memories)"),
                                  assignment is not None, f"{SOURCE}/chips/dynapcnn.py"))  # fmt: skip
    report.checks.append(weight_bits_check(graph, WEIGHT_BITS, f"{SOURCE}/discretize.py"))
    if weight_bits(graph):
        largest = max((float(np.abs(n.threshold).max()) for n in graph.spiking_nodes()), default=0.0)
        report.checks.append(FitCheck("network", f"thresholds within {STATE_BITS}-bit states", f"max {largest:g}",
                                      largest < 2 ** (STATE_BITS - 1), f"{SOURCE}/discretize.py"))  # fmt: skip
    report.notes.append(
        "max pooling of spikes (an OR) takes a core of its own: an identity 1x1 layer firing on a count >= 0.5"
    )
    return report


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    graph = positive_thresholds(no_padded_pools(graph, "Sinabs"), "Sinabs")
    return at_most_bits(graph, WEIGHT_BITS, registers=REGISTERS, one_threshold=True, target="Speck",
                        threshold_bits=STATE_BITS)  # fmt: skip


def run(path: Path, images: np.ndarray) -> np.ndarray:
    """The output spikes (N, width) of the file run for one time step in Sinabs."""
    from functools import partial

    import nir
    import sinabs
    import sinabs.layers
    import sinabs.nir
    import torch
    from sinabs.activation import SingleSpike

    graph = nir.read(Path(path))
    if branches(graph):  # from_nir's executor runs a branching graph out of order (see norse.py): same modules
        network = torch_module_of(
            graph, partial(sinabs.nir._import_sinabs_module, batch_size=len(images), num_timesteps=1)
        )
    else:
        network = sinabs.from_nir(graph, batch_size=len(images), num_timesteps=1)
    for module in network.modules():
        if isinstance(module, sinabs.layers.IAFSqueeze):
            module.spike_fn = SingleSpike
    with torch.no_grad():
        out = network(torch.as_tensor(np.asarray(images, dtype=np.float32)))
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(len(images), -1).numpy()


TARGET = Target(
    name="speck",
    consumer="Sinabs",
    summary="8-bit weights, v >= threshold, SumPool2d without padding; Sinabs SingleSpike; DYNAP-CNN fit report",
    style=STYLE,
    aliases=("sinabs", "dynapcnn"),
    prepare=_prepare,
    run=run,
    unavailable="pip install --no-deps sinabs pbr",
    fit=fit,
)
