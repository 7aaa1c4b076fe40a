"""``loihi2``: NIR for Lava (Intel's framework for Loihi 2), and a fit report against Loihi 2's published
limits.

The file is the generic one (Lava reads Affine, Conv2d, Flatten, SumPool2d and IF) with 8-bit integer
weights and integer thresholds, the precision Loihi 2 synapses hold. It is not run here: lava-nc 0.10
requires Python < 3.11; installed anyway (``--ignore-requires-python --no-deps`` with its dependencies),
``import lava.proc.lif.process`` fails inside Python 3.11's dataclasses ("mutable default ... use
default_factory"), so no Lava process can be built on this machine's Python. Limits: Intel Labs, "Taking
Neuromorphic Computing to the Next Level with Loihi 2", technology brief (2021): 128 neuron cores per chip,
up to 8,192 neurons per core and 1 M per chip, up to 120 M synapses per chip, graded spikes (an integer
payload) for real-valued inputs; 8-bit weights as lava-dl quantizes them for Loihi.
"""

from __future__ import annotations

import math

from ..export.nir import NirStyle
from ..graph import SpikingGraph
from .base import FitCheck, FitReport, Target, at_most_bits, populations, weight_bits_check

STYLE = NirStyle(target="loihi2", run="Lava: one algorithmic time step from rest (unverified here)")
BRIEF = "Intel Labs Loihi 2 technology brief (2021)"
CORES, NEURONS_PER_CORE, SYNAPSES_PER_CHIP, WEIGHT_BITS = 128, 8192, 120_000_000, 8


def fit(graph: SpikingGraph) -> FitReport:
    """The graph against Loihi 2's per-core and per-chip limits (one chip)."""
    report = FitReport("Loihi 2 (one chip)")
    layers = populations(graph)
    cores = 0
    for population in layers:
        need = math.ceil(population.neurons / NEURONS_PER_CORE)
        cores += need
        report.checks.append(FitCheck(population.name, f"<= {NEURONS_PER_CORE:,} neurons per core",
                                      f"{population.neurons:,} neurons -> {need} core(s)", True, BRIEF))  # fmt: skip
    report.checks.append(FitCheck("network", f"<= {CORES} cores", f"{cores}", cores <= CORES, BRIEF))
    synapses = sum(p.synapses for p in layers)
    report.checks.append(FitCheck("network", f"<= {SYNAPSES_PER_CHIP:,} synapses", f"{synapses:,}",
                                  synapses <= SYNAPSES_PER_CHIP, BRIEF))  # fmt: skip
    report.checks.append(weight_bits_check(graph, WEIGHT_BITS, "lava-dl slayer (8-bit weight quantization)"))
    report.notes.append("a convolution's synapses are counted as stored densely; Lava may share kernels and need fewer")
    report.notes.append(
        "real-valued pixels reach the encoder as graded spikes (Loihi 2 spikes carry an integer payload)"
    )
    return report


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    return at_most_bits(graph, WEIGHT_BITS)


TARGET = Target(
    name="loihi2",
    consumer="Lava",
    summary="the generic forms with 8-bit integer weights; Loihi 2 fit report (Lava cannot run here)",
    style=STYLE,
    aliases=("lava",),
    prepare=_prepare,
    unavailable="lava-nc 0.10 requires Python < 3.11 and does not import on 3.11 (see the module docs)",
    fit=fit,
)
