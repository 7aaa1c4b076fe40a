"""Command-line flags: the settings of a run (:class:`~whetstone.config.RunConfig` fields) as ``whetstone
train`` options, numbers checked as they are parsed, and usage errors in one line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any, NoReturn

from .config import RunConfig, setting_type

__all__ = ["BITS", "COUNT", "FRACTION", "OneLineParser", "add_run_settings", "number"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the argument, the value and what is allowed)."""

    def error(self, message: str) -> NoReturn:
        print(f"whetstone: error: {message}", file=sys.stderr)
        raise SystemExit(2)


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
            bounds = (f" in ({minimum}, {maximum})" if open_interval else f" in [{minimum}, {maximum}]" if maximum is not None
                      else f" >= {minimum}" if minimum is not None else "")  # fmt: skip
            raise argparse.ArgumentTypeError(
                f"must be a finite {'integer' if kind is int else 'number'}{bounds}, got {text}"
            )
        return value

    return parse


COUNT = number(int, 1)
BITS = number(int, 2, 16)
FRACTION = number(float, 0, 1, open_interval=True)


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`RunConfig` field (``lr`` -> ``--lr``); only flags given end up in the namespace."""
    for f in dataclasses.fields(RunConfig):
        name, meta, kind = f.name, f.metadata, setting_type(f)
        shown = f" (default {f.default})" if f.default not in (None, False, True, dataclasses.MISSING) else ""
        common = {"help": meta["help"] + shown, "default": argparse.SUPPRESS, "dest": name}
        if name == "progress":
            parser.add_argument("--no-progress", action="store_false", **common)
        elif name == "model_options":
            parser.add_argument("--model-option", action="append", metavar=meta["metavar"], **common)
        elif kind is bool and f.default is None:  # a tri-state: the recipe decides unless given
            parser.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, **common)
        elif kind is bool:
            parser.add_argument("--" + name.replace("_", "-"), action="store_true", **common)
        else:
            kind = number(kind) if kind in (int, float) else kind
            parser.add_argument(
                "--" + name.replace("_", "-"), type=kind, choices=meta["choices"], metavar=meta["metavar"], **common
            )
