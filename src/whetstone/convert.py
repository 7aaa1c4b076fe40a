"""Turn an ordinary network into a sharpenable one, and fold batch norm away for deployment."""

from __future__ import annotations

import copy
import warnings
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .activations import SpikingActivation, SpikingBReLU, SpikingSigmoid
from .decode import SoftmaxDecode

__all__ = ["Heaviside", "fold_batchnorm", "for_inference", "pool_before_spikes", "spikify"]

_ACTIVATIONS = {"brelu": (nn.ReLU, SpikingBReLU), "sigmoid": (nn.Sigmoid, SpikingSigmoid)}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def spikify(model: nn.Module, activation: str = "brelu", sharpness: float = 0.0) -> nn.Module:
    """Replace every ``nn.ReLU`` (``activation="brelu"``) or ``nn.Sigmoid`` (``"sigmoid"``) in ``model``
    by the matching spiking activation, in place; weights are untouched. Returns ``model``.

    Only activation *modules* can be swapped: calls such as ``torch.relu(x)`` inside a ``forward``
    are invisible here, so a model that has none of the modules triggers a warning.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    source, target = _ACTIVATIONS[activation]
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is source:
                setattr(parent, name, target(sharpness))
                replaced += 1
    if replaced == 0:
        warnings.warn(
            f"spikify found no nn.{source.__name__} modules in {type(model).__name__}; functional calls "
            f"(e.g. torch.{source.__name__.lower()}(x)) cannot be replaced, use nn.{source.__name__} modules",
            stacklevel=2,
        )
    return model


def pool_before_spikes(model: nn.Module) -> int:
    """Swap every ``spike, MaxPool2d`` pair of an ``nn.Sequential`` in ``model`` to ``MaxPool2d, spike``,
    in place; returns the number of pairs swapped.

    A spiking activation is monotone at every sharpness, so the network computes exactly the same
    function and deploys to the same graph (:func:`~whetstone.to_spiking_graph` writes it back as spike,
    then pool). What changes is where a pooled gradient goes: after pooling 0/1 spikes a window of ties
    sends it to its first unit, while pooling the potentials sends it to the unit nearest to firing.
    That matters once binary layers keep learning through surrogate gradients
    (:func:`~whetstone.set_model_surrogate`). Call it before training: it renumbers the swapped modules
    of the ``nn.Sequential``, so state dicts saved before the swap no longer match.
    """
    swapped = 0
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for i in range(len(parent) - 1):
            if isinstance(parent[i], SpikingActivation) and isinstance(parent[i + 1], nn.MaxPool2d):
                parent[i], parent[i + 1] = parent[i + 1], parent[i]
                swapped += 1
    return swapped


def _fuse(layer: nn.Module, bn: nn.Module) -> nn.Module:
    if isinstance(layer, (*_CONVS, *_TRANSPOSED)):
        return fuse_conv_bn_eval(layer, bn, transpose=isinstance(layer, _TRANSPOSED))
    return fuse_linear_bn_eval(layer, bn)


def _set_submodule(root: nn.Module, qualified_name: str, module: nn.Module) -> None:
    parent_name, _, name = qualified_name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, name, module)


class _LeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps spiking activations and the decoder as single call_module nodes
    (their forward branches on Python state that symbolic tracing cannot follow)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (SpikingActivation, SoftmaxDecode)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` with spiking activations and decoders as leaves."""
    return torch.fx.GraphModule(model, _LeafTracer().trace(model))


def _fold_pairs_traced(model: nn.Module) -> list[tuple[str, str]] | None:
    """(layer, batchnorm) name pairs where the batch norm consumes only that layer's output, or None
    if the model cannot be traced symbolically."""
    try:
        graph = trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure just means "use the Sequential scan"
        return None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCHNORMS):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], (nn.Linear, *_CONVS, *_TRANSPOSED))
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


def _fold_pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (name, child), (next_name, following) in pairwise(children):
            if isinstance(child, (nn.Linear, *_CONVS, *_TRANSPOSED)) and isinstance(following, _BATCHNORMS):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + name, prefix + next_name))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with each batch norm folded into the Linear/Conv before it.

    The folded layer computes ``W' x + b' = BN(W x + b)`` with the running statistics, so outputs are
    equal (to float rounding) and the spiking neuron keeps its threshold. Batch-norm layers become
    ``nn.Identity``. A batch norm that does not directly follow a Linear/Conv (whose output nothing
    else uses) cannot be folded and raises ``ValueError`` naming it.
    """
    folded = copy.deepcopy(model).eval()
    pairs = _fold_pairs_traced(folded)
    if pairs is None:
        pairs = _fold_pairs_sequential(folded)
    for layer_name, bn_name in pairs:
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"cannot fold batch norm {bn_name!r}: it keeps no running statistics (track_running_stats=False)"
            )
        _set_submodule(folded, layer_name, _fuse(layer, bn))
        _set_submodule(folded, bn_name, nn.Identity())
    leftover = [name for name, module in folded.named_modules() if isinstance(module, _BATCHNORMS)]
    if leftover:
        raise ValueError(
            f"cannot fold batch norm {leftover}: each must directly follow a Linear or Conv layer whose "
            "output feeds nothing else"
        )
    return folded


class Heaviside(nn.Module):
    """``1[x >= threshold]`` for inference: with no gradient to keep, the comparison is written into ``x``
    itself (one pass over memory, like an in-place ReLU), otherwise into a new tensor."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        # A 0-dim tensor: comparing with it skips the per-call Python-scalar conversion (~2 us a call).
        self.register_buffer("threshold", torch.tensor(float(threshold)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:  # autograd may still need x: leave it alone
            return (x >= self.threshold).to(x.dtype)
        return x.ge_(self.threshold)  # float in, float 0/1 out

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold)}"


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a fully sharpened ``model`` for fast PyTorch inference: batch norm folded,
    and each spiking activation replaced by a :class:`Heaviside` step that overwrites its input in place
    when no gradient is needed (so a forward hook on the layer before it would see spikes).

    Raises ``ValueError`` naming a spiking activation that is not at sharpness 1.
    """
    deployed = fold_batchnorm(model)
    for parent_name, parent in list(deployed.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpikingActivation):
                if not child.is_binary:
                    where = f"{parent_name}.{name}" if parent_name else name
                    raise ValueError(
                        f"{where} has sharpness {child.get_sharpness():.4g}; for_inference() needs a fully sharpened model"
                    )
                setattr(parent, name, Heaviside(child.spike_threshold))
    return deployed
