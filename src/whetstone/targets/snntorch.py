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
- Graphs that run in time (a recurrent edge is a cycle, spiking layers are ``nir.LIF``): snnTorch 1.0.0's
  ``import_from_nir`` first wraps each LIF-Affine cycle into a sub-graph for ``snn.RLeaky``, which
  nirtorch 2.6 then fails to build (``'GraphModule' object has no attribute 'items'``). nirtorch runs
  the cycle itself, carrying the recurrent edge in its state: such files are built with
  ``nirtorch.nir_to_torch`` and snnTorch's own node converter (``_nir_to_snntorch_module``, what
  ``import_from_nir`` uses for every node), and run step by step with the state passed back.
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
    """The output spikes (N, width) of the file run in snnTorch's importer: for one time step, or for a
    file that runs in time, step by step over ``images`` (N, T, ...), read at the last step."""
    import nir
    import snntorch
    import snntorch.utils
    import torch
    from snntorch.import_nir import import_from_nir

    graph = nir.read(Path(path))
    if "whetstone_dt" in graph.metadata:
        return _run_in_time(graph, images)
    with contextlib.redirect_stdout(io.StringIO()):  # the importer prints progress notes
        network = import_from_nir(graph)
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


def _run_in_time(graph, sequences: np.ndarray) -> np.ndarray:
    import nir
    import nirtorch
    import snntorch
    import torch
    from snntorch.import_nir import _nir_to_snntorch_module

    convert = lambda node: _nir_to_snntorch_module(node, init_hidden=True)  # snnTorch's own node converter
    kinds = (nir.Affine, nir.Linear, nir.Conv2d, nir.Flatten, nir.AvgPool2d, nir.IF, nir.LIF, nir.CubaLIF)
    network = nirtorch.nir_to_torch(graph, {kind: convert for kind in kinds})
    snntorch.utils.reset(network)
    state = None
    try:
        with torch.no_grad():
            for t in range(sequences.shape[1]):
                step = torch.as_tensor(np.asarray(sequences[:, t], dtype=np.float32))
                out, state = network(step) if state is None else network(step, state)
    finally:
        ours = {id(module) for module in network.modules()}
        snntorch.SpikingNeuron.instances[:] = [n for n in snntorch.SpikingNeuron.instances if id(n) not in ours]
    return out.reshape(len(sequences), -1).numpy()


TARGET = Target(
    name="snntorch",
    consumer="snnTorch",
    summary="AvgPool2d for pooling, v > threshold; snn.Leaky fixed up after import",
    style=STYLE,
    prepare=lambda graph: average_pools(graph, "snnTorch"),
    run=run,
    unavailable="pip install snntorch nirtorch",
    runs_in_time=True,
)
