"""A small trainer: epochs, callbacks, history, progress bar, checkpoints, and the final binary check.

Nothing here is required: the sharpeners work in any loop (see :mod:`whetstone.sharpen`). The trainer
is what the CLI uses, written to be read top to bottom.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from .activations import SpikingActivation
from .sharpen import Sharpener, model_sharpness, spiking_layers

log = logging.getLogger(__name__)

__all__ = [
    "EpochRecord",
    "LayerReport",
    "TrainResult",
    "Trainer",
    "binary_report",
    "distillation_loss",
    "evaluate",
    "full_float32",
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
    train_accuracy: float | None  # None when training on a reconstruction target
    sharpness: list[float]
    seconds: float
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    rollbacks: int = 0  # times this epoch was rolled back and retried with slower sharpening


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


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Run float32 convolutions and matrix products in full float32 inside the block.

    On recent NVIDIA GPUs PyTorch lets cuDNN compute float32 convolutions in TF32 (10-bit mantissa) by
    default. Training does not mind, but a binary unit whose input lands within that rounding of its
    threshold can flip: evaluation uses full float32, the precision the network is deployed in. (No
    effect on the CPU.)"""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Knowledge distillation (Hinton, Vinyals, Dean 2015): the KL divergence from the teacher's class
    probabilities to the student's, both softmaxes of logits divided by ``temperature``, times
    ``temperature**2`` (so its gradients keep their scale as the temperature changes); mean over the batch."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"the teacher's logits have shape {tuple(teacher_logits.shape)}, the student's "
                         f"{tuple(student_logits.shape)}: both must score the same classes")  # fmt: skip
    student = torch.log_softmax(student_logits / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


@torch.no_grad()
@full_float32()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], loss_fn: Callable | None = None, target: str = "labels"
) -> tuple[float, float | None]:
    """Mean loss and accuracy (fraction) of ``model`` over ``loader``, in eval mode. With
    ``target="inputs"`` (an autoencoder) the loss compares the output with the input (default: mean
    squared error) and the accuracy is None."""
    reconstruct = _check_target(target)
    loss_fn = loss_fn or (nn.MSELoss() if reconstruct else nn.CrossEntropyLoss())
    was_training = model.training
    model.eval()
    total_loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    count = 0
    for x, y in loader:
        output = model(x)
        total_loss += loss_fn(output, x if reconstruct else y).detach().cpu() * len(y)
        if not reconstruct:
            correct += (output.argmax(dim=-1) == y).sum().cpu()
        count += len(y)
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return float(total_loss) / count, None if reconstruct else float(correct) / count


def _check_target(target: str) -> bool:
    """True for ``"inputs"`` (reconstruction), False for ``"labels"``; ValueError otherwise."""
    if target not in ("labels", "inputs"):
        raise ValueError(f"target must be 'labels' (classification) or 'inputs' (reconstruction), got {target!r}")
    return target == "inputs"


@torch.no_grad()
@full_float32()
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
        loss_fn: defaults to ``nn.CrossEntropyLoss()`` (on the decoder's logits), or ``nn.MSELoss()``
            when ``target="inputs"``.
        target: ``"labels"`` (classification) or ``"inputs"``: the loss compares the model's output with
            its input (an autoencoder); accuracies are then None.
        out_dir: where ``checkpoint.pt``, ``history.json`` and ``history.png`` are written each epoch;
            ``None`` writes nothing.
        run_info: plain values saved in the checkpoint to rebuild the model (name, options, dataset).
        callbacks: functions called with each :class:`EpochRecord`.
        progress: show a progress bar per epoch.
        checkpoint_every: also checkpoint every this many batches (a killed run then loses at most
            that many batches); the end of every epoch is always checkpointed.
        max_retries: how many times a diverging epoch (non-finite loss, or training accuracy falling
            more than ``collapse_drop`` below its best while sharpening) is rolled back to its start and
            retried with the sharpening rate halved, before giving up with ``FloatingPointError``.
        collapse_drop: the fall in training accuracy (a fraction) that counts as a collapse.
        scheduler: an optional ``torch.optim.lr_scheduler`` over ``optimizer``, stepped once after each
            completed epoch (and saved in checkpoints).
        teacher: a trained classifier of the same classes (e.g. the same network trained without
            sharpening, or the ReLU model a spiking one was converted from). It scores every training
            batch, frozen and in eval mode, and the loss becomes ``(1 - distill_weight) * loss_fn +
            distill_weight *`` :func:`distillation_loss` at ``distill_temperature``. It is not saved in
            checkpoints: pass it again to resume.

    In a ``torch.distributed`` process group, pass the ``DistributedDataParallel``-wrapped model: batch
    losses and accuracy are summed over all ranks before the sharpener sees them (so every rank sharpens
    identically, which is checked after each epoch) and only rank 0 writes files.

    A run continues from a checkpoint with ``trainer.load_state_dict(load_checkpoint(run_dir))``
    then ``fit`` (what ``whetstone train --resume`` does): model, optimizer, sharpener, RNG state, the
    position in the epoch and the history are restored, so with a deterministic loader such as
    :class:`~whetstone.data.TensorLoader` a resumed run ends bit-identical to an uninterrupted one.
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
        checkpoint_every: int | None = None,
        max_retries: int = 3,
        collapse_drop: float = 0.2,
        target: str = "labels",
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        teacher: nn.Module | None = None,
        distill_weight: float = 1.0,
        distill_temperature: float = 1.0,
    ) -> None:
        self.model, self.optimizer, self.sharpener, self.scheduler = model, optimizer, sharpener, scheduler
        # The model itself, without a DistributedDataParallel wrapper: what is saved, evaluated, sharpened.
        self.module: nn.Module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.is_main = distributed.rank() == 0
        _check_target(target)
        self.target = target
        self.loss_fn = loss_fn or (nn.MSELoss() if self.reconstruct else nn.CrossEntropyLoss())
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_info = dict(run_info or {})
        self.callbacks = list(callbacks)
        self.progress = progress
        if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive integer or None, got {checkpoint_every!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if not 0.0 < collapse_drop <= 1.0:
            raise ValueError(f"collapse_drop must be in (0, 1], got {collapse_drop!r}")
        self.checkpoint_every, self.max_retries, self.collapse_drop = checkpoint_every, max_retries, collapse_drop
        if teacher is not None and self.reconstruct:
            raise ValueError("a teacher distils class scores: it needs target='labels', not 'inputs'")
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight!r}")
        if not distill_temperature > 0:
            raise ValueError(f"distill_temperature must be positive, got {distill_temperature!r}")
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature
        self.history: list[EpochRecord] = []
        self.position = (0, 0)  # (epoch, batch) of the next batch to train
        self._loss_sum, self._correct, self._count = 0.0, 0, 0  # running totals of the epoch in progress
        self.rollbacks = 0  # rollbacks of the epoch in progress
        if self.out_dir is not None:
            _check_writable(self.out_dir)

    @property
    def reconstruct(self) -> bool:
        """True when the loss compares the output with the input (``target="inputs"``)."""
        return self.target == "inputs"

    def _train_epoch(self, loader: Iterable[tuple[Tensor, Tensor]], epoch: int, epochs: int, start_batch: int) -> tuple[float, float]:
        self.model.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        if start_batch == 0:
            self._loss_sum, self._correct, self._count = 0.0, 0, 0
        if hasattr(loader, "iter_from"):
            batches = loader.iter_from(start_batch)
        else:  # any other deterministic iterable: replay and drop the batches already trained
            batches = itertools.islice(iter(loader), start_batch, None)
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = _progress_bar(batches, f"epoch {epoch + 1}/{epochs}", self.progress and self.is_main, total=total, initial=start_batch)
        correct = torch.zeros((), dtype=torch.long)
        in_group = distributed.is_distributed()
        for batch, (x, y) in enumerate(bar, start=start_batch):
            logits = self.model(x)
            loss = self.loss_fn(logits, x if self.reconstruct else y)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                soft = distillation_loss(logits, teacher_logits, self.distill_temperature)
                loss = (1 - self.distill_weight) * loss + self.distill_weight * soft
            if loss.requires_grad:  # a fully binary network passes no gradient: nothing left to learn
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            hits = torch.zeros((), dtype=torch.long) if self.reconstruct else (logits.detach().argmax(dim=-1) == y).sum()
            if in_group:  # one small all-reduce: the same loss and counts on every rank
                loss_total, hit_total, size = distributed.all_sum([loss.item() * len(y), hits.item(), len(y)])
                loss_value = loss_total / size
                self._correct += int(hit_total)
            else:
                loss_value, size = loss.item(), len(y)
                correct += hits.cpu()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} at epoch {epoch}, batch {batch}")
            if self.sharpener is not None:
                self.sharpener.on_batch_end(batch, loss_value)
            self._loss_sum += loss_value * size
            self._count += int(size)
            self.position = (epoch, batch + 1)
            if hasattr(bar, "set_postfix") and batch % 20 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if self.checkpoint_every and (batch + 1) % self.checkpoint_every == 0 and (total is None or batch + 1 < total):
                self._correct += int(correct)
                correct.zero_()
                self._save_checkpoint()
            if self._complete():
                break  # sharpened to binary mid-epoch (per-batch schedules): the run is complete
        self._correct += int(correct)
        if self._count == 0:
            raise ValueError("the training loader yielded no samples")
        return self._loss_sum / self._count, None if self.reconstruct else self._correct / self._count

    def fit(
        self,
        train_loader: Iterable[tuple[Tensor, Tensor]],
        epochs: int,
        eval_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    ) -> TrainResult:
        """Train until epoch ``epochs`` (counted from the start of the run, so a resumed run trains only
        what is left), stopping early once the sharpener is done, unless the binary layers learn
        through surrogate gradients (:func:`~whetstone.sharpen.set_model_surrogate`).

        After training, every spiking layer's outputs on ``eval_loader`` (or ``train_loader``) are
        checked to be exactly 0/1; ``TrainResult.fully_binary`` says whether the network is a
        single-time-step spiking network.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if self.sharpener is not None:
            batches = len(train_loader) if hasattr(train_loader, "__len__") else None
            self.sharpener.on_train_begin(self.module, batches_per_epoch=batches)
        epoch, start_batch = self.position
        while epoch < epochs and not (self._complete() and self.history):
            started = time.perf_counter()
            snapshot = copy.deepcopy(self.state_dict())
            try:
                train_loss, train_accuracy = self._train_epoch(train_loader, epoch, epochs, start_batch)
                problem = self._collapse(train_accuracy)
            except FloatingPointError as error:
                if self.sharpener is None:
                    raise
                problem = str(error)
            if problem is not None:
                self._roll_back(snapshot, problem)
                continue
            if self.sharpener is not None:
                self.sharpener.on_epoch_end(epoch, train_loss)
            if self.scheduler is not None:
                self.scheduler.step()
            record = EpochRecord(epoch, train_loss, train_accuracy, model_sharpness(self.module), 0.0, rollbacks=self.rollbacks)
            distributed.same_on_all_ranks(record.sharpness, f"per-layer sharpness after epoch {epoch + 1}")
            if eval_loader is not None:
                record.eval_loss, record.eval_accuracy = evaluate(self.module, eval_loader, self.loss_fn, self.target)
            record.seconds = time.perf_counter() - started
            self.history.append(record)
            self.position, self.rollbacks = (epoch + 1, 0), 0
            self._save_checkpoint()
            self._save_history()
            if self.is_main:
                for callback in self.callbacks:
                    callback(record)
            epoch, start_batch = self.position
        layers = binary_report(self.module, eval_loader if eval_loader is not None else train_loader)
        sharp = all(value == 1.0 for value in model_sharpness(self.module))
        fully_binary = bool(layers) and sharp and all(layer.binary for layer in layers)
        checkpoint = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        return TrainResult(self.history, fully_binary, layers, checkpoint)

    def _complete(self) -> bool:
        """True once the sharpener has made every layer binary and the binary layers cannot learn (no
        surrogate gradients, the paper's method). With surrogates the run uses its whole epoch budget."""
        if self.sharpener is None or not self.sharpener.done:
            return False
        return all(layer.surrogate is None for layer in self.sharpener.layers)  # the layers it sharpened

    def _collapse(self, train_accuracy: float | None) -> str | None:
        """Why the epoch just trained counts as a collapse of sharpening, or None."""
        if self.sharpener is None or not self.history or train_accuracy is None or not any(model_sharpness(self.module)):
            return None
        best = max(record.train_accuracy for record in self.history)
        if train_accuracy < best - self.collapse_drop:
            return f"training accuracy fell to {100 * train_accuracy:.1f}% (best {100 * best:.1f}%) while sharpening"
        return None

    def _roll_back(self, snapshot: dict[str, Any], problem: str) -> None:
        """Return to ``snapshot`` (the start of the failed epoch) and halve the sharpening rate."""
        rollbacks = self.rollbacks + 1
        if rollbacks > self.max_retries:
            raise FloatingPointError(f"{problem}; gave up after {self.max_retries} rollbacks with slower sharpening")
        self.load_state_dict(snapshot)
        self.rollbacks = rollbacks
        assert self.sharpener is not None
        self.sharpener.slow_down(2.0)
        log.warning("%s: rolled back to the start of epoch %d, sharpening at half the rate (retry %d of %d)",
                    problem, self.position[0] + 1, rollbacks, self.max_retries)  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, sharpener, history, run info, the
        position in the run, the running totals of a part-trained epoch and the RNG states."""
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sharpener": self.sharpener.state_dict() if self.sharpener is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "history": [asdict(record) for record in self.history],
            "run": self.run_info,
            "position": list(self.position),
            "epoch_totals": [self._loss_sum, self._correct, self._count],
            "rollbacks": self.rollbacks,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (a loaded checkpoint), to continue that run."""
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (state.get("sharpener") is None) != (self.sharpener is None):
            raise ValueError("the checkpoint's run and this trainer disagree on having a sharpener")
        if self.sharpener is not None:
            self.sharpener.load_state_dict(state["sharpener"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = [EpochRecord(**record) for record in state["history"]]
        self.position = tuple(state.get("position", (len(self.history), 0)))  # type: ignore[assignment]
        self._loss_sum, self._correct, self._count = state.get("epoch_totals", (0.0, 0, 0))
        self.rollbacks = state.get("rollbacks", 0)
        rng = state.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def _save_checkpoint(self) -> None:
        if self.out_dir is not None and self.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT_NAME, **self.state_dict())

    def _save_history(self) -> None:
        if self.out_dir is None or not self.is_main:
            return
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


def _progress_bar(iterable: Iterable, description: str, enabled: bool, total: int | None = None, initial: int = 0) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, leave=False, unit="batch", dynamic_ncols=True, total=total, initial=initial)
