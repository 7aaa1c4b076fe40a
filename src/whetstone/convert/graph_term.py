"""What a traced value is while :mod:`.graph_builder` builds a graph: a sum of :class:`Term` (a graph node's
output times a scale, perhaps averaged over uneven windows), the pending linear map folded into whatever
consumes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..nn.activations import SpikingActivation

__all__ = ["Term", "is_spike", "pair", "traced_shape"]


def pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


@dataclass(frozen=True)
class Term:
    """One summand of a value in the traced model: the output of graph node ``name``, times ``scale``,
    then (if ``spatial`` is set) averaged over uneven windows: a pending linear map, folded into the
    synapses that consume it (or, before a spike, into its threshold)."""

    name: str
    scale: float = 1.0
    spatial: np.ndarray | None = None  # (out positions, in positions) of an uneven adaptive average pooling
    spatial_shape: tuple[int, ...] = ()  # the (C, H, W) the map reads
    pooled_by: str = ""  # the average pooling the pending map comes from (for messages)

    @property
    def plain(self) -> bool:
        return self.scale == 1.0 and self.spatial is None


def traced_shape(fx_node: torch.fx.Node) -> tuple[int, ...]:
    """The shape of one sample of a traced value (shape propagation recorded it)."""
    return tuple(fx_node.meta["tensor_meta"].shape[1:])


def is_spike(fx_node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a traced call is a spiking activation's."""
    return fx_node.op == "call_module" and isinstance(modules[fx_node.target], SpikingActivation)
