"""``norse``: NIR for Norse 1.1 (``norse.torch.from_nir``).

What Norse needs (measured with Norse 1.1.0, nirtorch 2.6, nir 1.0.8): the generic file as it is (IF,
SumPool2d; it fires on ``v > threshold``), run with ``state=None`` (rest) for one step, with the
imported ``nn.Flatten``'s ``start_dim`` set to 1 (Norse builds ``Flatten(0)`` from NIR's batch-free
``start_dim=0``). Norse installs with ``pip install --no-deps norse`` (it declares torchvision, not needed).

``from_nir`` builds nirtorch's old ``GraphExecutor``, which orders layers depth-first from the input: in
a graph that branches (a residual block) it runs a layer before all its inputs exist and returns the
wrong tensor. A branching file is therefore run with the same Norse modules (Norse's own node mapping)
assembled by nirtorch's newer interpreter (``nirtorch.nir_to_torch``), which runs them in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export.nir import NirStyle
from .base import Target, branches, torch_module_of

STYLE = NirStyle(target="norse", run="norse.torch.from_nir; Flatten start_dim=1; state=None; one step")


def run(path: Path, images: np.ndarray) -> np.ndarray:
    """The output spikes (N, width) of the file run for one time step in Norse."""
    from functools import partial

    import nir
    import norse.torch
    import torch
    from norse.torch.functional import reset
    from norse.torch.utils.import_nir import _import_norse_module

    graph = nir.read(Path(path))
    if branches(graph):  # from_nir's executor runs a branching graph out of order: same modules, nirtorch's interpreter
        node = partial(_import_norse_module, ignore_warnings=True, reset_method=reset.reset_value, dt=0.001)
        network = torch_module_of(graph, node)
    else:
        network = norse.torch.from_nir(graph)
    for module in network.modules():
        if isinstance(module, torch.nn.Flatten):
            module.start_dim = 1
    with torch.no_grad():
        out = network(torch.as_tensor(np.asarray(images, dtype=np.float32)))
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(len(images), -1).numpy()


TARGET = Target(
    name="norse",
    consumer="Norse",
    summary="the generic forms (SumPool2d, v > threshold); Flatten fixed up after import",
    style=STYLE,
    run=run,
    unavailable="pip install --no-deps norse",
)
