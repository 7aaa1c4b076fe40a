"""Measuring a trained network: loss and accuracy, and whether every spiking unit is binary.

Evaluation runs in eval mode, without autograd and in full float32 (:func:`full_float32`): the
precision the network is deployed in, so the accuracy reported is the deployed network's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.activations import SpikingActivation
from ..nn.losses import Loss, as_loss
from ..nn.sharpen import model_sharpness, spiking_layers

__all__ = [
    "LayerReport",
    "binary_report",
    "evaluate",
    "full_float32",
    "is_fully_binary",
]


@dataclass
class LayerReport:
    """Activity of one spiking layer over a dataset."""

    name: str  # the module's qualified name in the model, e.g. "features.2"
    units: int
    binary: bool  # every output was exactly 0.0 or 1.0
    firing_rate: float  # mean output (the fraction of units firing, once binary)
    never_fired: int  # units whose output was 0 for every sample


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Run float32 convolutions and matrix products in full float32 inside the block.

    On recent NVIDIA GPUs PyTorch lets cuDNN compute float32 convolutions in TF32 (10-bit mantissa) by
    default. Training does not mind, but a binary unit whose input lands within that rounding of its
    threshold can flip: evaluation uses full float32, the precision the network is deployed in. (No
    effect on the CPU.)"""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
@full_float32()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], loss: Loss | None = None
) -> tuple[float, float | None]:
    """Mean loss and accuracy (a fraction) of ``model`` over ``loader``, in eval mode. ``loss`` defaults
    to :class:`~whetstone.nn.losses.Classification`; with a reconstruction loss the accuracy is None."""
    loss = as_loss(loss).for_evaluation()
    was_training = model.training
    model.eval()
    total_loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    count = 0
    try:
        for x, y in loader:
            output = model(x)
            total_loss += loss(output, x, y).detach().cpu() * len(y)
            if not loss.reconstruct:
                correct += (output.argmax(dim=-1) == y).sum().cpu()
            count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return float(total_loss) / count, None if loss.reconstruct else float(correct) / count


@torch.no_grad()
@full_float32()
def binary_report(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> list[LayerReport]:
    """Run ``model`` over ``loader`` and report, per spiking layer, whether every output was 0/1, its
    firing rate and how many units never fired."""
    names = {module: name for name, module in model.named_modules()}
    layers = spiking_layers(model)
    # Running figures stay on the model's device and are read once at the end: no host sync per batch.
    stats: dict[SpikingActivation, dict[str, Any]] = {layer: {"count": 0} for layer in layers}

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        entry = stats[module]
        flat = output.detach().flatten(1)
        if module.scale_value != 1.0:  # a calibrated layer emits 0 or its scale: its spikes, divided by it
            flat = flat / module.scale_value
        binary, total, fired = ((flat == 0) | (flat == 1)).all(), flat.sum(dtype=torch.float64), (flat > 0).any(dim=0)
        if entry["count"]:
            binary, total, fired = binary & entry["binary"], total + entry["sum"], fired | entry["fired"]
        entry.update(binary=binary, sum=total, fired=fired, count=entry["count"] + flat.numel())

    handles = [layer.register_forward_hook(hook) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        for x, _ in loader:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    reports = []
    for layer in layers:
        entry = stats[layer]
        if not entry["count"]:  # never called (no batches, or a layer the forward pass skips)
            reports.append(LayerReport(names[layer], 0, True, 0.0, 0))
            continue
        fired = entry["fired"]
        reports.append(LayerReport(names[layer], fired.numel(), bool(entry["binary"]), float(entry["sum"]) / entry["count"],
                                   int((~fired).sum())))  # fmt: skip
    return reports


def is_fully_binary(model: nn.Module, reports: Sequence[LayerReport]) -> bool:
    """True when every spiking layer of ``model`` is at sharpness 1 and, in ``reports`` (from
    :func:`binary_report` on a dataset), emitted only 0 or 1, and every parameter is a finite number: a
    single-time-step spiking network (NaN weights also give 0/1 outputs, all of them 0)."""
    sharpness = model_sharpness(model)
    return (
        bool(sharpness)
        and bool(reports)
        and all(value == 1.0 for value in sharpness)
        and all(r.binary for r in reports)
        and all(bool(torch.isfinite(p).all()) for p in model.parameters())
    )
