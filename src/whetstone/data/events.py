"""Event data: what an event camera records, as Tonic holds it (one structured array of ``x``, ``y``, ``t``
(microseconds), ``p`` (1: brighter, ON; 0: darker, OFF) per sample), binned into frames over time by Tonic
for the temporal networks (``rnn``: one time bin a step).

Nothing can be downloaded here, so the project makes its own event digits, recorded as N-MNIST was (a
camera moved in three saccades over each MNIST digit on a screen): each digit is moved along a triangle
of small steps on a larger canvas, and a pixel emits an ON (OFF) event at a step where its log brightness
rises (falls) by more than a contrast threshold. A digit at rest emits nothing; its edges do as it moves.

``--dataset whetstone.data.events:saccade_digits`` trains on them from the command line (bundled digits,
8 time bins): each sample is one image whose rows are the time bins and whose row holds the ON and OFF
frames of that bin, the layout the ``rnn`` model reads a step at a time.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..utils.checks import install_hint, positive_int
from .datasets import load_dataset

__all__ = ["EVENT_DTYPE", "event_frames", "saccade_digits", "saccade_events"]

#: Tonic's event layout for a camera: x, y, time in microseconds, polarity.
EVENT_DTYPE = np.dtype([("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")])
#: The saccades' corners, in pixels from the start, walked in order and back (a triangle, as N-MNIST's).
CORNERS = ((0, 0), (4, 2), (0, 4))
#: Canvas border around a digit, room for the motion.
BORDER = 2
#: The saccades' defaults: steps along each side, and each step's duration in microseconds.
STEPS_PER_SACCADE, STEP_US = 4, 10_000


def canvas_side(height: int, width: int) -> int:
    """The side of the square canvas an image of ``height`` x ``width`` moves on: the image, the saccades'
    reach (:data:`CORNERS`) and a border on each side."""
    reach = max(max(abs(x), abs(y)) for x, y in CORNERS)
    return max(height, width) + 2 * BORDER + reach


def saccade_events(images: np.ndarray, steps_per_saccade: int = STEPS_PER_SACCADE, threshold: float = 0.2,
                   step_us: int = STEP_US, seed: int = 0) -> list[np.ndarray]:  # fmt: skip
    """The events of each image (N, H, W) uint8 moved in three saccades (:data:`CORNERS`, each walked in
    ``steps_per_saccade`` steps of ``step_us`` microseconds) on a square canvas (:func:`canvas_side`):
    at each step a pixel whose log brightness changed by more than ``threshold`` emits one event, at a
    random time within the step (``seed``). Returns one :data:`EVENT_DTYPE` array per image, in time order."""
    pixels = np.asarray(images)
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W), got {pixels.dtype} {pixels.shape}")
    positive_int(steps_per_saccade, "steps_per_saccade")
    if not 0 < threshold < np.inf:
        raise ValueError(f"threshold must be a positive log-brightness change, got {threshold!r}")
    path = _path(steps_per_saccade)
    count, height, width = pixels.shape
    size = canvas_side(height, width)
    brightness = np.log(pixels.astype(np.float32) / 255 + 0.1)  # a camera pixel responds to log intensity
    background = np.float32(np.log(0.1))
    frames = np.full((len(path), count, size, size), background, np.float32)
    for step, (dx, dy) in enumerate(path):
        frames[step, :, BORDER + dy : BORDER + dy + height, BORDER + dx : BORDER + dx + width] = brightness
    change = np.diff(frames, axis=0)  # (steps, N, size, size)
    rng = np.random.default_rng(seed)
    events = []
    for sample in range(count):
        step, y, x = np.nonzero(np.abs(change[:, sample]) > threshold)
        times = step.astype(np.int64) * step_us + rng.integers(0, step_us, len(step))
        out = np.empty(len(step), EVENT_DTYPE)
        out["x"], out["y"], out["t"], out["p"] = x, y, times, change[step, sample, y, x] > 0
        events.append(out[np.argsort(out["t"], kind="stable")])
    return events


def _path(steps_per_saccade: int) -> list[tuple[int, int]]:
    """The canvas offset at each step: the start, then ``steps_per_saccade`` steps along each side."""
    corners = [*CORNERS, CORNERS[0]]
    path = [corners[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        for k in range(1, steps_per_saccade + 1):
            path.append((round(x0 + (x1 - x0) * k / steps_per_saccade), round(y0 + (y1 - y0) * k / steps_per_saccade)))
    return path


def event_frames(events: list[np.ndarray], sensor_size: tuple[int, int], bins: int, duration_us: int) -> np.ndarray:
    """Each sample's events binned by Tonic (``tonic.transforms.ToFrame``) into ``bins`` equal windows of
    ``duration_us``: uint8 (N, bins, 2, height, width), 1 where a pixel had at least one event of that
    polarity in the window (channel 0: OFF, 1: ON). ``sensor_size`` is (width, height), as Tonic's."""
    try:
        from tonic.transforms import ToFrame
    except ImportError:
        raise ImportError(f"event frames need tonic; {install_hint('events', 'tonic')}") from None
    positive_int(bins, "bins")
    width, height = sensor_size
    window = duration_us / bins
    to_frame = ToFrame(sensor_size=(width, height, 2), time_window=window, start_time=0, end_time=duration_us,
                       include_incomplete=True)  # fmt: skip
    frames = np.zeros((len(events), bins, 2, height, width), np.uint8)
    for index, sample in enumerate(events):
        if len(sample):
            binned = to_frame(sample)[:bins]
            frames[index, : len(binned)] = binned > 0
    return frames


def saccade_digits(bins: int = 8, split_sizes: tuple[int, int] = (4000, 1000), seed: int = 0):
    """(train, test) event digits made from the bundled MNIST digits (``mnist-mini``): each sample an image
    (1, ``bins``, 2 * S * S) of 0/255, its rows the time bins and each row the OFF and ON frames of the
    canvas (S = 36), with its digit's label; ``torch.utils.data.TensorDataset`` s with ``classes``. What
    ``--dataset whetstone.data.events:saccade_digits`` trains on."""
    made = []
    for split, size in zip(("train", "test"), split_sizes, strict=True):
        digits = load_dataset("mnist-mini", split)
        images = digits.images[:size, 0].numpy()
        events = saccade_events(images, seed=seed + (split == "test"))
        side = canvas_side(*images.shape[1:])
        duration = (len(_path(STEPS_PER_SACCADE)) - 1) * STEP_US
        frames = event_frames(events, (side, side), bins, duration)
        flat = torch.from_numpy(frames.reshape(len(frames), 1, bins, -1) * np.uint8(255))
        data = torch.utils.data.TensorDataset(flat, digits.labels[:size])
        data.classes = digits.classes  # type: ignore[attr-defined]
        made.append(data)
    return tuple(made)
