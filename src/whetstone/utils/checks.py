"""Checks of arguments the library's functions share: each returns the value or raises a one-line
``ValueError`` naming the argument, the value and what is allowed (``True`` is not an integer here)."""

from __future__ import annotations

import importlib
import math
import numbers
import os
import re
from typing import Any

__all__ = [
    "allocation_failure",
    "boolean",
    "fits_in_memory",
    "imported",
    "install_hint",
    "int_at_least",
    "int_in",
    "is_number",
    "positive_int",
    "positive_number",
    "sizes",
]


def install_hint(extra: str, packages: str) -> str:
    """How to install an optional extra from where a user stands: the packages themselves (from the index),
    or the extra from a whetstone checkout (whetstone-snn is not on an index)."""
    return f"pip install {packages} (or, in a whetstone checkout, pip install -e '.[{extra}]')"


def int_at_least(value: object, name: str, minimum: int = 0) -> int:
    """``value`` if it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def int_in(value: object, name: str, low: int, high: int) -> int:
    """``value`` if it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def boolean(value: object, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def positive_int(value: object, name: str) -> int:
    """``value`` if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def positive_number(value: object, name: str) -> float:
    """``value`` as a float if it is a positive finite number (an int or a float, not a bool)."""
    if not is_number(value) or not 0 < value < math.inf:  # also rejects NaN
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def non_negative_number(value: object, name: str) -> float:
    """``value`` as a float if it is a finite number >= 0 (an int or a float, not a bool)."""
    if not is_number(value) or not 0 <= value < math.inf:  # also rejects NaN
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sizes(value: Any, name: str, example: str = "(1, 28, 28)") -> tuple[int, ...]:
    """``value`` as a tuple of positive integers (a shape): never truncates ``4.5`` to ``4``."""
    items = tuple(value) if isinstance(value, (tuple, list)) or hasattr(value, "__iter__") else None
    if not items or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in items):
        raise ValueError(f"{name} must be positive integer sizes, e.g. {example}, got {value!r}")
    return tuple(int(v) for v in items)


def machine_memory() -> int:
    """This machine's physical memory in bytes (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _gigabytes(count: float) -> str:
    return f"{count / 2**30:,.1f} GB"


def fits_in_memory(nbytes: int, name: str, value: object) -> None:
    """``ValueError`` naming the argument when ``nbytes`` (what ``value`` makes one tensor hold) exceed this
    machine's memory: said before anything is allocated, not by the allocator or the kernel's OOM killer."""
    memory = machine_memory()
    if memory and nbytes > memory:
        raise ValueError(
            f"{name} {value!r} needs {_gigabytes(nbytes)} in one tensor; this machine has {_gigabytes(memory)}"
        )


def allocation_failure(error: BaseException) -> str | None:
    """What a failed allocation needed, in words (torch's or Python's), or None for any other error."""
    text = str(error)
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    if not (isinstance(error, MemoryError) or asked or "can't allocate memory" in text):
        return None
    need = f"needs {_gigabytes(int(asked[1]))} in one tensor" if asked else "needs more memory than is free"
    memory = machine_memory()
    return f"{need}; this machine has {_gigabytes(memory)}" if memory else need


def imported(name: str, what: str) -> Any:
    """The object ``package.module:attribute`` names, the module imported; ``ValueError`` in one line naming
    ``what`` it was given as (``model 'x:y'``) where the module cannot be imported or lacks the attribute."""
    module_name, _, attribute = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except ImportError as error:
        raise ValueError(f"{what}: cannot import {module_name!r} ({error})") from None
    except AttributeError:
        raise ValueError(f"{what}: module {module_name!r} has no {attribute!r}") from None
