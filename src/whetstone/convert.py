"""Turn an ordinary network into a sharpenable one, and fold batch norm away for deployment.

Conversion works on the traced call graph (torch.fx), not on module objects: every activation *call
site* becomes its own spiking activation with its own sharpness, whether the model calls a module once,
calls one shared ``nn.ReLU`` twice (as torchvision's ResNet blocks do) or calls ``F.relu`` /
``torch.relu`` / ``x.relu()`` in its ``forward``. Activations with no binary counterpart are refused
before any training, naming the call site and what to do.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .activations import SpikingActivation, SpikingBReLU, SpikingSigmoid
from .decode import SoftmaxDecode, key_generator

__all__ = ["ConversionError", "Heaviside", "fold_batchnorm", "for_inference", "pool_before_spikes", "spikify", "trace"]

_SPIKING = {"brelu": SpikingBReLU, "sigmoid": SpikingSigmoid}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

# Activations with a binary counterpart, as they appear in a traced graph: the ReLU family (bounded or
# leaky) becomes the spiking activation spikify is asked for; the sigmoid family becomes SpikingSigmoid.
_RELU_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)
_SIGMOID_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_RELU_CALLS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_,
               "relu", "relu_"}  # fmt: skip
_SIGMOID_CALLS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid", "sigmoid_"}
# Activations and normalisations with none: refused before training, with what to do instead.
_NO_BINARY_ACTIVATION = (
    "has no binary counterpart (a single-time-step neuron fires or not); replace it with nn.ReLU (or a bounded "
    "ReLU: nn.ReLU6, nn.Hardtanh(0, 1)) and train again"
)
_ACROSS_UNITS = (
    "normalises across units; whetstone's decoder ends the network in class logits: remove it (cross-entropy "
    "applies the softmax)"
)
_PER_SAMPLE = (
    "normalises each sample across units, which integrate-and-fire neurons cannot do; use batch norm (folded into "
    "the weights at deployment)"
)
_SMOOTH_MODULES = (nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Tanh, nn.Hardswish, nn.Softsign)
_SMOOTH_CALLS = (
    F.gelu,
    F.silu,
    F.mish,
    F.elu,
    F.selu,
    F.celu,
    F.softplus,
    torch.tanh,
    F.tanh,
    F.hardswish,
    "tanh",
    "tanh_",
)
_SOFTMAX_CALLS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax")
_NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm)
_REFUSED_MODULES: dict[type, str] = {
    **dict.fromkeys((*_SMOOTH_MODULES, nn.Tanhshrink, nn.PReLU), _NO_BINARY_ACTIVATION),
    **dict.fromkeys((nn.Softmax, nn.LogSoftmax, nn.Softmin), _ACROSS_UNITS),
    **dict.fromkeys(_NORM_MODULES, _PER_SAMPLE),
}
_REFUSED_CALLS: dict[Any, str] = {
    **dict.fromkeys(_SMOOTH_CALLS, _NO_BINARY_ACTIVATION),
    **dict.fromkeys(_SOFTMAX_CALLS, _ACROSS_UNITS),
    **dict.fromkeys((F.layer_norm, F.group_norm, F.instance_norm), _PER_SAMPLE),
}


class ConversionError(ValueError):
    """A model cannot become a binary spiking network as it is; the message names the call site."""


class _LeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps spiking activations and the decoder as single call_module nodes
    (their forward branches on Python state that symbolic tracing cannot follow)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (SpikingActivation, SoftmaxDecode)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` with spiking activations and decoders as leaves."""
    return torch.fx.GraphModule(model, _LeafTracer().trace(model))


@dataclass
class _Site:
    """One activation call site of a traced model."""

    node: torch.fx.Node
    kind: str  # "relu", "sigmoid" or "spiking" (already a spiking activation)
    module: str | None  # the module path for a module call, None for a function or method call


def _describe(node: torch.fx.Node) -> str:
    """Where a traced call is, in the user's terms: a module path, or the function inside a module's forward."""
    if node.op == "call_module":
        return str(node.target)
    owner = list((node.meta.get("nn_module_stack") or {}).values())
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{name}() in the forward of {owner[-1][0] if owner else 'the model'}"


def _site(node: torch.fx.Node, modules: dict[str, nn.Module]) -> _Site | None:
    """The activation call site ``node`` is, if it is one; ConversionError for one with no binary counterpart."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, SpikingActivation):
            return _Site(node, "spiking", node.target)
        if isinstance(module, _RELU_MODULES):
            return _Site(node, "relu", node.target)
        if isinstance(module, _SIGMOID_MODULES):
            return _Site(node, "sigmoid", node.target)
        refused = next((why for kind, why in _REFUSED_MODULES.items() if isinstance(module, kind)), None)
        if refused:
            raise ConversionError(f"{node.target}: {type(module).__name__} {refused}")
        return None
    if node.op in ("call_function", "call_method"):
        if node.target in _RELU_CALLS:
            return _Site(node, "relu", None)
        if node.target in _SIGMOID_CALLS:
            return _Site(node, "sigmoid", None)
        if node.target in _REFUSED_CALLS:
            raise ConversionError(f"{_describe(node)} {_REFUSED_CALLS[node.target]}")
    return None


def spikify(
    model: nn.Module,
    activation: str = "brelu",
    sharpness: float = 0.0,
    *,
    num_classes: int | None = None,
    key_width: int | None = None,
    key_seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """Turn every activation call site of ``model`` into its own spiking activation; returns the model to
    train (use the return value).

    ReLU-family activations (``nn.ReLU``, ``ReLU6``, ``Hardtanh``, ``LeakyReLU``, ``F.relu``,
    ``torch.relu``, ``x.relu()``, ...) become ``activation`` (``"brelu"``, the default, or
    ``"sigmoid"``) at ``sharpness``; sigmoids become :class:`~whetstone.SpikingSigmoid`. Weights are
    untouched. An activation with no binary counterpart (GELU, SiLU, Tanh, a softmax or layer norm inside
    the network, ...) raises :class:`ConversionError` naming its call site and what to do.

    When every activation is a module called once, they are replaced in place and ``model`` itself is
    returned. Otherwise (a module called at several places, functional calls, a new head) the result is a
    ``torch.fx.GraphModule`` that shares ``model``'s parameters, with one spiking module per call site
    (a shared ``relu`` called twice becomes ``relu`` and ``relu_1``).

    With ``num_classes``, the classifier's final ``Linear(features, num_classes)`` becomes the N-hot
    spiking head the method needs: ``Linear(features, key_width)`` (default 10 units per class; each unit
    starts from the weights of its class's row), a spiking activation, and a
    :class:`~whetstone.SoftmaxDecode` with a disjoint key drawn from ``key_seed``.

    With ``input_shape`` (one sample's, e.g. ``(3, 32, 32)``) the converted model is also checked to
    deploy once sharpened (:func:`~whetstone.graph.check_deployable`): a layer with no single-time-step
    spiking equivalent is named now, before any training, not at export.
    """
    if activation not in _SPIKING:
        raise ValueError(f"activation must be one of {sorted(_SPIKING)}, got {activation!r}")
    try:
        traced = trace(model)
    except Exception as error:  # noqa: BLE001 - untraceable forward: fall back to swapping modules
        if num_classes is not None:
            raise ConversionError(f"cannot trace {type(model).__name__} with torch.fx to give it a spiking head: "
                                  f"{str(error).splitlines()[0]}") from None  # fmt: skip
        warnings.warn(f"spikify could not trace {type(model).__name__} ({str(error).splitlines()[0]}); only its "
                      "activation modules are converted, call sites were not checked", stacklevel=2)  # fmt: skip
        return _checked(_spikify_modules(model, activation, sharpness), input_shape)
    modules = dict(traced.named_modules())
    sites = [site for node in traced.graph.nodes if (site := _site(node, modules)) is not None]
    calls = [site.module for site in sites if site.module is not None]
    if not sites:
        warnings.warn(f"spikify found no activation in {type(model).__name__}: nothing to sharpen", stacklevel=2)
    if num_classes is None and len(calls) == len(sites) == len(set(calls)):
        for site in sites:  # one module per call site: replace in place, keep the model's class
            if site.kind != "spiking":
                _set_submodule(model, site.module, _spiking_for(site.kind, activation, sharpness))
        return _checked(model, input_shape)
    graph, result = traced.graph, traced  # a GraphModule over model's own submodules
    taken = {name for name, _ in model.named_modules()}
    seen: set[str] = set()
    for site in sites:
        if site.kind == "spiking" and site.module not in seen:
            seen.add(site.module)
            continue
        if site.kind == "spiking":  # a spiking module called again: this call gets its own copy
            spiking = copy.deepcopy(modules[site.module])
        else:
            spiking = _spiking_for(site.kind, activation, sharpness)
        path = site.module if site.module is not None and site.module not in seen else _free_name(site, taken)
        seen.add(path)
        taken.add(path)
        result.add_submodule(path, spiking)
        _call_module_instead(graph, site.node, path)
    if num_classes is not None:
        _add_spiking_head(result, num_classes, key_width, key_seed, _SPIKING[activation](sharpness), taken)
    result.graph.lint()
    result.recompile()
    result.delete_all_unused_submodules()
    return _checked(result.train(model.training), input_shape)


def _checked(model: nn.Module, input_shape: tuple[int, ...] | None) -> nn.Module:
    if input_shape is not None:
        from .graph import check_deployable  # graph builds on this module

        check_deployable(model, input_shape)
    return model


def _spiking_for(kind: str, activation: str, sharpness: float) -> SpikingActivation:
    return SpikingSigmoid(sharpness) if kind == "sigmoid" else _SPIKING[activation](sharpness)


def _free_name(site: _Site, taken: set[str]) -> str:
    """A module path for the spiking module of ``site``, beside the module it is called from."""
    if site.module is not None:
        stem = site.module
    else:
        owner = list((site.node.meta.get("nn_module_stack") or {}).values())
        name = site.node.target if isinstance(site.node.target, str) else site.node.target.__name__
        stem = f"{owner[-1][0]}.{name.rstrip('_')}" if owner else name.rstrip("_")
    index = 1
    while f"{stem}_{index}" in taken:
        index += 1
    return f"{stem}_{index}" if site.module is not None or stem in taken else stem


def _call_module_instead(graph: torch.fx.Graph, node: torch.fx.Node, path: str) -> None:
    """Make ``node`` a call of the module at ``path`` on its first argument."""
    if node.op == "call_module":
        node.target = path
        return
    with graph.inserting_after(node):
        replacement = graph.call_module(path, (node.args[0],))
    replacement.meta = dict(node.meta)
    node.replace_all_uses_with(replacement)
    graph.erase_node(node)


def _add_spiking_head(
    model: torch.fx.GraphModule, classes: int, width: int | None, seed: int, spike: SpikingActivation, taken: set[str]
) -> None:
    """Replace the final ``Linear(features, classes)`` by ``Linear(features, width)``, a spiking
    activation and a softmax decoder over a ``classes x width`` N-hot key."""
    output = next(node for node in model.graph.nodes if node.op == "output")
    last = output.args[0]
    module = model.get_submodule(last.target) if isinstance(last, torch.fx.Node) and last.op == "call_module" else None
    if isinstance(module, SoftmaxDecode):
        raise ConversionError("num_classes: the model already ends in a SoftmaxDecode")
    if not isinstance(module, nn.Linear) or module.out_features != classes:
        what = f"{type(module).__name__} {last.target!r}" if module is not None else f"{_describe(last)}"
        raise ConversionError(
            f"num_classes={classes}: the model's output must come from a Linear(features, {classes}), but it comes "
            f"from {what}; give it such a final layer, or build a whetstone.SpikingClassifier yourself"
        )
    width = 10 * classes if width is None else width
    key = key_generator(classes, width, overlapping=False, seed=seed)
    head = nn.Linear(module.in_features, width, bias=module.bias is not None).to(module.weight.device)
    with torch.no_grad():  # each unit starts as its class's output, so the trained features keep their meaning
        owner = key.argmax(dim=0)
        head.weight.copy_(module.weight[owner])
        if module.bias is not None:
            head.bias.copy_(module.bias[owner])
    model.add_submodule(last.target, head)
    names = []
    for stem in (f"{last.target}_spike", "decoder"):
        name, index = stem, 1
        while name in taken:
            name, index = f"{stem}_{index}", index + 1
        taken.add(name)
        names.append(name)
    model.add_submodule(names[0], spike)
    model.add_submodule(names[1], SoftmaxDecode(key))
    with model.graph.inserting_after(last):
        spiked = model.graph.call_module(names[0], (last,))
    with model.graph.inserting_after(spiked):
        decoded = model.graph.call_module(names[1], (spiked,))
    output.args = (decoded,)


def _spikify_modules(model: nn.Module, activation: str, sharpness: float) -> nn.Module:
    """Replace activation modules in place (for models torch.fx cannot trace)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _RELU_MODULES:
                setattr(parent, name, _SPIKING[activation](sharpness))
            elif type(child) in _SIGMOID_MODULES:
                setattr(parent, name, SpikingSigmoid(sharpness))
            elif type(child) in _REFUSED_MODULES:
                raise ConversionError(f"{type(child).__name__} {_REFUSED_MODULES[type(child)]}")
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


def _fold_pairs_traced(model: nn.Module) -> list[tuple[str, str]] | None:
    """(layer, batchnorm) name pairs where the batch norm consumes only that layer's output, or None
    if the model cannot be traced symbolically."""
    try:
        graph = trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure just means "use the Sequential scan"
        return None
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCHNORMS) or calls[node.target] > 1:
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], _WEIGHTED)
            and len(source.users) == 1
            and calls[source.target] == 1
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
    """Return an eval-mode copy of ``model`` with every batch norm folded into synaptic weights.

    Batch norm with running statistics is ``s * x + t`` per channel, so it folds exactly:

    - after a Linear/Conv: ``W' = s W``, ``b' = s b + t`` (the layer computes ``BN(W x + b)``); when
      the layer's output also feeds something else, a folded copy serves the batch norm's path;
    - after the sum of a residual block, ``BN(a + b) = s a + s b + t``: each summand's layer is scaled,
      and a summand of spikes (an identity shortcut) gets synapses of weight ``s`` (a 1x1 depthwise
      convolution, or a diagonal Linear).

    Outputs are equal to float rounding and every spiking neuron keeps its threshold. Where only the
    first case occurs the copy keeps the model's class (batch-norm layers become ``nn.Identity``);
    otherwise it is a ``torch.fx.GraphModule``. A batch norm anywhere else raises ``ValueError`` naming it.
    """
    folded = copy.deepcopy(model).eval()
    pairs = _fold_pairs_traced(folded)
    if pairs is None:
        pairs = _fold_pairs_sequential(folded)
    for layer_name, bn_name in pairs:
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        _check_statistics(bn_name, bn)
        _set_submodule(folded, layer_name, _fuse(layer, bn))
        _set_submodule(folded, bn_name, nn.Identity())
    if any(isinstance(module, _BATCHNORMS) for module in folded.modules()):
        try:
            traced = trace(folded)
        except Exception:  # noqa: BLE001 - untraceable: the leftover check below names the batch norms
            traced = None
        if traced is not None:
            folded = _fold_in_graph(traced)
    leftover = [name for name, module in folded.named_modules() if isinstance(module, _BATCHNORMS)]
    if leftover:
        raise ValueError(
            f"cannot fold batch norm {leftover}: each must follow a Linear or Conv layer, or the sum of a "
            "residual block"
        )
    return folded.eval()


_WEIGHTED = (nn.Linear, *_CONVS, *_TRANSPOSED)


def _check_statistics(name: str, bn: nn.Module) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold batch norm {name!r}: it keeps no running statistics (track_running_stats=False)")


def _scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` with ``bn(x) == s * x + t`` per channel (eval mode)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
    return scale.detach(), shift.detach()


def _through_identity(node: Any, modules: dict[str, nn.Module]) -> Any:
    """The node whose value ``node`` passes on unchanged (through Identity and Dropout calls)."""
    while (
        isinstance(node, torch.fx.Node)
        and node.op == "call_module"
        and isinstance(modules[node.target], (nn.Identity, nn.Dropout))
    ):
        node = node.args[0]
    return node


def _free_path(graph_module: torch.fx.GraphModule, stem: str) -> str:
    taken = {name for name, _ in graph_module.named_modules()}
    path, index = stem, 1
    while path in taken:
        path, index = f"{stem}_{index}", index + 1
    return path


def _scaled_layer(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor | None) -> nn.Module:
    """A copy of a Linear/Conv whose outputs are multiplied by ``scale`` per channel (then ``+ shift``)."""
    layer = copy.deepcopy(layer)
    out_dim = 1 if isinstance(layer, _TRANSPOSED) else 0
    shape = [1] * layer.weight.dim()
    shape[out_dim] = -1
    with torch.no_grad():
        layer.weight.mul_(scale.reshape(shape))
        bias = layer.bias * scale if layer.bias is not None else torch.zeros_like(scale)
        bias = bias + shift if shift is not None else bias
        layer.bias = nn.Parameter(bias)
    return layer


def _channel_synapses(bn: nn.Module, scale: torch.Tensor, shift: torch.Tensor | None) -> nn.Module:
    """One synapse of weight ``scale[c]`` from each channel to itself (plus ``shift`` as bias)."""
    channels = len(scale)
    if isinstance(bn, nn.BatchNorm2d):
        layer: nn.Module = nn.Conv2d(channels, channels, 1, groups=channels, bias=shift is not None)
        weight = scale.reshape(channels, 1, 1, 1)
    elif isinstance(bn, nn.BatchNorm1d):
        layer = nn.Linear(channels, channels, bias=shift is not None)
        weight = torch.diag(scale)
    else:
        raise ValueError(f"cannot fold {type(bn).__name__} after a sum: only BatchNorm1d and BatchNorm2d")
    layer = layer.to(device=scale.device, dtype=scale.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if shift is not None:
            layer.bias.copy_(shift)
    return layer


def _fold_in_graph(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fold the batch norms that need the call graph rewritten (see :func:`fold_batchnorm`)."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        modules = dict(graph_module.named_modules())
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORMS):
            continue
        bn = modules[node.target]
        _check_statistics(node.target, bn)
        scale, shift = _scale_shift(bn)
        source = _through_identity(node.args[0], modules)
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], _WEIGHTED)
        ):
            terms = [source]  # a layer whose output also feeds something else: a folded copy for this path
        elif (
            isinstance(source, torch.fx.Node)
            and source.op == "call_function"
            and source.target in (operator.add, torch.add)
        ):
            terms = [_through_identity(arg, modules) for arg in source.args]
            if source.kwargs or not all(isinstance(term, torch.fx.Node) for term in terms):
                continue
        else:
            continue  # named by fold_batchnorm's leftover check
        replacements, pending_shift = [], shift
        for term in terms:
            weighted = term.op == "call_module" and isinstance(modules[term.target], _WEIGHTED)
            if weighted:
                module = _scaled_layer(modules[term.target], scale, pending_shift)
                path, args = _free_path(graph_module, f"{term.target}_folded"), term.args
            else:  # spikes from a shortcut: explicit synapses of weight s
                module = _channel_synapses(bn, scale, pending_shift)
                path, args = _free_path(graph_module, f"{node.target}_shortcut"), (term,)
            pending_shift = None  # the shift enters once
            graph_module.add_submodule(path, module)
            with graph.inserting_before(node):
                replacements.append(graph.call_module(path, args))
        with graph.inserting_before(node):
            total = replacements[0]
            for other in replacements[1:]:
                total = graph.call_function(operator.add, (total, other))
        node.replace_all_uses_with(total)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module


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


def for_inference(
    model: nn.Module, *, bits: int | None = None, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """An eval-mode copy of a fully sharpened ``model`` for fast PyTorch inference: batch norm folded,
    and each spiking activation replaced by a :class:`Heaviside` step that overwrites its input in place
    when no gradient is needed (so a forward hook on the layer before it would see spikes).

    With ``bits`` (2-8) it is instead the integer network of the model's graph quantized to ``bits``
    (:class:`~whetstone.integer.IntegerNetwork`: uint8 spikes, int8 weights, oneDNN's int8 kernels on x86
    CPUs), which needs ``input_shape`` (one sample's, e.g. ``(1, 28, 28)``). It gives the quantized graph's
    spikes exactly, as ``simulate(quantize(graph, bits), images)`` and the ``onnx-int8`` file do.

    Raises ``ValueError`` naming a spiking activation that is not at sharpness 1, and
    :class:`~whetstone.graph.DeployError` for a graph the integer network cannot run.
    """
    if bits is not None:
        from .graph import quantize, to_spiking_graph
        from .integer import IntegerNetwork

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
                setattr(parent, name, Heaviside(child.spike_threshold))
    return deployed
