"""``snntorch``: NIR for snnTorch 1.0's importer (``snntorch.import_nir.import_from_nir``).

What snnTorch needs (measured with snnTorch 1.0.0, nirtorch 2.6, nir 1.0.8):

- IF nodes become ``snn.Leaky(beta=0.9, reset_mechanism="subtract")`` with ``init_hidden=False``, which
  return tuples the next layer cannot take: set ``init_hidden = True`` on each after import, and reset
  the network (``snntorch.utils.reset``) before each batch: one step from rest, where the leak does not act.
- It fires on ``v > threshold``: thresholds are stored one float32 below the trained ones.
- Pooling is written as ``AvgPool2d`` (snnTorch maps it; nirtorch's default for SumPool2d is an LPPool
  that sums absolute values, without padding): a sum pooling's window moves into what reads it.
- ``nir.Flatten(start_dim=0)`` becomes ``nn.Flatten(0)``, which would flatten the batch too: set its
  ``start_dim`` to 1 after import.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from ..export.nir import NirStyle
from .base import Target, average_pools

STYLE = NirStyle(target="snntorch", fires_on=">", pooling="avg",
                 run="import_from_nir; init_hidden=True on every snn.Leaky; Flatten start_dim=1; reset; one step")  # fmt: skip


def run(path: Path, images: np.ndarray) -> np.ndarray:
    """The output spikes (N, width) of the file run for one time step in snnTorch's importer."""
    import nir
    import snntorch
    import snntorch.utils
    import torch
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # the importer prints progress notes
        network = import_from_nir(nir.read(Path(path)))
    for module in network.modules():
        if isinstance(module, snntorch.Leaky):
            module.init_hidden = True
        elif isinstance(module, torch.nn.Flatten):
            module.start_dim = 1
    snntorch.utils.reset(network)  # zero membrane: a single step from rest
    try:
        with torch.no_grad():
            out = network(torch.as_tensor(np.asarray(images, dtype=np.float32)))
    finally:  # snnTorch keeps every neuron ever built (and its membranes) in a class-level list
        ours = {id(module) for module in network.modules()}
        snntorch.SpikingNeuron.instances[:] = [n for n in snntorch.SpikingNeuron.instances if id(n) not in ours]
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(len(images), -1).numpy()


TARGET = Target(
    name="snntorch",
    consumer="snnTorch",
    summary="AvgPool2d for pooling, v > threshold; snn.Leaky fixed up after import",
    style=STYLE,
    prepare=lambda graph: average_pools(graph, "snnTorch"),
    run=run,
    unavailable="pip install snntorch nirtorch",
)
