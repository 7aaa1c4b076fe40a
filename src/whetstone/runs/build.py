"""A training run as a first-class object: a :class:`~whetstone.runs.config.RunConfig` assembled by
:func:`build_run` into a :class:`Run` (data, model, optimizer, schedule, sharpener, loss, trainer and
loaders)::

    config = RunConfig(model="mnist-dense", dataset="mnist-mini", epochs=8, out="runs/dense")
    result = build_run(config).fit()
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.datasets import ImageDataset, check_available, dataset_spec, load_dataset
from ..data.loader import TensorLoader, augmentation
from ..models.zoo import create_model, recipe
from ..nn.losses import Classification, Distillation, Loss, Reconstruction
from ..nn.quantization_aware import QuantizationAware, weights_to_train
from ..nn.sharpen import AdaptiveSharpener, ScheduledSharpener, Sharpener, SimpleSharpener, set_model_surrogate
from ..training import distributed
from ..training.callbacks import Callback, TensorBoard
from ..training.checkpoint import RunFolder, load_checkpoint
from ..training.history import EpochRecord, TrainResult
from ..training.trainer import Trainer
from ..utils.checks import allocation_failure, is_number
from .config import (
    COSINE_SCHEDULES,
    OPTIMIZER_DEFAULTS,
    OPTIMIZERS,
    ConfigError,
    RunConfig,
    parse_schedule,
    resolve_device,
    write_config,
)
from .restore import model_from_checkpoint

__all__ = [
    "Run",
    "build_optimizer",
    "build_run",
    "build_scheduler",
    "build_sharpener",
    "check_before_workers",
    "cosine_schedule",
]


# -- assembling ----------------------------------------------------------------------------------
def build_optimizer(
    name: str, parameters: Any, lr: float, options: dict[str, Any] | None = None
) -> torch.optim.Optimizer:
    """An optimizer by name (``adam``, ``adamw``, ``adadelta``, ``rmsprop``, ``sgd`` with momentum 0.9)."""
    if name not in OPTIMIZERS:
        raise ConfigError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if not (is_number(lr) and 0 < lr < math.inf):
        raise ConfigError("lr", f"must be a positive finite number, got {lr!r}")
    return OPTIMIZERS[name](parameters, lr=lr, **{**OPTIMIZER_DEFAULTS.get(name, {}), **(options or {})})


def cosine_schedule(
    optimizer: torch.optim.Optimizer, steps: int, final: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate times ``final + (1 - final) * (1 + cos(pi * step / steps)) / 2``: ``steps`` steps of the
    scheduler (epochs, or batches for a trainer with ``scheduler_per="batch"``) to the floor."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )


def build_scheduler(
    config: RunConfig, optimizer: torch.optim.Optimizer, batches_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LambdaLR | None, str]:
    """The learning-rate scheduler a resolved config names over ``optimizer`` (None for a constant rate), and
    when the trainer steps it (``"epoch"`` or ``"batch"``)."""
    per = "batch" if config.lr_schedule == "cosine-batch" else "epoch"
    if config.lr_schedule not in COSINE_SCHEDULES:
        return None, per
    return cosine_schedule(optimizer, config.epochs * (batches_per_epoch if per == "batch" else 1)), per


def build_quantizer(config: RunConfig) -> QuantizationAware | None:
    """Quantization-aware training for ``--bits`` or ``--target``, from the epoch sharpening starts."""
    weights = weights_to_train(config.target, config.bits)
    if weights is None:
        return None
    bits, encoder_bits, per_channel = weights
    start = config.start_epoch if config.start_epoch is not None else 0
    return QuantizationAware(bits, start, encoder_bits, per_channel)


def build_sharpener(config: RunConfig) -> Sharpener | None:
    """The sharpener a resolved config names (None for ``sharpener="none"``)."""
    bottom_up = not config.uniform
    if config.sharpener == "none":
        return None
    if config.sharpener == "simple":
        return SimpleSharpener(config.start_epoch, steps=config.steps, per=config.per, bottom_up=bottom_up)
    if config.sharpener == "scheduled":
        return ScheduledSharpener(parse_schedule(config.schedule or ""))
    return AdaptiveSharpener(min_init_epochs=config.min_init_epochs, bottom_up=bottom_up)


def model_options(config: RunConfig, classes: int) -> dict[str, Any]:
    """The constructor options of the run's model (saved with its weights to rebuild it)."""
    shape = list(dataset_spec(config.dataset).image_shape)
    return {"num_classes": classes, "activation": config.activation, "key_width": config.key_width, "key_seed": config.seed,
            "input_shape": shape, **config.model_options}  # fmt: skip


def check_model(config: RunConfig) -> None:
    """Build the run's model once on the CPU to check its options (done before workers start)."""
    _created(config, model_options(config, len(dataset_spec(config.dataset).classes)))


def _created(config: RunConfig, options: dict[str, Any]) -> nn.Module:
    """The run's model; its options' error in one line (what a size that cannot be allocated needs)."""
    try:
        return create_model(config.model, **options)
    except (ValueError, TypeError, RuntimeError, MemoryError) as error:
        failure = allocation_failure(error)
        if failure is None:
            raise ConfigError("model_options", f": {error}") from None
        given = " ".join(f"{k}={v}" for k, v in config.model_options.items()) or "(none)"
        raise ConfigError("model_options", f"{given}: model {config.model!r} at these sizes {failure}") from None


def check_before_workers(config: RunConfig) -> None:
    """What the processes of a multi-process run would each fail on, checked once before any starts:
    the model options, the data files, the teacher."""
    check_model(config)
    check_available(config.dataset, config.data_dir, config.download)
    if config.teacher:
        load_teacher(config.teacher, config.dataset, torch.device("cpu"))


def load_teacher(path: str, dataset: str, device: torch.device) -> nn.Module:
    """The ``--teacher`` run's model, on ``device``: a classifier trained on ``dataset``."""
    try:
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, str(path))
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError("teacher", f"{path}: {error}") from None
    run = checkpoint["run"]
    if run.get("dataset") != dataset:
        raise ConfigError("teacher", f"{path} was trained on {run.get('dataset')!r}, this run trains on {dataset!r}")
    if recipe(run["model"]).target != "labels":
        raise ConfigError("teacher", f"{path} is a {run['model']}, a reconstruction model; a teacher must classify")
    return model.to(device)


def _split(config: RunConfig) -> tuple[ImageDataset, ImageDataset]:
    train_set = load_dataset(config.dataset, "train", config.data_dir, config.download)
    test_set = load_dataset(config.dataset, "test", config.data_dir, config.download)
    if config.limit or config.holdout is not None:  # files may be sorted by class (the CIFAR-10 zip is): shuffle
        order = torch.randperm(len(train_set.labels), generator=torch.Generator().manual_seed(config.seed))
        train_set.images, train_set.labels = train_set.images[order], train_set.labels[order]
    if config.limit:
        train_set.images, train_set.labels = train_set.images[: config.limit], train_set.labels[: config.limit]
    if config.holdout is not None:
        keep = len(train_set.labels) - max(1, round(config.holdout * len(train_set.labels)))
        if keep < 1:
            raise ConfigError("holdout", f"{config.holdout} leaves no training samples of {len(train_set.labels)}")
        test_set = copy.copy(train_set)
        test_set.images, test_set.labels = train_set.images[keep:], train_set.labels[keep:]
        train_set.images, train_set.labels = train_set.images[:keep], train_set.labels[:keep]
    return train_set, test_set


@dataclass
class Run:
    """An assembled training run: call :meth:`fit`."""

    config: RunConfig
    trainer: Trainer
    train_loader: TensorLoader
    eval_loader: TensorLoader

    @property
    def model(self) -> nn.Module:
        """The model being trained (without a DistributedDataParallel wrapper)."""
        return self.trainer.module

    def fit(self) -> TrainResult:
        """Train to the config's epoch budget (or until fully binary); see :meth:`Trainer.fit`."""
        return self.trainer.fit(self.train_loader, self.config.epochs, self.eval_loader)


def build_run(
    config: RunConfig,
    checkpoint: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback | Callable[[EpochRecord], Any]] = (),
) -> Run:
    """Assemble a run: data, model, optimizer, schedule, sharpener, loss, trainer and loaders.

    ``config`` is resolved and validated here. With ``checkpoint`` (a loaded checkpoint of this run)
    the trainer's state is restored from it, to continue the run. Inside a ``torch.distributed``
    process group the model is wrapped in ``DistributedDataParallel`` and each process loads its own
    share of every batch.
    """
    config = config.resolved().validate()
    folder = RunFolder(config.out)
    if checkpoint is None and folder.holds_run():
        raise ValueError(
            f"{config.out} already holds a run: pass its checkpoint to continue it, or train into another folder"
        )
    if checkpoint is None and folder.run_files():  # another tool's files, or a run whose checkpoint was deleted
        raise ValueError(
            f"{config.out} holds {', '.join(folder.run_files())} (names a run writes) but no checkpoint: train into "
            "another folder, or remove them"
        )
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    ranks, rank = distributed.world_size(), distributed.rank()
    if config.threads or ranks > 1:
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // ranks))
    if ranks > 1:
        device = distributed.device()
    else:
        device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic  # fixed shapes: let cuDNN pick the fastest kernels
    train_set, test_set = _split(config)
    torch.manual_seed(config.seed)
    options = model_options(config, len(train_set.classes))
    model = _created(config, options).to(device)
    set_model_surrogate(model, config.surrogate)
    trained: nn.Module = model
    if ranks > 1:  # same seed on every rank: identical initial weights, which DDP also broadcasts
        if config.channels_last:  # DDP keeps the parameters it was given (the Trainer converts an unwrapped model)
            model.to(memory_format=torch.channels_last)
        # A fully sharpened layer passes no gradient (without --surrogate), so the parameters below it go unused.
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                      find_unused_parameters=True)  # fmt: skip
    optimizer = build_optimizer(config.optimizer, trained.parameters(), config.scaled_lr(), config.optimizer_options())
    # A last batch of one sample would stop batch norm ("expected more than 1 value per channel"): it is left out
    # of each epoch (another sample each time, as the order is shuffled), for every model alike.
    single = len(train_set) % config.batch_size == 1 and ranks == 1
    train_loader = TensorLoader.from_dataset(train_set, config.batch_size // ranks, shuffle=True, seed=config.seed,
                                             device=device, rank=rank, world_size=ranks, drop_last=single,
                                             transform=augmentation(config.dataset) if config.augment else None)  # fmt: skip
    scheduler, scheduler_per = build_scheduler(config, optimizer, len(train_loader))
    extra = list(callbacks)
    if config.tensorboard:
        extra.append(TensorBoard(Path(config.out) / "tensorboard"))
    trainer = Trainer(
        trained, optimizer, build_sharpener(config), _loss(config, device), scheduler=scheduler,
        quantizer=build_quantizer(config), callbacks=extra,
        out_dir=config.out, progress=config.progress, checkpoint_every=config.checkpoint_every, precision=config.precision,
        channels_last=config.channels_last,
        compile=config.compile,
        sync_every=config.sync_every,
        scheduler_per=scheduler_per,
        run_info={"model": config.model, "model_options": options, "dataset": config.dataset, "config": config.to_dict()},
    )  # fmt: skip
    if checkpoint is not None:
        trainer.load_state_dict(dict(checkpoint))
    eval_loader = TensorLoader.from_dataset(test_set, 1000, device=device)
    if rank == 0:  # once the run is assembled: a run that cannot start leaves no file behind
        write_config(config)
    return Run(config, trainer, train_loader, eval_loader)


def _loss(config: RunConfig, device: torch.device) -> Loss:
    if recipe(config.model).target == "inputs":
        if config.teacher:
            raise ConfigError("teacher", f"distils class scores, but {config.model} is a reconstruction model")
        return Reconstruction()
    loss = Classification(config.logit_scale)
    if config.teacher:
        teacher = load_teacher(config.teacher, config.dataset, device)
        weight = 1.0 if config.distill_weight is None else config.distill_weight
        temperature = 1.0 if config.distill_temperature is None else config.distill_temperature
        return Distillation(teacher, weight, temperature, base=loss)
    return loss
