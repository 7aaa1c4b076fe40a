"""Reference architectures, built by name from a registry.

Every model shares one constructor contract::

    create_model(name, num_classes=10, activation="brelu", key_width=None, key_seed=0, **options)

and returns a :class:`SpikingClassifier`: a ``features`` stack whose last spiking layer is the N-hot
output code, followed by a :class:`~whetstone.nn.decode.SoftmaxDecode`. Each registered model also carries
the training recipe its results were obtained with (``recipe(name)``), used as the CLI's defaults.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn

from ..convert.spikify import pool_before_spikes, spikify
from ..nn.activations import SpikingActivation, SpikingBReLU, SpikingSigmoid
from ..nn.decode import SoftmaxDecode, key_generator
from ..nn.recurrent import RecurrentSpiking
from ..utils.checks import boolean, imported, sizes

__all__ = [
    "ResidualBlock",
    "SpikingAutoencoder",
    "SpikingClassifier",
    "create_model",
    "list_models",
    "model_description",
    "recipe",
    "register_model",
]

_ACTIVATION_MODULES = {"brelu": SpikingBReLU, "sigmoid": SpikingSigmoid}


class SpikingAutoencoder(nn.Module):
    """``decoder(encoder(x))`` where the encoder ends in a spiking layer: the code is binary once sharp.

    The decoder's hidden layers spike too; its last layer is a sigmoid, so the reconstruction is a
    real-valued image in [0, 1]."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The bottleneck code (binary once every spiking layer is at sharpness 1)."""
        return self.encoder(x)


class SpikingClassifier(nn.Module):
    """``features`` (ending in a spiking layer of ``key.shape[1]`` units) then a softmax decoder."""

    def __init__(self, features: nn.Module, key: Tensor) -> None:
        super().__init__()
        self.features = features
        self.decoder = SoftmaxDecode(key)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(2 spikes - 1) @ (2 key - 1)^T``."""
        return self.decoder(self.features(x))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Predicted class per sample."""
        return self(x).argmax(dim=-1)


@dataclass(frozen=True)
class Recipe:
    """Default training hyperparameters of a registered model (all overridable)."""

    dataset: str = "mnist"
    optimizer: str = "adam"
    lr: float = 1e-3
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 128
    epochs: int = 20
    sharpener: str = "simple"
    start_epoch: int = 5
    steps: int = 5
    per: str = "epoch"
    # Training loss: cross-entropy of logit_scale * logits. The decoder's logits span +-width (100 for a
    # 10x10 code), which saturates the softmax; conv models learn faster with a smaller scale.
    logit_scale: float = 1.0
    augment: bool = False  # random crop and (where the dataset allows) mirroring of each training batch
    # "constant", or "cosine": the learning rate falls along half a cosine to 1/100 of lr at the last epoch
    # (lowered every epoch; "cosine-batch": every batch).
    lr_schedule: str = "constant"
    target: str = "labels"  # "inputs" for autoencoders: the loss compares the output with the input
    surrogate: float | None = None  # binary layers keep learning with this sharpness's slope (see --surrogate)


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., nn.Module]
    recipe: Recipe
    description: str
    converts: bool = False  # a network of the user's own: create_model spikifies what ``build`` returns


_REGISTRY: dict[str, _Entry] = {}


def _builder(name: str, recipe: Recipe | None = None, description: str = "") -> Callable:
    """Decorator registering a reference architecture: ``build(width, spike, input_shape, **options)`` returns its
    layers up to an output spiking layer of ``width`` units (create_model adds the decoder)."""

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _add(name, _Entry(build, recipe or Recipe(), description or (build.__doc__ or "").strip()))
        return build

    return decorate


def register_model(
    name: str, factory: Callable[..., nn.Module] | None = None, *, recipe: Recipe | None = None, description: str = ""
) -> Callable:
    """Register a network of your own under ``name``: :func:`create_model`, :class:`~whetstone.RunConfig` and
    ``whetstone train --model NAME`` then build and train it like the reference models (as a decorator, or
    ``register_model(name, factory)``). ``whetstone train --model package.module:factory`` does the same
    without registering, for a factory it can import.

    ``factory(**options)`` returns an ordinary PyTorch network (ReLU and all, its last layer a ``Linear`` to the
    classes); it is also given ``num_classes`` and ``input_shape`` where it takes them, and the run's
    ``--model-option`` values. The network is converted with :func:`~whetstone.spikify` (an N-hot head of
    ``key_width`` units, checked to deploy at ``input_shape``) and trained from sharpness 0; a network already
    spiking (with a :class:`~whetstone.SoftmaxDecode`) is used as it is. ``recipe`` gives its training
    defaults (:class:`Recipe`; default: ``Recipe()``)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"name must be a non-empty string without ':', got {name!r}")

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(build):
            raise ValueError(f"factory must be callable, got {type(build).__name__}")
        _add(name, _Entry(build, recipe or Recipe(), description or (build.__doc__ or "").strip(), converts=True))
        return build

    return decorate(factory) if factory is not None else decorate


def _add(name: str, entry: _Entry) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = entry


#: Networks built by their own module rather than the classifier registry: name -> (Python entry point, what
#: it is, how to run it). `whetstone models` lists them after the registry.
OTHER_NETWORKS: dict[str, tuple[str, str, str]] = {
    "q-network": ("whetstone.models.rl.q_network", ("Deep Q-network: Dense 128 - Dense 128 binary spikes, action values as "
                  "membrane potentials (CartPole-v1, gymnasium)"), "python examples/dqn.py"),
    "segmenter": ("whetstone.models.segmentation.segmentation_network", ("Fully convolutional segmentation of digits on a "
                  "32x64 canvas: binary strided encoder, nearest up-sampling, per-pixel scores (PyTorch only: NIR "
                  "has no up-sampling)"), "python examples/segmentation.py"),
    "random-walk": ("whetstone.models.randomwalk.random_walk_circuit", ("Spiking circuit estimating the 1-D diffusion "
                    "equation's solution from random walks (built, not trained)"), "python examples/random_walk.py"),
}  # fmt: skip


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}, or package.module:factory")
    attribute = name.partition(":")[2]
    factory = imported(name, f"model {name!r}")
    if not callable(factory):
        raise ValueError(
            f"model {name!r}: {attribute!r} is a {type(factory).__name__}, not a function that builds a model"
        )
    return _Entry(factory, Recipe(), (factory.__doc__ or "").strip().split("\n")[0], converts=True)


def models_table() -> str:
    """What ``whetstone models`` prints: each registry model, what it is and its recipe, then the networks
    beyond classifiers with their entry points."""
    lines = []
    for name in list_models():
        r = recipe(name)
        lines.append(f"{name:16s} {model_description(name)}")
        lines.append(f"{'':16s} recipe: {r.dataset}, {r.optimizer} lr {r.lr:g}, batch {r.batch_size}, {r.epochs} epochs, "
                     f"{r.sharpener} sharpener from epoch {r.start_epoch + 1} (--start-epoch {r.start_epoch}), {r.steps} "
                     f"steps/layer per {r.per}")  # fmt: skip
    lines.append("\nbeyond classifiers (Python API; not trained by `whetstone train`):")
    for name, (entry, description, command) in OTHER_NETWORKS.items():
        lines += [f"{name:16s} {description}", f"{'':16s} {entry}; run: {command}"]
    return "\n".join(lines)


def model_description(name: str) -> str:
    """One line on what model ``name`` is."""
    return _entry(name).description


def recipe(name: str) -> Recipe:
    """The default training recipe of model ``name``."""
    return _entry(name).recipe


def create_model(
    name: str,
    num_classes: int = 10,
    activation: str = "brelu",
    key_width: int | None = None,
    key_seed: int = 0,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    **options: Any,
) -> nn.Module:
    """Build model ``name`` (see :func:`list_models`) at sharpness 0: a :class:`SpikingClassifier`, or
    for a reconstruction model (``recipe(name).target == "inputs"``) a :class:`SpikingAutoencoder`
    whose binary code has ``key_width`` units (``num_classes`` is then unused).

    Args:
        num_classes: number of classes decoded from the output code.
        activation: ``"brelu"`` (threshold 0.5) or ``"sigmoid"`` (threshold 0).
        key_width: output units of the N-hot code; default ``10 * num_classes`` (10-hot).
        key_seed: seed of the key's random draw (the key is saved with the weights).
        input_shape: (channels, height, width) of one input image.
        options: model-specific options, e.g. ``batch_norm=True``; and for every model with max pooling
            right after a spiking activation, ``pool_first=True`` to pool before it instead (the same
            network, see :func:`~whetstone.pool_before_spikes`).
    """
    if activation not in _ACTIVATION_MODULES:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATION_MODULES)}, got {activation!r}")
    width = 10 * num_classes if key_width is None else key_width
    key = key_generator(num_classes, width, overlapping=False, seed=key_seed)
    input_shape = sizes(input_shape, "input_shape", "(1, 28, 28)")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape}")
    if math.prod(input_shape) > _MAX_INPUT:  # a crafted or mistyped shape would allocate terabytes of weights
        raise ValueError(
            f"input_shape {input_shape} holds {math.prod(input_shape):,} values per sample; at most {_MAX_INPUT:,}"
        )
    entry = _entry(name)
    if entry.converts:
        return _converted(name, entry.build, activation, num_classes, width, key_seed, input_shape, options)
    pool_first = boolean(options.pop("pool_first", False), "pool_first")
    build = entry.build
    allowed = [p for p in inspect.signature(build).parameters if p not in ("width", "spike", "input_shape")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(unknown)}; its options: {', '.join(allowed) or 'none'} "
            "(and pool_first, if it max-pools spikes)"
        )
    _check_option_types(build, options)
    built = build(width=width, spike=_ACTIVATION_MODULES[activation], input_shape=input_shape, **options)
    if pool_first and not pool_before_spikes(built):
        raise ValueError(
            f"pool_first=True does not apply to model {name!r}: it has no max pooling right after a spiking activation"
        )
    center_on_threshold(built)
    return built if isinstance(built, SpikingAutoencoder) else SpikingClassifier(built, key)


def _converted(name: str, factory: Callable[..., nn.Module], activation: str, num_classes: int, width: int,
               key_seed: int, input_shape: tuple[int, ...], options: dict[str, Any]) -> nn.Module:  # fmt: skip
    """A network of the user's own, built by ``factory`` and spikified (unless it spikes already)."""
    taken = inspect.signature(factory).parameters
    given = {
        key: value for key, value in (("num_classes", num_classes), ("input_shape", tuple(input_shape))) if key in taken
    }
    unknown = sorted(set(options) - set(taken)) if not any(p.kind is p.VAR_KEYWORD for p in taken.values()) else []
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(unknown)}; its options: {', '.join(taken) or 'none'}"
        )
    model = factory(**given, **options)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    if any(isinstance(m, SoftmaxDecode) for m in model.modules()):
        return model
    return spikify(
        model, activation, num_classes=num_classes, key_width=width, key_seed=key_seed, input_shape=input_shape
    )


_OPTION_KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "text"),
}


#: The most values one input sample may hold (3 x 4096 x 4096 fits).
_MAX_INPUT = 2**26


def _check_option_types(build: Callable[..., nn.Module], options: dict[str, Any]) -> None:
    """Each model option has the type its builder declares: ``batch_norm="no"`` would otherwise be truthy."""
    hints = typing.get_type_hints(build)
    for name, value in options.items():
        kinds, what = _OPTION_KINDS.get(hints.get(name), ((object,), ""))
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise ValueError(f"model option {name} must be {what}, got {value!r}")
        if kinds == (int,) and value < 1:  # every integer option is a size: channels, units, a kernel's side
            raise ValueError(f"model option {name} must be a positive integer, got {value!r}")


def center_on_threshold(model: nn.Module) -> None:
    """Start every layer that feeds a spiking activation with its bias (or its batch norm's shift) at
    the activation's threshold.

    A bounded ReLU passes no gradient below 0 or above 1; centring pre-activations on 0.5 starts
    every unit in the middle of its linear region, so far fewer units are dead before sharpening
    begins (on mnist-dense: 0-5 never-firing hidden units instead of 20-70, about +0.3 points binary).
    """
    for parent in model.modules():
        # Max pooling commutes with a monotone activation, so a layer pooled right before one feeds it too.
        children = [child for child in parent.children() if not isinstance(child, nn.MaxPool2d)]
        for before, after in pairwise(children):
            feeds_spike = isinstance(after, SpikingActivation) and isinstance(
                before, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
            )
            if feeds_spike and before.bias is not None:
                nn.init.constant_(before.bias, after.spike_threshold)


def _linear_block(n_in: int, n_out: int, spike: type, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(n_in, n_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(n_out))
    layers.append(spike())
    return layers


def _conv_block(c_in: int, c_out: int, kernel: int, spike: type, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(spike())
    return layers


@_builder(
    "mnist-dense",
    # Adadelta's first steps scale with sqrt(eps): PyTorch's 1e-6 kills most units at lr 4.0 (93% binary),
    # Keras's 1e-7 gives 96.98%, 1e-8 fewer dead units and 97.10% (mean of 5 seeds, docs/results.md).
    Recipe(
        optimizer="adadelta", lr=4.0, optimizer_options={"rho": 0.95, "eps": 1e-8}, epochs=21, start_epoch=5, steps=5
    ),
    "Dense 784-256-64-<width>, the Whetstone paper's software example (10x100 key).",
)
def _mnist_dense(width: int, spike: type, input_shape: tuple[int, int, int], batch_norm: bool = False) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        *_linear_block(math.prod(input_shape), 256, spike, batch_norm),
        *_linear_block(256, 64, spike, batch_norm),
        *_linear_block(64, width, spike, batch_norm),
    )


@_builder(
    "mnist-conv",
    Recipe(optimizer="adam", lr=1e-3, epochs=20, start_epoch=4, steps=3),
    "Conv 32@5x5 - pool - Conv 64@5x5 - pool - Dense 256 - <width>; batch_norm=True adds BN before each spike.",
)
def _mnist_conv(
    width: int, spike: type, input_shape: tuple[int, int, int], batch_norm: bool = False, kernel: int = 5
) -> nn.Module:
    channels, height, width_px = input_shape
    return nn.Sequential(
        *_conv_block(channels, 32, kernel, spike, batch_norm),
        nn.MaxPool2d(2),  # max of binary spikes is their logical OR: still binary
        *_conv_block(32, 64, kernel, spike, batch_norm),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *_linear_block(64 * (height // 4) * (width_px // 4), 256, spike, batch_norm),
        *_linear_block(256, width, spike, batch_norm),
    )


@_builder(
    "mnist-conv-bn",
    # Logit scale 0.1 and lr 3e-3: 98.98% fully binary on MNIST (seed 0) against 97.92% with the raw
    # logits and lr 1e-3 (docs/results.md).
    Recipe(optimizer="adam", lr=3e-3, epochs=20, start_epoch=4, steps=3, logit_scale=0.1),
    "mnist-conv with batch norm before every spiking activation (folded away for deployment).",
)
def _mnist_conv_bn(width: int, spike: type, input_shape: tuple[int, int, int], kernel: int = 5) -> nn.Module:
    return _mnist_conv(width, spike, input_shape, batch_norm=True, kernel=kernel)


@_builder(
    "mnist-conv-small",
    Recipe(optimizer="adam", lr=3e-3, epochs=4, start_epoch=1, steps=469, per="batch", logit_scale=0.1),
    "snnTorch's tutorial CNN: Conv 12@5x5 - pool - Conv 64@5x5 - pool - Dense <width> (no padding), batch "
    "norm before each spike (folded away); sharpened per batch, one epoch per layer. conv1=, conv2= set the "
    "two convolutions' channels.",
)
def _mnist_conv_small(
    width: int,
    spike: type,
    input_shape: tuple[int, int, int],
    batch_norm: bool = True,
    conv1: int = 12,
    conv2: int = 64,
) -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 5), *([nn.BatchNorm2d(c_out)] if batch_norm else []), spike(), nn.MaxPool2d(2)]

    def side(n: int) -> int:  # conv 5 (valid), pool 2, conv 5, pool 2
        return ((n - 4) // 2 - 4) // 2

    channels, height, width_px = input_shape
    flat = conv2 * side(height) * side(width_px)
    return nn.Sequential(
        *block(channels, conv1), *block(conv1, conv2), nn.Flatten(), *_linear_block(flat, width, spike, batch_norm)
    )


class ResidualBlock(nn.Module):
    """``spike(BN(conv(spike(BN(conv(x))))) + x)``: the skip connection adds the block's input spikes
    to the second layer's input current: extra synapses of weight 1 into the same neurons."""

    def __init__(self, channels: int, spike: type) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.spike1 = spike()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.spike2 = spike()

    def forward(self, x: Tensor) -> Tensor:
        return self.spike2(self.bn2(self.conv2(self.spike1(self.bn1(self.conv1(x))))) + x)


@_builder(
    "resnet-small",
    # 99.32% fully binary on MNIST, mean of 3 seeds (99.60% unsharpened), on a GPU: docs/results.md.
    Recipe(
        optimizer="adam",
        lr=3e-3,
        epochs=30,
        start_epoch=6,
        steps=3,
        logit_scale=0.1,
        augment=True,
        lr_schedule="cosine",
    ),
    "Residual CNN: Conv 32 - ResBlock 32 - pool - Conv 64 - ResBlock 64 - pool - Dense 256 - <width>, batch "
    "norm everywhere; skip connections between spiking layers. Any input size divisible by 4.",
)
def _resnet_small(width: int, spike: type, input_shape: tuple[int, int, int]) -> nn.Module:
    channels, height, width_px = input_shape
    return nn.Sequential(
        *_conv_block(channels, 32, 3, spike, batch_norm=True),
        ResidualBlock(32, spike),
        nn.MaxPool2d(2),
        *_conv_block(32, 64, 3, spike, batch_norm=True),
        ResidualBlock(64, spike),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *_linear_block(64 * (height // 4) * (width_px // 4), 256, spike, batch_norm=True),
        *_linear_block(256, width, spike, batch_norm=True),
    )


@_builder(
    "cifar-conv-bn",
    # 79.54% fully binary (85.26% unsharpened) on a GPU; base=128 with 56 epochs (start 8, steps 6): 83.00%.
    Recipe(
        dataset="cifar10",
        optimizer="adam",
        lr=3e-3,
        epochs=40,
        start_epoch=8,
        steps=4,
        logit_scale=0.1,
        augment=True,
        lr_schedule="cosine",
    ),
    "VGG-style CNN for 32x32 colour: 2x Conv 64 - pool - 2x Conv 128 - pool - 2x Conv 256 - pool - Dense 512 - "
    "<width>, 3x3 kernels, batch norm before every spike.",
)
def _cifar_conv_bn(width: int, spike: type, input_shape: tuple[int, int, int], base: int = 64) -> nn.Module:
    channels, height, width_px = input_shape
    layers: list[nn.Module] = []
    c_in = channels
    for c_out in (base, 2 * base, 4 * base):
        layers += [
            *_conv_block(c_in, c_out, 3, spike, batch_norm=True),
            *_conv_block(c_out, c_out, 3, spike, batch_norm=True),
        ]
        layers.append(nn.MaxPool2d(2))
        c_in = c_out
    layers.append(nn.Flatten())
    layers += _linear_block(4 * base * (height // 8) * (width_px // 8), 8 * base, spike, batch_norm=True)
    layers += _linear_block(8 * base, width, spike, batch_norm=True)
    return nn.Sequential(*layers)


@_builder(
    "rnn",
    # Sharpened late, the recurrent layer's rising slope destabilises the trained dynamics (accuracy
    # collapses past sharpness ~0.6): it is made binary in the first batches and learns by surrogate gradients.
    Recipe(
        optimizer="adam",
        lr=1e-3,
        epochs=60,
        start_epoch=1,
        steps=10,
        per="batch",
        logit_scale=0.1,
        lr_schedule="cosine",
        surrogate=0.0,
    ),
    "Recurrent spiking network reading an image row by row (sequential MNIST: 28 steps of 28 pixels): "
    "Dense <hidden> with recurrent synapses delayed one step, then Dense <width> read at the last step.",
)
def _rnn(width: int, spike: type, input_shape: tuple[int, int, int], hidden: int = 128) -> RecurrentSpiking:
    channels, height, width_px = input_shape
    if channels != 1:
        raise ValueError(f"rnn reads one-channel images row by row, got {channels} channels")
    return RecurrentSpiking(height, width_px, hidden, width, spike)


@_builder(
    "conv-autoencoder",
    Recipe(optimizer="adam", lr=3e-3, epochs=12, start_epoch=2, steps=1, target="inputs"),
    "Convolutional autoencoder: Conv 32 s2 - Conv 64 s2 - Dense <width> binary code - Dense - ConvT 32 - "
    "ConvT - sigmoid, batch norm before every spike; trained on reconstruction (mean squared error).",
)
def _conv_autoencoder(width: int, spike: type, input_shape: tuple[int, int, int]) -> SpikingAutoencoder:
    channels, height, width_px = input_shape
    if height % 4 or width_px % 4:
        raise ValueError(f"conv-autoencoder needs height and width divisible by 4, got {input_shape}")
    inner = (64, height // 4, width_px // 4)
    encoder = nn.Sequential(
        nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), spike(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), spike(),
        nn.Flatten(), *_linear_block(math.prod(inner), width, spike, batch_norm=True),
    )  # fmt: skip
    decoder = nn.Sequential(
        *_linear_block(width, math.prod(inner), spike, batch_norm=True), nn.Unflatten(1, inner),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.BatchNorm2d(32), spike(),
        nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1), nn.Sigmoid(),
    )  # fmt: skip
    return SpikingAutoencoder(encoder, decoder)
