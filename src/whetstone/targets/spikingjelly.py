"""``spikingjelly``: NIR for SpikingJelly 2.0 (``activation_based.nir_exchange.from_nir.import_from_nir``).

What SpikingJelly needs (measured with SpikingJelly 2.0.0, nirtorch 2.6): an IF node's ``r`` must equal
``1 / dt``, so the file is imported with ``dt = 1`` (our ``r = 1``); its ``IFNode`` fires on
``v >= threshold`` (thresholds stored as trained) with one threshold per layer; pooling as ``AvgPool2d``
(its own mapping). Run with ``state=None`` for one step. It installs with ``pip install --no-deps
spikingjelly`` plus loguru, requests and scipy (it declares torchvision and torchaudio, not needed here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export.nir import NirStyle
from ..graph.nodes import DeployError, SpikeNode, SpikingGraph
from .base import Target, average_pools

STYLE = NirStyle(target="spikingjelly", fires_on=">=", pooling="avg", run="import_from_nir(dt=1); state=None; one step")


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    for node in graph.nodes:
        if isinstance(node, SpikeNode) and np.unique(node.threshold).size > 1:
            raise DeployError(
                f"{node.name}: SpikingJelly's IFNode takes one threshold per layer, this layer has several"
            )
    return average_pools(graph, "SpikingJelly")


def run(path: Path, images: np.ndarray) -> np.ndarray:
    """The output spikes (N, width) of the file run for one time step in SpikingJelly."""
    import logging

    import torch

    logging.getLogger("torch._library").setLevel(logging.ERROR)  # "Triton not available" notes
    from spikingjelly.activation_based.nir_exchange.from_nir import import_from_nir

    network = import_from_nir(str(path), dt=1.0)
    with torch.no_grad():
        out = network(torch.as_tensor(np.asarray(images, dtype=np.float32)))
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(len(images), -1).numpy()


TARGET = Target(
    name="spikingjelly",
    consumer="SpikingJelly",
    summary="AvgPool2d for pooling, v >= threshold, imported with dt = 1",
    style=STYLE,
    prepare=_prepare,
    run=run,
    unavailable="pip install --no-deps spikingjelly loguru requests scipy",
)
