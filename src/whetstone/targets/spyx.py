"""``spyx``: NIR for Spyx 1.0 (JAX; ``spyx.nir.from_nir``).

What Spyx needs (measured with spyx 1.0.0, jax 0.10, flax 0.12): it rebuilds a plain chain of layers
(no skip connections), channels-last (a flattened map is ordered height, width, channel: the Linear after
it is written in that order), SumPool2d with VALID or SAME padding only, and fires on ``v > threshold``.
Its IF emits spikes from the membrane *before* adding the step's input (one step of latency per layer)
and its Linear adds the bias at every step, so running the chain for several steps is not the
single-step network: the verification calls each imported layer once, each IF with its state set to its
input current (``spikes, _ = layer(0, current)``), which is one step from rest in Spyx's own code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export.nir import NirStyle
from ..graph.nodes import SpikingGraph
from .base import Target, chain_only, no_padded_pools

STYLE = NirStyle(target="spyx", layout="hwc",
                 run="spyx.nir.from_nir; NHWC input; each layer once, every IF with its state set to its input current")  # fmt: skip


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    return no_padded_pools(chain_only(graph, "Spyx"), "Spyx")


def run(path: Path, images: np.ndarray) -> np.ndarray:
    """The output spikes (N, width) of the file's layers run once each in Spyx (see the module docs)."""
    import jax.numpy as jnp
    import nir
    import spyx.nir

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)  # Spyx runs channels-last
    model, _ = spyx.nir.from_nir(nir.read(Path(path)), jnp.zeros((1, 1, *x.shape[1:]), jnp.float32))
    h = jnp.asarray(x)
    for layer in model.layers:
        if hasattr(layer, "initial_state"):  # a neuron: one step from rest fires on its input current
            h, _ = layer(jnp.zeros_like(h), h)
        else:
            h = layer(h)
    return np.asarray(h).reshape(len(images), -1)


TARGET = Target(
    name="spyx",
    consumer="Spyx",
    summary="a chain of layers, channels-last, v > threshold; run layer by layer",
    style=STYLE,
    prepare=_prepare,
    run=run,
    unavailable="pip install spyx",
)
