"""Measuring a trained network: loss and accuracy, and whether every spiking unit is binary.

Evaluation runs in eval mode, without autograd and in full float32 (:func:`full_float32`): the
precision the network is deployed in, so the accuracy reported is the deployed network's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .activations import SpikingActivation
from .losses import Loss, as_loss
from .sharpen import model_sharpness, spiking_layers

__all__ = [
    "LayerReport",
    "binary_report",
    "evaluate",
    "evaluate_run",
    "full_float32",
    "is_fully_binary",
    "simulate_run",
]


@dataclass
class LayerReport:
    """Activity of one spiking layer over a dataset."""

    name: str  # the module's qualified name in the model, e.g. "features.2"
    units: int
    binary: bool  # every output was exactly 0.0 or 1.0
    firing_rate: float  # mean output (the fraction of units firing, once binary)
    never_fired: int  # units whose output was 0 for every sample


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Run float32 convolutions and matrix products in full float32 inside the block.

    On recent NVIDIA GPUs PyTorch lets cuDNN compute float32 convolutions in TF32 (10-bit mantissa) by
    default. Training does not mind, but a binary unit whose input lands within that rounding of its
    threshold can flip: evaluation uses full float32, the precision the network is deployed in. (No
    effect on the CPU.)"""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
@full_float32()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], loss: Loss | None = None
) -> tuple[float, float | None]:
    """Mean loss and accuracy (a fraction) of ``model`` over ``loader``, in eval mode. ``loss`` defaults
    to :class:`~whetstone.losses.Classification`; with a reconstruction loss the accuracy is None."""
    loss = as_loss(loss).for_evaluation()
    was_training = model.training
    model.eval()
    total_loss = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    count = 0
    try:
        for x, y in loader:
            output = model(x)
            total_loss += loss(output, x, y).detach().cpu() * len(y)
            if not loss.reconstruct:
                correct += (output.argmax(dim=-1) == y).sum().cpu()
            count += len(y)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return float(total_loss) / count, None if loss.reconstruct else float(correct) / count


@torch.no_grad()
@full_float32()
def binary_report(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> list[LayerReport]:
    """Run ``model`` over ``loader`` and report, per spiking layer, whether every output was 0/1, its
    firing rate and how many units never fired."""
    names = {module: name for name, module in model.named_modules()}
    layers = spiking_layers(model)
    # Running figures stay on the model's device and are read once at the end: no host sync per batch.
    stats: dict[SpikingActivation, dict[str, Any]] = {layer: {"count": 0} for layer in layers}

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        entry = stats[module]
        flat = output.detach().flatten(1)
        binary, total, fired = ((flat == 0) | (flat == 1)).all(), flat.sum(dtype=torch.float64), (flat > 0).any(dim=0)
        if entry["count"]:
            binary, total, fired = binary & entry["binary"], total + entry["sum"], fired | entry["fired"]
        entry.update(binary=binary, sum=total, fired=fired, count=entry["count"] + flat.numel())

    handles = [layer.register_forward_hook(hook) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        for x, _ in loader:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    reports = []
    for layer in layers:
        entry = stats[layer]
        if not entry["count"]:  # never called (no batches, or a layer the forward pass skips)
            reports.append(LayerReport(names[layer], 0, True, 0.0, 0))
            continue
        fired = entry["fired"]
        reports.append(LayerReport(names[layer], fired.numel(), bool(entry["binary"]), float(entry["sum"]) / entry["count"],
                                   int((~fired).sum())))  # fmt: skip
    return reports


def is_fully_binary(model: nn.Module, reports: Sequence[LayerReport]) -> bool:
    """True when every spiking layer of ``model`` is at sharpness 1 and, in ``reports`` (from
    :func:`binary_report` on a dataset), emitted only 0 or 1: a single-time-step spiking network."""
    sharpness = model_sharpness(model)
    return (
        bool(sharpness)
        and bool(reports)
        and all(value == 1.0 for value in sharpness)
        and all(r.binary for r in reports)
    )


def evaluate_run(
    source: str | os.PathLike,
    dataset: str | None = None,
    batch_size: int = 1000,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Evaluate a trained run (its folder or a checkpoint file) on the test split of ``dataset`` (default:
    the one it was trained on): plain figures with the accuracy (None for an autoencoder), the loss,
    whether it is fully binary and each spiking layer's activity."""
    from .checkpoint import check_dataset, load_checkpoint, model_from_checkpoint
    from .data import TensorLoader, load_dataset
    from .losses import Classification, Reconstruction
    from .models import recipe

    checkpoint = load_checkpoint(source)
    model = model_from_checkpoint(checkpoint, str(source))
    dataset = dataset or checkpoint["run"].get("dataset")
    check_dataset(checkpoint, dataset, str(source))
    test_set = load_dataset(dataset, "test", data_dir, download)
    loader = TensorLoader.from_dataset(test_set, batch_size)
    loss = Reconstruction() if recipe(checkpoint["run"]["model"]).target == "inputs" else Classification()
    loss_value, accuracy = evaluate(model, loader, loss)
    layers = binary_report(model, loader)
    return {
        "dataset": dataset,
        "samples": len(test_set),
        "accuracy": accuracy,
        "loss": loss_value,
        "fully_binary": is_fully_binary(model, layers),
        "layers": [vars(layer) for layer in layers],
    }


def simulate_run(
    source: str | os.PathLike,
    dataset: str | None = None,
    split: str = "test",
    limit: int | None = None,
    bits: int | None = None,
    arithmetic: str = "fp32",
    batch_size: int = 256,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    progress: bool = False,
    tie_break: str = "lowest",
) -> tuple[Any, dict[str, Any]]:
    """Run a trained run (its folder or a checkpoint) or a ``.nir`` file in the event-driven simulator
    on the first ``limit`` images of a dataset split, quantized to ``bits`` if given, ties in the decode
    broken by ``tie_break`` (see :func:`~whetstone.sim.simulate`). Returns the
    :class:`~whetstone.sim.SimResult` and plain figures: accuracy, operations and energy per image, per
    layer activity, and for a checkpoint the PyTorch model's accuracy and its agreement with the simulator."""
    from .checkpoint import check_dataset
    from .data import check_holds, load_dataset
    from .graph import graph_from_checkpoint, quantize
    from .sim import simulate

    path, model = Path(source), None
    if path.suffix == ".onnx":
        raise ValueError(
            f"{source}: simulate takes a run folder, a checkpoint or a .nir file; an ONNX file runs in onnxruntime"
        )
    if path.suffix == ".nir":
        from .export.nir import read_nir

        if not dataset:
            raise ValueError("--dataset is required to simulate a .nir file")
        graph = read_nir(path)
        graph = quantize(graph, bits) if bits else graph
        check_holds(dataset, graph.sample_shape, source)
    else:
        graph, model, checkpoint = graph_from_checkpoint(str(source), bits)
        dataset = dataset or checkpoint["run"].get("dataset")
        check_dataset(checkpoint, dataset, str(source))
    data = load_dataset(dataset, split, data_dir, download)
    images, labels = data.images[:limit].float().div_(255.0), data.labels[:limit].numpy()
    result = simulate(graph, images.numpy(), batch_size, progress=progress, tie_break=tie_break)
    figures = {
        "source": str(source),
        "dataset": dataset,
        "split": split,
        "bits": bits,
        "tie_break": tie_break,
        **result.figures(labels, arithmetic),
    }
    if model is not None:
        with torch.no_grad():
            reference = torch.cat([model(chunk).argmax(1) for chunk in images.split(1000)]).numpy()
        figures["torch_accuracy"] = float((reference == labels).mean())
        figures["agreement_with_torch"] = float((reference == result.predictions).mean())
    return result, figures
