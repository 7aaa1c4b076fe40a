"""Sharpening: mapping a model sharpness to per-layer values, and the sharpener callbacks.

Spiking layers are ordered from input to output (the order the forward pass calls them, see
:func:`spiking_layers`). A sharpener is a small callback with three hooks::

    sharpener.on_train_begin(model)
    for epoch in range(epochs):
        for batch, (x, y) in enumerate(loader):
            ...  # forward, loss, backward, step
            sharpener.on_batch_end(batch, loss.item())
        sharpener.on_epoch_end(epoch, epoch_mean_loss)
        if sharpener.done:
            break

It works in a plain PyTorch loop, in :class:`whetstone.Trainer`, or in any framework that can call
those hooks. Its progress is saved with ``state_dict()`` (the layers' sharpness itself is in the model's
``state_dict`` as well).
"""

from __future__ import annotations

import itertools
import logging
import math
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ..utils.checks import int_at_least, non_negative_number, positive_number
from .activations import SpikingActivation, check_sharpness, check_surrogate
from .tracing import trace

__all__ = [
    "AdaptiveSharpener",
    "ScheduledSharpener",
    "Sharpener",
    "SimpleSharpener",
    "model_sharpness",
    "ramp_schedule",
    "set_model_sharpness",
    "set_model_surrogate",
    "sharpness_map",
    "spiking_layers",
]

log = logging.getLogger(__name__)
_SNAP = 1e-9  # tolerance that turns 0.9999999999 (float drift of step / total * n) into a whole layer


# Execution order per model, with the registered spiking modules it was computed for (re-traced on change).
_ORDER: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], list[SpikingActivation]]] = (
    weakref.WeakKeyDictionary()
)


def spiking_layers(model: nn.Module) -> list[SpikingActivation]:
    """The model's spiking activations in the order the forward pass calls them, input to output.

    The order comes from tracing the model once (torch.fx; cached until its spiking modules change), so
    bottom-up sharpening follows the data whatever order the modules were registered in. A model that
    cannot be traced falls back to registration order. A module called at several places counts once,
    at its first call (:func:`~whetstone.spikify` gives each call site its own module).
    """
    registered = [m for m in model.modules() if isinstance(m, SpikingActivation)]
    signature = tuple(map(id, registered))
    cached = _ORDER.get(model)
    if cached is not None and cached[0] == signature:
        return list(cached[1])
    order = _execution_order(model, registered)
    _ORDER[model] = (signature, order)
    return list(order)


def spiking_layer_names(model: nn.Module) -> list[str]:
    """The module paths of :func:`spiking_layers`, in the same order (``features.2``)."""
    paths = {id(module): path for path, module in model.named_modules()}
    return [paths[id(layer)] for layer in spiking_layers(model)]


def _execution_order(model: nn.Module, registered: list[SpikingActivation]) -> list[SpikingActivation]:
    if len(registered) < 2:
        return registered
    try:
        graph = trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable forward (Python control flow, DDP, ...): registration order
        return registered
    modules = dict(model.named_modules())
    called = [modules[node.target] for node in graph.nodes if node.op == "call_module" and node.target in modules]
    order = list(dict.fromkeys(m for m in called if isinstance(m, SpikingActivation)))
    return order + [m for m in registered if m not in order]  # modules the forward pass never calls, last


def model_sharpness(model: nn.Module) -> list[float]:
    """Current sharpness of each spiking layer, input to output."""
    return [layer.get_sharpness() for layer in spiking_layers(model)]


def sharpness_map(value: float, num_layers: int, bottom_up: bool = True) -> list[float]:
    """Per-layer sharpness for a model sharpness ``value`` in [0, 1].

    Bottom-up: with ``n`` layers the first ``floor(value * n)`` layers are at 1, the next at the
    fractional part, the rest at 0 (``value = 1`` gives all ones exactly). Uniform: all at ``value``.
    """
    value = check_sharpness(value, name="model sharpness")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"num_layers must be a non-negative integer, got {num_layers!r}")
    if not bottom_up:
        return [value] * num_layers
    scaled = value * num_layers
    whole = math.floor(scaled + _SNAP)
    fraction = scaled - whole
    if fraction < _SNAP:
        fraction = 0.0
    values = []
    for index in range(num_layers):
        if index < whole:
            values.append(1.0)
        elif index == whole:
            values.append(fraction)
        else:
            values.append(0.0)
    return values


def set_model_sharpness(model: nn.Module, value: float, bottom_up: bool = True) -> list[float]:
    """Set every spiking layer of ``model`` from the model sharpness ``value``; return the values."""
    layers = spiking_layers(model)
    values = sharpness_map(value, len(layers), bottom_up)
    for layer, layer_value in zip(layers, values):
        layer.set_sharpness(layer_value)
    return values


def set_model_surrogate(model: nn.Module, value: float | None) -> None:
    """Set the surrogate of every spiking layer of ``model``
    (:meth:`~whetstone.nn.activations.SpikingActivation.set_surrogate`): with a value in [0, 1), binary
    layers keep learning through the slope of their activation at that sharpness; None stops them."""
    check_surrogate(value)
    for layer in spiking_layers(model):
        layer.set_surrogate(value)


def ramp_schedule(
    num_layers: int, start_epoch: float, stop_epoch: float, ramp: float = 1.0
) -> list[tuple[float, float]]:
    """Bottom-up windows for :class:`ScheduledSharpener`: ``num_layers`` consecutive windows that fill
    ``start_epoch .. stop_epoch``, layer ``i`` taking ``1 + (ramp - 1) * i / (num_layers - 1)`` shares.

    ``ramp=1`` gives every layer the same time (what :class:`SimpleSharpener` does per batch); ``ramp=4``
    gives the top layer four times the bottom one's, so the layers that turn binary last, above the most
    binary layers, have longer to adapt. On a converted CIFAR-10 ResNet-20 (19 hidden spiking layers over 9
    epochs) ``ramp=4`` ended 0.7-1.3 points above the even schedule (docs/results.md, issue 34).
    """
    num_layers = int_at_least(num_layers, "num_layers", minimum=1)
    start, stop = non_negative_number(start_epoch, "start_epoch"), non_negative_number(stop_epoch, "stop_epoch")
    if stop <= start:
        raise ValueError(
            f"stop_epoch must be > start_epoch, got start_epoch={start_epoch!r}, stop_epoch={stop_epoch!r}"
        )
    ramp = positive_number(ramp, "ramp")
    shares = [1 + (ramp - 1) * i / max(1, num_layers - 1) for i in range(num_layers)]
    unit = (stop - start) / sum(shares)
    edges = [start + unit * total for total in itertools.accumulate(shares, initial=0.0)]
    edges[-1] = stop  # exactly, whatever the rounding of the sum
    return list(itertools.pairwise(edges))


class Sharpener:
    """Base class: attaches to a model, counts epochs and batches, saves and restores its state.

    Subclasses implement the schedule in :meth:`on_batch_end` / :meth:`on_epoch_end` (calling
    ``super()`` first). ``batches_per_epoch`` is taken from :meth:`on_train_begin` when given there,
    and otherwise learned from the number of ``on_batch_end`` calls of the first epoch.
    """

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.layers: list[SpikingActivation] = []
        self.epoch = 0  # index of the epoch in progress (= number of epochs ended)
        self.batch_in_epoch = 0  # batches ended in the epoch in progress
        self.batches_per_epoch: int | None = None
        self._pending_sharpness: list[float] | None = None  # loaded before a model was attached

    # -- hooks ---------------------------------------------------------------------------------
    def on_train_begin(self, model: nn.Module, batches_per_epoch: int | None = None) -> None:
        """Attach to ``model``. ``batches_per_epoch`` (optional) enables per-batch steps in epoch 0."""
        layers = spiking_layers(model)
        if not layers:
            raise ValueError(
                "the model has no spiking layers to sharpen; convert it first with whetstone.spikify(model)"
            )
        if batches_per_epoch is not None:
            self.batches_per_epoch = int_at_least(batches_per_epoch, "batches_per_epoch", minimum=1)
        self.model, self.layers = model, layers
        self._check_layers()
        if self._pending_sharpness is not None:
            self._restore_layers(self._pending_sharpness)

    def on_batch_end(self, batch: int, loss: float) -> None:
        """Call after each optimizer step with the batch index (from 0) and the batch's mean loss."""
        self._require_attached()
        self.batch_in_epoch += 1

    def on_epoch_end(self, epoch: int, loss: float) -> None:
        """Call after each epoch with its index (from 0) and its mean training loss."""
        self._require_attached()
        if self.batches_per_epoch is None and self.batch_in_epoch > 0:
            self.batches_per_epoch = self.batch_in_epoch
        self.epoch = epoch + 1
        self.batch_in_epoch = 0

    def slow_down(self, factor: float = 2.0) -> None:
        """Sharpen ``factor`` times more slowly from here on, keeping the current sharpness (used to
        retry after a divergence)."""
        raise NotImplementedError(f"{type(self).__name__} cannot change its rate")

    # -- state ---------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True once every spiking layer is at sharpness exactly 1.0."""
        return bool(self.layers) and all(layer.is_binary for layer in self.layers)

    def state_dict(self) -> dict[str, Any]:
        """Progress of the schedule as plain Python values (JSON-serialisable)."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "batches_per_epoch": self.batches_per_epoch,
            "layer_sharpness": [layer.get_sharpness() for layer in self.layers] or None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress saved by :meth:`state_dict` (before or after :meth:`on_train_begin`)."""
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.batches_per_epoch = state["batches_per_epoch"]
        sharpness = state.get("layer_sharpness")
        if sharpness is not None and self.layers:
            self._restore_layers(sharpness)
        else:
            self._pending_sharpness = sharpness

    # -- helpers -------------------------------------------------------------------------------
    def _check_layers(self) -> None:
        """Subclasses validate their configuration against ``self.layers`` here."""

    def _restore_layers(self, sharpness: Sequence[float]) -> None:
        if len(sharpness) != len(self.layers):
            raise ValueError(
                f"sharpener state holds {len(sharpness)} layer values but the model has "
                f"{len(self.layers)} spiking layers"
            )
        for layer, value in zip(self.layers, sharpness):
            layer.set_sharpness(value)
        self._pending_sharpness = None

    def _require_attached(self) -> None:
        if self.model is None:
            raise RuntimeError(f"call {type(self).__name__}.on_train_begin(model) before training")


class SimpleSharpener(Sharpener):
    """Sharpen by a fixed step per epoch (or batch) from ``start_epoch`` until fully binary.

    Every epoch end (``per="epoch"``) or batch end (``per="batch"``) from ``start_epoch`` on adds
    ``1 / total_steps`` to the model sharpness, with ``total_steps = steps * n_layers`` bottom-up or
    ``steps`` uniform; after the last step every layer is exactly 1.

    Args:
        start_epoch: first epoch (from 0) whose end (or batches) sharpens.
        steps: steps per layer (bottom-up) or in total (uniform).
        per: ``"epoch"`` or ``"batch"``.
        bottom_up: sharpen layer by layer from the input (True) or all layers together (False).
    """

    def __init__(self, start_epoch: int, steps: int = 4, per: str = "epoch", bottom_up: bool = True) -> None:
        super().__init__()
        self.start_epoch = int_at_least(start_epoch, "start_epoch")
        self.steps = int_at_least(steps, "steps", minimum=1)
        if per not in ("epoch", "batch"):
            raise ValueError(f"per must be 'epoch' or 'batch', got {per!r}")
        self.per = per
        self.bottom_up = bool(bottom_up)
        self.step = 0

    @property
    def total_steps(self) -> int:
        return self.steps * (len(self.layers) if self.bottom_up else 1)

    def _advance(self) -> None:
        if self.epoch >= self.start_epoch and self.step < self.total_steps:
            self.step += 1
            value = 1.0 if self.step == self.total_steps else self.step / self.total_steps
            set_model_sharpness(self.model, value, self.bottom_up)

    def on_batch_end(self, batch: int, loss: float) -> None:
        super().on_batch_end(batch, loss)
        if self.per == "batch":
            self._advance()

    def on_epoch_end(self, epoch: int, loss: float) -> None:
        self.epoch = epoch  # the step belongs to the epoch that just ended
        if self.per == "epoch":
            self._require_attached()
            self._advance()
        super().on_epoch_end(epoch, loss)

    def slow_down(self, factor: float = 2.0) -> None:
        """Multiply ``steps`` (and the step count so far) by ``round(factor)``: same sharpness now,
        smaller steps from here on."""
        multiple = max(2, round(positive_number(factor, "factor")))
        self.steps *= multiple
        self.step *= multiple

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "step": self.step, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.step = int(state["step"])
        self.steps = int(state.get("steps", self.steps))


class ScheduledSharpener(Sharpener):
    """Sharpen each layer linearly, batch by batch, over an explicit window of epochs.

    ``schedule[i] = (start_epoch, stop_epoch)`` for spiking layer ``i``: the layer is at 0 before
    ``start_epoch``, rises linearly until ``stop_epoch`` and is exactly 1 from there on. Windows may
    start and stop within an epoch (``(0, 1.5)``: one and a half epochs); :func:`ramp_schedule` makes
    consecutive windows that give the upper layers more time. Without a known ``batches_per_epoch``
    (see :meth:`Sharpener.on_train_begin`) the first epoch moves only at its end.
    """

    def __init__(self, schedule: Iterable[tuple[float, float]]) -> None:
        super().__init__()
        windows = []
        for index, window in enumerate(schedule):
            try:
                start, stop = window
            except (TypeError, ValueError):
                raise ValueError(
                    f"schedule[{index}] must be a (start_epoch, stop_epoch) pair, got {window!r}"
                ) from None
            non_negative_number(start, f"schedule[{index}] start_epoch")
            non_negative_number(stop, f"schedule[{index}] stop_epoch")
            if stop <= start:
                raise ValueError(f"schedule[{index}] must have stop_epoch > start_epoch, got ({start}, {stop})")
            windows.append((start, stop))
        if not windows:
            raise ValueError("schedule must have one (start_epoch, stop_epoch) pair per spiking layer, got none")
        self.schedule = windows

    def _check_layers(self) -> None:
        if len(self.schedule) != len(self.layers):
            raise ValueError(
                f"schedule has {len(self.schedule)} windows but the model has {len(self.layers)} spiking layers"
            )

    def _apply(self, progress_epochs: float) -> None:
        for layer, (start, stop) in zip(self.layers, self.schedule):
            fraction = (progress_epochs - start) / (stop - start)
            layer.set_sharpness(min(1.0, max(0.0, fraction)))

    def on_batch_end(self, batch: int, loss: float) -> None:
        super().on_batch_end(batch, loss)
        if self.batches_per_epoch is not None:
            within = min(self.batch_in_epoch, self.batches_per_epoch) / self.batches_per_epoch
            self._apply(self.epoch + within)

    def on_epoch_end(self, epoch: int, loss: float) -> None:
        super().on_epoch_end(epoch, loss)
        self._apply(float(self.epoch))

    def slow_down(self, factor: float = 2.0) -> None:
        """Stretch every unfinished window ``factor`` times from the current position, keeping each
        layer's sharpness where it is."""
        factor = positive_number(factor, "factor")
        now = float(self.epoch)
        windows = []
        for layer, (start, stop) in zip(self.layers, self.schedule):
            if now < stop:
                length = (stop - start) * factor
                start = now - layer.get_sharpness() * length if now > start else now + (start - now) * factor
                stop = start + length
            windows.append((start, stop))
        self.schedule = windows

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "schedule": [list(window) for window in self.schedule]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "schedule" in state:
            self.schedule = [tuple(window) for window in state["schedule"]]


class AdaptiveSharpener(Sharpener):
    """Loss-driven sharpening (the paper's default).

    Trains at least ``min_init_epochs`` epochs, then watches each epoch's training loss against a
    reference loss. Once it has not improved significantly (relative decrease < ``sig_decrease``) for
    more than ``patience`` epochs, sharpening starts: each batch adds ``rate / batches_per_epoch`` to
    the lowest unfinished layer (``cz_rate`` once that layer is past ``critical``; the first layer's rate
    scaled by ``first_layer_relative_rate``), and after finishing a layer it waits for the next epoch.
    A significant degradation while sharpening (relative increase >= ``sig_increase``) pauses it and
    resets the reference; the plateau rule then restarts it. With ``bottom_up=False`` all layers move
    together. Training is done when every layer is at 1.
    """

    def __init__(
        self,
        min_init_epochs: int = 10,
        rate: float = 0.25,
        cz_rate: float = 0.126,
        critical: float = 0.75,
        first_layer_relative_rate: float = 1.0,
        patience: int = 1,
        sig_increase: float = 0.15,
        sig_decrease: float = 0.15,
        bottom_up: bool = True,
    ) -> None:
        super().__init__()
        self.min_init_epochs = int_at_least(min_init_epochs, "min_init_epochs")
        self.rate = positive_number(rate, "rate")
        self.cz_rate = positive_number(cz_rate, "cz_rate")
        self.critical = check_sharpness(critical, name="critical")
        self.first_layer_relative_rate = positive_number(first_layer_relative_rate, "first_layer_relative_rate")
        self.patience = int_at_least(patience, "patience")
        self.sig_increase = positive_number(sig_increase, "sig_increase")
        self.sig_decrease = positive_number(sig_decrease, "sig_decrease")
        self.bottom_up = bool(bottom_up)
        self.reference_loss: float | None = None
        self.epochs_without_improvement = 0
        self.sharpening = False
        self.waiting = False  # a layer finished this epoch: resume at the next one

    def on_batch_end(self, batch: int, loss: float) -> None:
        super().on_batch_end(batch, loss)
        if not self.sharpening or self.waiting or self.done:
            return
        if self.bottom_up:
            index = next(i for i, layer in enumerate(self.layers) if not layer.is_binary)
            targets = [self.layers[index]]
        else:
            index, targets = 0, self.layers
        current = targets[0].get_sharpness()
        rate = self.cz_rate if current >= self.critical else self.rate
        if index == 0:
            rate *= self.first_layer_relative_rate
        value = current + rate / self.batches_per_epoch
        if value >= 1.0 - _SNAP:
            value = 1.0
            self.waiting = True
        for layer in targets:
            layer.set_sharpness(value)

    def on_epoch_end(self, epoch: int, loss: float) -> None:
        super().on_epoch_end(epoch, loss)
        self.waiting = False
        if self.done:
            self.sharpening = False
            return
        loss = float(loss)
        reference = self.reference_loss
        if reference is None or not math.isfinite(reference):
            self.reference_loss = loss
            return
        scale = max(abs(reference), 1e-12)
        if self.sharpening:
            if (loss - reference) / scale >= self.sig_increase:
                log.info("epoch %d: loss rose %.4g -> %.4g, pausing sharpening", epoch, reference, loss)
                self.sharpening = False
                self.reference_loss = loss
                self.epochs_without_improvement = 0
            else:
                self.reference_loss = min(reference, loss)
            return
        if (reference - loss) / scale >= self.sig_decrease:
            self.reference_loss = loss
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        if self.epoch >= self.min_init_epochs and self.epochs_without_improvement > self.patience:
            log.info("epoch %d: loss plateaued at %.4g, sharpening", epoch, loss)
            self.sharpening = True
            self.reference_loss = loss
            self.epochs_without_improvement = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "reference_loss": self.reference_loss,
            "epochs_without_improvement": self.epochs_without_improvement,
            "sharpening": self.sharpening,
            "waiting": self.waiting,
            "rate": self.rate,
            "cz_rate": self.cz_rate,
        }

    def slow_down(self, factor: float = 2.0) -> None:
        """Divide ``rate`` and ``cz_rate`` by ``factor``."""
        factor = positive_number(factor, "factor")
        self.rate /= factor
        self.cz_rate /= factor

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reference_loss = state["reference_loss"]
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
        self.sharpening = bool(state["sharpening"])
        self.waiting = bool(state["waiting"])
        self.rate = float(state.get("rate", self.rate))
        self.cz_rate = float(state.get("cz_rate", self.cz_rate))
