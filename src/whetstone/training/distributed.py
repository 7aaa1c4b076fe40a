"""Multi-process training with ``torch.distributed``: the few collective steps the trainer needs, and a
launcher for ``whetstone train --nproc N``.

The rule that keeps sharpening consistent: every value a sharpener sees (batch loss, epoch loss) is
first averaged over all processes, so every rank takes the same sharpening decision at every step.
The trainer also checks, after every epoch, that all ranks hold the same per-layer sharpness.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..utils.files import sigterm_raises

__all__ = [
    "WorkerError",
    "all_sum",
    "device",
    "init_from_env",
    "is_distributed",
    "launch",
    "rank",
    "same_on_all_ranks",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def device() -> torch.device:
    """The device of this process in a process group: its GPU under nccl, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over all processes (as float64, so counts stay exact), where they are; the same
    tensor when not distributed."""
    if not is_distributed():
        return values
    tensor = values.to(torch.float64)
    device = tensor.device
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    elif tensor.device.type != "cpu":  # gloo reduces CPU tensors
        tensor = tensor.cpu()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.to(device)


def same_on_all_ranks(value: Any, what: str) -> None:
    """Raise ``RuntimeError`` unless every process holds an equal ``value``."""
    if not is_distributed():
        return
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"ranks disagree on {what}: {values}")


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``); gloo on CPU, nccl when CUDA is available. Returns whether
    this is a multi-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, nproc: int, port: int, fn: Callable[..., int], args: tuple, status: Any) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    with sigterm_raises():  # stopped by the launcher: unwind, so temporary files are removed
        init_from_env()
        try:
            code = fn(*args)
            if local_rank == 0:
                status.value = code
        finally:
            dist.destroy_process_group()


class WorkerError(RuntimeError):
    """A process of a :func:`launch`-ed group failed; the message is its error's last line."""


def launch(fn: Callable[..., int], nproc: int, *args: Any) -> int:
    """Run ``fn(*args)`` in ``nproc`` local processes joined in one process group (what ``torchrun
    --nproc-per-node N`` does, without needing it); returns rank 0's return value.

    If a process fails, the others are stopped and :class:`WorkerError` carries the failure's last line
    (e.g. ``ValueError: ...``); if this process is interrupted, the group is stopped first."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 2:
        raise ValueError(f"nproc must be an integer >= 2, got {nproc!r}")
    import torch.multiprocessing as mp

    status = mp.get_context("spawn").Value("i", 1)
    group = mp.start_processes(_worker, args=(nproc, _free_port(), fn, args, status), nprocs=nproc, join=False,
                               start_method="spawn")  # fmt: skip
    try:
        while not group.join():
            pass
    except mp.ProcessRaisedException as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise WorkerError(f"process {error.error_index}: {lines[-1].strip()}") from None
    except mp.ProcessExitedException as error:
        raise WorkerError(f"process {error.error_index} exited with code {error.exit_code}") from None
    finally:
        for process in group.processes:
            if process.is_alive():
                process.terminate()
        for process in group.processes:
            process.join(timeout=30)
    return int(status.value)
