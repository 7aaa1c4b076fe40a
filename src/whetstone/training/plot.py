"""Training curves as a PNG: loss, accuracy and per-layer sharpness against epoch."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from ..utils.files import atomic_write

__all__ = ["plot_history"]


def plot_history(history: Sequence, path: str | os.PathLike) -> None:
    """Write a three-panel PNG of ``history`` (a list of :class:`~whetstone.training.history.EpochRecord`), atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [record.epoch + 1 for record in history]
    figure, (loss_ax, accuracy_ax, sharp_ax) = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    loss_ax.plot(epochs, [r.train_loss for r in history], marker=".", label="train")
    if history and history[0].train_accuracy is not None:
        accuracy_ax.plot(epochs, [100 * r.train_accuracy for r in history], marker=".", label="train")
    if history and history[0].eval_loss is not None:
        loss_ax.plot(epochs, [r.eval_loss for r in history], marker=".", label="eval")
    if history and history[0].eval_accuracy is not None:
        accuracy_ax.plot(epochs, [100 * r.eval_accuracy for r in history], marker=".", label="eval")
    layer_count = len(history[0].sharpness) if history else 0
    named = getattr(history[-1], "layers", []) if history else []  # module paths, as history.csv and reports name them
    names = named if len(named) == layer_count else [f"layer {layer + 1}" for layer in range(layer_count)]
    for layer in range(layer_count):
        sharp_ax.plot(epochs, [r.sharpness[layer] for r in history], marker=".", label=names[layer])
    for axis, title, ylabel in (
        (loss_ax, "loss", "training loss"),
        (accuracy_ax, "accuracy", "%"),
        (sharp_ax, "sharpness (after each epoch)", "sharpness"),
    ):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    sharp_ax.set_ylim(-0.05, 1.05)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png")
    plt.close(figure)
    atomic_write(path, buffer.getvalue())
