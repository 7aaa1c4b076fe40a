"""Reference integrate-and-fire simulator (numpy), with spike, synaptic-operation and energy counts.

It runs a :class:`~whetstone.graph.nodes.SpikingGraph` the way event-driven hardware does, one time step or
a sequence of them (recurrent edges and membranes carried over steps): only the inputs
that are active (a spike, or a non-zero pixel at the encoder) deliver their outgoing synapses into the
membranes, and a neuron fires when ``bias + sum of delivered weights >= threshold``. Synapses are stored
as weight vectors per (input channel, kernel offset), so each event delivers one vector in a numpy
operation; membranes accumulate in float64.

It is deliberately independent of PyTorch: the agreement of its predictions with the PyTorch model, the
NIR file and ONNX Runtime is the check that all of them mean the same network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..utils.checks import positive_int
from .nodes import (
    AffineNode,
    Conv2dNode,
    FlattenNode,
    InputNode,
    MaxPool2dNode,
    Pool2dNode,
    SpikeNode,
    SpikingGraph,
    SumPool2dNode,
    dense_weight,
)

__all__ = ["ENERGY_PER_OP", "TIE_BREAKS", "EnergyModel", "SimResult", "check_images", "simulate"]

#: How :func:`simulate` picks among classes whose decode scores tie.
TIE_BREAKS = ("lowest", "membrane")


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in picojoules."""

    mac_pj: float  # one multiply-accumulate (a dense layer, or the encoder's graded input)
    add_pj: float  # one accumulate (a binary spike delivered through one synapse)
    source: str


_HOROWITZ = "M. Horowitz, 'Computing's energy problem', ISSCC 2014, 45 nm CMOS figures"
#: Per-operation energies: fp32 mult 3.7 pJ + add 0.9 pJ; int8 mult 0.2 pJ + int32 accumulate 0.1 pJ.
#: Arithmetic only: memory traffic, which often dominates on real chips, is not counted.
ENERGY_PER_OP = {
    "fp32": EnergyModel(mac_pj=3.7 + 0.9, add_pj=0.9, source=_HOROWITZ),
    "int8": EnergyModel(mac_pj=0.2 + 0.1, add_pj=0.1, source=_HOROWITZ),
}


@dataclass
class _Projection:
    """The synapses of one weighted layer (Affine = a 1x1 "convolution" over one position), grouped so
    that events are delivered in vectorised blocks: an active input of channel ``c`` reaches, through
    kernel offset ``k``, one output position and there adds ``kernels[k, c]``: one weight per output
    channel."""

    kernels: np.ndarray  # (offsets, in_channels, out_channels), float64
    offsets: list[tuple[int, int]]  # (ky, kx) of each kernel slice
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_shape: tuple[int, int, int]  # (C, H, W)
    out_shape: tuple[int, int, int]
    bias: np.ndarray  # (out_channels,)
    synapses_per_sample: int  # every (input unit, output unit) pair with a synapse
    fan_in_per_channel_pair: int = 1  # out channels reached per in channel (< out_channels if grouped)

    def deliver(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Membranes (batch, *out_shape) after every non-zero input of ``x`` (batch, *in_shape) delivered
        its synapses (weight times the input's value, which is 1 for a spike), and the number of
        synaptic events."""
        batch = x.shape[0]
        c_in = self.in_shape[0]
        c_out, h_out, w_out = self.out_shape
        # Events in channel-major order, so those of one channel form one contiguous run.
        by_channel = x.reshape(batch, *self.in_shape).transpose(1, 0, 2, 3)
        channel, sample, row, col = np.nonzero(by_channel)
        value = by_channel[channel, sample, row, col].astype(np.float64)
        graded = not np.all(value == 1.0)
        membrane = np.zeros((batch * h_out * w_out, c_out), dtype=np.float64)
        events = 0
        for index, (ky, kx) in enumerate(self.offsets):
            # Input (row, col) reaches output (oy, ox) through this offset when
            # oy * stride - padding + ky * dilation == row (and the same for columns).
            oy, ry = np.divmod(row + self.padding[0] - ky * self.dilation[0], self.stride[0])
            ox, rx = np.divmod(col + self.padding[1] - kx * self.dilation[1], self.stride[1])
            hit = (ry == 0) & (rx == 0) & (oy >= 0) & (oy < h_out) & (ox >= 0) & (ox < w_out)
            target = (sample[hit] * h_out + oy[hit]) * w_out + ox[hit]
            bounds = np.searchsorted(channel[hit], np.arange(c_in + 1))
            scale = value[hit] if graded else None
            events += target.size * self.fan_in_per_channel_pair
            for c in np.flatnonzero(np.diff(bounds)):
                # One channel through one offset never sends two events to the same output position,
                # so a plain indexed add is exact (no np.add.at needed).
                lo, hi = bounds[c], bounds[c + 1]
                if graded:
                    membrane[target[lo:hi]] += scale[lo:hi, None] * self.kernels[index, c]
                else:
                    membrane[target[lo:hi]] += self.kernels[index, c]
        membrane = membrane.reshape(batch, h_out, w_out, c_out).transpose(0, 3, 1, 2) + self.bias[:, None, None]
        return membrane, events


def _affine_projection(weight: np.ndarray, bias: np.ndarray) -> _Projection:
    n_out, n_in = weight.shape
    return _Projection(
        weight.T.astype(np.float64)[None],
        [(0, 0)],
        (1, 1),
        (0, 0),
        (1, 1),
        (n_in, 1, 1),
        (n_out, 1, 1),
        bias.astype(np.float64),
        n_in * n_out,
        n_out,
    )


def _conv_projection(
    weight: np.ndarray,
    bias: np.ndarray,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> _Projection:
    c_out, c_in_group, kh, kw = weight.shape
    full = dense_weight(weight.astype(np.float64), groups)  # block-diagonal over groups
    offsets = [(ky, kx) for ky in range(kh) for kx in range(kw)]
    kernels = np.stack([full[:, :, ky, kx].T for ky, kx in offsets])
    # Synapses per sample: for each offset, the output positions whose input position is inside the image.
    _, h, w = in_shape
    _, h_out, w_out = out_shape
    rows = [np.arange(h_out) * stride[0] - padding[0] + ky * dilation[0] for ky in range(kh)]
    cols = [np.arange(w_out) * stride[1] - padding[1] + kx * dilation[1] for kx in range(kw)]
    pairs = sum(int(((r >= 0) & (r < h)).sum()) * int(((c >= 0) & (c < w)).sum()) for r in rows for c in cols)
    return _Projection(
        kernels,
        offsets,
        stride,
        padding,
        dilation,
        tuple(in_shape),
        tuple(out_shape),
        bias.astype(np.float64),
        pairs * c_in_group * c_out,
        c_out // groups,
    )


def _pool(x: np.ndarray, node: Pool2dNode) -> np.ndarray:
    (ph, pw), kernel, stride = node.padding, node.kernel_size, node.stride
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))[:, :, :: stride[0], :: stride[1]]
    if isinstance(node, MaxPool2dNode):
        return windows.max(axis=(-2, -1))
    total = windows.sum(axis=(-2, -1))
    return total if isinstance(node, SumPool2dNode) else total / (kernel[0] * kernel[1])


@dataclass
class LayerStats:
    """What one layer did over all simulated samples."""

    name: str
    op: str
    units: int
    spikes: int = 0  # spiking layers: spikes emitted
    events: int = 0  # weighted layers: synapses delivered (multiply-accumulates at the encoder)
    dense_macs: int = 0  # weighted layers: multiply-accumulates of the same layer run densely
    #: Spiking layers: the spikes of each unit (flattened), summed over samples and steps.
    unit_spikes: np.ndarray | None = field(default=None, repr=False)

    def figures(self) -> dict:
        """The layer's figures as plain values (JSON-ready), without the per-unit counts."""
        return {key: value for key, value in vars(self).items() if key != "unit_spikes"}


@dataclass
class SimResult:
    """Predictions and activity of a simulation run; per-sample figures are averages over ``samples``."""

    predictions: np.ndarray
    output_spikes: np.ndarray
    layers: list[LayerStats]
    samples: int
    encoder: str
    metadata: dict = field(default_factory=dict)
    #: Per sample: the smallest distance ``|v - threshold|`` of the membrane (float64) of any spiking unit
    #: fed by weighted synapses. A unit this close to its threshold may fire differently in another
    #: engine that rounds float32 sums in another order. (Pooled spikes are counted exactly everywhere,
    #: and so are the sums of integer graphs from :func:`~whetstone.graph.quantization.quantize`: there a margin of 0
    #: is an exact tie, which every engine decides alike.)
    margin: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: Time steps run per sample (1 for a single-step network).
    steps: int = 1
    #: The values at every step (N, T, *shape) of the nodes named in ``simulate(..., record=...)``.
    recorded: dict[str, np.ndarray] = field(default_factory=dict)

    def decided(self, tolerance: float = 1e-5) -> np.ndarray:
        """Boolean mask of the samples whose every spike decision is further than ``tolerance`` from its
        threshold: there any correct float32 engine gives exactly these spikes. The default is about 100
        times the float32 rounding measured between engines (and between thread counts of one engine)
        on the trained test networks; a float coincidence closer than that decides nothing."""
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
        return self.margin > tolerance

    def accuracy(self, labels: np.ndarray) -> float:
        return float((self.predictions == np.asarray(labels)).mean())

    def figures(self, labels: np.ndarray, arithmetic: str = "fp32") -> dict:
        """Plain figures of the run (JSON-ready): samples, accuracy, per-sample operations and energy,
        and per-layer activity."""
        encoder, synops, dense = self.synaptic_ops()
        snn, ann = self.energy(arithmetic)
        return {"samples": self.samples, "accuracy": self.accuracy(labels), "encoder_macs": encoder, "synaptic_events": synops,
                "dense_macs": dense, "energy_nj": snn, "dense_energy_nj": ann, "arithmetic": arithmetic,
                "layers": [layer.figures() for layer in self.layers]}  # fmt: skip

    def synaptic_ops(self) -> tuple[float, float, float]:
        """Per sample: (encoder multiply-accumulates, binary synaptic events, dense MACs of the whole net)."""
        encoder = sum(s.events for s in self.layers if s.name == self.encoder)
        synops = sum(s.events for s in self.layers if s.dense_macs and s.name != self.encoder)
        dense = sum(s.dense_macs for s in self.layers)
        return encoder / self.samples, synops / self.samples, dense / self.samples

    def energy(self, arithmetic: str = "fp32") -> tuple[float, float]:
        """Estimated arithmetic energy per inference in nanojoules: (spiking network, same network as a
        dense ANN). See :data:`ENERGY_PER_OP` for the figures and their source."""
        if arithmetic not in ENERGY_PER_OP:
            raise ValueError(f"arithmetic must be one of {sorted(ENERGY_PER_OP)}, got {arithmetic!r}")
        model = ENERGY_PER_OP[arithmetic]
        encoder, synops, dense = self.synaptic_ops()
        return (encoder * model.mac_pj + synops * model.add_pj) / 1e3, dense * model.mac_pj / 1e3

    def report(self, arithmetic: str = "fp32") -> str:
        """A plain-text table: per-layer spikes and rates, synaptic events against dense MACs, energy."""
        n = self.samples
        lines = [
            f"{'layer':<22} {'op':<9} {'units':>7} {'spikes/img':>11} {'rate':>7} {'events/img':>12} {'dense MAC/img':>14}"
        ]
        for s in self.layers:
            spikes = f"{s.spikes / n:11.1f}" if s.op == "spike" else " " * 11
            rate = f"{s.spikes / (n * s.units * self.steps):7.3f}" if s.op == "spike" else " " * 7  # per unit and step
            events = f"{s.events / n:12.0f}" if s.dense_macs else " " * 12
            dense = f"{s.dense_macs / n:14.0f}" if s.dense_macs else " " * 14
            lines.append(f"{s.name:<22} {s.op:<9} {s.units:>7} {spikes} {rate} {events} {dense}")
        encoder, synops, dense = self.synaptic_ops()
        snn, ann = self.energy(arithmetic)
        model = ENERGY_PER_OP[arithmetic]
        lines += [
            (
                f"per inference: {encoder:,.0f} encoder MACs (non-zero inputs only) + {synops:,.0f} synaptic events "
                f"vs {dense:,.0f} MACs dense ({(encoder + synops) / max(dense, 1):.3f}x the operations)"
            ),
            (
                f"energy ({arithmetic}, {model.mac_pj:g} pJ/MAC, {model.add_pj:g} pJ/synaptic add; {model.source}; "
                f"arithmetic only): {snn:,.1f} nJ spiking vs {ann:,.1f} nJ dense ({ann / max(snn, 1e-12):.1f}x less)"
            ),
        ]
        return "\n".join(lines)


def check_images(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``images`` as float32 of shape (N, *shape) with finite values in [0, 1]; ``ValueError`` naming what
    is wrong otherwise (raw 0-255 pixels, NaN, another shape, no images)."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        raise ValueError("images must be float pixels in [0, 1], got uint8 (0-255): divide by 255 first")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"images must be a float array in [0, 1], got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if array.ndim != len(shape) + 1 or array.shape[1:] != tuple(shape):
        raise ValueError(f"images must have shape (N, {', '.join(map(str, shape))}), got {array.shape}")
    if len(array) == 0:
        raise ValueError("images is empty: nothing to simulate")
    if not np.isfinite(array).all():
        raise ValueError(f"images contain {int((~np.isfinite(array)).sum())} NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        hint = ": divide 0-255 pixels by 255" if high > 1 else ""
        raise ValueError(f"images must be in [0, 1], got values from {low:g} to {high:g}{hint}")
    return array


def _projections(graph: SpikingGraph) -> dict[str, _Projection]:
    shapes = {n.name: n.shape for n in graph.nodes}
    projections: dict[str, _Projection] = {}
    for node in graph.nodes:
        if isinstance(node, AffineNode):
            projections[node.name] = _affine_projection(node.weight, node.bias)
        elif isinstance(node, Conv2dNode):
            projections[node.name] = _conv_projection(
                node.weight,
                node.bias,
                shapes[node.inputs[0]],
                node.shape,
                node.stride,
                node.padding,
                node.dilation,
                node.groups,
            )
    return projections


def simulate(
    graph: SpikingGraph,
    inputs: np.ndarray,
    batch_size: int = 256,
    progress: bool = False,
    record: tuple[str, ...] = (),
    tie_break: str = "lowest",
    record_samples: int | None = None,
) -> SimResult:
    """Run ``graph`` event by event and decode its output at the last step with the graph's key (ties:
    see ``tie_break``).

    ``inputs`` are float32 in [0, 1] (e.g. pixels / 255): images (N, *graph.input_shape), run for one time
    step, or sequences (N, T, *graph.input_shape), run for T steps. A temporal graph (recurrent edges,
    leaky membranes: :attr:`SpikingGraph.is_temporal`) takes sequences, or images it reads as its
    ``steps`` (:meth:`SpikingGraph.as_steps`: an image row by row). At each step every node sums its
    inputs; a recurrent input gives its node's value of the previous step (zeros at the first); a spiking
    node's membrane keeps ``leak`` times its value after the reset. ``record`` names nodes whose values at
    every step are returned in :attr:`SimResult.recorded` as (N, T, *shape), for the first
    ``record_samples`` samples only where given (:func:`~whetstone.graph.spike_plot.plot_spikes` needs a
    few; a whole test set of a convolutional layer is gigabytes). ``ValueError`` for inputs that are not
    that (raw 0-255 pixels, NaN, another shape).

    N-hot decode scores are integers, so classes can tie. ``tie_break="lowest"`` takes the lowest class
    index (argmax's rule); ``"membrane"`` reads the output neurons' membrane potentials too (where the
    hardware lets them be read) and among the tied classes takes the one whose code the potentials
    support most: the largest ``(v - threshold) @ (2 key - 1)^T`` (when the output is a spiking layer;
    otherwise the lowest index)."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    positive_int(batch_size, "batch_size")
    graph.check()
    names = {n.name for n in graph.nodes}
    if record_samples is not None:
        positive_int(record_samples, "record_samples")
    unknown = [name for name in record if name not in names]
    if unknown:
        raise ValueError(f"record names no node of the graph: {unknown}; nodes are {sorted(names)}")
    array = np.asarray(inputs)
    sequences = array.ndim == len(graph.input_shape) + 2 and array.shape[2:] == tuple(graph.input_shape)
    if graph.is_temporal and not sequences:
        array, sequences = graph.as_steps(array), True
    if sequences:
        steps = check_images(array, array.shape[1:])
    else:
        steps = check_images(array, graph.input_shape)[:, None]
    projections = _projections(graph)
    stats = {n.name: LayerStats(n.name, n.op, math.prod(n.shape)) for n in graph.nodes if not isinstance(n, InputNode)}
    predictions, outputs, margins = [], [], []
    recorded: dict[str, list[np.ndarray]] = {name: [] for name in record}
    starts = range(0, len(steps), batch_size)
    for lo in tqdm(starts, desc="simulate", unit="batch", disable=not progress, leave=False):
        batch = steps[lo : lo + batch_size]
        out, margin, trace, membrane = _run_batch(graph, projections, stats, batch, record)
        outputs.append(out if graph.readout == "membrane" else out.astype(np.uint8))
        margins.append(margin)
        predictions.append(_classify(graph, out, membrane if tie_break == "membrane" else None))
        kept = len(batch) if record_samples is None else max(0, min(len(batch), record_samples - lo))
        for name in record:
            if kept:
                recorded[name].append(trace[name][:kept])
    return SimResult(
        np.concatenate(predictions),
        np.concatenate(outputs),
        list(stats.values()),
        len(steps),
        graph.encoder,
        dict(graph.metadata),
        np.concatenate(margins),
        steps.shape[1],
        {name: np.concatenate(parts) for name, parts in recorded.items() if parts},
    )


def _run_batch(
    graph: SpikingGraph,
    projections: dict[str, _Projection],
    stats: dict[str, LayerStats],
    batch: np.ndarray,
    record: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """One batch of sequences (B, T, *input_shape) through every step: the output layer's values at the
    last step, each sample's decision margin over all steps, the recorded nodes' values (B, T, ...) and
    the output spiking layer's ``v - threshold`` at the last step (None for a membrane readout)."""
    size = len(batch)
    delayed = {source for source, _ in graph.delayed_edges()}
    shapes = {n.name: n.shape for n in graph.nodes}
    previous = {name: np.zeros((size, *shapes[name])) for name in delayed}  # their values at t - 1
    membranes = {n.name: np.zeros((size, *n.shape)) for n in graph.spiking_nodes() if n.leak}
    margin = np.full(size, np.inf)
    output_membrane = None  # the output spiking layer's v - threshold at the last step
    trace: dict[str, list[np.ndarray]] = {name: [] for name in record}
    for t in range(batch.shape[1]):
        values: dict[str, np.ndarray] = {}
        for node in graph.nodes:
            if isinstance(node, InputNode):
                values[node.name] = batch[:, t]
                continue
            # An input not computed yet in this step is a recurrent edge: its value at the previous step.
            x = values[node.inputs[0]] if node.inputs[0] in values else previous[node.inputs[0]]
            for other in node.inputs[1:]:
                x = x + (values[other] if other in values else previous[other])
            if node.name in projections:
                membrane, events = projections[node.name].deliver(x)
                values[node.name] = membrane.reshape(size, *node.shape)
                stats[node.name].events += events
                stats[node.name].dense_macs += size * projections[node.name].synapses_per_sample
            elif isinstance(node, SpikeNode):
                if node.leak:
                    x = x + node.leak * membranes[node.name]
                spikes = x >= node.threshold
                if node.leak:
                    membranes[node.name] = np.where(spikes, 0.0, x)
                if any(name in projections for name in node.inputs):  # real-valued synaptic sums: can round
                    distance = np.abs(x - node.threshold).reshape(size, -1).min(axis=1)
                    margin = np.minimum(margin, distance)
                values[node.name] = spikes.astype(np.float32)
                per_unit = spikes.reshape(size, -1).sum(axis=0)
                stats[node.name].spikes += int(per_unit.sum())
                counts = stats[node.name].unit_spikes
                stats[node.name].unit_spikes = per_unit if counts is None else counts + per_unit
                if node.name == graph.output:
                    output_membrane = x - node.threshold
            elif isinstance(node, Pool2dNode):
                values[node.name] = _pool(x, node)
            elif isinstance(node, FlattenNode):
                values[node.name] = x.reshape(size, -1)
            else:
                raise ValueError(f"{node.name}: the simulator cannot run a {type(node).__name__}")
        for name in record:
            trace[name].append(values[name])
        previous = {name: values[name] for name in delayed}
    out = values[graph.output].reshape(size, -1)
    return out, margin, {name: np.stack(parts, axis=1) for name, parts in trace.items()}, output_membrane


def _classify(graph: SpikingGraph, out: np.ndarray, membrane: np.ndarray | None) -> np.ndarray:
    """The decoded class of each sample; with ``membrane`` (the output neurons' ``v - threshold``), ties
    in the decode score go to the class whose code the potentials support most."""
    scores = graph.decode(out)
    if membrane is None or graph.readout != "spikes":
        return scores.argmax(axis=1)
    support = membrane.reshape(len(out), -1) @ (2.0 * graph.key.astype(np.float64) - 1.0).T
    tied = scores == scores.max(axis=1, keepdims=True)
    return np.where(tied, support, -np.inf).argmax(axis=1)
