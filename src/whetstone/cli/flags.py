"""Command-line flags: the settings of a run (:class:`~whetstone.runs.config.RunConfig` fields) as ``whetstone
train`` options, numbers checked as they are parsed, and usage errors in one line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..data.datasets import DATASET_CHOICES, DatasetError, is_dataset_name
from ..models.zoo import list_models
from ..runs.config import RunConfig, setting_type
from ..training import distributed
from ..utils.files import Terminated

__all__ = [
    "BITS",
    "COUNT",
    "FRACTION",
    "USER_ERRORS",
    "OneLineParser",
    "add_run_settings",
    "number",
    "one_line",
    "run_script",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the argument, the value and what is allowed)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog.split()[0]}: error: {message}", file=sys.stderr)  # "whetstone train" -> "whetstone"
        raise SystemExit(2)


#: What a user can fix (a bad value, a missing data set or package, a diverging run): one line, exit status 2.
USER_ERRORS = (ValueError, DatasetError, OSError, FloatingPointError, ImportError, distributed.WorkerError)


def one_line(error: BaseException) -> str:
    """An error as one line: an OS error's reason and file (not "[Errno 13] ..."), whitespace collapsed."""
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def stopped_line(stop: KeyboardInterrupt, args: argparse.Namespace) -> str:
    """What a command stopped by Ctrl-C or SIGTERM left: a training run says whether a checkpoint holds it."""
    said = "terminated" if isinstance(stop, Terminated) else "interrupted"
    run = (getattr(args, "resume", None) or getattr(args, "out", None)) if args.command == "train" else None
    if run is None:
        return said
    kept = (Path(run) / "checkpoint.pt").is_file()
    return f"{said} ({'the last complete checkpoint is kept' if kept else 'before its first checkpoint: nothing to resume'})"


def run_script(main: Callable[[], int | None]) -> int:
    """Run a script's ``main`` as the command line runs a command: what the user can fix (a missing data
    set, a missing optional package, a bad value) is one line on stderr and exit status 2, never a traceback."""
    prog = Path(sys.argv[0]).name
    try:
        return int(main() or 0)
    except USER_ERRORS as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def number(kind: type, minimum: float | None = None, maximum: float | None = None, open_interval: bool = False) -> Any:
    """An argparse type: a finite ``kind`` in [minimum, maximum] (or the open interval)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        below = minimum is not None and (value <= minimum if open_interval else value < minimum)
        above = maximum is not None and (value >= maximum if open_interval else value > maximum)
        if not math.isfinite(value) or below or above:
            bounds = (f" in ({minimum}, {maximum})" if open_interval and maximum is not None
                      else f" > {minimum}" if open_interval else f" in [{minimum}, {maximum}]" if maximum is not None
                      else f" >= {minimum}" if minimum is not None else "")  # fmt: skip
            raise argparse.ArgumentTypeError(
                f"must be a finite {'integer' if kind is int else 'number'}{bounds}, got {text}"
            )
        return value

    return parse


COUNT = number(int, 1)


def dataset_name(text: str) -> str:
    """``--dataset``: a built-in data set's name or one of the user's own (a folder, a ``.npz`` file,
    ``package.module:factory``), which is read and checked when it is loaded."""
    if is_dataset_name(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a dataset; {DATASET_CHOICES}")


BITS = number(int, 2, 16)
FRACTION = number(float, 0, 1, open_interval=True)


#: The sections of ``whetstone train --help``: the first setting of each, in RunConfig's order.
_SECTIONS = {
    "model": "what is trained, on what",
    "optimizer": "optimisation",
    "sharpener": "sharpening",
    "teacher": "distillation",
    "bits": "the chip's precision",
    "deterministic": "arithmetic",
    "out": "where and how it runs (a resumed run may change these)",
}


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`RunConfig` field (``lr`` -> ``--lr``), in sections; only flags given end up in
    the namespace."""
    group: Any = parser
    for f in dataclasses.fields(RunConfig):
        name, meta, kind = f.name, f.metadata, setting_type(f)
        if name in _SECTIONS:
            group = parser.add_argument_group(_SECTIONS[name])
        shown = (
            f" (default {f.default})"
            if not isinstance(f.default, bool | type(None) | type(dataclasses.MISSING))
            else ""
        )
        common = {"help": meta["help"] + shown, "default": argparse.SUPPRESS, "dest": name}
        if name == "model":
            common["help"] += ": " + ", ".join(list_models())
        if name == "progress":
            common["help"] = "no progress bar and no periodic progress lines (the epoch lines stay)"
            group.add_argument("--no-progress", action="store_false", **common)
        elif name == "model_options":
            group.add_argument("--model-option", action="append", metavar=meta["metavar"], **common)
        elif kind is bool and f.default is None:  # a tri-state: the recipe decides unless given
            group.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, **common)
        elif kind is bool:
            group.add_argument("--" + name.replace("_", "-"), action="store_true", **common)
        else:
            kind = number(kind) if kind in (int, float) else kind
            group.add_argument(
                "--" + name.replace("_", "-"), type=kind, choices=meta["choices"], metavar=meta["metavar"], **common
            )
