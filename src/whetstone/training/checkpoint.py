"""Checkpoints and run folders: atomic save, validated load, and a folder layout that no command ever
writes over. What a checkpoint rebuilds (the model, its graph) is :mod:`whetstone.runs.restore`.

A run folder holds::

    checkpoint.pt    the last state: weights, optimizer, sharpener, RNG states, position, history, config
    best.pt          the best fully binary weights so far (highest test accuracy; lowest loss for autoencoders)
    config.toml      the resolved settings of the run (``whetstone train --config`` reads it back)
    history.json     one record per epoch; history.csv the same as a table; history.png the curves

While a process trains into the folder it holds ``.whetstone.lock`` (see :class:`~whetstone.utils.files.FolderLock`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..utils.files import FolderLock, atomic_write

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_NAME",
    "CONFIG_HEADER",
    "CONFIG_NAME",
    "HISTORY_CSV_NAME",
    "HISTORY_NAME",
    "PLOT_NAME",
    "RunFolder",
    "check_output_path",
    "describe_kind",
    "describe_load_error",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
CONFIG_NAME = "config.toml"
HISTORY_NAME = "history.json"
HISTORY_CSV_NAME = "history.csv"
PLOT_NAME = "history.png"
LOCK_NAME = ".whetstone.lock"
#: The first line of every config.toml whetstone writes: how a folder tells its own config from another tool's.
CONFIG_HEADER = "# whetstone train --config this-file --out NEW_FOLDER\n"
#: The files a run folder owns; nothing but the run's own trainer writes them.
RUN_FILES = (CHECKPOINT_NAME, BEST_NAME, CONFIG_NAME, HISTORY_NAME, HISTORY_CSV_NAME, PLOT_NAME, LOCK_NAME)


def save_checkpoint(path: str | os.PathLike, **content: Any) -> Path:
    """Save tensors and plain Python values (no arbitrary objects) with ``torch.save``, atomically:
    the file at ``path`` is replaced only once the new one is complete on disk. Its folder is created
    if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return atomic_write(path, buffer.getvalue())


def describe_kind(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a bare tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def describe_load_error(error: RuntimeError) -> str:
    """The first problem of a ``load_state_dict`` error, in one line."""
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    if not lines:
        return str(error).splitlines()[0]
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    first = lines[0]
    return (first[:200] + "...") + more if len(first) > 200 else first + more


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain values only, never code) and check
    its structure: a dict whose ``model`` entry maps names to tensors.

    ``path`` may be the checkpoint file or the run folder holding ``checkpoint.pt``. Raises
    ``FileNotFoundError`` or ``ValueError`` with one line saying what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix in (".onnx", ".nir"):
        raise ValueError(f"{path} is a {path.suffix[1:].upper()} file, not a checkpoint")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated zip, foreign pickle, not a torch file: one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds Python objects other than tensors and plain values, which are never loaded"
        raise ValueError(f"cannot load checkpoint {path}: {reason}") from None
    weights = content.get("model") if isinstance(content, dict) else None
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, Tensor) for v in weights.values()):
        what = (
            describe_kind(content)
            if not isinstance(content, dict)
            else "a dict without the model's weights under 'model'"
        )
        raise ValueError(f"{path} is not a whetstone checkpoint: it holds {what}")
    return content


class RunFolder:
    """The folder of one training run: where its files are, whether it holds a run, and who owns it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.checkpoint = self.path / CHECKPOINT_NAME
        self.best = self.path / BEST_NAME
        self.config = self.path / CONFIG_NAME
        self.history = self.path / HISTORY_NAME
        self.history_csv = self.path / HISTORY_CSV_NAME
        self.plot = self.path / PLOT_NAME
        self.lock = FolderLock(self.path, LOCK_NAME)

    def holds_run(self) -> bool:
        """True when the folder holds a run's checkpoint."""
        return self.checkpoint.is_file()

    def run_files(self) -> list[str]:
        """The names of the files in the folder that a run writes (its checkpoint, best weights, config,
        history, plot), present now; a new run never writes over any of them without ``overwrite``. The
        config.toml of a whetstone run that stopped before its first checkpoint does not count: that run
        left nothing else to lose."""
        present = [name for name in RUN_FILES if name != LOCK_NAME and (self.path / name).exists()]
        if present == [CONFIG_NAME] and self._own_config():
            return []
        return present

    def _own_config(self) -> bool:
        try:
            with self.config.open(encoding="utf-8", errors="replace") as stream:
                return stream.read(len(CONFIG_HEADER)) == CONFIG_HEADER
        except OSError:
            return False

    def create(self) -> None:
        """Create the folder (and its parents) if needed; ``ValueError`` if it cannot be written."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"output directory {self.path} is a file, not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"output directory {self.path} is not writable: {error.strerror or error}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ValueError(f"output directory {self.path} is not writable: permission denied")

    def claim(self, resume: bool = False, overwrite: bool = False) -> FolderLock:
        """Create the folder if needed and lock it for this process; returns the held lock.

        A folder that holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (its run
        files are deleted first); ``resume`` needs a checkpoint. ``FolderInUseError`` if another live
        process holds the folder.
        """
        self.create()
        self.lock.acquire()
        try:
            if resume and not self.holds_run():
                raise FileNotFoundError(f"no checkpoint at {self.checkpoint}: nothing to resume")
            run_files = self.run_files()
            if run_files and not resume:
                if not overwrite and self.holds_run():
                    raise ValueError(
                        f"{self.path} already holds a run ({CHECKPOINT_NAME}); continue it with --resume {self.path}, "
                        "train into another --out, or pass --overwrite to replace it"
                    )
                if not overwrite:  # another tool's files, or a run whose checkpoint was deleted: keep them
                    raise ValueError(
                        f"{self.path} holds {', '.join(run_files)} (names a run writes) but no {CHECKPOINT_NAME}: "
                        "train into another --out, or pass --overwrite to replace them"
                    )
                for name in run_files:
                    (self.path / name).unlink(missing_ok=True)
        except BaseException:
            self.lock.release()
            raise
        return self.lock


def check_output_path(
    path: str | os.PathLike, flag: str = "--out", overwrite: bool = False, example: str = "out"
) -> Path:
    """Check that ``path`` may be written by an export or a report; returns it as a ``Path``.

    Refused, in one line naming ``flag``: a folder, a missing parent folder, any file of a run folder
    (checkpoints, history, plots: never written over, even with ``overwrite``), and an existing file
    unless ``overwrite`` (a device or pipe such as ``/dev/stdout`` is written to as a stream)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name, e.g. {path / example}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: directory {path.parent} does not exist")
    if path.name in RUN_FILES and (path.parent / CHECKPOINT_NAME).exists() or path.suffix == ".pt":
        raise ValueError(
            f"{flag} {path} is a checkpoint or a run's own file: whetstone never writes over those; choose another name"
        )
    if path.is_file() and not overwrite:  # a device or pipe (/dev/stdout) is written to, not replaced
        raise ValueError(f"{flag} {path} exists; pass --overwrite to replace it")
    return path
