"""Batches of a dataset held in memory, without per-sample Python, and augmentation done on whole batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..utils.checks import positive_int
from .datasets import ImageDataset, dataset_spec

__all__ = ["TensorLoader", "augmentation", "random_crop_flip"]


class TensorLoader:
    """Batches of a dataset held in memory: ``(float images in [0, 1], int64 labels)``.

    Each batch is one indexing operation on the uint8 tensor, converted to float on the target
    device: no per-sample Python, no worker processes. The shuffle order of epoch ``e`` depends only
    on ``(seed, e)``, so a resumed or distributed run can reproduce it (see :meth:`set_epoch`).

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,).
        batch_size: samples per batch.
        shuffle: draw a new random order each epoch.
        drop_last: drop a last, smaller batch.
        seed: seed of the shuffle order.
        device: where batches are delivered; the dataset moves there once.
        transform: optional function applied to each float batch (e.g. augmentation on tensors).
        rank: this process's index, for distributed data parallel training: every process draws the
            same order and takes its own ``batch_size`` slice of each global batch of
            ``batch_size * world_size`` samples; a last incomplete global batch is dropped so every
            process runs the same number of steps.
        world_size: the number of processes (1: not distributed).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        positive_int(batch_size, "batch_size")
        if len(images) != len(labels):
            raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.transform = int(seed), transform
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    @classmethod
    def from_dataset(cls, dataset: ImageDataset, batch_size: int, **kwargs) -> TensorLoader:
        """A loader over an :class:`ImageDataset`."""
        return cls(dataset.images, dataset.labels, batch_size, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle order of ``epoch`` for the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, step = len(self.labels), self.batch_size * self.world_size
        return n // step if self.drop_last or self.world_size > 1 else -(-n // step)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate the current epoch from batch ``start_batch`` on (what a resumed run needs): the
        order is that of ``__iter__``, a function of ``(seed, epoch)`` only."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        n = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = None
        self.epoch += 1
        return self._batches(order, start_batch)

    def _batches(self, order: Tensor | None, start_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in range(start_batch, len(self)):
            start = (batch * self.world_size + self.rank) * self.batch_size
            index = slice(start, start + self.batch_size) if order is None else order[start : start + self.batch_size]
            x = self.images[index].float().div_(255.0)
            if self.transform is not None:
                x = self.transform(x)
            yield x, self.labels[index]


def random_crop_flip(padding: int = 4, flip: bool = True) -> Callable[[Tensor], Tensor]:
    """Standard CIFAR augmentation as a :class:`TensorLoader` transform, done on the whole batch on its
    device: zero-pad by ``padding``, crop back to the original size at a random offset per image, and
    mirror half of the images left-right. Draws from torch's global RNG (saved in checkpoints)."""
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")

    def transform(x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        if padding:
            padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
            dy = torch.randint(0, 2 * padding + 1, (batch, 1, 1), device=x.device)
            dx = torch.randint(0, 2 * padding + 1, (batch, 1, 1), device=x.device)
            rows = (dy + torch.arange(height, device=x.device).view(1, -1, 1)).expand(batch, height, width)
            cols = (dx + torch.arange(width, device=x.device).view(1, 1, -1)).expand(batch, height, width)
            samples = torch.arange(batch, device=x.device).view(-1, 1, 1)
            x = padded.permute(0, 2, 3, 1)[samples, rows, cols].permute(0, 3, 1, 2)
        if flip:
            mirror = torch.rand(batch, 1, 1, 1, device=x.device) < 0.5
            x = torch.where(mirror, x.flip(-1), x)
        return x.contiguous()

    return transform


def augmentation(dataset: str) -> Callable[[Tensor], Tensor]:
    """The training augmentation of ``dataset``: :func:`random_crop_flip` with its padding, mirroring
    only where a mirror image keeps its class (CIFAR-10, Fashion-MNIST; not digits)."""
    spec = dataset_spec(dataset)
    return random_crop_flip(spec.crop_padding, flip=spec.mirror)
