"""Command line: ``whetstone train | eval | export | simulate | sweep | demo | models``.

Errors in what the user gave (a bad name, a missing file, a value out of range) print one line and
exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import distributed
from .data import DATASETS, DatasetError, TensorLoader, augmentation, load_dataset
from .models import create_model, list_models, recipe
from .sharpen import (
    AdaptiveSharpener,
    ScheduledSharpener,
    Sharpener,
    SimpleSharpener,
    set_model_sharpness,
    set_model_surrogate,
)
from .train import EpochRecord, Trainer, TrainResult, binary_report, evaluate, load_checkpoint

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}


#: Options an optimizer gets unless the recipe gives its own: ``sgd`` means SGD with momentum 0.9.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {"sgd": {"momentum": 0.9}}


def build_optimizer(name: str, parameters: Any, lr: float, options: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """An optimizer by name (``adam``, ``adamw``, ``adadelta``, ``rmsprop``, ``sgd`` with momentum 0.9)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return OPTIMIZERS[name](parameters, lr=lr, **{**OPTIMIZER_DEFAULTS.get(name, {}), **(options or {})})


def parse_schedule(text: str) -> list[tuple[int, int]]:
    """``"0:2,2:4,4:6"`` -> ``[(0, 2), (2, 4), (4, 6)]`` (one start:stop window per spiking layer)."""
    try:
        return [tuple(int(part) for part in window.split(":")) for window in text.split(",")]  # type: ignore[misc]
    except ValueError:
        raise ValueError(f"--schedule must look like '0:2,2:4' (start:stop epochs per layer), got {text!r}") from None


def build_sharpener(args: argparse.Namespace) -> Sharpener | None:
    if args.sharpener == "none":
        return None
    if args.sharpener == "simple":
        return SimpleSharpener(args.start_epoch, steps=args.steps, per=args.per, bottom_up=not args.uniform)
    if args.sharpener == "scheduled":
        if not args.schedule:
            raise ValueError("--sharpener scheduled needs --schedule, e.g. '0:2,2:4,4:6'")
        return ScheduledSharpener(parse_schedule(args.schedule))
    return AdaptiveSharpener(min_init_epochs=args.min_init_epochs, bottom_up=not args.uniform)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data root (default: $WHETSTONE_DATA, else ~/.cache/whetstone/data)")
    parser.add_argument("--download", action="store_true", help="download missing MNIST/Fashion-MNIST files")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whetstone", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and sharpen it to fully binary")
    train.add_argument("--model", help=f"one of: {', '.join(list_models())} (required unless --resume)")
    train.add_argument("--dataset", help=f"one of: {', '.join(DATASETS)} (default: the model's)")
    train.add_argument("--sharpener", choices=["simple", "scheduled", "adaptive", "none"], default=None)
    train.add_argument("--epochs", type=int, help="maximum epochs (training stops once fully binary)")
    train.add_argument("--out", help="run directory: checkpoint, history.json, history.png (required unless --resume)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint, with its settings")
    train.add_argument("--checkpoint-every", type=int, metavar="N", help="also checkpoint every N batches")
    train.add_argument("--nproc", type=int, default=1,
                       help="processes for distributed data parallel training (gloo on CPU, nccl on GPU); "
                            "--batch-size stays the global batch")
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms only (with --resume: bit-identical to an uninterrupted run)")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS))
    train.add_argument("--lr", type=float)
    train.add_argument("--weight-decay", type=float, help="the optimizer's weight decay (decoupled for adamw)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--start-epoch", type=int, help="simple sharpener: first sharpening epoch")
    train.add_argument("--steps", type=int, help="simple sharpener: steps per layer")
    train.add_argument("--per", choices=["epoch", "batch"], help="simple sharpener: step per epoch or batch")
    train.add_argument("--uniform", action="store_true", help="sharpen all layers together, not bottom-up")
    train.add_argument("--schedule", help="scheduled sharpener: start:stop epochs per layer, e.g. 0:2,2:4")
    train.add_argument("--min-init-epochs", type=int, default=10, help="adaptive sharpener")
    train.add_argument("--surrogate", type=float, metavar="S",
                       help="binary layers keep learning: forward the exact step, backpropagate the slope of the "
                            "activation at sharpness S in [0, 1) (straight-through); training then runs all --epochs "
                            "(default: binary layers stop learning and training ends once fully binary, the paper's method)")
    train.add_argument("--activation", choices=["brelu", "sigmoid"], default="brelu")
    train.add_argument("--logit-scale", type=float, help="train on cross-entropy of this times the decoder's logits")
    train.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                       help="random crop of zero-padded training batches, plus a left-right mirror where the dataset "
                            "allows it (padding 4 px and mirror for CIFAR-10; 2 px for MNIST, which is not mirrored) "
                            "(default: the recipe's)")
    train.add_argument("--lr-schedule", choices=["constant", "cosine"],
                       help="cosine: the learning rate falls along half a cosine to lr/100 at --epochs (default: the recipe's)")
    train.add_argument("--model-option", action="append", default=[], metavar="NAME=VALUE", dest="model_option",
                       help="extra option of the model's constructor, e.g. base=128 for cifar-conv-bn; pool_first=true "
                            "for any net that max-pools spikes (pool potentials instead; repeatable)")
    train.add_argument("--teacher", metavar="RUN",
                       help="distil from this trained run (its directory or checkpoint.pt; same dataset), e.g. the same "
                            "network trained with --sharpener none: the loss mixes cross-entropy with the KL divergence "
                            "to the teacher's class probabilities on each training batch")
    train.add_argument("--distill-weight", type=float, metavar="W",
                       help="with --teacher: the loss is (1 - W) * cross-entropy + W * distillation (default 1: the "
                            "teacher's probabilities only)")
    train.add_argument("--distill-temperature", type=float, metavar="T",
                       help="with --teacher: softmax temperature of both networks' logits in the distillation term "
                            "(default 1)")
    train.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    train.add_argument("--key-width", type=int, help="output units of the N-hot code (default 10 per class)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--limit", type=int, help="use only the first N training samples (quick trials)")
    train.add_argument("--holdout", type=float, metavar="FRACTION",
                       help="evaluate on this last fraction of the training set instead of the test set (tuning)")
    train.add_argument("--no-progress", action="store_true")
    _add_data_options(train)

    evaluate_cmd = commands.add_parser("eval", help="evaluate a checkpoint and check it is fully binary")
    evaluate_cmd.add_argument("checkpoint", help="checkpoint.pt or its run directory")
    evaluate_cmd.add_argument("--dataset", help="default: the dataset it was trained on")
    evaluate_cmd.add_argument("--batch-size", type=int, default=1000)
    _add_data_options(evaluate_cmd)

    export_cmd = commands.add_parser("export", help="export a fully sharpened checkpoint to NIR or ONNX")
    export_cmd.add_argument("checkpoint", help="checkpoint.pt or its run directory")
    export_cmd.add_argument("--format", choices=["nir", "onnx"], required=True)
    export_cmd.add_argument("--out", required=True, help="file to write (e.g. model.nir, model.onnx)")
    export_cmd.add_argument("--bits", type=int, help="quantize weights and thresholds to integers of this many bits")

    simulate_cmd = commands.add_parser(
        "simulate", help="run a checkpoint or NIR file in the event-driven reference simulator; spike/energy report"
    )
    simulate_cmd.add_argument("source", help="checkpoint.pt, its run directory, or a .nir file")
    simulate_cmd.add_argument("--dataset", help="default: the checkpoint's dataset (required for a .nir file)")
    simulate_cmd.add_argument("--split", choices=["train", "test"], default="test")
    simulate_cmd.add_argument("--limit", type=int, help="simulate only the first N images")
    simulate_cmd.add_argument("--bits", type=int, help="quantize weights and thresholds to integers of this many bits")
    simulate_cmd.add_argument("--arithmetic", choices=["fp32", "int8"], help="energy figures (default: int8 with --bits, else fp32)")
    simulate_cmd.add_argument("--batch-size", type=int, default=256)
    simulate_cmd.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    simulate_cmd.add_argument("--no-progress", action="store_true")
    _add_data_options(simulate_cmd)

    sweep = commands.add_parser("sweep", help="tune optimizer and sharpener with Optuna (extra 'sweep')")
    sweep.add_argument("--model", required=True, help=f"one of: {', '.join(list_models())}")
    sweep.add_argument("--dataset", help="default: the model's")
    sweep.add_argument("--trials", type=int, default=20)
    sweep.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    sweep.add_argument("--out", required=True, help="folder for study.db and one run folder per trial")
    sweep.add_argument("--holdout", type=float, default=0.1, help="fraction of the training set to score on")
    sweep.add_argument("--limit", type=int, help="use only the first N training samples")
    sweep.add_argument("--seed", type=int, default=0)
    _add_data_options(sweep)

    demo = commands.add_parser("demo", help="sharpen mnist-dense on the bundled MNIST subset (offline, ~1 min)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=21)
    demo.add_argument("--no-progress", action="store_true")

    commands.add_parser("models", help="list the model names")
    return parser


def _fill_recipe_defaults(args: argparse.Namespace) -> None:
    defaults = recipe(args.model)
    for name in ("dataset", "optimizer", "lr", "batch_size", "epochs", "sharpener", "start_epoch", "steps", "per",
                 "logit_scale", "augment", "lr_schedule"):  # fmt: skip
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(defaults, name))
    args.optimizer_options = defaults.optimizer_options if args.optimizer == defaults.optimizer else {}


#: Options a resumed run takes from the command line rather than from the checkpoint.
_RUNTIME_OPTIONS = ("resume", "no_progress", "threads", "data_dir", "download", "debug", "epochs", "checkpoint_every", "nproc",
                    "device")  # fmt: skip


def parse_model_options(items: Sequence[str]) -> dict[str, Any]:
    """``["base=128", "kernel=7"]`` -> ``{"base": 128, "kernel": 7}`` (ints, floats, true/false, else text)."""
    options: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--model-option must look like NAME=VALUE (e.g. base=128), got {item!r}")
        value: Any = text
        for convert in (int, float):
            try:
                value = convert(text)
                break
            except ValueError:
                pass
        else:
            if text.lower() in ("true", "false"):
                value = text.lower() == "true"
        options[name] = value
    return options


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the current GPU if CUDA is available, else the CPU; otherwise ``torch.device(name)``,
    checked to exist."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int, final: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate times ``final + (1 - final) * (1 + cos(pi * epoch / epochs)) / 2``, per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
    )


def _scaled_cross_entropy(scale: float) -> Any:
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits * scale, labels)

    return loss


def prepare_training(args: argparse.Namespace, callbacks: Sequence = ()) -> tuple[Trainer, TensorLoader, TensorLoader]:
    """The ``train`` command up to the first epoch: data, model, optimizer, sharpener, trainer.

    With ``args.resume``, the run's own settings are read from its checkpoint and the trainer's state
    restored from it."""
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        saved = (checkpoint.get("run") or {}).get("args")
        if not saved:
            raise ValueError(f"{args.resume}: the checkpoint holds no command-line settings to resume with")
        for name, value in saved.items():
            if name not in _RUNTIME_OPTIONS or getattr(args, name, None) is None:
                setattr(args, name, value)
        args.out = args.resume
    if not args.model or not args.out:
        raise ValueError("train needs --model and --out (or --resume DIR)")
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    _fill_recipe_defaults(args)
    extra_options = parse_model_options(args.model_option)
    ranks, rank = distributed.world_size(), distributed.rank()
    if args.batch_size % ranks:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {ranks} processes")
    if args.threads or ranks > 1:
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // ranks))
    if ranks > 1:
        device = torch.device(f"cuda:{torch.cuda.current_device()}") if dist.get_backend() == "nccl" else torch.device("cpu")
    else:
        device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic  # fixed shapes: let cuDNN pick the fastest kernels
    train_set = load_dataset(args.dataset, "train", args.data_dir, args.download)
    test_set = load_dataset(args.dataset, "test", args.data_dir, args.download)
    if args.limit:
        train_set.images, train_set.labels = train_set.images[: args.limit], train_set.labels[: args.limit]
    if args.holdout is not None:
        if not 0.0 < args.holdout < 1.0:
            raise ValueError(f"--holdout must be a fraction in (0, 1), got {args.holdout}")
        keep = len(train_set.labels) - max(1, round(args.holdout * len(train_set.labels)))
        test_set = copy.copy(train_set)
        test_set.images, test_set.labels = train_set.images[keep:], train_set.labels[keep:]
        train_set.images, train_set.labels = train_set.images[:keep], train_set.labels[:keep]
    torch.manual_seed(args.seed)
    model_options = {"num_classes": len(train_set.classes), "activation": args.activation,
                     "key_width": args.key_width, "key_seed": args.seed,
                     "input_shape": list(DATASETS[args.dataset].image_shape), **extra_options}  # fmt: skip
    model = create_model(args.model, **model_options).to(device)
    set_model_surrogate(model, args.surrogate)
    if ranks > 1:  # same seed on every rank: identical initial weights, which DDP also broadcasts
        # A fully sharpened layer passes no gradient (without --surrogate), so the parameters below it go unused.
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer_options = dict(args.optimizer_options)
    if args.weight_decay is not None:
        if not args.weight_decay >= 0:
            raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}")
        optimizer_options["weight_decay"] = args.weight_decay
    optimizer = build_optimizer(args.optimizer, model.parameters(), args.lr, optimizer_options)
    scheduler = cosine_schedule(optimizer, args.epochs) if args.lr_schedule == "cosine" else None
    weight = 1.0 if args.distill_weight is None else args.distill_weight
    temperature = 1.0 if args.distill_temperature is None else args.distill_temperature
    if not args.teacher and (args.distill_weight is not None or args.distill_temperature is not None):
        raise ValueError("--distill-weight and --distill-temperature need --teacher RUN")
    if not 0 <= weight <= 1:
        raise ValueError(f"--distill-weight must be in [0, 1], got {weight}")
    if not temperature > 0:
        raise ValueError(f"--distill-temperature must be positive, got {temperature}")
    teacher = load_teacher(args.teacher, args.dataset, device) if args.teacher else None
    if args.teacher and checkpoint is None:
        args.teacher = str(Path(args.teacher).resolve())  # saved in the checkpoint: --resume works from any folder
    run_info = {
        "model": args.model,
        "model_options": model_options,
        "dataset": args.dataset,
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))
                 or (isinstance(v, list) and all(isinstance(item, str) for item in v))},
    }
    if not args.logit_scale > 0:
        raise ValueError(f"--logit-scale must be positive, got {args.logit_scale}")
    target = recipe(args.model).target
    if target == "inputs":
        loss_fn = None  # the trainer's mean squared error against the input
    else:
        loss_fn = torch.nn.CrossEntropyLoss() if args.logit_scale == 1 else _scaled_cross_entropy(args.logit_scale)
    trainer = Trainer(model, optimizer, build_sharpener(args), loss_fn=loss_fn, out_dir=args.out, run_info=run_info, target=target,
                      callbacks=callbacks, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
                      scheduler=scheduler, teacher=teacher, distill_weight=weight,
                      distill_temperature=temperature)  # fmt: skip
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
        epoch, batch = trainer.position
        if rank == 0:
            print(f"resuming {args.out} at epoch {epoch + 1}, batch {batch}", flush=True)
    train_loader = TensorLoader.from_dataset(train_set, args.batch_size // ranks, shuffle=True, seed=args.seed,
                                             device=device, rank=rank, world_size=ranks,
                                             transform=augmentation(args.dataset) if args.augment else None)  # fmt: skip
    test_loader = TensorLoader.from_dataset(test_set, 1000, device=device)
    return trainer, train_loader, test_loader


def _print_epoch(record: EpochRecord) -> None:
    sharpness = " ".join(f"{value:.2f}" for value in record.sharpness)
    if record.train_accuracy is None:  # reconstruction: losses only
        scores = f"test loss {record.eval_loss if record.eval_loss is not None else float('nan'):.5f}"
    else:
        scores = f"train {100 * record.train_accuracy:6.2f}%  test {100 * (record.eval_accuracy or 0):6.2f}%"
    print(f"epoch {record.epoch + 1:3d}  loss {record.train_loss:.4f}  {scores}  sharpness [{sharpness}]  {record.seconds:.1f}s",
          flush=True)  # fmt: skip


def _print_result(result: TrainResult) -> None:
    final = result.history[-1]
    if final.eval_accuracy is None:
        print(f"final test loss: {final.eval_loss:.5f} after {len(result.history)} epochs")
    else:
        print(f"final test accuracy: {100 * final.eval_accuracy:.2f}% after {len(result.history)} epochs")
    for layer in result.layers:
        print(
            f"  {layer.name:>14}: {layer.units:6d} units  binary={'yes' if layer.binary else 'NO'}  "
            f"firing rate {layer.firing_rate:.3f}  never fired {layer.never_fired}"
        )
    if result.fully_binary:
        print("fully binary: every spiking unit emitted only 0 or 1 on the test set (one time step)")
    else:
        print("NOT fully binary: some layers are below sharpness 1; train longer or sharpen sooner")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not distributed.is_distributed():
        return distributed.launch(_train, args.nproc, args)
    distributed.init_from_env()  # a no-op unless launched by torchrun
    return _train(args)


def _train(args: argparse.Namespace) -> int:
    trainer, train_loader, test_loader = prepare_training(args, callbacks=[_print_epoch])
    result = trainer.fit(train_loader, args.epochs, test_loader)
    if trainer.is_main:
        _print_result(result)
    return 0 if result.fully_binary or args.sharpener == "none" else 1


def model_from_checkpoint(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a registry model from a checkpoint written by the trainer."""
    run = checkpoint.get("run") or {}
    if "model" not in run:
        raise ValueError("checkpoint has no model name in its run info; load its 'model' state_dict yourself")
    model = create_model(run["model"], **run.get("model_options", {}))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def load_teacher(path: str, dataset: str, device: torch.device) -> torch.nn.Module:
    """The ``--teacher`` run's model, on ``device``: a classifier trained on ``dataset``."""
    try:
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"--teacher: {error}") from None
    run = checkpoint["run"]
    if run.get("dataset") != dataset:
        raise ValueError(f"--teacher {path} was trained on {run.get('dataset')!r}, this run trains on {dataset!r}")
    if recipe(run["model"]).target != "labels":
        raise ValueError(f"--teacher {path} is a {run['model']}, a reconstruction model; a teacher must classify")
    return model.to(device)


def cmd_eval(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint)
    dataset = args.dataset or checkpoint["run"]["dataset"]
    test_set = load_dataset(dataset, "test", args.data_dir, args.download)
    loader = TensorLoader.from_dataset(test_set, args.batch_size)
    loss, accuracy = evaluate(model, loader, target=recipe(checkpoint["run"]["model"]).target)
    layers = binary_report(model, loader)
    report = {
        "dataset": dataset,
        "samples": len(test_set),
        "accuracy": accuracy,
        "loss": loss,
        "fully_binary": all(layer.binary for layer in layers),
        "layers": [vars(layer) for layer in layers],
    }
    print(json.dumps(report, indent=1))
    return 0


def _graph_from_checkpoint(path: str, bits: int | None) -> tuple[Any, torch.nn.Module, str]:
    from .deploy import quantize, to_spiking_graph

    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint)
    dataset = checkpoint["run"].get("dataset")
    shape = checkpoint["run"].get("model_options", {}).get("input_shape")
    if shape is None and dataset not in DATASETS:
        raise ValueError(f"checkpoint {path} names no known dataset ({dataset!r}): its input shape is unknown")
    graph = to_spiking_graph(model, tuple(shape) if shape else DATASETS[dataset].image_shape)
    return (quantize(graph, bits) if bits else graph), model, dataset


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    graph, _, _ = _graph_from_checkpoint(args.checkpoint, args.bits)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {args.out}: directory {out.parent} does not exist")
    export(graph, out, args.format)
    print(graph.summary())
    print(f"wrote {args.format.upper()} {out} ({out.stat().st_size:,} bytes); encoder: {graph.encoder}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .deploy import quantize
    from .sim import simulate

    model = None
    if args.source.endswith(".nir"):
        from .export.nir import read_nir

        if not args.dataset:
            raise ValueError("--dataset is required to simulate a .nir file")
        graph, dataset = read_nir(args.source), args.dataset
        graph = quantize(graph, args.bits) if args.bits else graph
    else:
        graph, model, dataset = _graph_from_checkpoint(args.source, args.bits)
        dataset = args.dataset or dataset
    data = load_dataset(dataset, args.split, args.data_dir, args.download)
    images, labels = data.images[: args.limit], data.labels[: args.limit]
    pixels = images.float().div_(255.0)
    result = simulate(graph, pixels.numpy(), args.batch_size, progress=not args.no_progress)
    arithmetic = args.arithmetic or ("int8" if args.bits else "fp32")
    accuracy = result.accuracy(labels.numpy())
    print(result.report(arithmetic))
    print(f"simulated accuracy on {len(images):,} {dataset} {args.split} images: {100 * accuracy:.2f}%")
    figures: dict[str, Any] = {"source": args.source, "dataset": dataset, "split": args.split, "samples": len(images),
                               "bits": args.bits, "accuracy": accuracy}  # fmt: skip
    if model is not None:
        with torch.no_grad():
            reference = torch.cat([model(chunk).argmax(1) for chunk in pixels.split(1000)]).numpy()
        agree = int((reference == result.predictions).sum())
        figures["torch_accuracy"] = float((reference == labels.numpy()).mean())
        figures["agreement_with_torch"] = agree / len(images)
        print(f"PyTorch model: {100 * figures['torch_accuracy']:.2f}%; same class as the simulator on {agree:,} of {len(images):,} images")
    encoder, synops, dense = result.synaptic_ops()
    snn, ann = result.energy(arithmetic)
    figures.update(encoder_macs=encoder, synaptic_events=synops, dense_macs=dense, energy_nj=snn, dense_energy_nj=ann,
                   arithmetic=arithmetic, layers=[vars(layer) for layer in result.layers])  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    if args.trials < 1 or args.epochs < 1:
        raise ValueError(f"--trials and --epochs must be >= 1, got {args.trials} and {args.epochs}")
    base = ["train", "--model", args.model, "--holdout", str(args.holdout), "--seed", str(args.seed), "--no-progress"]
    for flag, value in (("--dataset", args.dataset), ("--limit", args.limit), ("--data-dir", args.data_dir)):
        if value is not None:
            base += [flag, str(value)]
    if args.download:
        base.append("--download")
    study = run_sweep(base, args.out, args.trials, args.epochs, args.seed)
    best = study.best_trial
    print(f"best of {len(study.trials)} trials: #{best.number} score {best.value:.4f} with {best.params}")
    print(f"study: {Path(args.out) / 'study.db'} (rerun the same command to add trials)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    train_argv = ["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--out", args.out,
                  "--epochs", str(args.epochs)] + (["--no-progress"] if args.no_progress else [])  # fmt: skip
    args = make_parser().parse_args(train_argv)  # the train command's own defaults, nothing copied
    print("whetstone demo: mnist-dense (784-256-64-100, 10x100 key) on 4,000 bundled MNIST digits,")
    print("Adadelta lr 4.0, simple bottom-up sharpener from epoch 6, 5 steps per layer\n")
    trainer, train_loader, test_loader = prepare_training(args)
    before: dict[str, float] = {}

    def remember_before(record: EpochRecord) -> None:
        _print_epoch(record)
        if all(value == 0.0 for value in record.sharpness):
            before["accuracy"] = record.eval_accuracy
            thresholded = copy.deepcopy(trainer.module)
            set_model_sharpness(thresholded, 1.0)
            before["thresholded"] = evaluate(thresholded, test_loader)[1]

    trainer.callbacks.append(remember_before)
    result = trainer.fit(train_loader, args.epochs, test_loader)
    print()
    print(f"accuracy before sharpening (continuous activations): {100 * before['accuracy']:.2f}%")
    print(f"  the same network simply thresholded, no sharpening:  {100 * before['thresholded']:.2f}%")
    print(f"accuracy after sharpening (binary spikes, 1 step):     {100 * result.history[-1].eval_accuracy:.2f}%")
    _print_result(result)
    print(f"done in {time.perf_counter() - started:.0f}s; plot: {Path(args.out) / 'history.png'}")
    return 0 if result.fully_binary else 1


def cmd_models(args: argparse.Namespace) -> int:
    from .models import _REGISTRY

    for name in list_models():
        print(f"{name:16s} {_REGISTRY[name].description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    handlers = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "simulate": cmd_simulate,
                "sweep": cmd_sweep, "demo": cmd_demo, "models": cmd_models}  # fmt: skip
    try:
        return handlers[args.command](args)
    except (ValueError, DatasetError, FileNotFoundError, PermissionError, FloatingPointError, ImportError) as error:
        if args.debug:
            raise
        print(f"whetstone: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("whetstone: interrupted (the last completed epoch's checkpoint is kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
