"""What Loihi 2 holds for a whetstone graph (:func:`program`): each spiking layer as a population of
Lava's bit-accurate ``LIFReset`` neurons with its registers, each connection into it as synapses in
Loihi's weight format, and the layers the host computes. :mod:`.loihi2` writes and checks files with it;
:mod:`.lava_runner` builds the same program as Lava processes.

The arithmetic is Lava 0.10's bit-accurate models (``lava/proc/lif/models.py``, ``dense``/``sparse``,
``utils/weightutils.py``), the hardware's own:

- Synapses hold 8-bit weights in sign-magnitude form; with mixed signs the lowest bit is dropped
  (``truncate_weights``), so a weight ``w`` in [-127, 127] is stored as ``2 w`` with ``weight_exp = -1``
  and the dendrite sums ``(sum 2 w s) >> 1 = sum w s`` exactly. A connection whose integer weights exceed
  127 (a sum pooling of a convolution adds up to four kernel weights) is split into several synapses
  between the same neurons, which the dendrite adds.
- The current is ``u = a_in << 6`` in a 24-bit register (it wraps beyond ``+-2**23``), the voltage
  ``v = u + bias_mant << bias_exp`` (13-bit signed mantissa, exponent 0-7), and a neuron fires on
  ``v > vth << 6`` (``vth`` 17-bit unsigned). ``LIFReset`` with ``reset_interval = 1`` clears ``u`` and
  ``v`` before every step, so each step is one image from rest, and images stream one per step.
- Whetstone fires on ``S + b >= T`` with integer sums ``S``, biases ``b`` and ``T = ceil(theta)``: that is
  ``S + b' > vth`` with ``vth = max(0, T - 1)`` over the layer and ``b' = b + vth - (T - 1)`` per neuron,
  and ``64 b' = bias_mant << bias_exp``.
- Every connection adds one step (the synapse sends what it received the step before). A layer reading
  layers of different depths (a skip connection) gets its shallower inputs through relay populations
  (weight 1, ``vth = 0``), one per step of difference, so every input of an image arrives at once.
- The encoder reads real-valued pixels, which overflow the 24-bit current (a pixel of 255 times 784 weights
  of 127 is far beyond it): it runs on the host, in exact integer arithmetic on the file's weights, and
  sends its spikes to the chip (Loihi 2's embedded x86 cores or the host computer do this in a deployment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..graph.connectivity import connectivity
from ..graph.nodes import (
    DeployError,
    SpikingGraph,
)

__all__ = ["LoihiLayer", "LoihiProgram", "Synapses", "program"]

#: Register widths of Lava 0.10's bit-accurate LIF (``PyLifResetModelBitAcc``).
VTH_MAX = 2**17 - 1
BIAS_MANT_MIN, BIAS_MANT_MAX = -(2**12), 2**12 - 1
STATE_LIMIT = 2**23  # u and v are 24-bit signed
ACT_SHIFT = 6  # synaptic input and threshold are MSB-aligned by 6 bits
WEIGHT_MAX = 127  # an 8-bit mixed-sign weight, stored doubled with weight_exp = -1


@dataclass(frozen=True)
class Synapses:
    """Connections from one population (or host layer) into a layer: ``weight[i]`` from unit ``cols[i]`` of
    ``source`` to neuron ``rows[i]``, integers in [-127, 127] (Lava receives ``2 w`` with ``weight_exp = -1``)."""

    source: str
    rows: np.ndarray
    cols: np.ndarray
    weights: np.ndarray


@dataclass
class LoihiLayer:
    """A population of neurons on the chip with its registers."""

    name: str
    size: int
    synapses: list[Synapses]
    bias: np.ndarray  # b' per neuron, in synaptic-input units (integer)
    bias_mant: np.ndarray
    bias_exp: np.ndarray
    vth: int
    depth: int  # steps after the host's spikes
    relay: bool = False  # a delay line of a skip connection (weight 1, vth 0)
    worst_input: int = 0  # the largest |synaptic input + bias| any input pattern can give one neuron


@dataclass
class LoihiProgram:
    """The populations on the chip in order of computation, the host layers feeding them, the output."""

    layers: list[LoihiLayer]
    host: dict[str, int]  # host layer -> units
    output: str

    @property
    def latency(self) -> int:
        """Steps from an image's host spikes to its output spikes."""
        return next(layer.depth for layer in self.layers if layer.name == self.output)

    def synapse_count(self, layer: LoihiLayer) -> int:
        return sum(len(group.weights) for group in layer.synapses)


def program(graph: SpikingGraph) -> LoihiProgram:
    """The Loihi 2 program of an integer graph (weights integers in [-127, 127] after composition and
    splitting, integer biases into every layer on the chip). ``DeployError`` naming the layer for what
    Loihi 2's registers cannot hold."""
    host: dict[str, int] = {}
    incoming: dict[str, dict[str, torch.Tensor]] = {}
    populations = connectivity(graph)
    for population in populations:
        if population.reads_input:  # the host's
            host[population.name] = population.size
        else:
            incoming[population.name] = population.sources
    if graph.output in host:
        raise DeployError(f"{graph.output}: the output layer reads the pixels; nothing would run on the chip")

    layers: list[LoihiLayer] = []
    depth = dict.fromkeys(host, 0)
    relays: dict[tuple[str, int], str] = {}  # (source, delay) -> relay population
    sizes = {**host}
    for node in populations:
        if node.name in host:
            continue
        sources = incoming[node.name]
        size = node.size
        sizes[node.name] = size
        level = 1 + max(depth[source] for source in sources)
        synapses = []
        for source, matrix in sources.items():
            sent_from = source
            for step in range(depth[source] + 1, level):  # delay lines for a skip connection
                key = (source, step)
                if key not in relays:
                    relays[key] = f"{source}.relay{step}"
                    previous = relays.get((source, step - 1), source)
                    units = np.arange(sizes[source])
                    layers.append(_relay(relays[key], previous, units, step))
                    sizes[relays[key]] = sizes[source]
                    depth[relays[key]] = step
                sent_from = relays[key]
            synapses += _split(node.name, sent_from, matrix)
        layer = _layer(node.name, node.shape, synapses, node.bias, node.threshold, level)
        layers.append(layer)
        depth[node.name] = level
    return LoihiProgram(layers, host, graph.output)


def _split(layer: str, source: str, matrix: torch.Tensor) -> list[Synapses]:
    """The connection as synapse groups of integer weights in [-127, 127] (a larger integer weight is
    several synapses between the same two neurons, which the dendrite adds)."""
    rows, cols = matrix.indices().numpy()
    values = matrix.values().numpy()
    keep = values != 0
    rows, cols, values = rows[keep], cols[keep], values[keep]
    if not np.all(values == np.round(values)):
        raise DeployError(f"{layer}: Loihi 2 synapses hold integer weights; this layer's are not (export quantizes)")
    values = values.astype(np.int64)
    parts = max(1, -(-int(np.abs(values).max(initial=0)) // WEIGHT_MAX))
    groups = []
    magnitude, sign = np.abs(values), np.sign(values)
    for part in range(parts):
        share = sign * (magnitude // parts + (part < magnitude % parts))
        nonzero = share != 0
        groups.append(Synapses(source, rows[nonzero], cols[nonzero], share[nonzero].astype(np.int16)))
    return groups


def _relay(name: str, source: str, units: np.ndarray, depth: int) -> LoihiLayer:
    ones = np.ones(len(units), np.int16)
    zeros = np.zeros(len(units), np.int64)
    synapses = [Synapses(source, units, units, ones)]
    return LoihiLayer(name, len(units), synapses, zeros, zeros, zeros + 6, 0, depth, relay=True, worst_input=1)


def _layer(name: str, shape: tuple[int, ...], synapses: list[Synapses], bias: np.ndarray, threshold: np.ndarray,
           depth: int) -> LoihiLayer:  # fmt: skip
    """The registers of one population: ``vth``, ``bias_mant << bias_exp = 64 b'``, and the worst input."""
    size = math.prod(shape)
    if not np.all(bias == np.round(bias)):
        raise DeployError(
            f"{name}: Loihi 2 holds integer biases on the chip; this layer's bias {_first_fraction(bias)} is not one "
            "(export with --target loihi2 quantizes)"
        )
    fires_at = np.ceil(threshold)  # one per neuron: S + b >= T
    # S + b >= T is S + (b - T + 1 + vth) > vth for any vth: the one nearest T - 1 that keeps every bias
    # within the mantissa (and vth within its 17 bits).
    relative = bias.astype(np.int64) - (fires_at.astype(np.int64) - 1)
    low = max(0, BIAS_MANT_MIN - int(relative.min(initial=0)))
    high = min(VTH_MAX, BIAS_MANT_MAX - int(relative.max(initial=0)))
    wanted = int(min(max(0.0, float(fires_at.max()) - 1), VTH_MAX))
    vth = min(max(wanted, low), high) if low <= high else wanted
    shifted = relative + vth
    try:
        mant, exp = _bias_registers(name, shifted)
    except DeployError:
        if fires_at.max() - 1 > VTH_MAX:  # the cause is the threshold, which only the bias could have carried
            raise DeployError(
                f"{name}: its threshold {int(fires_at.max()):,} is beyond Loihi 2's 17-bit vth ({VTH_MAX:,}), and its "
                "bias mantissa cannot carry the rest; quantize to fewer weight bits (the threshold scales with them)"
            ) from None
        raise
    positive = np.zeros(size, np.int64)
    negative = np.zeros(size, np.int64)
    for group in synapses:
        np.add.at(positive, group.rows, np.maximum(group.weights, 0))
        np.add.at(negative, group.rows, np.minimum(group.weights, 0))
    worst = int(
        max((positive + np.maximum(shifted, 0)).max(initial=0), (-(negative + np.minimum(shifted, 0))).max(initial=0))
    )
    if worst << ACT_SHIFT >= STATE_LIMIT:
        raise DeployError(
            f"{name}: its synaptic input can reach {worst:,} (all {size:,} neurons' positive or negative weights at "
            f"once), beyond Loihi 2's 24-bit current ({(STATE_LIMIT >> ACT_SHIFT) - 1:,} after the 6-bit alignment); "
            "quantize to fewer weight bits or narrow the layer's fan-in"
        )
    return LoihiLayer(name, size, synapses, shifted, mant, exp, vth, depth, worst_input=worst)


def _bias_registers(name: str, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``bias_mant << bias_exp == 64 * bias`` (the bias is MSB-aligned with the 6-bit-shifted input): exponent 6
    and the bias as mantissa, or exponent 7 and half an even bias, the mantissa 13-bit signed."""
    fits = (bias >= BIAS_MANT_MIN) & (bias <= BIAS_MANT_MAX)
    halved = (bias % 2 == 0) & (bias // 2 >= BIAS_MANT_MIN) & (bias // 2 <= BIAS_MANT_MAX)
    if not np.all(fits | halved):
        value = int(bias[~(fits | halved)][0])
        raise DeployError(
            f"{name}: a bias of {value:,} (with the threshold moved into it) is beyond Loihi 2's bias register "
            f"(13-bit signed mantissa times 2^exp: {BIAS_MANT_MIN:,} to {BIAS_MANT_MAX:,} in synaptic units, even "
            "values to twice that)"
        )
    return np.where(fits, bias, bias // 2), np.where(fits, 6, 7)


def _first_fraction(bias: np.ndarray) -> str:
    return f"{float(bias[bias != np.round(bias)][0]):g}"
