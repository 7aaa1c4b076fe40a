"""Semantic segmentation with binary spiking hidden layers, on digits placed on a canvas.

:func:`digit_canvases` builds the task from any digit set: two digits side by side on a 32 x 64 canvas,
each shifted by up to 4 pixels, and a label per pixel (0 background, ``1 + digit`` where the digit's
pixel is at least half bright). :func:`segmentation_network` is a small fully convolutional network whose
hidden layers sharpen into spikes: a strided encoder sees each digit whole, nearest-neighbour up-sampling
brings its spikes back to full resolution, and the per-pixel class scores are the potentials of two
convolutions summed (one reads the up-sampled context, one the first layer's full-resolution spikes).
Up-sampling has no node in NIR, so the network trains and runs in PyTorch but does not export:
:func:`~whetstone.to_spiking_graph` refuses it, naming the layer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..nn.activations import SpikingBReLU
from ..utils.checks import positive_int
from .zoo import center_on_threshold

__all__ = ["CANVAS", "SpikingSegmenter", "digit_canvases", "mean_iou", "segmentation_network"]

#: (height, width) of a canvas.
CANVAS = (32, 64)


def digit_canvases(
    images: Tensor, labels: Tensor, count: int, seed: int = 0, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """``count`` canvases (count, 1, 32, 64) float in [0, 1] and their per-pixel labels (count, 32, 64)
    int64, from 28 x 28 digit ``images`` (uint8 or float in [0, 1]) and their ``labels``."""
    positive_int(count, "count")
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must have shape (N, 1, 28, 28), got {tuple(images.shape)}")
    pixels = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(pixels), (count, 2), generator=generator)
    shift = torch.randint(5, (count, 2, 2), generator=generator)  # (dy, dx) of each digit, 0..4
    canvases = torch.zeros(count, 1, *CANVAS)
    masks = torch.zeros(count, *CANVAS, dtype=torch.long)
    for side in range(2):  # the left digit in columns 0..31, the right one in 32..63: they never overlap
        for dy in range(5):
            for dx in range(5):
                rows = torch.nonzero((shift[:, side, 0] == dy) & (shift[:, side, 1] == dx)).squeeze(1)
                if rows.numel() == 0:
                    continue
                digit = pixels[pick[rows, side]]
                x0 = 32 * side + dx
                canvases[rows, :, dy : dy + 28, x0 : x0 + 28] = digit
                label = (labels[pick[rows, side]] + 1).view(-1, 1, 1)
                masks[rows, dy : dy + 28, x0 : x0 + 28] = torch.where(digit[:, 0] >= threshold, label, 0)
    return canvases, masks


class SpikingSegmenter(nn.Module):
    """Per-pixel class scores (N, classes, H, W) from binary spikes (see the module docstring)."""

    def __init__(self, classes: int = 11, width: int = 32) -> None:
        super().__init__()
        spike = SpikingBReLU
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), spike())
        self.context = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), spike(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), spike(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), spike(),
            nn.Conv2d(4 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), spike(),
            nn.Upsample(scale_factor=4, mode="nearest"),
        )  # fmt: skip
        self.read_context = nn.Conv2d(4 * width, classes, 3, padding=1)
        self.read_stem = nn.Conv2d(width, classes, 1)
        center_on_threshold(self)

    def forward(self, x: Tensor) -> Tensor:
        stem = self.stem(x)
        return self.read_context(self.context(stem)) + self.read_stem(stem)


def segmentation_network(classes: int = 11, width: int = 32) -> SpikingSegmenter:
    """A :class:`SpikingSegmenter` at sharpness 0."""
    for name, value in (("classes", classes), ("width", width)):
        positive_int(value, name)
    return SpikingSegmenter(classes, width)


def mean_iou(predicted: Tensor, truth: Tensor, classes: int = 11) -> tuple[float, np.ndarray]:
    """Mean intersection over union over the classes present in ``truth`` or ``predicted``, and the IoU of
    each class (NaN where a class is in neither)."""
    found = torch.bincount(truth.flatten() * classes + predicted.flatten(), minlength=classes * classes)
    confusion = found.view(classes, classes).double()
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
    return float(np.nanmean(iou.numpy())), iou.numpy()
