"""Turn an ordinary network into a sharpenable one.

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.activations import SpikingActivation, SpikingBReLU, SpikingSigmoid
from ..nn.decode import SoftmaxDecode, key_generator, thermometer_offsets
from ..nn.tracing import describe_call, reads_training, set_submodule, trace, why_untraceable
from .calibration import calibrate as calibrate_scales
from .forward_effects import dropped_statements
from .graph_builder import check_deployable

__all__ = ["ConversionError", "pool_before_spikes", "spikify"]

_SPIKING = {"brelu": SpikingBReLU, "sigmoid": SpikingSigmoid}

# Activations with a binary counterpart, as they appear in a traced graph: the ReLU family (bounded or
# leaky) becomes the spiking activation spikify is asked for; the sigmoid family becomes SpikingSigmoid.
_RELU_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)
_SIGMOID_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_RELU_CALLS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_,
               "relu", "relu_"}  # fmt: skip
_SIGMOID_CALLS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid", "sigmoid_"}
# Activations and normalisations with none: refused before training, with what to do instead.
_NO_BINARY_ACTIVATION = (
    "has no binary counterpart: it is negative for half its inputs, and a single-time-step neuron fires or not; "
    "replace it with nn.ReLU (or a bounded ReLU: nn.ReLU6, nn.Hardtanh(0, 1)), which spikify turns into "
    "whetstone.SpikingBReLU, and train again"
)
_ACROSS_UNITS = (
    "normalises across units; whetstone's decoder ends the network in class logits: remove it (cross-entropy "
    "applies the softmax)"
)
_PER_SAMPLE = (
    "normalises each sample across units, which integrate-and-fire neurons cannot do; use batch norm (folded into "
    "the weights at deployment)"
)
# Smooth activations shaped like a ReLU (near zero below, rising above): replaced by the spiking bounded ReLU, with a
# warning, since the network's function changes; a sign-symmetric one (tanh) has no such stand-in and is refused.
_SMOOTH_MODULES = (nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Hardswish, nn.PReLU)
_SMOOTH_CALLS = {F.gelu, F.silu, F.mish, F.elu, F.elu_, F.selu, F.celu, F.softplus, F.hardswish, F.prelu,
                 "gelu", "silu", "mish", "elu", "selu", "celu", "softplus", "hardswish"}  # fmt: skip
_SYMMETRIC_MODULES = (nn.Tanh, nn.Softsign, nn.Tanhshrink)
_SYMMETRIC_CALLS = (torch.tanh, F.tanh, F.softsign, "tanh", "tanh_")
_SOFTMAX_CALLS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax")
_NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm)
_REFUSED_MODULES: dict[type, str] = {
    **dict.fromkeys(_SYMMETRIC_MODULES, _NO_BINARY_ACTIVATION),
    **dict.fromkeys((nn.Softmax, nn.LogSoftmax, nn.Softmin), _ACROSS_UNITS),
    **dict.fromkeys(_NORM_MODULES, _PER_SAMPLE),
}
_REFUSED_CALLS: dict[Any, str] = {
    **dict.fromkeys(_SYMMETRIC_CALLS, _NO_BINARY_ACTIVATION),
    **dict.fromkeys(_SOFTMAX_CALLS, _ACROSS_UNITS),
    **dict.fromkeys((F.layer_norm, F.group_norm, F.instance_norm), _PER_SAMPLE),
}


class ConversionError(ValueError):
    """A model cannot become a binary spiking network as it is; the message names the call site."""


@dataclass
class _Site:
    """One activation call site of a traced model."""

    node: torch.fx.Node
    kind: str  # "relu", "sigmoid" or "spiking" (already a spiking activation)
    module: str | None  # the module path for a module call, None for a function or method call
    smooth: str | None = None  # the smooth activation a spiking bounded ReLU replaces (GELU, SiLU, ...), if one


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
        if isinstance(module, _SMOOTH_MODULES):
            return _Site(node, "relu", node.target, type(module).__name__)
        refused = next((why for kind, why in _REFUSED_MODULES.items() if isinstance(module, kind)), None)
        if refused:
            raise ConversionError(f"{describe_call(node)}: {type(module).__name__} {refused}")
        return None
    if node.op in ("call_function", "call_method"):
        if node.target in _RELU_CALLS:
            return _Site(node, "relu", None)
        if node.target in _SIGMOID_CALLS:
            return _Site(node, "sigmoid", None)
        if node.target in _SMOOTH_CALLS:
            return _Site(node, "relu", None, node.target if isinstance(node.target, str) else node.target.__name__)
        if node.target in _REFUSED_CALLS:
            raise ConversionError(f"{describe_call(node)} {_REFUSED_CALLS[node.target]}")
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
    calibrate: Iterable[Any] | None = None,
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
    starts from the weights of its class's row, the biases of a class's units spread over the activation's
    linear range as a thermometer code), a spiking activation, and a
    :class:`~whetstone.SoftmaxDecode` with a disjoint key drawn from ``key_seed`` and a logit scale of one over
    the units per class (so the default ``Classification()`` loss trains it).

    With ``input_shape`` (one sample's, e.g. ``(3, 32, 32)``) the converted model is also checked to
    deploy once sharpened (:func:`~whetstone.convert.graph_builder.check_deployable`): a layer with no single-time-step
    spiking equivalent is named now, before any training, not at export.

    With ``calibrate`` (a few batches of training inputs, or a DataLoader), a *trained* network keeps its
    accuracy: each spiking layer gets the range of its ReLU activations on that data and the spiking head the
    range of its scores, each class's units spread over it as a thermometer code, so that once binary they do
    not all fire together (:func:`~whetstone.convert.calibration.calibrate`). Without it, every layer clips at 1, which
    is right for a network trained from scratch but costs a trained one most of its accuracy.
    """
    if activation not in _SPIKING:
        raise ValueError(f"activation must be one of {sorted(_SPIKING)}, got {activation!r}")
    if not isinstance(model, nn.Module):
        raise ConversionError(f"spikify takes an nn.Module, got {type(model).__name__}")
    recurrent = next((path for path, m in model.named_modules() if isinstance(m, nn.RNNBase | nn.RNNCellBase)), None)
    if recurrent is not None:
        kind = type(model.get_submodule(recurrent)).__name__
        raise ConversionError(
            f"{recurrent or 'the model'}: {kind} computes tanh and sigmoid gates inside, which have no binary "
            "counterpart and no call site spikify can reach; use whetstone.nn.recurrent.RecurrentSpiking (a recurrent "
            "spiking layer that sharpens like any other)"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise ConversionError(
            f"spikify takes a Python nn.Module; {getattr(model, 'original_name', 'this')} is a TorchScript module, whose code cannot be "
            "converted: spikify the model first, then script it if you need to"
        )
    try:
        traced = trace(model, mode_leaves=True)
    except Exception as error:  # noqa: BLE001 - untraceable forward: fall back to swapping modules
        if num_classes is not None:
            raise ConversionError(f"cannot trace {type(model).__name__} with torch.fx to give it a spiking head: "
                                  f"{why_untraceable(error)}") from None  # fmt: skip
        warnings.warn(f"spikify could not trace {type(model).__name__} ({why_untraceable(error)}); only its "
                      "activation modules are converted, call sites were not checked", stacklevel=2)  # fmt: skip
        return _finished(_spikify_modules(model, activation, sharpness), input_shape, calibrate)
    modules = dict(traced.named_modules())
    sites = [site for node in traced.graph.nodes if (site := _site(node, modules)) is not None]
    inner = _sites_inside_mode_leaves(traced, modules)
    _warn_smooth([_smooth_site(site.node, site.smooth) for site in sites if site.smooth]
                 + [f"{path} ({smooth})" for path, _, smooth in inner if smooth])  # fmt: skip
    calls = [site.module for site in sites if site.module is not None]
    if not sites and not inner:
        warnings.warn(f"spikify found no activation in {type(model).__name__}: nothing to sharpen", stacklevel=2)
    kinds = _value_kinds(traced.graph, modules, {site.node for site in sites})
    unspiked = [arg for node in traced.graph.nodes if (arg := _real_into_synapses(node, modules, kinds)) is not None]
    in_place = num_classes is None and not unspiked and len(calls) == len(sites) == len(set(calls))
    if not in_place:
        _check_same_in_both_modes(model, traced)  # before anything of the model is changed
    for path, kind, _ in inner:  # inside a module that keeps its own forward: converted in place
        if kind != "spiking":
            set_submodule(model, path, _spiking_for(kind, activation, sharpness))
    if in_place:
        for site in sites:  # one module per call site: replace in place, keep the model's class and its forward
            if site.kind != "spiking":
                set_submodule(model, site.module, _spiking_for(site.kind, activation, sharpness))
        return _finished(model, input_shape, calibrate)
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
    added = [_spike_after(result, node, _SPIKING[activation](sharpness), taken) for node in dict.fromkeys(unspiked)]
    if added:
        warnings.warn(
            f"spikify added a spiking activation at {', '.join(added)}: the value there reached a Linear or Conv "
            "layer as real numbers (a linear bottleneck, or a residual stream without an activation), which no "
            "integrate-and-fire network passes between layers; the spikes there change the network's function "
            "(values below 0 are dropped, large ones clipped): train or fine-tune it while sharpening",
            stacklevel=2,
        )
    if num_classes is not None:
        _add_spiking_head(result, num_classes, key_width, key_seed, _SPIKING[activation](sharpness), taken)
    dropped = dropped_statements(model, traced)
    if dropped:
        warnings.warn(
            "spikify returns the traced graph of the model's forward, which torch.fx ran once while tracing: these "
            f"statements will not run again: {'; '.join(dropped)}. Do that outside the model's forward",
            stacklevel=2,
        )
    result.graph.lint()
    result.recompile()
    result.delete_all_unused_submodules()
    return _finished(result.train(model.training), input_shape, calibrate)


def _smooth_site(node: torch.fx.Node, smooth: str) -> str:
    """Where a smooth activation is, for the warning: a module with its class, or a call with its line."""
    return f"{describe_call(node)} ({smooth})" if node.op == "call_module" else describe_call(node)


def _warn_smooth(replaced: list[str]) -> None:
    """Say where a smooth activation became the spiking bounded ReLU: the network's function changes there."""
    if replaced:
        warnings.warn(
            "spikify put the spiking bounded ReLU in place of smooth activations, which a neuron that fires or not "
            "cannot compute (the network's function changes there: train or fine-tune it while sharpening): "
            + "; ".join(replaced),
            stacklevel=3,
        )


def _sites_inside_mode_leaves(
    traced: torch.fx.GraphModule, modules: dict[str, nn.Module]
) -> list[tuple[str, str, str | None]]:
    """``(module path, kind, smooth activation replaced)`` of each activation inside the modules kept whole because their forward reads
    ``self.training``: those are converted in place, so each must be a module called once."""
    found = []
    for node in traced.graph.nodes:
        if node.op != "call_module" or not reads_training(modules[node.target]):
            continue
        leaf = modules[node.target]
        try:
            inside = trace(leaf, mode_leaves=True)
        except Exception as error:  # noqa: BLE001 - its forward is opaque to torch.fx: its activation modules as they are
            inside = None
            if any(isinstance(m, (*_RELU_MODULES, *_SIGMOID_MODULES)) for m in leaf.modules()):
                raise ConversionError(f"{node.target}: {type(leaf).__name__} reads self.training and cannot be traced "
                                      f"({str(error).splitlines()[0]}), so its activations cannot be checked") from None  # fmt: skip
        if inside is None:
            continue
        inner = dict(inside.named_modules())
        try:
            leaf_sites = [site for n in inside.graph.nodes if (site := _site(n, inner)) is not None]
        except ConversionError as error:  # named inside the module: say where the module is
            raise ConversionError(
                f"{node.target}.{error}" if str(error)[:1].isalnum() else f"{node.target}: {error}"
            ) from None
        paths = [site.module for site in leaf_sites]
        if None in paths or len(paths) != len(set(paths)):
            raise ConversionError(
                f"{node.target}: {type(leaf).__name__} reads self.training, so spikify keeps its forward as written, but "
                "that forward calls an activation as a function or one activation module twice, which cannot be "
                "converted in place; give each activation call its own module"
            )
        nested = _sites_inside_mode_leaves(inside, inner)
        found += [(f"{node.target}.{site.module}", site.kind, site.smooth) for site in leaf_sites]
        found += [(f"{node.target}.{path}", kind, smooth) for path, kind, smooth in nested]
    return found


def _check_same_in_both_modes(model: nn.Module, traced: torch.fx.GraphModule) -> None:
    """A converted graph runs the code traced from ``forward`` once: refuse a model whose traced code still
    differs between train and eval mode (a branch on ``self.training`` outside the modules kept whole)."""
    training = model.training
    try:
        other = trace(model.train(not training), mode_leaves=True)
    except Exception:  # noqa: BLE001 - untraceable in the other mode: different code, by definition
        other = None
    finally:
        model.train(training)
    if other is not None and other.code == traced.code:
        return
    where = type(model).__name__
    if other is not None:
        ours, theirs = list(traced.graph.nodes), list(other.graph.nodes)
        differ = next((a for a, b in zip(ours, theirs, strict=False) if (a.op, a.target) != (b.op, b.target)), None)
        owner = list((differ.meta.get("nn_module_stack") or {}).values()) if differ is not None else []
        where = owner[-1][0] if owner and owner[-1][0] else where
    raise ConversionError(
        f"{where}: its forward takes another path in train than in eval mode (it reads self.training), and spikify "
        "must rewrite the call graph here (a shared or functional activation, a spiking head or a linear "
        "bottleneck), which would freeze one path; keep the branch inside a module of its own, whose forward "
        "spikify then leaves as written"
    )


_PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d,
                         nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)  # fmt: skip
_PASS_THROUGH_CALLS = {torch.flatten, "flatten", "view", "reshape", F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d,
                       F.dropout, "mean", torch.mean, "contiguous"}  # fmt: skip
_SYNAPSES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SUMS = {operator.add, torch.add, operator.iadd}
_LINEAR_CALLS = {F.batch_norm, F.linear, F.conv1d, F.conv2d, F.conv3d}


def _value_kinds(
    graph: torch.fx.Graph, modules: dict[str, nn.Module], spikes: set[torch.fx.Node], given: str = "input"
) -> dict[torch.fx.Node, str]:
    """What each traced value is: ``"input"`` (``given``, for the graph's inputs), ``"spikes"`` (an activation's
    output, or one pooled, flattened or summed), ``"real"`` (a linear layer's or a batch norm's output), or
    ``"unknown"``. A module kept whole because it reads ``self.training`` is read as it computes in eval mode."""
    kinds: dict[torch.fx.Node, str] = {}
    for node in graph.nodes:
        args = [kinds.get(a, "unknown") for a in node.args if isinstance(a, torch.fx.Node)]
        module = modules.get(node.target) if node.op == "call_module" else None
        if node.op == "placeholder":
            kind = given
        elif node in spikes:
            kind = "spikes"
        elif isinstance(module, (*_SYNAPSES, nn.modules.batchnorm._BatchNorm)) and not reads_training(module):
            kind = "real"
        elif module is not None and reads_training(module):
            kind = _output_kind(module, args[0] if args else "unknown")
        elif node.op == "call_function" and node.target in _LINEAR_CALLS:
            kind = "real"
        elif _passes_through(node, modules):
            kind = args[0] if args else "unknown"
        elif node.op == "call_function" and node.target in _SUMS and args:
            kind = "real" if "real" in args else "unknown" if "unknown" in args else "spikes"
        else:
            kind = "unknown"
        kinds[node] = kind
    return kinds


def _output_kind(module: nn.Module, given: str) -> str:
    """What a module kept whole returns, in eval mode (as deployed), when it receives a value of kind ``given``."""
    training = module.training
    try:
        inside = trace(module.eval(), mode_leaves=True)
    except Exception:  # noqa: BLE001 - opaque to torch.fx: nothing known
        return "unknown"
    finally:
        module.train(training)
    modules = dict(inside.named_modules())
    spikes = {node for node in inside.graph.nodes if _site(node, modules) is not None}
    kinds = _value_kinds(inside.graph, modules, spikes, given)
    result = next(node for node in inside.graph.nodes if node.op == "output").args[0]
    return kinds.get(result, "unknown") if isinstance(result, torch.fx.Node) else "unknown"


def _real_into_synapses(
    node: torch.fx.Node, modules: dict[str, nn.Module], kinds: dict[torch.fx.Node, str]
) -> torch.fx.Node | None:
    """Where the real values that a Linear/Conv call reads come from (the layer or sum that computes them, before
    any pooling or flattening), if it reads another linear layer's real values."""
    if node.op != "call_module" or not isinstance(modules[node.target], _SYNAPSES) or not node.args:
        return None
    arg = node.args[0]
    if not isinstance(arg, torch.fx.Node) or kinds.get(arg) != "real":
        return None
    while _passes_through(arg, modules) and isinstance(arg.args[0], torch.fx.Node) and kinds.get(arg.args[0]) == "real":
        arg = arg.args[0]
    return arg


def _passes_through(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _PASS_THROUGH_MODULES)
    return node.op in ("call_function", "call_method") and node.target in _PASS_THROUGH_CALLS and bool(node.args)


def _spike_after(model: torch.fx.GraphModule, node: torch.fx.Node, spike: SpikingActivation, taken: set[str]) -> str:
    """Make every user of ``node`` read ``spike(node)`` instead; returns the new module's path."""
    if node.op == "call_module":
        stem = f"{node.target}_spike"
    else:
        owner = list((node.meta.get("nn_module_stack") or {}).values())
        stem = f"{owner[-1][0]}.out_spike" if owner and owner[-1][0] else f"{node.name}_spike"
    path, index = stem, 1
    while path in taken:
        path, index = f"{stem}_{index}", index + 1
    taken.add(path)
    model.add_submodule(path, spike)
    with model.graph.inserting_after(node):
        spiked = model.graph.call_module(path, (node,))
    spiked.meta = dict(node.meta)
    node.replace_all_uses_with(spiked, delete_user_cb=lambda user: user is not spiked)
    return path


def _finished(model: nn.Module, input_shape: tuple[int, ...] | None, batches: Iterable[Any] | None) -> nn.Module:
    """The converted model, checked to deploy (with ``input_shape``) and calibrated (with ``batches``)."""
    if input_shape is not None:
        check_deployable(model, input_shape)
    if batches is not None:
        calibrate_scales(model, batches)
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
    modules = dict(model.named_modules())
    while (
        isinstance(last, torch.fx.Node)
        and last.args
        and (  # an Identity, Dropout or flatten after the classifier
            (last.op == "call_module" and isinstance(modules[last.target], (nn.Identity, nn.Dropout, nn.Flatten)))
            or (last.op != "call_module" and last.target in (torch.flatten, "flatten"))
        )
    ):
        last = last.args[0]
    module = model.get_submodule(last.target) if isinstance(last, torch.fx.Node) and last.op == "call_module" else None
    if isinstance(module, SoftmaxDecode):
        raise ConversionError("num_classes: the model already ends in a SoftmaxDecode")
    if not isinstance(module, nn.Linear) or module.out_features != classes:
        what = f"{type(module).__name__} {last.target!r}" if module is not None else f"{describe_call(last)}"
        raise ConversionError(
            f"num_classes={classes}: the model's output must come from a Linear(features, {classes}), but it comes "
            f"from {what}; give it such a final layer, or build a whetstone.SpikingClassifier yourself"
        )
    width = 10 * classes if width is None else width
    key = key_generator(classes, width, overlapping=False, seed=seed)
    head = nn.Linear(module.in_features, width, bias=module.bias is not None).to(module.weight.device)
    with torch.no_grad():  # each unit starts as its class's output, so the trained features keep their meaning,
        owner = key.argmax(dim=0)  # its bias offset into a thermometer code: copies would fire together for ever
        head.weight.copy_(module.weight[owner])
        if module.bias is not None:
            head.bias.copy_(module.bias[owner] + thermometer_offsets(key).to(head.bias))
    model.add_submodule(last.target, head)
    names = []
    for stem in (f"{last.target}_spike", "decoder"):
        name, index = stem, 1
        while name in taken:
            name, index = f"{stem}_{index}", index + 1
        taken.add(name)
        names.append(name)
    model.add_submodule(names[0], spike)
    # Logits of an N-hot code differ by up to 4 N between classes: at 1 / N the softmax is not saturated from
    # the first step, where the trained features would otherwise be torn up (measured in docs/results.md).
    model.add_submodule(names[1], SoftmaxDecode(key, logit_scale=classes / width))
    with model.graph.inserting_after(last):
        spiked = model.graph.call_module(names[0], (last,))
    with model.graph.inserting_after(spiked):
        decoded = model.graph.call_module(names[1], (spiked,))
    output.args = (decoded,)


def _spikify_modules(model: nn.Module, activation: str, sharpness: float) -> nn.Module:
    """Replace activation modules in place (for models torch.fx cannot trace)."""
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _RELU_MODULES or type(child) in _SMOOTH_MODULES:
                if type(child) in _SMOOTH_MODULES:
                    _warn_smooth([f"{parent_name}.{name}".lstrip(".") + f" ({type(child).__name__})"])
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
