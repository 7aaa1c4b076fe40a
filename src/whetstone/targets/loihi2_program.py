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
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..graph.nodes import (
    AffineNode,
    AvgPool2dNode,
    Conv2dNode,
    DeployError,
    FlattenNode,
    GraphNode,
    InputNode,
    MaxPool2dNode,
    Pool2dNode,
    SpikeNode,
    SpikingGraph,
    SumPool2dNode,
)

__all__ = ["LoihiLayer", "LoihiProgram", "Synapses", "program"]

#: Register widths of Lava 0.10's bit-accurate LIF (``PyLifResetModelBitAcc``).
VTH_MAX = 2**17 - 1
BIAS_MANT_MIN, BIAS_MANT_MAX = -(2**12), 2**12 - 1
STATE_LIMIT = 2**23  # u and v are 24-bit signed
ACT_SHIFT = 6  # synaptic input and threshold are MSB-aligned by 6 bits
WEIGHT_MAX = 127  # an 8-bit mixed-sign weight, stored doubled with weight_exp = -1

#: A node's value as linear maps of what it reads: population (or input) name -> (sparse matrix, bias).
Sources = dict[str, tuple[torch.Tensor, torch.Tensor]]


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
    by_name = {node.name: node for node in graph.nodes}
    shapes = {node.name: node.shape for node in graph.nodes}
    populations = [node for node in graph.nodes if isinstance(node, (SpikeNode, MaxPool2dNode))]
    reach: dict[str, Sources] = {}

    def summed(names: list[str]) -> Sources:
        """The sum of these nodes' values, as linear maps of the populations (or the input) they read."""
        total: Sources = {}
        for name in names:
            for source, (matrix, bias) in contributions(name).items():
                if source in total:
                    matrix, bias = total[source][0] + matrix, total[source][1] + bias
                total[source] = (matrix, bias)
        return total

    def contributions(name: str) -> Sources:
        """source population (or the input) -> (matrix, bias) of ``name``'s value as a linear map of it."""
        if name not in reach:
            node = by_name[name]
            if isinstance(node, (InputNode, SpikeNode, MaxPool2dNode)):
                size = math.prod(node.shape)
                reach[name] = {name: (_eye(size), torch.zeros(size, dtype=torch.float64))}
            else:
                reach[name] = _through(node, shapes[node.inputs[0]], summed(node.inputs))
        return reach[name]

    host: dict[str, int] = {}
    incoming: dict[str, Sources] = {}
    for node in populations:
        if isinstance(node, MaxPool2dNode):  # the OR of a window of spikes: a count >= 1
            window = SumPool2dNode(node.name, node.inputs, node.shape, node.kernel_size, node.stride, node.padding)
            sources = _through(window, shapes[node.inputs[0]], summed(node.inputs))
        else:
            sources = summed(node.inputs)
        if graph.nodes[0].name in sources:  # reads the pixels: the host's
            host[node.name] = math.prod(node.shape)
            continue
        incoming[node.name] = sources
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
        size = math.prod(node.shape)
        sizes[node.name] = size
        level = 1 + max(depth[source] for source in sources)
        threshold = 1.0 if isinstance(node, MaxPool2dNode) else node.threshold
        total_bias = sum((bias for _, bias in sources.values()), start=torch.zeros(size, dtype=torch.float64))
        synapses = []
        for source, (matrix, _) in sources.items():
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
        layer = _layer(node.name, node.shape, synapses, total_bias.numpy(), np.asarray(threshold), level)
        layers.append(layer)
        depth[node.name] = level
    return LoihiProgram(layers, host, graph.output)


def _through(node: GraphNode, in_shape: tuple[int, ...], sources: Sources) -> Sources:
    """``sources`` carried through a linear node: its matrix times each, its bias added."""
    linear, own_bias = _linear_map(node, in_shape)
    return {
        source: (_compose(linear, matrix), _apply(linear, bias) + own_bias)
        for source, (matrix, bias) in sources.items()
    }


def _eye(size: int) -> torch.Tensor:
    index = torch.arange(size)
    return _sparse(torch.stack([index, index]), torch.ones(size, dtype=torch.float64), (size, size))


def _sparse(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=True).coalesce()


def _compose(later: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """``later @ earlier`` of two sparse matrices (PyTorch warns that it goes through its beta CSR format)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(later, earlier).coalesce()


def _apply(linear: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(linear, vector[:, None])[:, 0]


def _linear_map(node: GraphNode, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear node as a sparse (out, in) float64 matrix and its bias (zero padding adds nothing)."""
    size_in, size_out = math.prod(in_shape), math.prod(node.shape)
    if isinstance(node, FlattenNode):
        return _eye(size_in), torch.zeros(size_out, dtype=torch.float64)
    if isinstance(node, AffineNode):
        weight = torch.as_tensor(np.asarray(node.weight, dtype=np.float64))
        bias = np.broadcast_to(np.asarray(node.bias, dtype=np.float64), (size_out,))
        return weight.to_sparse().coalesce(), torch.as_tensor(bias.copy())
    if isinstance(node, Conv2dNode):
        weight = np.asarray(node.weight, dtype=np.float64)
        rows, cols, values = _conv_entries(weight, node.groups, in_shape, node.shape, node.stride, node.padding,
                                           node.dilation)  # fmt: skip
        bias = np.repeat(np.asarray(node.bias, dtype=np.float64), math.prod(node.shape[1:]))
    elif isinstance(node, Pool2dNode) and not isinstance(node, MaxPool2dNode):
        channels = in_shape[0]  # a pooling is a depthwise convolution of ones (of 1 / window, averaging)
        k = node.kernel_size[0] * node.kernel_size[1]
        weight = np.full((channels, 1, *node.kernel_size), 1.0 / k if isinstance(node, AvgPool2dNode) else 1.0)
        rows, cols, values = _conv_entries(weight, channels, in_shape, node.shape, node.stride, node.padding, (1, 1))
        bias = np.zeros(size_out)
    else:
        raise DeployError(f"{node.name}: Loihi 2 has no counterpart of a {node.op} between spiking layers")
    keep = values != 0
    matrix = _sparse(
        torch.as_tensor(np.stack([rows[keep], cols[keep]])), torch.as_tensor(values[keep]), (size_out, size_in)
    )
    return matrix, torch.as_tensor(bias)


def _conv_entries(weight: np.ndarray, groups: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                  stride: tuple[int, int], padding: tuple[int, int],
                  dilation: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(rows, cols, values) of a (grouped) convolution's (out, in) matrix, one kernel entry at a time."""
    c_out, c_group, kh, kw = weight.shape
    _, height, width = in_shape
    _, h_out, w_out = out_shape
    oy, ox = np.meshgrid(np.arange(h_out), np.arange(w_out), indexing="ij")
    out_index = (np.arange(c_out)[:, None, None] * h_out + oy) * w_out + ox  # (c_out, h_out, w_out)
    first_input = (np.arange(c_out) // (c_out // groups)) * c_group  # each output channel's group's first input
    rows, cols, values = [], [], []
    for ci in range(c_group):
        for ky in range(kh):
            for kx in range(kw):
                iy = oy * stride[0] - padding[0] + ky * dilation[0]
                ix = ox * stride[1] - padding[1] + kx * dilation[1]
                inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
                position = iy[inside] * width + ix[inside]
                rows.append(out_index[:, inside].ravel())
                cols.append(((first_input + ci)[:, None] * (height * width) + position[None, :]).ravel())
                values.append(np.repeat(weight[:, ci, ky, kx], int(inside.sum())))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)


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
    fires_at = np.ceil(np.broadcast_to(np.asarray(threshold, dtype=np.float64), shape).reshape(-1))  # S + b >= T
    # S + b >= T is S + (b - T + 1 + vth) > vth for any vth: the one nearest T - 1 that keeps every bias
    # within the mantissa (and vth within its 17 bits).
    relative = bias.astype(np.int64) - (fires_at.astype(np.int64) - 1)
    low = max(0, BIAS_MANT_MIN - int(relative.min(initial=0)))
    high = min(VTH_MAX, BIAS_MANT_MAX - int(relative.max(initial=0)))
    wanted = int(min(max(0.0, float(fires_at.max()) - 1), VTH_MAX))
    vth = min(max(wanted, low), high) if low <= high else wanted
    shifted = relative + vth
    mant, exp = _bias_registers(name, shifted)
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
