"""Trainer callbacks: progress, per-epoch lines (through logging), the run's history files and plot, TensorBoard.

A callback overrides any of the hooks below; the :class:`~whetstone.training.trainer.Trainer` calls them on the
main process only (rank 0 under ``torch.distributed``). A plain function ``fn(record)`` passed as a
callback is called at the end of every epoch with its :class:`~whetstone.training.history.EpochRecord`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, TextIO

from ..utils.checks import install_hint
from ..utils.files import atomic_write
from .checkpoint import HISTORY_CSV_NAME, HISTORY_NAME, PLOT_NAME, RunFolder
from .history import EpochRecord, TrainResult
from .plot import plot_history

_log = logging.getLogger("whetstone.training")

__all__ = [
    "Callback",
    "HistoryFiles",
    "HistoryPlot",
    "LogEpochs",
    "PrintSummary",
    "ProgressBar",
    "TensorBoard",
    "as_callback",
    "format_seconds",
]


class Trainer(Protocol):
    """What a callback may read of the :class:`~whetstone.training.trainer.Trainer` that calls it (the trainer itself
    is passed; this names the part the callbacks here rely on, so that this module needs nothing above it)."""

    epochs: int  # the epoch budget of the current fit
    batches_per_epoch: int | None
    history: list[EpochRecord]
    folder: RunFolder | None  # the run folder, None when nothing is written

    position: tuple[int, int]  # (epoch, batch) of the next batch to train


class Callback:
    """Base class: every hook does nothing."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch that :meth:`Trainer.fit` trains (also when resuming)."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int, start_batch: int) -> None:
        """Before each epoch (``start_batch > 0`` when a resumed run continues mid-epoch)."""

    def on_batch_end(self, trainer: Trainer, batch: int, loss: float) -> None:
        """After each optimizer step, with the batch's mean loss (averaged over all processes)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """After each completed epoch (after evaluation and the checkpoint)."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """After training and the final binary check."""


class _EpochFunction(Callback):
    def __init__(self, function: Callable[[EpochRecord], Any]) -> None:
        self.function = function

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.function(record)


def as_callback(callback: Callback | Callable[[EpochRecord], Any]) -> Callback:
    """A :class:`Callback` as is; a plain function ``fn(record)`` as an end-of-epoch callback."""
    if isinstance(callback, Callback):
        return callback
    if callable(callback):
        return _EpochFunction(callback)
    raise ValueError(
        f"a callback must be a whetstone Callback or a function of an EpochRecord, got {type(callback).__name__}"
    )


def format_seconds(seconds: float) -> str:
    """``75.3`` -> ``'1m15s'``; ``4000`` -> ``'1h06m'``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressBar(Callback):
    """Progress of the epoch and an estimate of the time left in the whole run.

    On a terminal: a progress bar per epoch. Otherwise (a log file, a pipe): one plain line every
    ``interval`` seconds, so logs hold no carriage-return frames. The run's time left is an upper bound:
    a run ends early once its network is fully binary (without surrogate gradients)."""

    def __init__(self, interval: float = 30.0, stream: TextIO | None = None, terminal: bool | None = None) -> None:
        self.interval = interval
        self.stream = stream
        self.terminal = terminal
        self._bar: Any = None

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def on_train_begin(self, trainer: Trainer) -> None:
        self._started = time.perf_counter()
        self._trained_batches = 0  # batches trained by this process since it started (resumed runs too)
        self._last_line = self._started

    def on_epoch_begin(self, trainer: Trainer, epoch: int, start_batch: int) -> None:
        self._epoch = epoch
        terminal = self.terminal if self.terminal is not None else self._out().isatty()
        if terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=f"epoch {epoch + 1}/{trainer.epochs}", total=trainer.batches_per_epoch, initial=start_batch,
                             unit="batch", leave=False, dynamic_ncols=True, file=self._out())  # fmt: skip

    def time_left(self, trainer: Trainer) -> float | None:
        """Seconds left in the run at the current pace (None before the first batch)."""
        if not self._trained_batches or not trainer.batches_per_epoch:
            return None
        per_batch = (time.perf_counter() - self._started) / self._trained_batches
        epoch, batch = trainer.position
        remaining = (trainer.epochs - epoch) * trainer.batches_per_epoch - batch
        return per_batch * max(remaining, 0)

    def on_batch_end(self, trainer: Trainer, batch: int, loss: float) -> None:
        self._trained_batches += 1
        left = self.time_left(trainer)
        eta = f"<= {format_seconds(left)}" if left is not None else "?"
        if self._bar is not None:
            self._bar.update(1)
            if batch % 20 == 0:
                self._bar.set_postfix_str(f"loss {loss:.4f}, run left {eta}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval:
            self._last_line = now
            total = trainer.batches_per_epoch or "?"
            print(f"  epoch {self._epoch + 1}/{trainer.epochs}  batch {batch + 1}/{total}  loss {loss:.4f}  "
                  f"elapsed {format_seconds(now - self._started)}  run left {eta}", file=self._out(), flush=True)  # fmt: skip

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        if self._bar is not None:  # a run that ended mid-epoch
            self._bar.close()
            self._bar = None


class LogEpochs(Callback):
    """One line per epoch through :mod:`logging` (the logger ``whetstone.training``, at INFO): loss,
    accuracies (or the test loss of an autoencoder), per-layer sharpness, seconds and the run's time left.
    Every :class:`~whetstone.training.trainer.Trainer` has one; see :mod:`whetstone.utils.logs` for where the
    lines go and how to silence them."""

    def on_train_begin(self, trainer: Trainer) -> None:
        self._started = time.perf_counter()
        self._first_epoch = trainer.position[0]

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        sharpness = " ".join(f"{value:.2f}" for value in record.sharpness)
        if record.train_accuracy is None:  # reconstruction: losses only
            scores = f"test loss {record.eval_loss if record.eval_loss is not None else float('nan'):.5f}"
        else:
            test = f"{100 * record.eval_accuracy:6.2f}%" if record.eval_accuracy is not None else "   n/a"
            scores = f"train {100 * record.train_accuracy:6.2f}%  test {test}"
        done = record.epoch + 1 - self._first_epoch
        left = (time.perf_counter() - self._started) / done * (trainer.epochs - record.epoch - 1)
        _log.info(f"epoch {record.epoch + 1:3d}  loss {record.train_loss:.4f}  {scores}  sharpness [{sharpness}]  "
                  f"{record.seconds:.1f}s  (run left <= {format_seconds(left)})")  # fmt: skip


class PrintSummary(Callback):
    """At the end: the final accuracy (or test loss), each spiking layer's activity, whether the network is
    fully binary, the total time and where the checkpoint, the best binary weights and the plot are."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def on_train_begin(self, trainer: Trainer) -> None:
        self._started = time.perf_counter()

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        def say(text: str) -> None:
            print(text, file=self.stream or sys.stdout, flush=True)

        final = result.history[-1] if result.history else None
        if final is not None and final.eval_accuracy is None and final.eval_loss is not None:
            say(f"final test loss: {final.eval_loss:.5f} after {len(result.history)} epochs")
        elif final is not None and final.eval_accuracy is not None:
            say(f"final test accuracy: {100 * final.eval_accuracy:.2f}% after {len(result.history)} epochs")
        for layer in result.layers:
            say(f"  {layer.name:>14}: {layer.units:6d} units  binary={'yes' if layer.binary else 'NO'}  "
                f"firing rate {layer.firing_rate:.3f}  never fired {layer.never_fired}")  # fmt: skip
        if result.fully_binary:
            say("fully binary: every spiking unit emitted only 0 or 1 on the test set (one time step)")
        else:
            say("NOT fully binary: some layers are below sharpness 1; train longer or sharpen sooner")
        where = [f"checkpoint {result.checkpoint}"] if result.checkpoint else []
        where += [f"best fully binary {result.best}"] if result.best else []
        where += [f"plot {trainer.folder.plot}"] if trainer.folder is not None else []
        say(
            f"done in {format_seconds(time.perf_counter() - self._started)}"
            + (": " + ", ".join(where) if where else "")
        )


class HistoryFiles(Callback):
    """``history.json`` (one record per epoch, as the trainer keeps it) and ``history.csv`` (the same as a
    table, epochs counted from 1 as the console and the plot count them, one column of sharpness per layer
    named by its module path) in ``folder``, rewritten atomically after every epoch."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.json_path = Path(folder) / HISTORY_NAME
        self.csv_path = Path(folder) / HISTORY_CSV_NAME

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        rows = [asdict(r) for r in trainer.history]
        atomic_write(self.json_path, json.dumps(rows, indent=1))
        text = io.StringIO()
        layers = max((len(r["sharpness"]) for r in rows), default=0)
        names = rows[-1]["layers"] if len(rows[-1]["layers"]) == layers else [str(i + 1) for i in range(layers)]
        plain = [name for name in rows[0] if name not in ("sharpness", "layers")]
        writer = csv.writer(text)
        writer.writerow(plain + [f"sharpness {name}" for name in names])
        for row in rows:
            writer.writerow(
                [row[name] + 1 if name == "epoch" else row[name] for name in plain] + list(row["sharpness"])
            )
        atomic_write(self.csv_path, text.getvalue())


class HistoryPlot(Callback):
    """``history.png`` in ``folder``: loss, accuracy and per-layer sharpness against epoch, redrawn after
    every epoch."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / PLOT_NAME

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        plot_history(trainer.history, self.path)


class TensorBoard(Callback):
    """Scalars for TensorBoard in ``log_dir``: losses, accuracies, per-layer sharpness (per epoch) and the
    batch loss (per batch). Needs the ``tensorboard`` package (``pip install tensorboard``)."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                f"the TensorBoard logger needs tensorboard: {install_hint('tensorboard', 'tensorboard')}"
            ) from error
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_batch_end(self, trainer: Trainer, batch: int, loss: float) -> None:
        epoch, _ = trainer.position
        step = epoch * (trainer.batches_per_epoch or 0) + batch
        self.writer.add_scalar("batch/loss", loss, step)

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        step = record.epoch + 1
        self.writer.add_scalar("train/loss", record.train_loss, step)
        for name, value in (("train/accuracy", record.train_accuracy), ("eval/loss", record.eval_loss),
                            ("eval/accuracy", record.eval_accuracy)):  # fmt: skip
            if value is not None:
                self.writer.add_scalar(name, value, step)
        for layer, value in enumerate(record.sharpness):
            self.writer.add_scalar(f"sharpness/layer_{layer + 1}", value, step)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        self.writer.close()
