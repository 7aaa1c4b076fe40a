"""Recurrent binary-spike networks: a layer whose spikes feed back into itself one time step later.

:class:`RecurrentSpiking` reads a sequence (an image row by row: one row a step) and keeps a hidden layer
``h_t = spike(W x_t + U h_(t-1) + b)`` whose activation sharpens like every other during training; the
output layer reads ``h`` at the last step. Once sharp, every hidden unit is an integrate-and-fire neuron
whose membrane is cleared after each step (``leak = 0``), with recurrent synapses ``U`` delayed one step:
:meth:`RecurrentSpiking.spiking_graph` writes exactly that graph, which the multi-step simulator runs and
the NIR exporter writes as a cycle through the hidden neurons.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..graph.nodes import AffineNode, DeployError, InputNode, SpikeNode, SpikingGraph
from .activations import SpikingActivation

__all__ = ["RecurrentSpiking"]


def _array(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().to(torch.float32).numpy().copy()


class RecurrentSpiking(nn.Module):
    """A recurrent spiking layer over ``steps`` steps of ``features`` values, then a spiking output layer
    of ``width`` units read at the last step.

    Args:
        steps: time steps per sample (an image of ``steps`` rows).
        features: values per step (channels times the row's width).
        hidden: recurrent spiking units.
        width: output units (the N-hot code's width).
        spike: the spiking activation class (e.g. :class:`~whetstone.SpikingBReLU`).
    """

    def __init__(self, steps: int, features: int, hidden: int, width: int, spike: type[SpikingActivation]) -> None:
        super().__init__()
        self.steps, self.features = steps, features
        self.encoder = nn.Linear(features, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        self.hidden = spike()
        self.output = nn.Linear(hidden, width)
        self.output_spikes = spike()
        with torch.no_grad():  # start the hidden units in the middle of their linear range, as every layer
            self.encoder.bias.fill_(self.hidden.spike_threshold)
            self.recurrent.weight.mul_(0.5)

    def forward(self, x: Tensor) -> Tensor:
        """Output spikes (N, width) after the last step of ``x`` (N, steps * features values each)."""
        drive = self.encoder(x.reshape(len(x), self.steps, self.features))  # every step's input at once
        h = drive.new_zeros(len(x), self.recurrent.in_features)
        for t in range(self.steps):
            h = self.hidden(drive[:, t] + self.recurrent(h))
        return self.output_spikes(self.output(h))

    def spiking_graph(self, key: Tensor | None, prefix: str = "") -> SpikingGraph:
        """The layer as a temporal :class:`SpikingGraph` (call once every activation is at sharpness 1):
        the hidden neurons sum the input synapses and their own spikes of the previous step. Nodes are
        named ``prefix`` + the module's attribute (``features.hidden``)."""
        soft = [name for name, m in (("hidden", self.hidden), ("output_spikes", self.output_spikes)) if not m.is_binary]
        if soft:
            raise DeployError(f"{soft[0]}: not binary (sharpness {getattr(self, soft[0]).get_sharpness():g} < 1)")
        if key is None:
            raise DeployError("model has no SoftmaxDecode and no key was given")
        hidden, width = self.recurrent.in_features, self.output.out_features
        threshold = np.float32(self.hidden.spike_threshold)
        encoder, recurrent, spikes, output, out_spikes = (
            prefix + name for name in ("encoder", "recurrent", "hidden", "output", "output_spikes")
        )
        nodes = [
            InputNode("input", [], (self.features,)),
            AffineNode(encoder, ["input"], (hidden,), _array(self.encoder.weight), _array(self.encoder.bias)),
            # Reads the hidden spikes, which come later in the list: their values of the previous step.
            AffineNode(recurrent, [spikes], (hidden,), _array(self.recurrent.weight), np.zeros(hidden, np.float32)),
            SpikeNode(spikes, [encoder, recurrent], (hidden,), np.full(hidden, threshold)),
            AffineNode(output, [spikes], (width,), _array(self.output.weight), _array(self.output.bias)),
            SpikeNode(out_spikes, [output], (width,), np.full(width, np.float32(self.output_spikes.spike_threshold))),
        ]  # fmt: skip
        graph = SpikingGraph(nodes, out_spikes, _array(key), {"steps": self.steps})
        graph.metadata["encoder"] = graph.encoder
        return graph
