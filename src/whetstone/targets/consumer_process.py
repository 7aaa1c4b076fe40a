"""A consumer run in another process (Lava in its Python 3.10 environment): a time limit scaled to the work,
the whole process group killed on timeout, interrupt or SIGTERM (no worker left behind), and every failure as
one line naming the consumer and the setting that chose its interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence

__all__ = ["ConsumerError", "run_consumer"]


class ConsumerError(ChildProcessError):
    """A consumer's process failed, hung or could not start; the message is one line (an ``OSError``, so the
    command line prints it as one)."""


def run_consumer(command: Sequence[str], consumer: str, timeout: float, setting: str = "", cwd: str | None = None,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
    """Run ``command`` in a process group of its own (in ``cwd``, with ``env`` added to the environment) and
    wait at most ``timeout`` seconds. ``consumer`` names it in messages; ``setting`` says where its interpreter
    came from (``WHETSTONE_LAVA_PYTHON=...``)."""
    where = f" ({setting})" if setting else ""
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(list(command), stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
                                       cwd=cwd, env={**os.environ, **env} if env else None)  # fmt: skip
        except OSError as error:  # missing, not executable, not a program
            raise ConsumerError(f"{consumer} cannot start{where}: {error.strerror or error}") from None
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConsumerError(
                f"{consumer} did not finish within {timeout:.0f} s{where}; it and its processes were stopped"
            ) from None
        finally:  # on a timeout, Ctrl-C or SIGTERM while waiting, or after it exited: its workers too
            _kill_group(process)
        if code != 0:
            errors.seek(0)
            lines = [line.strip() for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
            cause = lines[-1] if lines else "no message"
            how = f"was killed by signal {-code}" if code < 0 else f"failed (exit status {code})"
            raise ConsumerError(f"{consumer} {how}{where}: {cause}")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    process.wait()
