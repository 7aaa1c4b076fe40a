"""The integer network of a quantized graph, run in PyTorch: the fast CPU path of a deployed binary network.

Activations are ``uint8``: the input pixels ``p = round(255 x)`` and the spikes (1). A weighted layer and
the spiking layer it feeds form one integer layer: the accumulator ``acc = sum(u w)`` of the uint8 inputs
and the int8 weights of :func:`~whetstone.graph.quantization.quantize` is ``L (W x)`` exactly, with ``L`` 255 for pixels
and 1 for spikes, and the layer fires where ``acc >= c``, ``c = ceil(-L (b - theta))`` an integer per unit.

The layers run on oneDNN's int8 kernels where PyTorch has them (x86 CPUs): the convolution or matrix
product, the comparison and the uint8 spikes in one call (``torch.ops.onednn.qconv2d_pointwise`` with the
bias ``1 - c`` and a clamp to [0, 1]). CPUs without VNNI sum pairs of products in 16 bits, with saturation:
inputs up to 128 never reach it (128 x 127 x 2 = 32,512 < 32,767), so there each pixel is fed as two
channels, ``min(p, 128)`` and the rest, under the same weights. Matrix products under 2**18 multiply-adds
sum in float32 (a oneDNN call costs ~16 us whatever its size), and so does every layer on other CPUs
(``engine="float"``). Every partial sum is an integer below ``2**24`` (checked when the network is built), so
both engines are exact: the spikes are those of :func:`~whetstone.graph.simulator.simulate` on the quantized graph, ties
included, for images whose pixels are multiples of 1/255 (8-bit images). On a GPU the float engine runs too,
but its exactness is not tested there (cuDNN may choose Winograd or FFT convolutions, which round).

It takes the graphs that the integer ONNX file takes (:func:`check_integer_chain`): chains of convolutions
and linears each feeding one spiking layer, max pooling and flatten, at most 8-bit weights.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nodes import (
    AffineNode,
    Conv2dNode,
    DeployError,
    FlattenNode,
    InputNode,
    MaxPool2dNode,
    SpikeNode,
    SpikingGraph,
)

__all__ = ["ENGINES", "IntegerNetwork", "check_integer_chain", "cpu_has_vnni", "onednn_available"]

#: How the layers sum: oneDNN's int8 kernels, float32, or oneDNN where this machine runs it.
ENGINES = ("auto", "onednn", "float")
PIXEL_LEVELS = 255  # a pixel x is read as round(255 x)
SMALL_PRODUCT = 2**18  # multiply-adds under which a matrix product runs in float32 (oneDNN's call costs ~16 us)
PAIR_SAFE = 128  # uint8 inputs up to this never saturate the 16-bit pair sums of int8 kernels without VNNI
EXACT_LIMIT = 2**24  # integers below this are exact in float32


def check_integer_chain(graph: SpikingGraph, consumer: str, instead: str) -> None:
    """Raise :class:`~whetstone.graph.nodes.DeployError` unless ``graph`` is quantized to at most 8 bits and is a
    chain of weighted layers each feeding one spiking layer alone, max pooling and flatten. ``consumer``
    names what needs it in the message; ``instead`` says what to do with a graph that is refused."""
    bits = graph.metadata.get("quantized_bits")
    if bits is None or int(bits) > 8:
        raise DeployError(
            f"{consumer} needs a graph quantized to at most 8 bits (quantize(graph, 8)), got {bits or 'float'} weights"
        )
    if graph.readout != "spikes" or graph.is_temporal:
        what = "a membrane readout" if graph.readout != "spikes" else "state across time steps"
        raise DeployError(f"{consumer} runs single-step graphs read out as spikes; this one has {what}; {instead}")
    users = graph.consumers()
    for node in graph.nodes:
        if isinstance(node, (AffineNode, Conv2dNode)):
            feeds = users[node.name]
            if len(feeds) != 1 or not isinstance(feeds[0], SpikeNode) or feeds[0].inputs != [node.name]:
                raise DeployError(
                    f"{node.name}: {consumer} needs each weighted layer to feed one spiking layer alone (no skip "
                    f"connection or sum pooling); {instead}"
                )
        elif isinstance(node, SpikeNode):
            if len(node.inputs) != 1 or not isinstance(graph.node(node.inputs[0]), (AffineNode, Conv2dNode)):
                raise DeployError(
                    f"{node.name}: {consumer} runs spiking layers fed by one Linear or Conv2d only (no skip "
                    f"connection or sum pooling); {instead}"
                )
            if np.unique(node.threshold).size != 1:
                raise DeployError(f"{node.name}: {consumer} needs one threshold per spiking layer")
        elif not isinstance(node, (InputNode, MaxPool2dNode, FlattenNode)):
            raise DeployError(f"{node.name}: a {node.op} has no {consumer} mapping")


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch runs oneDNN's int8 convolution here (probed once, on a 1x1 image)."""
    try:
        ones = torch.ones(1, dtype=torch.float32)
        packed = torch.ops.onednn.qconv_prepack(
            torch.ones(1, 1, 1, 1, dtype=torch.int8), ones, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, None
        )
        out = torch.ops.onednn.qconv2d_pointwise(
            torch.ones(1, 1, 1, 1, dtype=torch.uint8), 1.0, 0, packed, ones, torch.zeros(1, dtype=torch.int64),
            None, [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return bool(out.item() == 1.0)


@functools.cache
def cpu_has_vnni() -> bool:
    """Whether this CPU sums int8 products in 32 bits (AVX-512 VNNI or AVX-VNNI, read from /proc/cpuinfo);
    ``False`` where that cannot be read, which costs speed, never exactness."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class IntegerSpikingLayer(nn.Module):
    """A weighted layer (int8 weights) and the spiking layer it feeds: uint8 inputs in, uint8 spikes out.

    ``levels`` is what one unit of the input stands for: 255 for pixels, 1 for spikes. ``pair_split``
    feeds inputs above 128 to oneDNN as two channels (for CPUs without VNNI; see the module docstring).
    """

    def __init__(
        self, layer: AffineNode | Conv2dNode, spike: SpikeNode, levels: int, engine: str, pair_split: bool
    ) -> None:
        super().__init__()
        self.name, self.levels = spike.name, levels
        self.conv = isinstance(layer, Conv2dNode)
        self.stride, self.padding, self.dilation, self.groups = [1, 1], [0, 0], [1, 1], 1
        if self.conv:
            self.stride, self.padding = list(layer.stride), list(layer.padding)
            self.dilation, self.groups = list(layer.dilation), layer.groups
        self.pair_split = pair_split and levels > PAIR_SAFE
        # A grouped convolution cannot take the two channels of a pixel side by side: it sums in float32.
        self.engine = "float" if self.pair_split and self.groups > 1 else engine
        weight = np.asarray(layer.weight, dtype=np.float64)
        if np.any(weight != np.round(weight)) or np.abs(weight).max(initial=0) > 127:
            raise DeployError(f"{layer.name}: the integer network needs integer weights in [-127, 127]")
        theta = float(np.asarray(spike.threshold).flat[0])
        first = [math.ceil(-levels * (float(b) - theta)) for b in np.asarray(layer.bias, dtype=np.float64)]
        largest = levels * np.abs(weight).reshape(len(weight), -1).sum(1).max(initial=0) + max(map(abs, first))
        if largest >= EXACT_LIMIT:
            raise DeployError(
                f"{layer.name}: sums reach {largest:,.0f}, past the 2**24 that float32 and oneDNN's int8 "
                "kernels hold exactly; quantize to fewer bits or run the simulator"
            )
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.int8))
        self.register_buffer("float_weight", torch.as_tensor(weight, dtype=torch.float32), persistent=False)
        #: The integer each unit's accumulator must reach to fire (per output channel of a convolution).
        self.register_buffer("first", torch.tensor(first, dtype=torch.float32))
        self._packed: torch.Tensor | None = None  # made on first use, with _ones, _zeros and _bias
        self.register_load_state_dict_post_hook(_forget_packed)

    def __getstate__(self) -> dict:  # copies and pickles leave the opaque packed weights behind
        state = dict(super().__getstate__())
        state["_packed"] = None
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = not self.conv and x.shape[0] * self.weight.numel() < SMALL_PRODUCT
        if self.engine == "onednn" and x.device.type == "cpu" and not small:
            return self._onednn(x)
        weight = self.float_weight
        if self.conv:
            acc = F.conv2d(x.float(), weight, None, self.stride, self.padding, self.dilation, self.groups)
            spikes = torch.ge(acc, self.first[:, None, None]).view(torch.uint8)  # bool is uint8-sized: no copy
            return spikes.contiguous(memory_format=torch.channels_last)
        return torch.ge(F.linear(x.float(), weight), self.first).view(torch.uint8)

    def _onednn(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:  # oneDNN's weight layout, and its per-channel scales (1) and zero points (0)
            weight = torch.cat([self.weight, self.weight], 1) if self.pair_split else self.weight
            ones, self._zeros = torch.ones(len(weight)), torch.zeros(len(weight), dtype=torch.int64)
            if self.conv:
                self._packed = torch.ops.onednn.qconv_prepack(
                    weight, ones, 1.0, 0, self.stride, self.padding, self.dilation, self.groups, None
                )
            else:
                self._packed = torch.ops.onednn.qlinear_prepack(weight, None)
            self._ones = ones
            self._bias = 1.0 - self.first  # acc + bias >= 1 where a unit fires, <= 0 where not: clamp to [0, 1]
        if self.pair_split:  # p = min(p, 128) + the rest, each under the same weights
            low = x.clamp(max=PAIR_SAFE)
            x = torch.cat([low, x - low], 1)
        if self.conv:
            return torch.ops.onednn.qconv2d_pointwise(
                x, 1.0, 0, self._packed, self._ones, self._zeros, self._bias, self.stride, self.padding,
                self.dilation, self.groups, 1.0, 0, None, "hardtanh", [0.0, 1.0], "",
            )  # fmt: skip
        return torch.ops.onednn.qlinear_pointwise(
            x.contiguous(), 1.0, 0, self._packed, self._ones, self._zeros, self._bias, 1.0, 0, None, "hardtanh",
            [0.0, 1.0], "",
        )  # fmt: skip

    def extra_repr(self) -> str:
        kind = "conv2d" if self.conv else "linear"
        split = ", pixels as two channels" if self.pair_split and self.engine == "onednn" else ""
        return f"{self.name}: {kind} {tuple(self.weight.shape)}, input levels {self.levels}, {self.engine}{split}"


def _forget_packed(layer: IntegerSpikingLayer, incompatible_keys: object) -> None:
    """After ``load_state_dict``: drop oneDNN's copy of the old weights; the next call packs the new ones."""
    layer._packed = None


class IntegerMaxPool2d(nn.Module):
    """Max pooling of uint8 activations (of spikes: their logical OR) as a maximum of strided views, rows
    then columns: 2-3x faster than PyTorch's pooling of uint8. Zero padding changes no maximum of values
    that are never negative."""

    def __init__(self, node: MaxPool2dNode) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = tuple(node.kernel_size), tuple(node.stride), tuple(node.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ky, kx), (sy, sx), (py, px) = self.kernel_size, self.stride, self.padding
        if py or px:
            x = F.pad(x, (px, px, py, py))
        rows_out, cols_out = (x.shape[-2] - ky) // sy + 1, (x.shape[-1] - kx) // sx + 1
        rows = functools.reduce(torch.maximum, [x[..., dy : dy + sy * (rows_out - 1) + 1 : sy, :] for dy in range(ky)])
        return functools.reduce(torch.maximum, [rows[..., dx : dx + sx * (cols_out - 1) + 1 : sx] for dx in range(kx)])

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class IntegerNetwork(nn.Module):
    """The integer network of a ``graph`` quantized to at most 8 bits (see the module docstring): takes
    float images in [0, 1] (read as ``round(255 x)``, clamped to [0, 255]), returns the output layer's spikes as float32 0/1,
    the same as :func:`~whetstone.convert.inference.for_inference` returns for the float network.

    ``engine`` is ``"onednn"`` (int8 kernels), ``"float"`` (float32 sums) or ``"auto"``: oneDNN where
    :func:`onednn_available`. ``pair_split`` (default: where the CPU lacks VNNI, :func:`cpu_has_vnni`) feeds
    pixels to oneDNN as two channels of at most 128 each. Raises :class:`~whetstone.graph.nodes.DeployError` for a
    graph it cannot run.
    """

    def __init__(self, graph: SpikingGraph, engine: str = "auto", pair_split: bool | None = None) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        check_integer_chain(graph, "the integer network", "run the float network (for_inference without bits)")
        if engine == "auto":
            engine = "onednn" if onednn_available() else "float"
        if pair_split is None:
            pair_split = not cpu_has_vnni()
        self.engine, self.pair_split, self.input_shape = engine, pair_split, torch.Size(graph.input_shape)
        levels = {graph.nodes[0].name: PIXEL_LEVELS}
        by_name = {node.name: node for node in graph.nodes}
        self.layers = nn.ModuleList()
        for node in graph.nodes[1:]:
            if isinstance(node, SpikeNode):
                layer = by_name[node.inputs[0]]
                self.layers.append(IntegerSpikingLayer(layer, node, levels[layer.inputs[0]], engine, pair_split))
                levels[node.name] = 1
                continue
            if isinstance(node, MaxPool2dNode):
                self.layers.append(IntegerMaxPool2d(node))
            elif isinstance(node, FlattenNode):
                self.layers.append(nn.Flatten())
            else:  # a weighted layer: part of the spiking layer that follows it
                continue
            levels[node.name] = levels[node.inputs[0]]

    def extra_repr(self) -> str:
        return f"engine={self.engine!r}, pair_split={self.pair_split}, input_shape={tuple(self.input_shape)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input must be (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if not x.is_floating_point():  # raw 0-255 pixels would all read as 1
            raise ValueError(f"input must be float images in [0, 1] (pixels / 255), got {x.dtype}")
        u = x.float().clamp(0, 1).mul_(PIXEL_LEVELS).round_().to(torch.uint8)
        if u.dim() == 4:
            u = u.contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            u = layer(u)
        return u.float()
