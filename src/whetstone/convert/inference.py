"""Fast PyTorch inference of a fully sharpened model: the folded float network with :class:`Heaviside`
steps, or (``bits``) the integer network of its quantized graph (:class:`~whetstone.graph.integer.IntegerNetwork`)."""

from __future__ import annotations

import torch
from torch import nn

from ..graph.integer import IntegerNetwork
from ..graph.quantization import quantize
from ..nn.activations import SpikingActivation
from ..nn.tracing import fold_batchnorm
from .graph_builder import to_spiking_graph

__all__ = ["Heaviside", "for_inference"]


class Heaviside(nn.Module):
    """``scale * 1[x >= threshold]`` for inference: with no gradient to keep, the comparison is written into
    ``x`` itself (one pass over memory, like an in-place ReLU), otherwise into a new tensor. ``scale`` is a
    calibrated layer's (:meth:`~whetstone.SpikingActivation.set_scale`), 1 otherwise."""

    def __init__(self, threshold: float, scale: float = 1.0) -> None:
        super().__init__()
        # A 0-dim tensor: comparing with it skips the per-call Python-scalar conversion (~2 us a call).
        self.register_buffer("threshold", torch.tensor(float(threshold)), persistent=False)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:  # autograd may still need x: leave it alone
            spikes = (x >= self.threshold).to(x.dtype)
        else:
            spikes = x.ge_(self.threshold)  # float in, float 0/1 out
        return spikes if self.scale == 1.0 else spikes.mul_(self.scale)

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold)}" + ("" if self.scale == 1.0 else f", scale={self.scale:.4g}")


def for_inference(
    model: nn.Module, *, bits: int | None = None, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """An eval-mode copy of a fully sharpened ``model`` for fast PyTorch inference: batch norm folded,
    and each spiking activation replaced by a :class:`Heaviside` step that overwrites its input in place
    when no gradient is needed (so a forward hook on the layer before it would see spikes).

    With ``bits`` (2-8) it is instead the integer network of the model's graph quantized to ``bits``
    (:class:`~whetstone.graph.integer.IntegerNetwork`: uint8 spikes, int8 weights, oneDNN's int8 kernels on x86
    CPUs), which needs ``input_shape`` (one sample's, e.g. ``(1, 28, 28)``). It gives the quantized graph's
    spikes exactly, as ``simulate(quantize(graph, bits), images)`` and the ``onnx-int8`` file do.

    Raises ``ValueError`` naming a spiking activation that is not at sharpness 1, and
    :class:`~whetstone.graph.nodes.DeployError` for a graph the integer network cannot run.
    """
    if bits is not None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an integer in [2, 8] (int8 kernels) or None, got {bits!r}")
        if input_shape is None:
            raise ValueError("for_inference(bits=...) needs input_shape, one sample's shape such as (1, 28, 28)")
        return IntegerNetwork(quantize(to_spiking_graph(model, tuple(input_shape)), bits)).eval()
    deployed = fold_batchnorm(model)
    for parent_name, parent in list(deployed.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpikingActivation):
                if not child.is_binary:
                    where = f"{parent_name}.{name}" if parent_name else name
                    raise ValueError(
                        f"{where} has sharpness {child.get_sharpness():.4g}; for_inference() needs a fully sharpened model"
                    )
                setattr(parent, name, Heaviside(child.membrane_threshold, child.scale_value))
    return deployed
