"""Spiking activations: a pure functional core and thin ``nn.Module`` wrappers.

Each activation has a *sharpness* ``s`` in [0, 1]. At ``s = 0`` it is an ordinary differentiable
activation; as ``s`` grows its transition narrows around the spike threshold, and at ``s = 1`` it is
exactly the Heaviside step ``1[x >= threshold]`` (values 0.0 or 1.0 only), i.e. an integrate-and-fire
neuron evaluated in a single time step. Formulas: ``../shared/DESIGN.md`` section 1.

A binary activation passes no gradient (the paper's method: a sharpened layer, and every layer below
it, stops learning). Optionally it can backpropagate a *surrogate* instead: the slope of the same
activation at a softer sharpness, while its forward pass stays the exact step (a straight-through
estimator). See :meth:`SpikingActivation.set_surrogate`.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.checks import positive_number

__all__ = [
    "SHARPNESS_EPSILON",
    "SpikingActivation",
    "SpikingBReLU",
    "SpikingSigmoid",
    "check_sharpness",
    "check_surrogate",
    "spiking_brelu",
    "spiking_sigmoid",
]

#: Keeps the slope finite just below sharpness 1 (``lam`` in DESIGN.md).
SHARPNESS_EPSILON = 1e-3
# 4 ln(2 + sqrt 3): the sigmoid's 5%-95% transition is 1 unit wide at sharpness 0.
_SIGMOID_BASE_GAIN = 4.0 * math.log(2.0 + math.sqrt(3.0))


def check_sharpness(value: float, name: str = "sharpness") -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless it is a real number in [0, 1]."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number in [0, 1], got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_surrogate(value: float | None) -> float | None:
    """Return ``value`` as a float (or None), or raise ``ValueError`` unless it is None or in [0, 1)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"surrogate must be None or a sharpness in [0, 1) (a step's own slope is zero), got {value!r}")
    return float(value)


def _heaviside(x: Tensor, threshold: float) -> Tensor:
    return (x >= threshold).to(x.dtype)


class _StepWithBReLUSlope(torch.autograd.Function):
    """Forward: ``1[x >= 0.5]``. Backward: the slope of the bounded ReLU of the given gain."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gain: float) -> Tensor:
        # The slope itself, ``gain`` where the soft activation is linear and 0 elsewhere, built in place:
        # backward is then one multiplication (about 1.5x faster than saving a mask or ``x``).
        ctx.save_for_backward((x - 0.5).abs_().lt_(0.5 / gain).mul_(gain))
        return _heaviside(x, 0.5)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (slope,) = ctx.saved_tensors
        return grad * slope, None


class _StepWithSigmoidSlope(torch.autograd.Function):
    """Forward: ``1[x >= 0]``. Backward: the slope of the sigmoid of the given gain."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gain: float) -> Tensor:
        ctx.gain = gain
        ctx.save_for_backward(x)
        return _heaviside(x, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        y = torch.sigmoid(x * ctx.gain)
        return grad * ctx.gain * y * (1 - y), None


def _brelu_gain(sharpness: float | Tensor) -> float | Tensor:
    return 1.0 / (1.0 - sharpness + SHARPNESS_EPSILON)


def _sigmoid_gain(sharpness: float | Tensor) -> float | Tensor:
    return _SIGMOID_BASE_GAIN / (1.0 - sharpness + SHARPNESS_EPSILON)


def _brelu_step(x: Tensor, surrogate: float | None) -> Tensor:
    if surrogate is None or not (x.requires_grad and torch.is_grad_enabled()):
        return _heaviside(x, 0.5)
    return _StepWithBReLUSlope.apply(x, _brelu_gain(surrogate))


def _brelu_soft(x: Tensor, sharpness: float | Tensor) -> Tensor:
    gain = _brelu_gain(sharpness)
    # Same function as the formula, in two elementwise passes forward and two backward (hardtanh's
    # backward is one fused kernel): within a few percent of a ReLU's cost (benchmarks/speed.py).
    return F.hardtanh(x.mul(gain).add_(0.5 - 0.5 * gain), 0.0, 1.0)


def _sigmoid_step(x: Tensor, surrogate: float | None) -> Tensor:
    if surrogate is None or not (x.requires_grad and torch.is_grad_enabled()):
        return _heaviside(x, 0.0)
    return _StepWithSigmoidSlope.apply(x, _sigmoid_gain(surrogate))


def _sigmoid_soft(x: Tensor, sharpness: float | Tensor) -> Tensor:
    # PyTorch's sigmoid is stable for any input, so the original's overflow guard (clamping k x to
    # [-40, 40]) is not needed: the values differ only below 1e-17 and the gradients below 1e-16.
    return torch.sigmoid(x.mul(_sigmoid_gain(sharpness)))


def spiking_brelu(x: Tensor, sharpness: float, surrogate: float | None = None) -> Tensor:
    """Spiking bounded ReLU, threshold 0.5.

    ``s < 1``: ``clamp((x - 0.5) / (1 - s + lam) + 0.5, 0, 1)``; ``s == 1``: ``1[x >= 0.5]``, whose
    gradient is zero, or with ``surrogate`` set the slope of this function at sharpness ``surrogate``.
    """
    return _brelu_step(x, surrogate) if sharpness >= 1.0 else _brelu_soft(x, sharpness)


def spiking_sigmoid(x: Tensor, sharpness: float, surrogate: float | None = None) -> Tensor:
    """Spiking sigmoid, threshold 0.

    ``s < 1``: ``1 / (1 + exp(clamp(-k x, -40, 40)))`` with ``k = 4 ln(2 + sqrt 3) / (1 - s + lam)``;
    ``s == 1``: ``1[x >= 0]``, whose gradient is zero, or with ``surrogate`` set the slope of this
    function at sharpness ``surrogate``.
    """
    return _sigmoid_step(x, surrogate) if sharpness >= 1.0 else _sigmoid_soft(x, sharpness)


class SpikingActivation(nn.Module):
    """Base class of the sharpenable activations.

    The sharpness lives in a 0-dim float buffer named ``sharpness`` so that ``state_dict`` carries it.
    Change it with :meth:`set_sharpness` (which validates); a Python copy is kept so ``forward`` can
    branch on it without reading the buffer (a device sync on GPU) at every call. Under ``torch.compile``
    the forward pass branches on whether the layer is binary alone and reads a soft layer's sharpness from
    the buffer: a Python float would be compiled in as a constant, one graph per value.

    ``surrogate`` (default None) is a training setting, not part of the model's state: see
    :meth:`set_surrogate`.

    ``scale`` (a 0-dim buffer, default 1) is the activation's range, set by :func:`~whetstone.calibrate` for a
    trained ReLU network: the layer computes ``c * f(x / c)``, so at sharpness 0 it is a ReLU clipped at ``scale``
    instead of at 1. ``level`` (a 0-dim buffer, default ``scale``) is what a spike weighs once the layer is
    binary; in between, ``c`` moves linearly from ``scale`` at sharpness 0 to ``level`` at 1
    (:attr:`scale_value`). Once binary the layer emits 0 or ``level``: a neuron that fires on
    ``x >= level * spike_threshold`` whose spikes reach the next synapses with weight ``level`` (exported so).
    """

    #: Pre-activation value at and above which the binary neuron fires (at scale 1).
    spike_threshold: float = 0.0

    def __init__(self, sharpness: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        value = check_sharpness(sharpness)
        self.register_buffer("sharpness", torch.tensor(value, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(1.0, dtype=torch.float32))
        self.register_buffer("level", torch.tensor(1.0, dtype=torch.float32))
        self._sharpness, self._binary = value, value >= 1.0
        self._range = self._level = 1.0
        self.surrogate: float | None = None
        self.register_load_state_dict_post_hook(_refresh_sharpness_after_load)
        self.set_scale(scale)

    def set_scale(self, value: float, level: float | None = None) -> None:
        """Set the activation's range and the weight of its spikes once binary (``level``, default ``value``;
        see the class docs); ``ValueError`` unless each is a positive finite number."""
        value = _positive_float(value, "scale")
        level = value if level is None else _positive_float(level, "level")
        self.scale.fill_(value)
        self.level.fill_(level)
        # The float32 values the buffers hold, read without them (a model on the meta device has no values).
        self._range, self._level = float(np.float32(value)), float(np.float32(level))

    @property
    def scale_value(self) -> float:
        """The scale in effect at the current sharpness as a Python float (no device sync): the range at
        sharpness 0, the level once binary, the line between them in between."""
        if self._level == self._range:  # (exactly: the sum below may round)
            return self._range
        return self._range * (1.0 - self._sharpness) + self._level * self._sharpness  # exact at 0 and at 1

    @property
    def level_value(self) -> float:
        """The weight of a spike once the layer is binary, as a Python float."""
        return self._level

    @property
    def membrane_threshold(self) -> float:
        """The pre-activation value at and above which the binary neuron fires: :attr:`scale_value` times
        ``spike_threshold`` (once binary: ``level * spike_threshold``)."""
        return self.scale_value * self.spike_threshold

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        state_dict.setdefault(prefix + "scale", torch.tensor(1.0))  # saved before layers had a scale: 1
        state_dict.setdefault(prefix + "level", state_dict[prefix + "scale"].clone())  # or a level: the scale
        super()._load_from_state_dict(state_dict, prefix, *args)

    def set_sharpness(self, value: float) -> None:
        """Set the sharpness; ``ValueError`` unless ``value`` is in [0, 1]."""
        value = check_sharpness(value)
        self.sharpness.fill_(value)
        self._sharpness, self._binary = value, value >= 1.0

    def set_surrogate(self, value: float | None) -> None:
        """Let the layer learn once binary: at sharpness 1 its forward pass stays the exact step, but
        backward uses the slope of the activation at sharpness ``value`` (in [0, 1); 0 is the widest,
        the plain bounded ReLU's slope on [0, 1]). ``None`` (the default, the paper's method) passes no
        gradient through a binary layer. Layers below 1 are unaffected."""
        self.surrogate = check_surrogate(value)

    def get_sharpness(self) -> float:
        """The current sharpness as a Python float."""
        return self._sharpness

    @property
    def is_binary(self) -> bool:
        """True when the activation is exactly the Heaviside step (sharpness 1)."""
        return self._binary

    def _soft_sharpness(self) -> float | Tensor:
        """The sharpness a soft forward pass uses: the Python copy, or the buffer under ``torch.compile``."""
        return self.sharpness if torch.compiler.is_compiling() else self._sharpness

    def extra_repr(self) -> str:
        surrogate = "" if self.surrogate is None else f", surrogate={self.surrogate:.4g}"
        scale = "" if self._range == 1.0 else f", scale={self._range:.4g}"
        scale += "" if self._level == self._range else f", level={self._level:.4g}"
        return f"sharpness={self._sharpness:.4g}{scale}{surrogate}"

    def forward(self, x: Tensor) -> Tensor:
        scale: float | Tensor = self.scale_value
        if self._level != self._range and torch.compiler.is_compiling():  # moves with the sharpness: a buffer
            scale = self.scale * (1.0 - self.sharpness) + self.level * self.sharpness
        elif scale == 1.0:
            return self._activate(x)
        return self._activate(x / scale) * scale

    def _activate(self, x: Tensor) -> Tensor:
        raise NotImplementedError


def _refresh_sharpness_after_load(module: nn.Module, incompatible_keys: object) -> None:
    value = float(module.sharpness)
    module._sharpness = check_sharpness(value, name=f"loaded sharpness of {type(module).__name__}")
    module._binary = value >= 1.0
    for name in ("scale", "level"):
        value = float(getattr(module, name))
        if not 0.0 < value < math.inf:
            raise ValueError(f"loaded {name} of {type(module).__name__} must be a positive finite number, got {value}")
    module._range, module._level = float(module.scale), float(module.level)


def _positive_float(value: object, name: str) -> float:
    """``value`` (a number, a numpy scalar or a one-element tensor) as a float, or ``ValueError`` naming ``name``
    unless it is positive and finite."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, Real) and not isinstance(value, bool):  # numpy scalars too
        value = float(value)
    return positive_number(value, name)


class SpikingBReLU(SpikingActivation):
    """Bounded ReLU that sharpens into a spiking neuron firing on ``x >= 0.5``.

    Example::

        >>> act = SpikingBReLU(sharpness=1.0)
        >>> act(torch.tensor([0.2, 0.5, 0.9]))
        tensor([0., 1., 1.])
    """

    spike_threshold = 0.5

    def _activate(self, x: Tensor) -> Tensor:
        return _brelu_step(x, self.surrogate) if self._binary else _brelu_soft(x, self._soft_sharpness())


class SpikingSigmoid(SpikingActivation):
    """Sigmoid that sharpens into a spiking neuron firing on ``x >= 0``."""

    spike_threshold = 0.0

    def _activate(self, x: Tensor) -> Tensor:
        return _sigmoid_step(x, self.surrogate) if self._binary else _sigmoid_soft(x, self._soft_sharpness())
