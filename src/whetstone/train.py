"""A small trainer: epochs, callbacks, history, progress bar, checkpoints, and the final binary check.

Nothing here is required: the sharpeners work in any loop (see :mod:`whetstone.sharpen`). The trainer
is what the CLI uses, written to be read top to bottom.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .activations import SpikingActivation
from .sharpen import Sharpener, model_sharpness, spiking_layers

__all__ = [
    "EpochRecord",
    "LayerReport",
    "TrainResult",
    "Trainer",
    "binary_report",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"
PLOT_NAME = "history.png"


@dataclass
class EpochRecord:
    """What one epoch did. ``sharpness`` is per spiking layer, after the epoch's sharpening."""

    epoch: int
    train_loss: float
    train_accuracy: float
    sharpness: list[float]
    seconds: float
    eval_loss: float | None = None
    eval_accuracy: float | None = None


@dataclass
class LayerReport:
    """Activity of one spiking layer over a dataset."""

    name: str
    units: int
    binary: bool  # every output was exactly 0.0 or 1.0
    firing_rate: float  # mean output (the fraction of units firing, once binary)
    never_fired: int  # units whose output was 0 for every sample


@dataclass
class TrainResult:
    history: list[EpochRecord]
    fully_binary: bool  # every layer at sharpness 1 and every output 0/1 on the evaluation set
    layers: list[LayerReport] = field(default_factory=list)
    checkpoint: Path | None = None


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        try:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


def save_checkpoint(path: str | os.PathLike, **content: Any) -> Path:
    """Atomically save tensors and plain Python values (no arbitrary objects) with ``torch.save``."""
    path = Path(path)
    _atomic_write(path, lambda handle: torch.save(content, handle))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain values only, never code.

    ``path`` may be the checkpoint file or the run directory holding ``checkpoint.pt``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated zip, tampered pickle, ...: one clear message
        raise ValueError(f"cannot load checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]) from None


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], loss_fn: Callable | None = None) -> tuple[float, float]:
    """Mean loss and accuracy (fraction) of ``model`` over ``loader``, in eval mode."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    total_loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    count = 0
    for x, y in loader:
        logits = model(x)
        total_loss += loss_fn(logits, y).detach().cpu() * len(y)
        correct += (logits.argmax(dim=-1) == y).sum().cpu()
        count += len(y)
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return float(total_loss) / count, float(correct) / count


@torch.no_grad()
def binary_report(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> list[LayerReport]:
    """Run ``model`` over ``loader`` and report, per spiking layer, whether every output was 0/1, its
    firing rate and how many units never fired."""
    names = {module: name for name, module in model.named_modules()}
    layers = spiking_layers(model)
    stats: dict[SpikingActivation, dict[str, Any]] = {
        layer: {"binary": True, "sum": 0.0, "count": 0, "fired": None} for layer in layers
    }

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        entry = stats[module]
        flat = output.detach().flatten(1)
        entry["binary"] &= bool(((flat == 0) | (flat == 1)).all())
        entry["sum"] += float(flat.sum())
        entry["count"] += flat.numel()
        fired = (flat > 0).any(dim=0)
        entry["fired"] = fired if entry["fired"] is None else entry["fired"] | fired

    handles = [layer.register_forward_hook(hook) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        for x, _ in loader:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    reports = []
    for layer in layers:
        entry = stats[layer]
        fired = entry["fired"]
        units = 0 if fired is None else fired.numel()
        reports.append(
            LayerReport(
                name=names[layer],
                units=units,
                binary=entry["binary"],
                firing_rate=entry["sum"] / max(entry["count"], 1),
                never_fired=0 if fired is None else int((~fired).sum()),
            )
        )
    return reports


class Trainer:
    """Train a spiking model with a sharpener until it is fully binary.

    Args:
        model: a model with spiking activations (e.g. from :func:`whetstone.create_model` or
            :func:`whetstone.spikify`).
        optimizer: any ``torch.optim`` optimizer over ``model``'s parameters.
        sharpener: a :class:`~whetstone.sharpen.Sharpener`; ``None`` trains without sharpening.
        loss_fn: defaults to ``nn.CrossEntropyLoss()`` (on the decoder's logits).
        out_dir: where ``checkpoint.pt``, ``history.json`` and ``history.png`` are written each epoch;
            ``None`` writes nothing.
        run_info: plain values saved in the checkpoint to rebuild the model (name, options, dataset).
        callbacks: functions called with each :class:`EpochRecord`.
        progress: show a progress bar per epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        sharpener: Sharpener | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        out_dir: str | os.PathLike | None = None,
        run_info: dict[str, Any] | None = None,
        callbacks: Sequence[Callable[[EpochRecord], None]] = (),
        progress: bool = True,
    ) -> None:
        self.model, self.optimizer, self.sharpener = model, optimizer, sharpener
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_info = dict(run_info or {})
        self.callbacks = list(callbacks)
        self.progress = progress
        self.history: list[EpochRecord] = []
        if self.out_dir is not None:
            _check_writable(self.out_dir)

    def _train_epoch(self, loader: Iterable[tuple[Tensor, Tensor]], epoch: int, epochs: int) -> tuple[float, float]:
        self.model.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        total_loss, correct, count = 0.0, torch.zeros((), dtype=torch.long), 0
        bar = _progress_bar(loader, f"epoch {epoch + 1}/{epochs}", self.progress)
        for batch, (x, y) in enumerate(bar):
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} at epoch {epoch}, batch {batch}")
            if self.sharpener is not None:
                self.sharpener.on_batch_end(batch, loss_value)
            total_loss += loss_value * len(y)
            correct += (logits.detach().argmax(dim=-1) == y).sum().cpu()
            count += len(y)
            if hasattr(bar, "set_postfix") and batch % 20 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        if count == 0:
            raise ValueError("the training loader yielded no samples")
        return total_loss / count, float(correct) / count

    def fit(
        self,
        train_loader: Iterable[tuple[Tensor, Tensor]],
        epochs: int,
        eval_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    ) -> TrainResult:
        """Train for at most ``epochs`` epochs, stopping early once the sharpener is done.

        After training, every spiking layer's outputs on ``eval_loader`` (or ``train_loader``) are
        checked to be exactly 0/1; ``TrainResult.fully_binary`` says whether the network is a
        single-time-step spiking network.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if self.sharpener is not None:
            batches = len(train_loader) if hasattr(train_loader, "__len__") else None
            self.sharpener.on_train_begin(self.model, batches_per_epoch=batches)
        first_epoch = len(self.history)
        for epoch in range(first_epoch, epochs):
            started = time.perf_counter()
            train_loss, train_accuracy = self._train_epoch(train_loader, epoch, epochs)
            if self.sharpener is not None:
                self.sharpener.on_epoch_end(epoch, train_loss)
            record = EpochRecord(epoch, train_loss, train_accuracy, model_sharpness(self.model), 0.0)
            if eval_loader is not None:
                record.eval_loss, record.eval_accuracy = evaluate(self.model, eval_loader, self.loss_fn)
            record.seconds = time.perf_counter() - started
            self.history.append(record)
            self._save(epoch)
            for callback in self.callbacks:
                callback(record)
            if self.sharpener is not None and self.sharpener.done:
                break
        layers = binary_report(self.model, eval_loader if eval_loader is not None else train_loader)
        sharp = all(value == 1.0 for value in model_sharpness(self.model))
        fully_binary = bool(layers) and sharp and all(layer.binary for layer in layers)
        checkpoint = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        return TrainResult(self.history, fully_binary, layers, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: model, optimizer, sharpener, history, run info."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sharpener": self.sharpener.state_dict() if self.sharpener is not None else None,
            "history": [asdict(record) for record in self.history],
            "run": self.run_info,
        }

    def _save(self, epoch: int) -> None:
        if self.out_dir is None:
            return
        save_checkpoint(self.out_dir / CHECKPOINT_NAME, epoch=epoch, **self.state_dict())
        history = [asdict(record) for record in self.history]
        _atomic_write(self.out_dir / HISTORY_NAME, lambda h: json.dump(history, h, indent=1), mode="w")
        from .plot import plot_history

        plot_history(self.history, self.out_dir / PLOT_NAME)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"output directory {folder} is not writable: {error.strerror or error}") from None


def _progress_bar(iterable: Iterable, description: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, leave=False, unit="batch", dynamic_ncols=True)
