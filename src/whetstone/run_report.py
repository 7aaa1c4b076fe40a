"""A saved run measured: :func:`evaluate_run` (the PyTorch model on a test set: accuracy, loss, the binary
check) and :func:`simulate_run` (its deployable graph, or a ``.nir`` file, in the reference simulator:
accuracy, operations, energy). What ``whetstone eval`` and ``whetstone simulate`` print."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .data import TensorLoader, check_holds, load_dataset
from .export.nir import read_nir
from .losses import Classification, Reconstruction
from .models import recipe
from .quantization import quantize
from .report import binary_report, evaluate, is_fully_binary
from .restore import check_dataset, graph_from_checkpoint, model_from_checkpoint, recorded_data_dir
from .sim import simulate

__all__ = ["evaluate_run", "simulate_run"]


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
    checkpoint = load_checkpoint(source)
    model = model_from_checkpoint(checkpoint, str(source))
    dataset = dataset or checkpoint["run"].get("dataset")
    check_dataset(checkpoint, dataset, str(source))
    test_set = load_dataset(dataset, "test", data_dir or recorded_data_dir(checkpoint), download)
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
    path, model = Path(source), None
    if path.suffix == ".onnx":
        raise ValueError(
            f"{source}: simulate takes a run folder, a checkpoint or a .nir file; an ONNX file runs in onnxruntime"
        )
    if path.suffix == ".nir":
        if not dataset:
            raise ValueError("--dataset is required to simulate a .nir file")
        graph = read_nir(path)
        graph = quantize(graph, bits) if bits else graph
        check_holds(dataset, graph.sample_shape, source)
    else:
        graph, model, checkpoint = graph_from_checkpoint(str(source), bits)
        dataset = dataset or checkpoint["run"].get("dataset")
        check_dataset(checkpoint, dataset, str(source))
        data_dir = data_dir or recorded_data_dir(checkpoint)
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
