"""What a training run produced: one :class:`EpochRecord` per epoch and the final :class:`TrainResult`.
Plain records, below both the trainer (:mod:`whetstone.training.trainer`) that makes them and the callbacks
(:mod:`whetstone.training.callbacks`) that show and write them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .evaluation import LayerReport

__all__ = ["EpochRecord", "TrainResult"]


@dataclass
class EpochRecord:
    """What one epoch did (``epoch`` counted from 0; the console, the plot and history.csv count from 1).
    ``sharpness`` is per spiking layer, after the epoch's sharpening, in the order of ``layers`` (their
    module paths, as every report names them)."""

    epoch: int
    train_loss: float
    train_accuracy: float | None  # None when training on a reconstruction target
    sharpness: list[float]
    seconds: float
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    rollbacks: int = 0  # times this epoch was rolled back and retried with slower sharpening
    layers: list[str] = field(default_factory=list)  # the spiking layers' module paths (empty in older runs)


@dataclass
class TrainResult:
    history: list[EpochRecord]
    fully_binary: bool  # every layer at sharpness 1 and every output 0/1 on the evaluation set
    layers: list[LayerReport] = field(default_factory=list)
    checkpoint: Path | None = None  # the last state
    best: Path | None = None  # the best fully binary weights, if any epoch was fully binary
