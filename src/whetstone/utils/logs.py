"""whetstone's messages through :mod:`logging`: each training epoch's line and the rare notices (a rollback, a
stale lock taken over) go to the logger ``whetstone`` (its modules' loggers are its children), at INFO.

While nothing else would show them (no handler on the root logger, none of the caller's own on ``whetstone``),
a fallback prints each message alone on stderr, so a training run from Python reports each epoch as the
command line does. Configure :mod:`logging` as usual to route them elsewhere; silence them with
``logging.getLogger("whetstone").setLevel(logging.WARNING)``. The command line prints them with
:func:`console`: information on stdout, warnings on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["LOGGER", "console", "install_fallback"]

LOGGER = "whetstone"


class _Fallback(logging.Handler):
    """Prints a record's message on stderr unless a handler of the caller's own would show it."""

    def emit(self, record: logging.LogRecord) -> None:
        others = [h for h in logging.getLogger(LOGGER).handlers if not isinstance(h, _Fallback)]
        if others or logging.getLogger().handlers:
            return
        try:
            print(record.getMessage(), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


class _Console(logging.Handler):
    """The command line's: information on the stdout of the moment (tests swap it), warnings on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            print(record.getMessage(), file=stream, flush=True)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


def install_fallback() -> None:
    """Set ``whetstone``'s level to INFO (unless the caller set one) and add the fallback, once."""
    logger = logging.getLogger(LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not any(isinstance(handler, _Fallback) for handler in logger.handlers):
        logger.addHandler(_Fallback())


@contextlib.contextmanager
def console() -> Iterator[None]:
    """While inside: whetstone's messages printed as the command line prints them, and not also passed on to
    the root logger's handlers."""
    logger, handler = logging.getLogger(LOGGER), _Console()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
