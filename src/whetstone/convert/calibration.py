"""Warm start: keep a trained ReLU network's accuracy when it becomes a spiking one.

A spiking bounded ReLU clips at 1, while a trained ReLU network's activations range far beyond (a ResNet's
reach 5-20): converted as it is, the network loses most of its accuracy before any sharpening. ReLU networks
are positively homogeneous, so each layer can be rescaled without changing the function below the clip:
:func:`calibrate` gives each spiking layer a ``scale`` (its activations' high percentile on a few batches), so
the layer computes ``scale * f(x / scale)``, a ReLU clipped at ``scale`` at sharpness 0 (data-based
normalisation; Diehl et al. 2015, Rueckauer et al. 2017). Nothing of the network's graph changes, so residual
sums, concatenations and gates keep their meaning; at deployment each scale folds exactly into the neuron's
threshold and the next synapses.

A layer that sharpens ends emitting 0 or one value, its *level*; the range is a poor level (a high percentile:
most activations lie below half of it and would never fire). :func:`calibrate` also gives each layer the level
of the one-bit fit of its ReLU values, the ``a`` for which ``a * 1[v >= a / 2]`` is closest to them in mean
square, and the layer's scale moves from the range to the level as it sharpens: at sharpness 0 the network is
the ReLU network; as one layer after another becomes binary, each is the best one-bit copy of what it was.

The output layer must emit 0/1 for its decoder, so it is not scaled: the Linear that feeds it is mapped
affinely instead, so that the best class's score lands inside the activation's linear range on the
calibration data (the class order of the scores is kept, ties aside). A class's N units of an N-hot head
start as copies of its trained output, so once binary they would fire together (a count of 0 or N, and many
ties between classes); their biases are spread evenly over the linear range instead, a thermometer code: the
k-th unit fires once the score passes the k-th of N steps, so the class's spike count grows with its score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.activations import SpikingActivation, SpikingBReLU
from ..nn.decode import SoftmaxDecode, thermometer_offsets
from ..nn.sharpen import spiking_layers
from ..nn.tracing import trace
from ..utils.checks import is_number

__all__ = ["calibrate", "calibrate_head"]


def calibrate(model: nn.Module, batches: Iterable[Any], percentile: float = 99.9, levels: bool = True) -> nn.Module:
    """Rescale a converted ReLU network's spiking layers to the range of its activations; returns ``model``,
    changed in place (see the module docs).

    Args:
        model: a model whose activations are spiking layers (from :func:`~whetstone.spikify`), with the
            trained weights of the ReLU network.
        batches: input batches (tensors), or ``(inputs, labels)`` pairs as a DataLoader yields them; a few
            thousand samples are plenty. The model runs them in eval mode, without gradients.
        percentile: which percentile of a layer's ReLU outputs becomes its scale (in (0, 100]); 100 is the
            largest value seen, lower values clip a few outliers to keep the rest finer.
        levels: also give each layer the one-bit level its scale moves to as it sharpens (see the module docs);
            False: its spikes weigh the range.

    Bounded-ReLU layers are scaled; sigmoid layers are not (their range is already [0, 1]). A layer that
    never activated on the data keeps scale 1.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_percentile(percentile)
    layers = spiking_layers(model)
    try:
        graph: torch.fx.Graph | None = trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable: no output layer or concatenation known, layers scaled alone
        graph = None
    modules = dict(model.named_modules())
    output, head, decoder = _output_layer(graph, modules)
    hidden = [layer for layer in layers if isinstance(layer, SpikingBReLU) and layer is not output]
    tops: dict[SpikingActivation, list[Tensor]] = {layer: [] for layer in hidden}
    bits: dict[SpikingActivation, list[Tensor]] = {layer: [] for layer in hidden}

    def as_relu(module: nn.Module, inputs: tuple[Tensor, ...], result: Tensor) -> Tensor:
        values = F.relu(inputs[0])  # the trained ReLU network's own activation
        tops[module].append(_percentile(values, percentile))
        if levels:
            bits[module].append(_one_bit_level(values))
        return values

    _run(model, batches, {layer: as_relu for layer in hidden})
    scales = {layer: _mean(tops[layer]) for layer in hidden}
    ones = {layer: _mean(bits[layer]) if levels else scales[layer] for layer in hidden}
    for group in _concatenated(graph, modules):  # spikes joined into one value share a scale: their largest
        if all(layer in scales for layer in group):
            scales.update(dict.fromkeys(group, max(scales[layer] for layer in group)))
            ones.update(dict.fromkeys(group, max(ones[layer] for layer in group)))
        else:  # joined with a layer that has no scale (a sigmoid, the output): these stay at 1, uncalibrated
            for layer in group:
                scales.pop(layer, None)
    for layer, scale in scales.items():
        if scale > 0 and math.isfinite(scale):
            level = ones[layer] if 0 < ones[layer] <= scale and math.isfinite(ones[layer]) else scale
            layer.set_scale(scale, level)
    if output is not None and head is not None:
        _fit_head(model, batches, output, head, percentile, decoder)
    return model


def calibrate_head(model: nn.Module, batches: Iterable[Any], percentile: float = 99.9) -> nn.Module:
    """Fit a converted model's N-hot output layer again, as :func:`calibrate` fits it at conversion; returns
    ``model``, changed in place.

    For the end of fine-tuning, once the hidden layers are binary: each class's units become copies of their
    mean (weights and bias), the best class's score on ``batches`` is mapped onto the activation's linear
    range and the units are spread over it as a thermometer code (see the module docs). Training moves a
    class's units apart and off the range, so a head sharpened by training loses the order of the scores
    that a fitted one keeps. Units that belong to several classes keep their weights. ``ValueError`` unless
    the model ends in a spiking layer fed by one Linear (or Conv2d) alone and read by a decoder."""
    _check_percentile(percentile)
    output, head, decoder = _output_layer(trace(model).graph, dict(model.named_modules()))
    if output is None or head is None or decoder is None:
        raise ValueError(
            "calibrate_head needs a model that ends in Linear (or Conv2d) -> spiking layer -> decoder, "
            "as spikify(..., num_classes=...) makes it"
        )
    key = decoder.key.to(head.weight.device, torch.float32)
    owner, single = key.argmax(0), key.sum(0) == 1  # per unit: its class, and whether it has only one
    with torch.no_grad():
        weight = head.weight.flatten(1)
        rows = (key @ weight / key.sum(1, keepdim=True))[owner]
        weight.copy_(torch.where(single[:, None], rows, weight))
        if head.bias is not None:
            head.bias.copy_(torch.where(single, (key @ head.bias / key.sum(1))[owner], head.bias))
    _fit_head(model, batches, output, head, percentile, decoder)
    return model


def _check_percentile(percentile: object) -> None:
    if not is_number(percentile) or not 0 < percentile <= 100:
        raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}")


#: Calls that pass spikes on as spikes (what a concatenation's parts may go through after their layer).
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Flatten, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_PASS_CALLS = {"view", "reshape", "flatten", "contiguous", torch.flatten, F.max_pool2d, F.adaptive_max_pool2d}


def _concatenated(graph: torch.fx.Graph | None, modules: dict[str, nn.Module]) -> list[set[SpikingActivation]]:
    """Groups of spiking layers whose spikes are concatenated into one value (an Inception block's branches):
    the synapses that read it give all its channels one weight scale, so the layers must share one scale."""
    if graph is None:
        return []
    carried: dict[torch.fx.Node, set[SpikingActivation]] = {}
    groups: list[set[SpikingActivation]] = []
    for node in graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        first = node.args[0] if node.args else None
        if isinstance(module, SpikingActivation):
            carried[node] = {module}
        elif (isinstance(module, _PASS_MODULES) or node.target in _PASS_CALLS) and first in carried:
            carried[node] = carried[first]
        elif node.target in (torch.cat, torch.concat) and isinstance(first, (list, tuple)):
            joined = set().union(*(carried.get(part, set()) for part in first))
            if len(joined) > 1:
                groups.append(joined)
            carried[node] = joined
    merged: list[set[SpikingActivation]] = []
    for group in groups:  # groups that share a layer are one group
        overlapping = [other for other in merged if other & group]
        for other in overlapping:
            merged.remove(other)
            group = group | other
        merged.append(group)
    return merged


def _output_layer(
    graph: torch.fx.Graph | None, modules: dict[str, nn.Module]
) -> tuple[SpikingActivation | None, nn.Linear | nn.Conv2d | None, SoftmaxDecode | None]:
    """The spiking layer that feeds the decoder, the Linear (or Conv2d) that feeds it alone, and the decoder,
    if the model is traced that way; ``None`` for each part that is not."""
    if graph is None:
        return None, None, None
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], SoftmaxDecode):
            continue
        decoder, spike = modules[node.target], node.args[0]
        if not (isinstance(spike, torch.fx.Node) and spike.op == "call_module"):
            return None, None, decoder
        output = modules[spike.target]
        source = spike.args[0] if spike.args else None
        if not isinstance(output, SpikingActivation):
            return None, None, decoder
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], (nn.Linear, nn.Conv2d))
            and len(source.users) == 1
        ):
            return output, modules[source.target], decoder
        return output, None, decoder
    return None, None, None


def _fit_head(
    model: nn.Module,
    batches: Iterable[Any],
    output: SpikingActivation,
    head: nn.Module,
    p: float,
    decoder: SoftmaxDecode | None,
) -> None:
    """Map ``head``'s outputs affinely onto the activation's linear range. With ``decoder``, a class's score is
    the mean of its units' inputs, and the best class's score on the data (its (100 - p)-th to p-th percentile)
    is mapped onto the range, then the units of each class are spread over it (see the module docs). Without,
    the best unit's input lies above 0 and the runner-up's below 1 in p% of cases: the clip keeps their order."""
    scores: list[Tensor] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        scores.append(inputs[0].detach().flatten(1).float())

    _run(model, batches, {}, {output: record})
    if not scores:
        return
    values = torch.cat(scores)
    coded = decoder is not None and decoder.width == values.shape[1]
    if coded:
        key = decoder.key.to(values)
        best = (values @ key.t() / key.sum(1)).max(dim=1).values
        low, high = _quantile(best, 100 - p), _quantile(best, p)
    elif values.shape[1] >= 2:
        top = values.topk(2, dim=1).values
        best, runner_up = _quantile(top[:, 0], 100 - p), _quantile(top[:, 1], p)
        low, high = min(best, runner_up), max(best, runner_up)
    else:
        return
    if not high > low:
        return
    gain = 1.0 / (high - low)
    # [low, high] -> [0, 1], the bounded ReLU's linear range (a sigmoid's, centred on its threshold 0: [-0.5, 0.5])
    shift = -low * gain - (0.5 - output.spike_threshold)
    with torch.no_grad():
        head.weight.mul_(gain)
        if head.bias is None:
            head.bias = nn.Parameter(torch.zeros(head.weight.shape[0], device=head.weight.device))
        head.bias.mul_(gain).add_(shift)
        if coded:
            _spread_copies(head, decoder.key)


def _spread_copies(head: nn.Module, key: Tensor) -> None:
    """Give the units of each class whose units have one weight row (copies, as spikify makes them) their
    mean bias plus their :func:`~whetstone.nn.decode.thermometer_offsets`; other units are left as they are."""
    weight, bias = head.weight.flatten(1), head.bias
    key = key.to(weight.device, torch.float32)
    owner, first = key.argmax(0), key.argmax(1)  # per unit its class; per class its first unit
    same = (weight == weight[first[owner]]).all(1)
    copies = (key @ same.float() == key.sum(1))[owner] & (key.sum(0) == 1)  # per unit: its class is all copies
    mean = (key @ bias / key.sum(1))[owner]
    bias.copy_(torch.where(copies, mean + thermometer_offsets(key).to(bias), bias))


def _run(
    model: nn.Module,
    batches: Iterable[Any],
    forward_hooks: dict[nn.Module, Any],
    pre_hooks: dict[nn.Module, Any] | None = None,
) -> None:
    """Run ``batches`` through ``model`` in eval mode, without gradients, with the given hooks."""
    handles = [module.register_forward_hook(hook) for module, hook in forward_hooks.items()]
    handles += [module.register_forward_pre_hook(hook) for module, hook in (pre_hooks or {}).items()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x, Tensor):
                    raise ValueError(
                        f"calibrate: each batch must be a tensor or an (inputs, labels) pair, got {type(x).__name__}"
                    )
                model(x.to(device))
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("calibrate: the batches yielded nothing; give a few batches of training inputs")


def _mean(values: list[Tensor]) -> float:
    return float(torch.stack(values).mean()) if values else 0.0


#: Values of one batch a level is fitted on, at most (a strided sample: sorting every unit of a batch is slow).
_LEVEL_SAMPLE = 1 << 18


def _one_bit_level(values: Tensor) -> Tensor:
    """The ``a`` that minimises ``mean((v - a * 1[v >= a / 2]) ** 2)`` over ``values`` (0-dim; 0 if all are 0).

    The best ``a`` is the mean of the values at or above ``a / 2``, so it is one of the means of the largest
    ``k`` values: each is tried at once, with its own set of values above half of it."""
    flat = values.detach().flatten().float()
    flat = flat[:: max(1, math.ceil(len(flat) / _LEVEL_SAMPLE))].sort().values
    above = flat.flip(0).cumsum(0).flip(0)  # above[i]: the sum of the values from the i-th smallest up
    candidates = above / torch.arange(len(flat), 0, -1, device=flat.device)
    first = torch.searchsorted(flat, candidates / 2)  # the first value a candidate's neuron fires on
    total = torch.cat([above, above.new_zeros(1)])[first]
    count = (len(flat) - first).to(flat.dtype)
    error = candidates * (candidates * count - 2 * total)  # the mean square error, but for sum(v ** 2)
    return candidates[error.argmin()] if len(flat) else flat.new_zeros(())


def _percentile(values: Tensor, p: float) -> Tensor:
    """The ``p``-th percentile of every value in ``values`` (0-dim, on its device)."""
    flat = values.detach().flatten().float()
    k = min(len(flat), max(1, math.ceil(p / 100 * len(flat))))
    return flat.kthvalue(k).values


def _quantile(values: Tensor, p: float) -> float:
    return float(_percentile(values, p))
