"""Training for the integer weights a chip holds: each ``Conv2d`` and ``Linear`` computes with its weights
rounded as :func:`~whetstone.graph.quantization.quantize` will round them on export (symmetric, ``2**(bits-1) - 1``
levels each side, a scale per output channel), while the optimizer updates the float weights underneath
(straight-through gradients: the rounding passes the gradient unchanged).

    qat = QuantizationAware(bits=4, start_epoch=5)     # from the epoch sharpening starts (see below)
    trainer = ws.Trainer(model, optimizer, sharpener, quantizer=qat)
    # or in a loop of your own, at the epoch you choose:
    quantize_weights(model, bits=4)

Why it is exact: a spiking layer's output depends only on the sign of ``W x + b - theta``, so export scales
each output channel freely; batch norm folds into the same channel as a factor, and a calibrated input
scale is one factor for the whole layer. Neither changes which integer a weight rounds to, so the file
holds the integers the network was trained with (up to float rounding of a weight lying within 1e-7 of a
half step after folding). Biases and thresholds stay float in training and round to the nearest integer on
export (half a weight step at most), in registers that are wider on every chip. Not covered: a layer fed by
a skip connection, or summing two weighted inputs, is scaled for the whole layer on export; and a chip
register that binds (Loihi 2's bias mantissa) lowers a channel's scale there.

The weights' state is unchanged (the modules change class, not parameters), so checkpoints, resuming and
export work as without it; :func:`float_weights` undoes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.checks import boolean, int_at_least, int_in

__all__ = [
    "TARGET_WEIGHTS",
    "QuantizationAware",
    "fake_quantize",
    "float_weights",
    "quantize_weights",
    "quantized_bits",
    "weights_to_train",
]

#: The weights each chip target's export writes: (bits, bits of the layer reading the pixels or None, per
#: channel). ``whetstone train --target T`` trains for them (tests check them against each target's export).
TARGET_WEIGHTS: dict[str, tuple[int, int | None, bool]] = {
    "loihi2": (8, None, True),
    "speck": (8, None, True),
    "xylo": (8, None, True),
    "akida": (4, 8, True),
    "spinnaker2": (8, None, False),
    "onnx-int8": (8, None, True),
}


def weights_to_train(target: str | None, bits: int | None) -> tuple[int, int | None, bool] | None:
    """The integer weights a run's ``--target`` (:data:`TARGET_WEIGHTS`) or ``--bits`` (per channel) trains
    for: (bits, bits of the layer that reads the pixels or None, per channel); None for a run in float."""
    if target is not None:
        if target not in TARGET_WEIGHTS:
            raise ValueError(f"target must be one of {', '.join(TARGET_WEIGHTS)}, got {target!r}")
        return TARGET_WEIGHTS[target]
    return None if bits is None else (bits, None, True)


def fake_quantize(weight: Tensor, bits: int, per_channel: bool = True) -> Tensor:
    """``weight`` rounded to ``2**(bits-1) - 1`` levels each side of zero, scaled by the largest magnitude of
    each output channel (dimension 0) or of the whole tensor, as float values; the gradient passes straight
    through. Computed in float64, as export computes it."""
    wide = weight.detach().double()
    flat = wide.abs().reshape(len(wide), -1)
    largest = flat.amax(dim=1) if per_channel else flat.amax().expand(len(wide))
    scale = ((2 ** (bits - 1) - 1) / largest.clamp_min(1e-12)).reshape(-1, *[1] * (wide.dim() - 1))
    rounded = (torch.round(wide * scale) / scale).to(weight.dtype)
    return weight + (rounded - weight).detach()


class QuantizedConv2d(nn.Conv2d):
    """A ``Conv2d`` computing with :func:`fake_quantize`'s weights (same parameters and state)."""

    weight_bits: int
    per_channel: bool

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, fake_quantize(self.weight, self.weight_bits, self.per_channel), self.bias)


class QuantizedLinear(nn.Linear):
    """A ``Linear`` computing with :func:`fake_quantize`'s weights (same parameters and state)."""

    weight_bits: int
    per_channel: bool

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, fake_quantize(self.weight, self.weight_bits, self.per_channel), self.bias)


_QUANTIZED = {nn.Conv2d: QuantizedConv2d, nn.Linear: QuantizedLinear}
_FLOAT = {quantized: plain for plain, quantized in _QUANTIZED.items()}


def quantize_weights(
    model: nn.Module, bits: int, encoder_bits: int | None = None, per_channel: bool = True
) -> nn.Module:
    """Make every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` compute with integer-valued weights of ``bits``
    bits from now on (in place; returns ``model``). ``encoder_bits`` gives the first of them in module
    order, the layer that reads the pixels, a precision of its own (Akida's 8-bit input layer);
    ``per_channel=False`` scales each layer as a whole. Calling it again changes the bits."""
    bits = int_in(bits, "bits", 2, 16)
    if encoder_bits is not None:
        encoder_bits = int_in(encoder_bits, "encoder_bits", 2, 16)
    boolean(per_channel, "per_channel")
    layers = [m for m in model.modules() if type(m) in _QUANTIZED or type(m) in _FLOAT]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear whose weights could be quantized")
    for index, layer in enumerate(layers):
        layer.__class__ = _QUANTIZED.get(type(layer), type(layer))
        layer.weight_bits = encoder_bits if index == 0 and encoder_bits else bits
        layer.per_channel = per_channel
    return model


def float_weights(model: nn.Module) -> nn.Module:
    """Undo :func:`quantize_weights`: every layer computes with its float weights again (in place)."""
    for layer in model.modules():
        if type(layer) in _FLOAT:
            layer.__class__ = _FLOAT[type(layer)]
            del layer.weight_bits, layer.per_channel
    return model


def quantized_bits(model: nn.Module) -> int | None:
    """The largest weight precision :func:`quantize_weights` gave ``model``'s layers, or None."""
    bits = [layer.weight_bits for layer in model.modules() if type(layer) in _FLOAT]
    return max(bits) if bits else None


class QuantizationAware:
    """Quantization-aware training from ``start_epoch`` on: the :class:`~whetstone.training.trainer.Trainer` (argument
    ``quantizer``) calls :meth:`on_epoch_begin` before every epoch on every process, which applies
    :func:`quantize_weights` from ``start_epoch`` (also when a run resumes past it).

    Where to start: the epoch sharpening starts (the run's ``--start-epoch``), the default of
    ``whetstone train --bits``. Before it the network learns its features in float; from it on, the
    activations become the chip's binary spikes while the weights become its integers, and the remaining
    epochs adapt the network to both at once (docs/results.md compares starting at epoch 0).
    """

    def __init__(
        self, bits: int, start_epoch: int = 0, encoder_bits: int | None = None, per_channel: bool = True
    ) -> None:
        self.bits = int_in(bits, "bits", 2, 16)
        self.encoder_bits = None if encoder_bits is None else int_in(encoder_bits, "encoder_bits", 2, 16)
        self.start_epoch = int_at_least(start_epoch, "start_epoch")
        self.per_channel = boolean(per_channel, "per_channel")

    def on_epoch_begin(self, model: nn.Module, epoch: int) -> None:
        if epoch >= self.start_epoch and quantized_bits(model) is None:
            quantize_weights(model, self.bits, self.encoder_bits, self.per_channel)

    def __repr__(self) -> str:
        encoder = f", encoder_bits={self.encoder_bits}" if self.encoder_bits else ""
        return f"QuantizationAware(bits={self.bits}, start_epoch={self.start_epoch}{encoder}, per_channel={self.per_channel})"
