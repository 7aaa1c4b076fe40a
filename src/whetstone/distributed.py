"""Multi-process training with ``torch.distributed``: the few collective steps the trainer needs, and a
launcher for ``whetstone train --nproc N``.

The rule that keeps sharpening consistent: every value a sharpener sees (batch loss, epoch loss) is
first averaged over all processes, so every rank takes the same sharpening decision at every step.
The trainer also checks, after every epoch, that all ranks hold the same per-layer sharpness.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_sum", "init_from_env", "is_distributed", "launch", "rank", "same_on_all_ranks", "world_size"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_sum(values: Sequence[float]) -> list[float]:
    """Sum each value over all processes (float64, so counts stay exact); identity when not distributed."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


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
    init_from_env()
    try:
        code = fn(*args)
        if local_rank == 0:
            status.value = code
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., int], nproc: int, *args: Any) -> int:
    """Run ``fn(*args)`` in ``nproc`` local processes joined in one process group (what ``torchrun
    --nproc-per-node N`` does, without needing it); returns rank 0's return value."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 2:
        raise ValueError(f"nproc must be an integer >= 2, got {nproc!r}")
    import torch.multiprocessing as mp

    status = mp.get_context("spawn").Value("i", 1)
    mp.spawn(_worker, args=(nproc, _free_port(), fn, args, status), nprocs=nproc, join=True)
    return int(status.value)
