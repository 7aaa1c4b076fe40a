"""``spinnaker2``: NIR for py-spinnaker2 (the SpiNNaker2 toolchain), and a fit report against the
SpiNNaker2 chip.

The file is the generic one with 8-bit integer weights: py-spinnaker2's NIR import rescales weights to 8
bits itself (127 / max |w|, NIR's support notes), so writing them as integers already makes what runs
predictable. It is not run here: py-spinnaker2 is not on the package index. Limits: Mayr, Höppner,
Furber, "SpiNNaker 2: a 10 million core processor system for brain simulation and machine learning"
(arXiv:1911.02385): 152 processing elements (ARM Cortex-M4F) per chip, each with 128 kB of local SRAM.
The memory check is an estimate: 1 byte per stored weight and 16 bytes of state per neuron.
"""

from __future__ import annotations

from ..export.nir import NirStyle
from ..graph.nodes import SpikingGraph
from .base import FitCheck, FitReport, Target, at_most_bits, populations, weight_bits_check

STYLE = NirStyle(target="spinnaker2", run="py-spinnaker2: one time step from rest (unverified here)")
PAPER = "Mayr et al., arXiv:1911.02385"
ELEMENTS, SRAM_BYTES, WEIGHT_BITS, STATE_BYTES = 152, 128 * 1024, 8, 16


def fit(graph: SpikingGraph) -> FitReport:
    """The graph against one SpiNNaker2 chip's memory (an estimate, see the module docs)."""
    report = FitReport("SpiNNaker2 (one chip)")
    layers = populations(graph)
    total = 0
    for population in layers:
        need = population.weights + STATE_BYTES * population.neurons
        total += need
        report.checks.append(FitCheck(population.name, f"<= {ELEMENTS} x {SRAM_BYTES // 1024} kB in all",
                                      f"~{need / 1024:,.0f} kB", need <= ELEMENTS * SRAM_BYTES, PAPER))  # fmt: skip
    report.checks.append(FitCheck("network", f"<= {ELEMENTS * SRAM_BYTES / 2**20:.1f} MB of SRAM", f"~{total / 2**20:.2f} MB",
                                  total <= ELEMENTS * SRAM_BYTES, PAPER))  # fmt: skip
    report.checks.append(weight_bits_check(graph, WEIGHT_BITS, "NIR support notes: py-spinnaker2 rescales to 8 bits"))
    return report


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    return at_most_bits(graph, WEIGHT_BITS, per_channel=False)  # the importer rescales by layer: see above


TARGET = Target(
    name="spinnaker2",
    consumer="py-spinnaker2",
    summary="the generic forms with 8-bit integer weights; SpiNNaker2 memory estimate (not on the package index)",
    style=STYLE,
    prepare=_prepare,
    unavailable="py-spinnaker2 is not on the package index",
    fit=fit,
)
