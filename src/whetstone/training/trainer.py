"""A small trainer: epochs, a loss object, callbacks, checkpoints, rollback, and the final binary check.

Nothing here is required: the sharpeners work in any loop (see :mod:`whetstone.nn.sharpen`). The trainer is
what the command line uses, written to be read top to bottom. What is minimised is a
:class:`~whetstone.nn.losses.Loss`; what is shown and written besides the checkpoint (progress, epoch lines,
history files, the plot, TensorBoard) are :mod:`~whetstone.training.callbacks`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.losses import Loss, as_loss
from ..nn.quantization_aware import QuantizationAware
from ..nn.sharpen import Sharpener, model_sharpness, spiking_layer_names
from ..utils.checks import boolean, int_at_least, positive_int
from ..utils.files import raise_if_terminated
from . import distributed
from .batchnorm_statistics import reestimate_batchnorm
from .callbacks import Callback, HistoryFiles, HistoryPlot, LogEpochs, ProgressBar, as_callback
from .checkpoint import RunFolder, describe_load_error, save_checkpoint
from .evaluation import binary_report, evaluate, is_fully_binary
from .history import EpochRecord, TrainResult

#: Training arithmetic (``Trainer(precision=...)``): the forward pass under autocast in this type.
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)

__all__ = ["EpochRecord", "TrainResult", "Trainer"]


@contextlib.contextmanager
def _restoring(part: str) -> Iterator[None]:
    """Turn whatever a malformed part of a checkpoint raises into one line naming the part."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"the checkpoint's {part} cannot be restored: {reason[:300]}") from None


#: What to change when training diverges (a non-finite loss, or a collapse that slower sharpening did not cure).
_DIVERGED = (
    ": lower the learning rate (--lr), or the loss's logit scale (Classification(logit_scale=...), --logit-scale: "
    "the decoder's logits differ by up to 4 per output unit of a class), or sharpen more slowly (--steps)"
)


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """``ValueError`` unless each parameter's saved state (Adam's moments, Adadelta's averages) has its shape:
    a damaged checkpoint, or another model's, would otherwise fail at the first step, deep in the optimizer."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != parameter.shape:
                    raise ValueError(
                        f"the checkpoint's optimizer state does not fit the model: its {name!r} is "
                        f"{tuple(value.shape)} for a parameter of {tuple(parameter.shape)} (a damaged checkpoint, "
                        "or another model's)"
                    )


class Trainer:
    """Train a spiking model with a sharpener until it is fully binary.

    Args:
        model: a model with spiking activations (e.g. from :func:`whetstone.create_model` or
            :func:`whetstone.spikify`), or its ``DistributedDataParallel`` wrapper.
        optimizer: any ``torch.optim`` optimizer over ``model``'s parameters.
        sharpener: a :class:`~whetstone.nn.sharpen.Sharpener`; ``None`` trains without sharpening.
        loss: a :class:`~whetstone.nn.losses.Loss` (``Classification()``, the default;
            ``Reconstruction()``; ``Distillation(teacher, ...)``), or any ``fn(logits, labels)``.
        scheduler: an optional learning-rate scheduler over ``optimizer``, stepped after each completed
            epoch, or each batch with ``scheduler_per="batch"`` (and saved in checkpoints).
        scheduler_per: ``"epoch"`` or ``"batch"``: when ``scheduler`` steps.
        quantizer: a :class:`~whetstone.nn.quantization_aware.QuantizationAware`: train for the integer weights
            a chip holds, from its ``start_epoch`` on (on every process).
        callbacks: :class:`~whetstone.training.callbacks.Callback` objects, or functions called with each
            :class:`EpochRecord`.
        out_dir: the run folder: ``checkpoint.pt`` (every epoch, and every ``checkpoint_every``
            batches), ``best.pt`` (the best fully binary epoch), ``history.json``/``.csv`` and
            ``history.png``. ``None`` writes nothing.
        run_info: plain values saved in the checkpoint to rebuild the model (name, options, dataset).
        progress: show progress (a bar on a terminal, periodic lines otherwise). Each epoch's line is
            logged either way (:class:`~whetstone.training.callbacks.LogEpochs`; silence it with
            ``logging.getLogger("whetstone").setLevel(logging.WARNING)``).
        checkpoint_every: also checkpoint every this many batches (a killed run then loses at most
            that many batches).
        max_retries: how many times a diverging epoch (non-finite loss, or training accuracy falling
            more than ``collapse_drop`` below its best while sharpening) is rolled back to its start and
            retried with the sharpening rate halved, before giving up with ``FloatingPointError``.
        collapse_drop: the fall in training accuracy (a fraction) that counts as a collapse.
        precision: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast for the training forward pass.
        channels_last: train on channels-last (NHWC) batches of images, with the model's weights
            converted too (a ``DistributedDataParallel`` model must be converted before it is wrapped);
            1.1-1.2x faster a step on the conv nets on this project's oneDNN CPU (2.2-2.6x with bf16).
        sync_every: read the batches' losses and hits back from the device every this many batches (1: every
            batch). On a GPU a larger window lets the CPU queue steps ahead instead of waiting for each; the
            sharpener, callbacks and the progress bar then see each window's mean loss (its last value until
            the next read-back), and a non-finite loss is caught at the end of its window. Totals, history
            and checkpoints are the same.
        batchnorm_batches: once the sharpener is done, every epoch ends by re-estimating the batch norms' running
            statistics of the binary network over this many training batches, before it is evaluated and saved
            (:func:`~whetstone.training.batchnorm_statistics.reestimate_batchnorm`; the running averages lag a
            network that changed all through the epoch). Training itself is unchanged; 0: never.
        compile: run the training step through ``torch.compile`` (inductor). A soft layer's sharpness is a
            graph input, so sharpening compiles one graph per pattern of binary layers (layers + 1 at most),
            not one per value; the first step of each pays the compilation.

    In a ``torch.distributed`` process group, pass the ``DistributedDataParallel``-wrapped model: each
    batch's loss and accuracy counts are summed over all ranks before the sharpener sees them (so every
    rank sharpens identically, which is checked after each epoch); only rank 0 writes files and runs
    callbacks. A single process takes the same path, with the sum over one rank.

    A run continues from a checkpoint with ``trainer.load_state_dict(load_checkpoint(run_dir))``
    then ``fit`` (what ``whetstone train --resume`` does): model, optimizer, sharpener, RNG state, the
    position in the epoch and the history are restored, so with a deterministic loader such as
    :class:`~whetstone.data.loader.TensorLoader` a resumed run ends bit-identical to an uninterrupted one.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        sharpener: Sharpener | None = None,
        loss: Loss | Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        quantizer: QuantizationAware | None = None,
        callbacks: Sequence[Callback | Callable[[EpochRecord], Any]] = (),
        out_dir: str | os.PathLike | None = None,
        run_info: dict[str, Any] | None = None,
        progress: bool = True,
        checkpoint_every: int | None = None,
        max_retries: int = 3,
        collapse_drop: float = 0.2,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        sync_every: int = 1,
        scheduler_per: str = "epoch",
        batchnorm_batches: int = 100,
    ) -> None:
        if scheduler_per not in ("epoch", "batch"):
            raise ValueError(f"scheduler_per must be 'epoch' or 'batch', got {scheduler_per!r}")
        self.model, self.optimizer, self.sharpener, self.scheduler = model, optimizer, sharpener, scheduler
        self.scheduler_per = scheduler_per
        if quantizer is not None and not isinstance(quantizer, QuantizationAware):
            raise ValueError(f"quantizer must be a whetstone QuantizationAware or None, got {type(quantizer).__name__}")
        self.quantizer = quantizer
        # The model itself, without a DistributedDataParallel wrapper: what is saved, evaluated, sharpened.
        self.module: nn.Module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.is_main = distributed.rank() == 0
        self.loss = as_loss(loss)
        if checkpoint_every is not None and (
            isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1
        ):
            raise ValueError(f"checkpoint_every must be a positive integer or None, got {checkpoint_every!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if not 0.0 < collapse_drop <= 1.0:
            raise ValueError(f"collapse_drop must be in (0, 1], got {collapse_drop!r}")
        self.checkpoint_every, self.max_retries, self.collapse_drop = checkpoint_every, max_retries, collapse_drop
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.channels_last = boolean(channels_last, "channels_last")
        if channels_last and self.module is model:  # a DDP-wrapped model must be converted before wrapping
            self.module.to(memory_format=torch.channels_last)
        self.compile = boolean(compile, "compile")
        self.sync_every = positive_int(sync_every, "sync_every")
        self.batchnorm_batches = int_at_least(batchnorm_batches, "batchnorm_batches")
        self._compiled: tuple[nn.Module, Callable[[Tensor], Tensor]] | None = None  # (model, its compiled form)
        device = next(self.module.parameters(), torch.zeros(0)).device.type
        # fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none.
        self.scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
        self.folder = RunFolder(out_dir) if out_dir is not None else None
        self.run_info = dict(run_info or {})
        self.callbacks: list[Callback] = ([ProgressBar()] if progress else []) + [LogEpochs()]
        if self.folder is not None:
            self.folder.create()
            self.callbacks += [HistoryFiles(self.folder.path), HistoryPlot(self.folder.path)]
        self.callbacks += [as_callback(callback) for callback in callbacks]
        self.history: list[EpochRecord] = []
        self.position = (0, 0)  # (epoch, batch) of the next batch to train
        self.epochs = 0  # the epoch budget of the current fit()
        self.batches_per_epoch: int | None = None
        self.best_score: float | None = None  # of the best fully binary epoch: accuracy, or -loss
        self._totals = [0.0, 0.0, 0.0]  # loss sum, correct, samples of the epoch in progress (all ranks)
        self.rollbacks = 0  # rollbacks of the epoch in progress

    # -- the loop ------------------------------------------------------------------------------
    def fit(
        self,
        train_loader: Iterable[tuple[Tensor, Tensor]],
        epochs: int,
        eval_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    ) -> TrainResult:
        """Train until epoch ``epochs`` (counted from the start of the run, so a resumed run trains only
        what is left), stopping early once the sharpener is done, unless the binary layers learn
        through surrogate gradients (:func:`~whetstone.nn.sharpen.set_model_surrogate`).

        After training, every spiking layer's outputs on ``eval_loader`` (or ``train_loader``) are
        checked to be exactly 0/1; ``TrainResult.fully_binary`` says whether the network is a
        single-time-step spiking network.
        """
        self.epochs = positive_int(epochs, "epochs")
        self.batches_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None
        if self.sharpener is not None:
            self.sharpener.on_train_begin(self.module, batches_per_epoch=self.batches_per_epoch)
        self._call("on_train_begin")
        epoch, start_batch = self.position
        while epoch < epochs and not (self._complete() and self.history):
            started = time.perf_counter()
            snapshot = copy.deepcopy(self.state_dict())
            if self.quantizer is not None:  # every process: the weights each computes with
                self.quantizer.on_epoch_begin(self.module, epoch)
            self._call("on_epoch_begin", epoch, start_batch)
            try:
                train_loss, train_accuracy = self._train_epoch(train_loader, epoch, start_batch)
                problem = self._collapse(train_accuracy)
            except FloatingPointError as error:
                if self.sharpener is None:
                    raise
                problem = str(error)
            if problem is not None:
                self._roll_back(snapshot, problem)
                continue
            self._end_epoch(epoch, train_loss, train_accuracy, train_loader, eval_loader, started)
            epoch, start_batch = self.position
        layers = binary_report(self.module, eval_loader if eval_loader is not None else train_loader)
        result = TrainResult(
            self.history, is_fully_binary(self.module, layers), layers,
            self.folder.checkpoint if self.folder is not None else None,
            self.folder.best if self.folder is not None and self.best_score is not None else None,
        )  # fmt: skip
        self._call("on_train_end", result)
        return result

    def _train_epoch(
        self, loader: Iterable[tuple[Tensor, Tensor]], epoch: int, start_batch: int
    ) -> tuple[float, float | None]:
        self.model.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        if start_batch == 0:
            self._totals = [0.0, 0.0, 0.0]
        if hasattr(loader, "iter_from"):
            batches = loader.iter_from(start_batch)
        else:  # any other deterministic iterable: replay and drop the batches already trained
            batches = itertools.islice(iter(loader), start_batch, None)
        pending: Tensor | None = None  # the summed counts of the batches not read back yet
        window, loss_value = 0, math.nan  # batches in the window; the mean loss of the last one read back
        for batch, (x, y) in enumerate(batches, start=start_batch):
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=_DTYPES[self.precision], enabled=self.precision != "fp32"):
                output = self._train_forward(x)
                loss = self.loss(output, x, y)
            if loss.requires_grad:  # a fully binary network passes no gradient: nothing left to learn
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            if self.scheduler is not None and self.scheduler_per == "batch":
                self.scheduler.step()
            # One bookkeeping path: this batch's loss sum, hits and size, summed on the device over the batches
            # of a window and read back at its end, summed over every rank (one rank outside torch.distributed)
            # in one transfer: a host sync every sync_every batches, not every batch.
            hits = (
                (output.detach().argmax(dim=-1) == y).sum()
                if not self.loss.reconstruct
                else torch.zeros((), device=loss.device)
            )
            size = torch.full((), float(len(y)), dtype=torch.float64, device=loss.device)  # no host-to-device copy
            counts = torch.stack([loss.detach().double() * len(y), hits.double(), size])
            pending = counts if pending is None else pending + counts
            window += 1
            last = self.batches_per_epoch is not None and batch + 1 >= self.batches_per_epoch
            checkpoint = bool(self.checkpoint_every) and (batch + 1) % self.checkpoint_every == 0 and not last
            if window >= self.sync_every or last or checkpoint or batch == start_batch:  # the first: a loss to show
                loss_value = self._read_back(pending, epoch, batch)
                pending, window = None, 0
            if self.sharpener is not None:
                self.sharpener.on_batch_end(batch, loss_value)
            self.position = (epoch, batch + 1)
            raise_if_terminated()  # a SIGTERM whose exception a garbage-collection callback swallowed
            self._call("on_batch_end", batch, loss_value)
            if checkpoint:
                self._save_checkpoint()
            if self._complete():
                break  # sharpened to binary mid-epoch (per-batch schedules): the run is complete
        if pending is not None:  # a loader of unknown length ended inside a window
            self._read_back(pending, epoch, batch)
        loss_sum, correct, count = self._totals
        if count == 0:
            raise ValueError("the training loader yielded no samples")
        return loss_sum / count, None if self.loss.reconstruct else correct / count

    def _read_back(self, pending: Tensor, epoch: int, batch: int) -> float:
        """Add a window's summed (loss, hits, samples), over every rank, to the epoch's totals; its mean loss.
        ``FloatingPointError`` if that is not finite."""
        loss_sum, hit_sum, size = distributed.all_sum(pending).tolist()
        loss_value = loss_sum / size
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at epoch {epoch}, batch {batch}{_DIVERGED}")
        self._totals = [self._totals[0] + loss_sum, self._totals[1] + hit_sum, self._totals[2] + size]
        return loss_value

    def _end_epoch(
        self, epoch: int, train_loss: float, train_accuracy: float | None, train_loader: Any, eval_loader: Any,
        started: float,
    ) -> None:  # fmt: skip
        if self.sharpener is not None:
            self.sharpener.on_epoch_end(epoch, train_loss)
            if self.batchnorm_batches and self.sharpener.done:  # binary: this network's statistics, not a lag
                reestimate_batchnorm(self.module, train_loader, self.batchnorm_batches)
        if self.scheduler is not None and self.scheduler_per == "epoch":
            self.scheduler.step()
        record = EpochRecord(epoch, train_loss, train_accuracy, model_sharpness(self.module), 0.0, rollbacks=self.rollbacks,
                             layers=spiking_layer_names(self.module))  # fmt: skip
        distributed.same_on_all_ranks(record.sharpness, f"per-layer sharpness after epoch {epoch + 1}")
        if eval_loader is not None:
            record.eval_loss, record.eval_accuracy = evaluate(self.module, eval_loader, self.loss)
        record.seconds = time.perf_counter() - started
        self.history.append(record)
        self.position, self.rollbacks = (epoch + 1, 0), 0
        self._save_best(record)
        self._save_checkpoint()
        self._call("on_epoch_end", record)

    def _train_forward(self, x: Tensor) -> Tensor:
        """The training forward pass (and so its backward): the model's, or with ``compile`` its compiled
        form, made for whichever model ``self.model`` holds. Evaluation, the 0/1 check and checkpoints use
        the model itself: the float32 network that is deployed."""
        if not self.compile:
            return self.model(x)
        if self._compiled is None or self._compiled[0] is not self.model:
            self._compiled = (self.model, torch.compile(self.model))
        return self._compiled[1](x)

    def _call(self, hook: str, *args: Any) -> None:
        if self.is_main:
            for callback in self.callbacks:
                getattr(callback, hook)(self, *args)

    # -- sharpening control --------------------------------------------------------------------
    def _complete(self) -> bool:
        """True once the sharpener has made every layer binary and the binary layers cannot learn (no
        surrogate gradients, the paper's method). With surrogates the run uses its whole epoch budget."""
        if self.sharpener is None or not self.sharpener.done:
            return False
        return all(layer.surrogate is None for layer in self.sharpener.layers)  # the layers it sharpened

    def _collapse(self, train_accuracy: float | None) -> str | None:
        """Why the epoch just trained counts as a collapse of sharpening, or None."""
        if (
            self.sharpener is None
            or not self.history
            or train_accuracy is None
            or not any(model_sharpness(self.module))
        ):
            return None
        best = max(record.train_accuracy for record in self.history)
        if train_accuracy < best - self.collapse_drop:
            return f"training accuracy fell to {100 * train_accuracy:.1f}% (best {100 * best:.1f}%) while sharpening"
        return None

    def _roll_back(self, snapshot: dict[str, Any], problem: str) -> None:
        """Return to ``snapshot`` (the start of the failed epoch) and halve the sharpening rate."""
        rollbacks = self.rollbacks + 1
        if rollbacks > self.max_retries:
            raise FloatingPointError(
                f"{problem}; gave up after {self.max_retries} rollbacks with slower sharpening{_DIVERGED}"
            )
        self.load_state_dict(snapshot)
        self.rollbacks = rollbacks
        assert self.sharpener is not None
        self.sharpener.slow_down(2.0)
        log.warning("%s: rolled back to the start of epoch %d, sharpening at half the rate (retry %d of %d)",
                    problem, self.position[0] + 1, rollbacks, self.max_retries)  # fmt: skip

    # -- state ---------------------------------------------------------------------------------
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
            "epoch_totals": list(self._totals),
            "rollbacks": self.rollbacks,
            "best_score": self.best_score,
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (a loaded checkpoint), to continue that run. ``ValueError``
        (one line, naming the part) for a checkpoint whose parts cannot be what this trainer saved: another
        model's weights, no optimizer state, a history or position that is not a run's, a broken RNG state."""
        if not isinstance(state, dict):
            raise ValueError(f"a checkpoint is a dict, got {type(state).__name__}")
        history = state.get("history")
        with _restoring("history"):
            self.history = [EpochRecord(**record) for record in history]  # type: ignore[union-attr]
        position = state.get("position", [len(self.history), 0])
        if (
            not isinstance(position, (list, tuple))
            or len(position) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in position)
            or position[0] != len(self.history)
            or position[1] < 0
        ):
            raise ValueError(
                f"the checkpoint's position {position!r} is not a run's: it must be [epoch, batch] with epoch equal to "
                f"the {len(self.history)} epochs its history records and batch >= 0"
            )
        try:
            self.module.load_state_dict(state["model"])
        except (KeyError, TypeError, RuntimeError, AttributeError) as error:
            reason = describe_load_error(error) if isinstance(error, RuntimeError) else repr(error)
            raise ValueError(f"the checkpoint's model weights cannot be restored: {reason}") from None
        with _restoring("optimizer state"):
            self.optimizer.load_state_dict(state["optimizer"])
        _check_optimizer_state(self.optimizer)
        if (state.get("sharpener") is None) != (self.sharpener is None):
            raise ValueError("the checkpoint's run and this trainer disagree on having a sharpener")
        if self.sharpener is not None:
            with _restoring("sharpener state"):
                self.sharpener.load_state_dict(state["sharpener"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            with _restoring("learning-rate schedule"):
                self.scheduler.load_state_dict(state["scheduler"])
        self.position = (position[0], position[1])
        with _restoring("running totals"):
            self._totals = [float(value) for value in state.get("epoch_totals", (0.0, 0.0, 0.0))]
            self.rollbacks = int(state.get("rollbacks", 0))
            best = state.get("best_score")
            self.best_score = None if best is None else float(best)
        if state.get("scaler"):
            with _restoring("gradient scaler state"):
                self.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng")
        if rng is not None:
            with _restoring("random number generator state"):
                torch.set_rng_state(rng["torch"])
                if rng["cuda"] and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(rng["cuda"])

    def _save_checkpoint(self) -> None:
        if self.folder is not None and self.is_main:
            save_checkpoint(self.folder.checkpoint, **self.state_dict())

    def _save_best(self, record: EpochRecord) -> None:
        """Keep the weights of the best fully binary epoch (every layer at sharpness 1) in ``best.pt``."""
        if not record.sharpness or any(value != 1.0 for value in record.sharpness):
            return
        if self.loss.reconstruct:
            loss = record.eval_loss if record.eval_loss is not None else record.train_loss
            score = -loss
        else:
            score = record.eval_accuracy if record.eval_accuracy is not None else record.train_accuracy
        if self.best_score is not None and not score > self.best_score:
            return
        self.best_score = score
        if self.folder is not None and self.is_main:
            save_checkpoint(self.folder.best, model=self.module.state_dict(), run=self.run_info, record=asdict(record))
