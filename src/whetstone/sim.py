"""Reference integrate-and-fire simulator (numpy), with spike, synaptic-operation and energy counts.

It runs a :class:`~whetstone.deploy.SpikingGraph` the way event-driven hardware does: every weighted
layer keeps, for each input unit, the list of its outgoing synapses (target neuron, weight), and only
the inputs that are active (a spike, or a non-zero pixel at the encoder) deliver their synapses into
the membranes. A neuron fires when its membrane ``bias + sum of delivered weights >= threshold``.

It is deliberately independent of PyTorch: the agreement of its predictions with the PyTorch model, the
NIR file and ONNX Runtime is the check that all of them mean the same network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .deploy import SpikingGraph

__all__ = ["ENERGY_PER_OP", "EnergyModel", "SimResult", "simulate"]


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

#: Synapses delivered per accumulation pass; bounds the simulator's working memory.
_SYNAPSES_PER_PASS = 1 << 22


@dataclass
class _Synapses:
    """Outgoing synapses of each input unit, compressed by input (CSC): input ``j`` reaches neurons
    ``targets[start[j]:start[j + 1]]`` with ``weights[...]``."""

    start: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    @property
    def n_out(self) -> int:
        return self.bias.size


def _affine_synapses(weight: np.ndarray, bias: np.ndarray) -> _Synapses:
    n_out, n_in = weight.shape
    start = np.arange(n_in + 1, dtype=np.int64) * n_out
    targets = np.tile(np.arange(n_out, dtype=np.int32), n_in)
    return _Synapses(start, targets, np.ascontiguousarray(weight.T).ravel(), bias.astype(np.float32))


def _conv_synapses(
    weight: np.ndarray, bias: np.ndarray, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
) -> _Synapses:
    """Enumerate every (input unit, output unit, weight) of a 2-D convolution."""
    c_in, h, w = in_shape
    c_out, h_out, w_out = out_shape
    per_group_in, per_group_out = c_in // groups, c_out // groups
    sources, targets, weights = [], [], []
    for ky in range(weight.shape[2]):
        for kx in range(weight.shape[3]):
            # Input row y reaches output row oy when oy * stride - pad + ky * dilation == y.
            oy = np.arange(h_out)
            ox = np.arange(w_out)
            y = oy * stride[0] - padding[0] + ky * dilation[0]
            x = ox * stride[1] - padding[1] + kx * dilation[1]
            oy, y = oy[(y >= 0) & (y < h)], y[(y >= 0) & (y < h)]
            ox, x = ox[(x >= 0) & (x < w)], x[(x >= 0) & (x < w)]
            in_pos = (y[:, None] * w + x[None, :]).ravel()
            out_pos = (oy[:, None] * w_out + ox[None, :]).ravel()
            for g in range(groups):
                cs = np.arange(g * per_group_in, (g + 1) * per_group_in)
                os_ = np.arange(g * per_group_out, (g + 1) * per_group_out)
                # shape (c, position, o)
                sources.append(np.broadcast_to((cs[:, None, None] * h * w + in_pos[None, :, None]), (cs.size, in_pos.size, os_.size)).ravel())
                targets.append(np.broadcast_to(os_[None, None, :] * h_out * w_out + out_pos[None, :, None], (cs.size, in_pos.size, os_.size)).ravel())
                kernel = weight[os_][:, cs - g * per_group_in, ky, kx].T  # (c, o)
                weights.append(np.broadcast_to(kernel[:, None, :], (cs.size, in_pos.size, os_.size)).ravel())
    source = np.concatenate(sources)
    order = np.argsort(source, kind="stable")
    start = np.zeros(c_in * h * w + 1, dtype=np.int64)
    np.cumsum(np.bincount(source, minlength=c_in * h * w), out=start[1:])
    return _Synapses(
        start, np.concatenate(targets)[order].astype(np.int32), np.concatenate(weights)[order].astype(np.float32),
        np.repeat(bias.astype(np.float32), h_out * w_out),
    )


def _deliver(synapses: _Synapses, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Membranes after every active input of ``x`` (batch, n_in) delivered its synapses, and the number
    of synaptic events. Active inputs with a value other than 1 (the encoder's pixels) deliver
    ``weight * value``."""
    batch = x.shape[0]
    sample, unit = np.nonzero(x)
    value = x[sample, unit]
    graded = not np.all(value == 1.0)
    begin, count = synapses.start[unit], synapses.start[unit + 1] - synapses.start[unit]
    membrane = np.zeros(batch * synapses.n_out, dtype=np.float64)
    events = int(count.sum())
    # Split the active inputs into passes of at most _SYNAPSES_PER_PASS synapses.
    ends = np.cumsum(count)
    cuts = np.searchsorted(ends, np.arange(_SYNAPSES_PER_PASS, events, _SYNAPSES_PER_PASS), side="right")
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, unit.size]):
        n = count[lo:hi]
        if n.sum() == 0:
            continue
        which = np.repeat(np.arange(lo, hi), n)  # the active input each synapse belongs to
        offset = np.arange(which.size) - np.repeat(np.cumsum(n) - n, n)
        synapse = begin[which] + offset
        w = synapses.weights[synapse].astype(np.float64)
        if graded:
            w *= value[which]
        membrane += np.bincount(sample[which] * synapses.n_out + synapses.targets[synapse], weights=w, minlength=membrane.size)
    return membrane.reshape(batch, -1) + synapses.bias, events


def _pool(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], how: str) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))[:, :, :: stride[0], :: stride[1]]
    if how == "max":
        return windows.max(axis=(-2, -1))
    return windows.sum(axis=(-2, -1)) / (kernel[0] * kernel[1])


@dataclass
class LayerStats:
    """What one layer did over all simulated samples."""

    name: str
    op: str
    units: int
    spikes: int = 0  # spiking layers: spikes emitted
    events: int = 0  # weighted layers: synapses delivered (multiply-accumulates at the encoder)
    dense_macs: int = 0  # weighted layers: multiply-accumulates of the same layer run densely


@dataclass
class SimResult:
    """Predictions and activity of a simulation run; per-sample figures are averages over ``samples``."""

    predictions: np.ndarray
    output_spikes: np.ndarray
    layers: list[LayerStats]
    samples: int
    encoder: str
    metadata: dict = field(default_factory=dict)

    def accuracy(self, labels: np.ndarray) -> float:
        return float((self.predictions == np.asarray(labels)).mean())

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
        lines = [f"{'layer':<22} {'op':<9} {'units':>7} {'spikes/img':>11} {'rate':>7} {'events/img':>12} {'dense MAC/img':>14}"]
        for s in self.layers:
            spikes = f"{s.spikes / n:11.1f}" if s.op == "spike" else " " * 11
            rate = f"{s.spikes / (n * s.units):7.3f}" if s.op == "spike" else " " * 7
            events = f"{s.events / n:12.0f}" if s.dense_macs else " " * 12
            dense = f"{s.dense_macs / n:14.0f}" if s.dense_macs else " " * 14
            lines.append(f"{s.name:<22} {s.op:<9} {s.units:>7} {spikes} {rate} {events} {dense}")
        encoder, synops, dense = self.synaptic_ops()
        snn, ann = self.energy(arithmetic)
        model = ENERGY_PER_OP[arithmetic]
        lines += [
            f"per inference: {encoder:,.0f} encoder MACs (non-zero inputs only) + {synops:,.0f} synaptic events "
            f"vs {dense:,.0f} MACs dense ({(encoder + synops) / max(dense, 1):.3f}x the operations)",
            f"energy ({arithmetic}, {model.mac_pj:g} pJ/MAC, {model.add_pj:g} pJ/synaptic add; {model.source}; "
            f"arithmetic only): {snn:,.1f} nJ spiking vs {ann:,.1f} nJ dense ({ann / max(snn, 1e-12):.1f}x less)",
        ]
        return "\n".join(lines)


def simulate(
    graph: SpikingGraph, images: np.ndarray, batch_size: int = 256, progress: bool = False
) -> SimResult:
    """Run ``graph`` on ``images`` (float32, shape (N, *graph.input_shape), e.g. pixels / 255) one time
    step, event by event, and decode the output spikes with the graph's key (ties -> lowest class)."""
    images = np.asarray(images, dtype=np.float32)
    if images.shape[1:] != tuple(graph.input_shape):
        raise ValueError(f"images must have shape (N, {', '.join(map(str, graph.input_shape))}), got {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shapes = {n.name: n.shape for n in graph.nodes}
    synapses = {}
    for node in graph.nodes:
        if node.op == "affine":
            synapses[node.name] = _affine_synapses(node.params["weight"], node.params["bias"])
        elif node.op == "conv2d":
            p = node.params
            synapses[node.name] = _conv_synapses(
                p["weight"], p["bias"], shapes[node.inputs[0]], node.shape, p["stride"], p["padding"], p["dilation"], p["groups"]
            )
    stats = {n.name: LayerStats(n.name, n.op, math.prod(n.shape)) for n in graph.nodes if n.op != "input"}
    predictions, outputs = [], []
    starts = range(0, len(images), batch_size)
    for lo in tqdm(starts, desc="simulate", unit="batch", disable=not progress, leave=False):
        batch = images[lo : lo + batch_size]
        values: dict[str, np.ndarray] = {}
        for node in graph.nodes:
            if node.op == "input":
                values[node.name] = batch
                continue
            x = values[node.inputs[0]]
            for other in node.inputs[1:]:
                x = x + values[other]
            if node.name in synapses:
                flat = x.reshape(len(batch), -1)
                membrane, events = _deliver(synapses[node.name], flat)
                values[node.name] = membrane.reshape(len(batch), *node.shape)
                stats[node.name].events += events
                stats[node.name].dense_macs += len(batch) * synapses[node.name].targets.size
            elif node.op == "spike":
                spikes = (x >= node.params["threshold"]).astype(np.float32)
                values[node.name] = spikes
                stats[node.name].spikes += int(spikes.sum())
            elif node.op in ("maxpool2d", "avgpool2d"):
                p = node.params
                values[node.name] = _pool(x, p["kernel_size"], p["stride"], p["padding"], node.op[:3])
            elif node.op == "flatten":
                values[node.name] = x.reshape(len(batch), -1)
            else:
                raise ValueError(f"{node.name}: unknown operation {node.op!r}")
        out = values[graph.output].reshape(len(batch), -1)
        outputs.append(out.astype(np.uint8))
        predictions.append(graph.decode(out).argmax(axis=1))
    return SimResult(
        np.concatenate(predictions), np.concatenate(outputs), list(stats.values()), len(images), graph.encoder,
        dict(graph.metadata),
    )
