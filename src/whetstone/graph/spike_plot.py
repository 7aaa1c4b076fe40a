"""Spikes you can see: a PNG with one row per spiking layer, its raster for a few samples beside each unit's
firing rate over every sample simulated.

The raster shows each recorded sample's steps one after another (a single-step network: one column per
image; a network run in time: T columns per sample), a dot per spike, units from top to bottom; thin lines
part the samples. The rates are spikes per unit per step over the whole simulation, sorted from the most
active unit down, with the layer's mean and its silent units in the title.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..utils.files import atomic_write
from .simulator import SimResult

__all__ = ["plot_spikes"]


def plot_spikes(result: SimResult, path: str | os.PathLike, samples: int = 8) -> Path:
    """Write the spike plot of ``result`` to ``path`` (a PNG, atomically) and return the path.

    ``result`` comes from :func:`~whetstone.graph.simulator.simulate` with its spiking layers recorded, e.g.
    ``simulate(graph, images, record=[n.name for n in graph.spiking_nodes()], record_samples=8)``; the first
    ``samples`` of
    them are drawn as rasters. ``ValueError`` when no spiking layer was recorded."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    layers = [layer for layer in result.layers if layer.unit_spikes is not None]
    drawn = [layer for layer in layers if layer.name in result.recorded]
    if not drawn:
        raise ValueError(
            "result holds no recorded spiking layer: simulate with record=[n.name for n in graph.spiking_nodes()] "
            "(and record_samples=8 to keep only a few samples) to plot its spikes"
        )
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps = result.steps
    figure, axes = plt.subplots(len(drawn), 2, figsize=(12, 1.2 + 1.9 * len(drawn)), squeeze=False,
                                width_ratios=(3, 2), layout="constrained")  # fmt: skip
    for (raster_ax, rate_ax), layer in zip(axes, drawn, strict=True):
        values = result.recorded[layer.name][:samples]  # (S, T, *shape)
        shown = len(values)
        spikes = values.reshape(shown * steps, -1).T > 0  # units x (sample, step)
        raster_ax.imshow(spikes, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1)
        for boundary in range(1, shown):
            raster_ax.axvline(boundary * steps - 0.5, color="tab:red", linewidth=0.8, alpha=0.8)
        raster_ax.set_title(f"{layer.name}: spikes of {shown} sample{'s' if shown > 1 else ''}", fontsize="small")
        raster_ax.set_ylabel("unit")
        raster_ax.set_xlabel("image" if steps == 1 else f"time step ({steps} per sample)")
        rates = np.sort(layer.unit_spikes / (result.samples * steps))[::-1]
        rate_ax.plot(np.arange(len(rates)), rates, drawstyle="steps-mid")
        silent = int((rates == 0).sum())
        rate_ax.set_title(f"firing rate: mean {rates.mean():.3f} per unit and step, {silent:,} of {len(rates):,} "
                          "units silent", fontsize="small")  # fmt: skip
        rate_ax.set_xlabel(f"units, most active first ({result.samples:,} samples)")
        rate_ax.set_ylabel("spikes / step")
        rate_ax.set_ylim(-0.03, 1.03)
        rate_ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=100, format="png")
    plt.close(figure)
    return atomic_write(path, buffer.getvalue())
