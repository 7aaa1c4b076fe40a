"""``xylo``: NIR for Rockpool 3.1, SynSense's toolchain for the Xylo chips, and a fit report against
Xylo Audio 2 (SYNS61201).

What Rockpool needs (measured with rockpool 3.1.0, nir 1.0.8): its NIR importer reads Affine/Linear and
the LIF family only (no IF, no convolution, pooling or flatten), and its ``nir.LIF`` import reads a
``tau_mem`` that nir 1.0.8's LIF does not have. A spiking layer is therefore written as a ``CubaLIF`` with
no synaptic decay (``tau_syn = inf``, ``tau_mem = r = w_in = 1``, no leak): one step from rest of
Rockpool's ``LIFTorch`` (``isyn += input; isyn *= exp(-dt/tau_syn); V = V exp(-dt/tau_mem) + isyn``) is
an IF; it fires on ``V >= threshold`` (thresholds stored as trained) with several spikes when
``V >= 2 threshold``: set ``max_spikes_per_dt = 1`` after import. The input is
given flat (the leading flatten is dropped). Chip limits (rockpool 3.1.0,
``devices/xylo/syns61201``): 16 input channels, 1000 hidden neurons, 8 output neurons (``xa2_devkit_utils``,
``xylo_mapper.mapper``), int8 weights and int16 thresholds (``xylo_mapper``); the inputs are event counts.
Its mapper does not transfer Affine biases: export moves a hidden layer's biases into its neurons' thresholds
(``S + b >= T`` is ``S >= T - b``, exact) wherever every threshold stays a positive integer (Rockpool's neurons
need one: a threshold of 0 gave NaN spikes in LIFTorch), and the fit report fails a file that still holds
biases, naming the layers. The bit-accurate Xylo simulator (``xylosim``, a C++ package on the index) is not
installed: no network of ours fits Xylo's 16 inputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..export.nir import NirStyle
from ..graph.nodes import AffineNode, GraphNode, SpikingGraph
from ..graph.quantization import Registers
from .base import (
    FitCheck,
    FitReport,
    Target,
    at_most_bits,
    dense_only,
    populations,
    replace_nodes,
    weight_bits_check,
)

STYLE = NirStyle(target="rockpool", fires_on=">=", neuron="CubaLIF",
                 run="rockpool from_nir; max_spikes_per_dt=1 on every LIFTorch; flat input; one step")  # fmt: skip
SOURCE = "rockpool 3.1.0 devices/xylo/syns61201"
INPUTS, HIDDEN, OUTPUTS, WEIGHT_BITS, THRESHOLD_BITS = 16, 1000, 8, 8, 16
#: A bias moves into a 16-bit threshold: weights are scaled per channel until it fits.
REGISTERS = Registers(bias=2 ** (THRESHOLD_BITS - 1) - 1)


def fit(graph: SpikingGraph) -> FitReport:
    """The graph against Xylo Audio 2's limits."""
    report = FitReport("Xylo Audio 2 (SYNS61201)")
    layers = populations(graph)
    inputs = int(np.prod(graph.input_shape))
    report.checks.append(
        FitCheck("input", f"<= {INPUTS} input channels", f"{inputs}", inputs <= INPUTS, f"{SOURCE}/xa2_devkit_utils.py")
    )
    report.checks.append(FitCheck("input", "event counts", "real-valued pixels", False, f"{SOURCE}/xylo_sim.py"))
    kinds = sorted({node.op for node in graph.nodes} - {"input", "affine", "spike", "flatten"})
    report.checks.append(
        FitCheck("network", "dense layers only", ", ".join(kinds) or "dense", not kinds, f"{SOURCE}/xylo_mapper.py")
    )
    hidden = sum(p.neurons for p in layers[:-1])
    report.checks.append(
        FitCheck(
            "hidden layers", f"<= {HIDDEN} neurons in all", f"{hidden:,}", hidden <= HIDDEN, f"{SOURCE}/xylo_mapper.py"
        )
    )
    outputs = layers[-1].neurons if layers else 0
    report.checks.append(FitCheck(layers[-1].name if layers else "output", f"<= {OUTPUTS} output neurons", f"{outputs}",
                                  outputs <= OUTPUTS, f"{SOURCE}/xylo_mapper.py"))  # fmt: skip
    report.checks.append(weight_bits_check(graph, WEIGHT_BITS, f"{SOURCE}/xylo_mapper.py"))
    if not kinds:  # the file as it is written (8-bit): what the mapper would make of its biases and thresholds
        written = _prepare(graph)
        biased = [node for node in written.nodes if isinstance(node, AffineNode) and np.any(node.bias != 0)]
        largest = max((float(np.abs(node.bias).max()) for node in biased), default=0.0)
        kept = (
            f"{len(biased)} layer(s) with biases up to |{largest:g}| ({', '.join(n.name for n in biased)}: moving them "
        )
        kept += "into the thresholds would leave a threshold below 1, or the layer reads the pixels)"
        report.checks.append(FitCheck("network", "no Affine biases (the Xylo mapper does not transfer them)",
                                      kept if biased else "none (folded into the thresholds)", not biased,
                                      f"{SOURCE}/xylo_mapper.py"))  # fmt: skip
        for spike in written.spiking_nodes():
            low, high = float(spike.threshold.min()), float(spike.threshold.max())
            fits = (
                bool(np.all(spike.threshold == np.round(spike.threshold)))
                and high < 2 ** (THRESHOLD_BITS - 1)
                and low > 0
            )
            report.checks.append(FitCheck(spike.name, f"positive integer thresholds of {THRESHOLD_BITS} bits",
                                          f"{low:g} to {high:g}", fits, f"{SOURCE}/xylo_mapper.py"))  # fmt: skip
    report.notes.append(
        "an N-hot output code needs N x classes output neurons: 8 allow at most 8 classes with a 1-hot code"
    )
    return report


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    graph = dense_only(graph, "Rockpool")
    return fold_biases(at_most_bits(graph, WEIGHT_BITS, registers=REGISTERS, threshold_bits=THRESHOLD_BITS))


def fold_biases(graph: SpikingGraph) -> SpikingGraph:
    """Move each hidden layer's integer biases into its neurons' thresholds (``S + b >= T`` is ``S >= T - b``),
    which the Xylo mapper transfers where it drops biases, wherever every threshold stays a positive integer
    (Rockpool's neurons need one: a threshold of 0 gave NaN spikes). A layer where one would not keeps its
    biases, and the fit report names it. The encoder's biases (fractional: ``quantize`` adds ``0.5 / 255``) stay."""
    by_name = {node.name: node for node in graph.nodes}
    replaced: dict[str, GraphNode] = {}
    for spike in graph.spiking_nodes():
        (source,) = [by_name[name] for name in spike.inputs]
        if not isinstance(source, AffineNode) or source.name == graph.encoder or not np.any(source.bias):
            continue
        folded = spike.threshold.reshape(-1) - source.bias
        if np.all(folded == np.round(folded)) and folded.min() >= 1:
            replaced[source.name] = dataclasses.replace(source, bias=np.zeros_like(source.bias))
            replaced[spike.name] = dataclasses.replace(
                spike, threshold=folded.reshape(spike.threshold.shape).astype(np.float32)
            )
    return replace_nodes(graph, [replaced.get(node.name, node) for node in graph.nodes])


def run(path: Path, images: np.ndarray) -> np.ndarray:
    """The output spikes (N, width) of the file run for one time step in Rockpool."""
    import nir
    import torch
    from rockpool.nn.modules.torch.lif_torch import LIFTorch
    from rockpool.nn.modules.torch.nir import from_nir

    network = from_nir(nir.read(Path(path)))
    for module in network.modules():
        if isinstance(module, LIFTorch):
            module.max_spikes_per_dt = torch.tensor(1.0)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32).reshape(len(images), 1, -1))  # (batch, time, features)
    with torch.no_grad():
        out = network(x)
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(len(images), -1).detach().numpy()


TARGET = Target(
    name="xylo",
    consumer="Rockpool",
    summary="dense layers as CubaLIF (no decay), 8-bit weights, v >= threshold; Xylo Audio 2 fit report",
    style=STYLE,
    aliases=("rockpool",),
    prepare=_prepare,
    run=run,
    unavailable="pip install --no-deps rockpool",
    fit=fit,
)
