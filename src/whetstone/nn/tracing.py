"""torch.fx tracing with whetstone's leaves, and batch-norm folding on the traced call graph.

Everything that reads a model's call graph goes through :func:`trace`: spiking activations and the
decoder stay single calls (their ``forward`` branches on Python state that symbolic tracing cannot
follow). :func:`fold_batchnorm` turns every batch norm into synaptic weights, exactly; the graph builder
(:mod:`whetstone.convert.graph_builder`), conversion (:mod:`whetstone.convert.spikify`) and the sharpening order
(:mod:`whetstone.nn.sharpen`) all sit above this module.
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
import os
import re
from collections import Counter, OrderedDict
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .activations import SpikingActivation
from .decode import SoftmaxDecode

__all__ = [
    "describe_call",
    "fold_batchnorm",
    "reads_training",
    "set_submodule",
    "source_line",
    "trace",
    "why_untraceable",
]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_WEIGHTED = (nn.Linear, *_CONVS, *_TRANSPOSED)


def _split_norm_and_activation(model: nn.Module) -> None:
    """Replace, in place, each batch norm subclass that also applies ``drop`` and ``act`` after normalising (timm's
    ``BatchNormAct2d``, whose own forward calls the functional batch norm) by ``Sequential(bn, drop, act)`` with a
    plain batch norm of the same statistics, which folds like any other (``act`` keeps its module path); and a
    subclass that keeps batch norm's own forward by that plain batch norm."""
    for name, module in list(model.named_modules()):
        kind = next((k for k in _BATCHNORMS if isinstance(module, k)), None)
        if kind is None or type(module) is kind:
            continue
        drop, act = getattr(module, "drop", None), getattr(module, "act", None)
        inherited = type(module).forward is nn.modules.batchnorm._BatchNorm.forward  # a subclass in name only
        if not inherited and (not isinstance(drop, nn.Module) or not isinstance(act, nn.Module)):
            continue
        own = {key: value for key, value in module.state_dict().items() if "." not in key}
        like = module.running_mean if module.running_mean is not None else module.weight
        plain = kind(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                     device=like.device if like is not None else None, dtype=like.dtype if like is not None else None)  # fmt: skip
        plain.load_state_dict(own)
        if inherited and not isinstance(act, nn.Module):
            set_submodule(model, name, plain.eval())
        else:
            set_submodule(model, name, nn.Sequential(OrderedDict(bn=plain.eval(), drop=drop, act=act)))


class _LeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps spiking activations and the decoder as single call_module nodes
    (their forward branches on Python state that symbolic tracing cannot follow); with ``mode_leaves``,
    also every module whose ``forward`` reads ``self.training`` (see :func:`reads_training`)."""

    def __init__(self, mode_leaves: bool = False) -> None:
        super().__init__()
        self.mode_leaves = mode_leaves
        self.record_stack_traces = True  # messages name the user's source line (see describe_call)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (SpikingActivation, SoftmaxDecode)) or (self.mode_leaves and reads_training(m)):
            return True
        if isinstance(m, (nn.Linear, *_CONVS)):  # subclasses too (timm's Linear): the same map, whatever their forward
            return True
        return super().is_leaf_module(m, qualname)


def describe_call(node: torch.fx.Node) -> str:
    """Where a traced call is, in the user's terms: the module path of a module call, or the function inside a
    module's ``forward``, with the source line that makes the call (``file.py:42: `x[:, :8]```) where torch.fx
    recorded it."""
    if node.op == "call_module":
        where = str(node.target)
    else:
        owner = list((node.meta.get("nn_module_stack") or {}).values())
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        where = f"{name}() in the forward of {owner[-1][0] if owner and owner[-1][0] else 'the model'}"
    line = source_line(node)
    return f"{where} ({line})" if line else where


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in \S+\n\s*(?P<code>[^\n]*)')
_LIBRARY = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
)


def source_line(node: torch.fx.Node) -> str:
    """``file.py:42: `code``` of the user's call that made ``node`` (the innermost frame outside torch and
    whetstone), or "" where torch.fx recorded none."""
    frames = [m for m in _FRAME.finditer(node.meta.get("stack_trace") or "")
              if not os.path.abspath(m["file"]).startswith(_LIBRARY)]  # fmt: skip
    if not frames:
        return ""
    frame = frames[-1]
    path = os.path.abspath(frame["file"])
    shown = os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
    return f"{shown}:{frame['line']}: `{frame['code'].strip()}`"


def why_untraceable(error: BaseException) -> str:
    """torch.fx's reason a forward cannot be traced, in one line, with what it means for the model."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "control flow" in first or "iterate" in first or "len(" in first:
        return (f"{first} (its forward branches or loops on tensor values, which a fixed network of neurons cannot "
                "do: compute that outside the model, or write the branch with tensor operations)")  # fmt: skip
    return first


def trace(model: nn.Module, mode_leaves: bool = False) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` with spiking activations and decoders as leaves.

    Tracing runs ``forward`` once, so a branch on ``self.training`` is frozen in the mode the model is in.
    That is right for deployment (always eval mode) but not for a model to train: ``mode_leaves=True``
    keeps each module whose forward reads ``self.training`` as one call, so its own code still decides.

    A ``GraphModule`` (what :func:`~whetstone.spikify` returns for most models) is traced again node by node,
    so every call keeps the module path and source line it was first traced with (messages name them)."""
    if isinstance(model, torch.fx.GraphModule):
        return torch.fx.GraphModule(model, _retraced(model, _LeafTracer(mode_leaves)))
    return torch.fx.GraphModule(model, _LeafTracer(mode_leaves).trace(model))


def _retraced(model: torch.fx.GraphModule, tracer: _LeafTracer) -> torch.fx.Graph:
    """``model``'s graph, copied with every node's metadata (module stack, the user's source line), where each
    call of a module that is not a leaf for ``tracer`` is replaced by that module's own traced calls."""
    graph = torch.fx.Graph()
    values: dict[torch.fx.Node, Any] = {}
    for node in model.graph.nodes:
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        if module is None or tracer.is_leaf_module(module, node.target):
            values[node] = graph.node_copy(node, lambda arg: values[arg])
            continue
        args = torch.fx.map_arg(node.args, lambda arg: values[arg])
        kwargs = torch.fx.map_arg(node.kwargs, lambda arg: values[arg])
        inner = _LeafTracer(tracer.mode_leaves).trace(module)
        values[node] = _inline(graph, inner, str(node.target), args, kwargs, node.meta)
    return graph


def _inline(graph: torch.fx.Graph, inner: torch.fx.Graph, path: str, args: tuple, kwargs: dict, meta: dict) -> Any:
    """Copy the calls of ``inner`` (a module's traced graph) into ``graph`` as calls of the module at ``path``,
    its inputs bound to ``args``/``kwargs``; returns what it outputs. Each call keeps its own source line, and
    its module stack starts with the stack of the call it replaces."""
    values: dict[torch.fx.Node, Any] = {}
    given = iter(args)
    outer_stack = dict(meta.get("nn_module_stack") or {})
    for node in inner.nodes:
        if node.op == "placeholder":
            default = node.args[0] if node.args else None
            values[node] = next(given, kwargs.get(node.target, default))
            continue
        if node.op == "output":
            return torch.fx.map_arg(node.args[0], lambda arg: values[arg])
        copied = graph.node_copy(node, lambda arg: values[arg])
        if node.op in ("call_module", "get_attr"):
            copied.target = f"{path}.{node.target}"
        stack = {f"{path}.{key}": (f"{path}.{name}", kind) for key, (name, kind) in
                 (node.meta.get("nn_module_stack") or {}).items()}  # fmt: skip
        copied.meta["nn_module_stack"] = {**outer_stack, **stack}
        values[node] = copied
    raise AssertionError("a traced graph ends in an output node")


@functools.cache
def _forward_reads_training(kind: type) -> bool:
    try:
        source = inspect.getsource(kind.forward)
    except (OSError, TypeError):  # no source (built in, compiled): nothing to see
        return False
    return re.search(r"\.training\b", source) is not None


def reads_training(module: nn.Module) -> bool:
    """Whether ``module`` is not PyTorch's own (those are leaves of torch.fx already) and its ``forward``
    reads ``self.training`` (batch-norm-and-activation blocks, stochastic depth, auxiliary heads, ...)."""
    kind = type(module)
    return not kind.__module__.startswith("torch.") and _forward_reads_training(kind)


def _fuse(layer: nn.Module, bn: nn.Module) -> nn.Module:
    if isinstance(layer, (*_CONVS, *_TRANSPOSED)):
        return fuse_conv_bn_eval(layer, bn, transpose=isinstance(layer, _TRANSPOSED))
    return fuse_linear_bn_eval(layer, bn)


def set_submodule(root: nn.Module, qualified_name: str, module: nn.Module) -> None:
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
    _split_norm_and_activation(folded)
    pairs = _fold_pairs_traced(folded)
    if pairs is None:
        pairs = _fold_pairs_sequential(folded)
    for layer_name, bn_name in pairs:
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        _check_statistics(bn_name, bn)
        set_submodule(folded, layer_name, _fuse(layer, bn))
        set_submodule(folded, bn_name, nn.Identity())
    if any(isinstance(module, _BATCHNORMS) for module in folded.modules()):
        try:
            traced = trace(folded)
        except Exception:  # noqa: BLE001 - untraceable: the leftover check below names the batch norms
            traced = None
        if traced is not None:
            folded = _fold_in_graph(traced)
    leftover = [name for name, module in folded.named_modules() if isinstance(module, _BATCHNORMS)]
    if leftover:
        causes = _why_not_folded(folded) if isinstance(folded, torch.fx.GraphModule) else []
        raise ValueError(
            "; ".join(causes)
            if causes
            else f"cannot fold batch norm {leftover}: each must follow a Linear or Conv "
            "layer, the sum of a residual block, a concatenation or a pooling of those"
        )
    return folded.eval()


def _why_not_folded(graph_module: torch.fx.GraphModule) -> list[str]:
    """For each batch norm left in the graph, in one clause: which call it is and what blocks folding it."""
    modules = dict(graph_module.named_modules())
    causes = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORMS):
            continue
        source = _through_identity(node.args[0], modules)
        if isinstance(source, torch.fx.Node) and source.op == "placeholder":
            why = ("normalises the network's input, which no synapse precedes: normalise the data instead, or put "
                   "the batch norm after the first layer")  # fmt: skip
        elif isinstance(source, torch.fx.Node) and _pooling_kind(source, modules) == "max":
            negative = (_scale_shift(modules[node.target])[0] <= 0).nonzero().flatten().tolist()
            why = (f"follows the max pooling {describe_call(source)} and scales channels {negative[:8]} by a number "
                   "<= 0, which turns a maximum into a minimum: move the batch norm before the pooling")  # fmt: skip
        else:
            what = describe_call(source) if isinstance(source, torch.fx.Node) else repr(source)
            if isinstance(source, torch.fx.Node) and source.op == "call_module":
                what += f" ({type(modules[source.target]).__name__})"
            why = (f"follows {what}, which is not a Linear or Conv layer, a sum, a concatenation or a pooling of "
                   "those: move it right after one")  # fmt: skip
        causes.append(f"cannot fold batch norm {describe_call(node)}: it {why}")
    return causes


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


def _fold_after_concatenation(
    graph_module: torch.fx.GraphModule,
    node: torch.fx.Node,
    concat: torch.fx.Node,
    bn: nn.Module,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> bool:
    """``BN(cat(a, b, ...)) = cat(BN_a(a), BN_b(b), ...)``, each part normalised by its own channels' slice: a
    layer's output (also behind an average pooling, which commutes with a per-channel affine map) gets a folded
    copy of the layer, anything else explicit synapses of weight ``s``. Returns False (nothing changed) when a
    part's width is unknown (every part but one must be a layer or carry a shape from a traced run)."""
    modules = dict(graph_module.named_modules())
    parts = concat.args[0] if concat.args else concat.kwargs.get("tensors")
    dim = concat.args[1] if len(concat.args) > 1 else concat.kwargs.get("dim", 0)
    if (
        dim not in (1, -3)
        or not isinstance(parts, (list, tuple))
        or not all(isinstance(p, torch.fx.Node) for p in parts)
    ):
        return False
    sources = [_behind_pooling(_through_identity(part, modules), modules) for part in parts]
    widths = [_width(part, layer, modules) for part, (layer, _) in zip(parts, sources, strict=True)]
    if widths.count(None) > 1:
        return False
    if None in widths:
        widths[widths.index(None)] = len(scale) - sum(w for w in widths if w is not None)
    if sum(widths) != len(scale) or min(widths) < 1:
        return False
    graph, offset, placed = graph_module.graph, 0, []
    for part, (layer, pools), width in zip(parts, sources, widths, strict=True):
        piece = slice(offset, offset + width)
        offset += width
        with graph.inserting_before(node):
            if layer is not None:  # a folded copy of the layer, pooled as before
                path = _free_path(graph_module, f"{layer.target}_folded")
                graph_module.add_submodule(path, _scaled_layer(modules[layer.target], scale[piece], shift[piece]))
                value = graph.call_module(path, layer.args)
                for pool in pools:  # a copy per path: every call of a module is its own layer in the graph
                    copied = _free_path(graph_module, f"{pool.target}_folded")
                    graph_module.add_submodule(copied, copy.deepcopy(modules[pool.target]))
                    value = graph.call_module(copied, (value,))
            else:
                path = _free_path(graph_module, f"{node.target}_part{len(placed)}")
                graph_module.add_submodule(path, _channel_synapses(bn, scale[piece], shift[piece]))
                value = graph.call_module(path, (part,))
        placed.append(value)
    with graph.inserting_before(node):
        joined = graph.call_function(torch.cat, (placed, 1))
    node.replace_all_uses_with(joined)
    return True


def _behind_pooling(node: Any, modules: dict[str, nn.Module]) -> tuple[torch.fx.Node | None, list[torch.fx.Node]]:
    """The weighted layer whose output ``node`` is, directly or through unpadded average poolings (which commute
    with batch norm's per-channel affine map), and those poolings; ``(None, [])`` for anything else."""
    pools = []
    while (
        isinstance(node, torch.fx.Node)
        and node.op == "call_module"
        and isinstance(modules[node.target], (nn.AvgPool2d, nn.AdaptiveAvgPool2d))
        and not getattr(modules[node.target], "padding", 0)
    ):
        pools.append(node)
        node = _through_identity(node.args[0], modules)
    if isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(modules[node.target], _WEIGHTED):
        return node, pools[::-1]
    return None, []


def _width(part: torch.fx.Node, layer: torch.fx.Node | None, modules: dict[str, nn.Module]) -> int | None:
    """The channels of a concatenated part: its traced shape, else its layer's outputs, else unknown."""
    meta = part.meta.get("tensor_meta")
    if meta is not None and len(meta.shape) > 1:
        return int(meta.shape[1])
    if layer is not None:
        module = modules[layer.target]
        return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)
    return None


def _fold_in_graph(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fold the batch norms that need the call graph rewritten (see :func:`fold_batchnorm`), one at a time until
    none is left that folds (a batch norm moved before a pooling folds on the next pass)."""
    graph = graph_module.graph
    while any(_fold_one(graph_module, node) for node in list(graph.nodes)):
        pass
    graph.eliminate_dead_code()
    graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module


def _fold_one(graph_module: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Fold the batch norm ``node`` calls, if it is one and it folds; True when the graph changed."""
    graph = graph_module.graph
    modules = dict(graph_module.named_modules())
    if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORMS):
        return False
    bn = modules[node.target]
    _check_statistics(node.target, bn)
    scale, shift = _scale_shift(bn)
    source = _through_identity(node.args[0], modules)
    if not isinstance(source, torch.fx.Node):
        return False
    if source.op == "call_module" and isinstance(modules[source.target], _WEIGHTED):
        terms = [source]  # a layer whose output also feeds something else: a folded copy for this path
    elif source.op == "call_function" and source.target in _SUMS:
        terms = _summands(source, modules)
        if terms is None:
            return False
    elif source.op == "call_function" and source.target in (torch.cat, torch.concat):
        if not _fold_after_concatenation(graph_module, node, source, bn, scale, shift):
            return False
        graph.erase_node(node)
        return True
    else:
        return _move_before_pooling(graph_module, node, source, modules, scale)
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
    return True


_SUMS = (operator.add, torch.add, operator.iadd)


def _summands(node: torch.fx.Node, modules: dict[str, nn.Module]) -> list[torch.fx.Node] | None:
    """The values a sum adds up, through nested sums (a pre-activation residual stream is the sum of every
    block's output since the last downsampling): ``BN(a + (b + c)) = s a + s b + s c + t``. None for a sum of
    anything but values (a constant added, keyword arguments)."""
    terms = []
    for arg in node.args:
        term = _through_identity(arg, modules)
        if not isinstance(term, torch.fx.Node) or node.kwargs:
            return None
        if term.op == "call_function" and term.target in _SUMS:
            inner = _summands(term, modules)
            if inner is None:
                return None
            terms += inner
        else:
            terms.append(term)
    return terms


_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_AVERAGE_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_MAX_POOL_CALLS = {nn.functional.max_pool2d, torch.max_pool2d, nn.functional.adaptive_max_pool2d}
_AVERAGE_POOL_CALLS = {nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d}


def _pooling_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """ "max" or "average" for a pooling call that commutes with a per-channel affine map (an average pooling
    without padding; any max pooling, for positive scales), else None."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, _MAX_POOLS):
            return "max"
        padded = getattr(module, "padding", 0) not in (0, (0, 0))
        return "average" if isinstance(module, _AVERAGE_POOLS) and not padded else None
    if node.op != "call_function":
        return None
    if node.target in _MAX_POOL_CALLS:
        return "max"
    padding = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
    return "average" if node.target in _AVERAGE_POOL_CALLS and padding in (0, (0, 0)) else None


def _move_before_pooling(
    graph_module: torch.fx.GraphModule,
    node: torch.fx.Node,
    pool: torch.fx.Node,
    modules: dict[str, nn.Module],
    scale: torch.Tensor,
) -> bool:
    """``BN(pool(x)) = pool(BN(x))``: batch norm is a per-channel affine map, which an average pooling without
    padding commutes with, and a max pooling too where every scale is positive. Rewrites the graph so (a copy
    of) the batch norm reads the pooling's input, to fold there on the next pass; False where it cannot move."""
    kind = _pooling_kind(pool, modules)
    if kind is None or (kind == "max" and not bool((scale > 0).all())):
        return False
    graph = graph_module.graph
    path = _free_path(graph_module, f"{node.target}_before_pool")
    graph_module.add_submodule(path, copy.deepcopy(modules[node.target]))
    with graph.inserting_before(node):
        normed = graph.call_module(path, (pool.args[0],))
        normed.meta = dict(node.meta)
        pooled = graph.create_node(pool.op, pool.target, (normed, *pool.args[1:]), dict(pool.kwargs))
        pooled.meta = dict(pool.meta)
    node.replace_all_uses_with(pooled)
    graph.erase_node(node)
    return True
