"""A saved run measured: :func:`evaluate_run` (the PyTorch model on a test set: accuracy, loss, the binary
check) and :func:`simulate_run` (its deployable graph, or a ``.nir`` file, in the reference simulator:
accuracy, operations, energy), and what a chip's integer weights cost it (:func:`precision_on_run`). What
``whetstone eval``, ``simulate``, ``export`` and ``fit`` print about a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import check_holds, load_dataset
from ..data.loader import TensorLoader
from ..export.nir import read_nir
from ..graph.nodes import SpikingGraph
from ..graph.precision import PrecisionCost, describe_weights, precision_cost
from ..graph.quantization import quantize
from ..graph.simulator import simulate
from ..graph.spike_plot import plot_spikes
from ..models.zoo import recipe
from ..nn.losses import Classification, Reconstruction
from ..training.checkpoint import load_checkpoint
from ..training.evaluation import binary_report, evaluate, is_fully_binary
from .restore import (
    check_dataset,
    graph_from_checkpoint,
    model_from_checkpoint,
    quantized_as_trained,
    recorded_data_dir,
)

#: Test images on which export and fit measure what a chip's integer weights cost.
PRECISION_IMAGES = 1000
#: The samples whose spikes ``simulate --plot`` draws as rasters.
PLOTTED_SAMPLES = 8

__all__ = ["PRECISION_IMAGES", "evaluate_run", "precision_on_run", "simulate_run", "simulation_text"]


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
    run = checkpoint["run"]  # the run's own loss: its logit scale scales the loss the history records
    loss = (
        Reconstruction()
        if recipe(run["model"]).target == "inputs"
        else Classification(run.get("config", {}).get("logit_scale") or 1.0)
    )
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
    plot: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Run a trained run (its folder or a checkpoint) or a ``.nir`` file in the event-driven simulator
    on the first ``limit`` images of a dataset split, quantized to ``bits`` if given, ties in the decode
    broken by ``tie_break`` (see :func:`~whetstone.graph.simulator.simulate`). Returns the
    :class:`~whetstone.graph.simulator.SimResult` and plain figures: accuracy, operations and energy per image, per
    layer activity, and for a checkpoint the PyTorch model's accuracy and its agreement with the simulator.
    ``plot``: also write the spike plot (:func:`~whetstone.graph.spike_plot.plot_spikes`) beside the run
    (``spikes.png`` in its folder) or the file (``NAME.spikes.png``); its path is in the figures."""
    path, model = Path(source), None
    if path.suffix == ".onnx":
        raise ValueError(
            f"{source}: simulate takes a run folder, a checkpoint or a .nir file; an ONNX file runs in onnxruntime"
        )
    if path.suffix == ".nir":
        if not dataset:
            raise ValueError("--dataset is required to simulate a .nir file")
        trained = read_nir(path)
        check_holds(dataset, trained.sample_shape, source)
    else:
        trained, model, checkpoint = graph_from_checkpoint(str(source))
        dataset = dataset or checkpoint["run"].get("dataset")
        check_dataset(checkpoint, dataset, str(source))
        data_dir = data_dir or recorded_data_dir(checkpoint)
    data = load_dataset(dataset, split, data_dir, download)
    images, labels = data.images[:limit].float().div_(255.0), data.labels[:limit].numpy()
    if model is not None:  # a run: its own integer weights if it was trained for them
        graph = quantized_as_trained(trained, checkpoint, bits)
    else:
        graph = quantize(trained, bits) if bits else trained
    bits = graph.metadata.get("quantized_bits")  # the run's own, if it was trained for integer weights
    spiking = tuple(node.name for node in graph.spiking_nodes()) if plot else ()
    result = simulate(graph, images.numpy(), batch_size, progress=progress, tie_break=tie_break, record=spiking,
                      record_samples=PLOTTED_SAMPLES)  # fmt: skip
    figures = {
        "source": str(source),
        "dataset": dataset,
        "split": split,
        "bits": bits,
        "tie_break": tie_break,
        **result.figures(labels, arithmetic),
    }
    if bits:  # what the integer weights cost: warned past a point, refused at chance
        floats = simulate(trained, images.numpy(), batch_size, tie_break=tie_break).predictions
        cost = PrecisionCost(bits, len(labels), float((floats == labels).mean()), figures["accuracy"],
                             int(trained.key.shape[0]), describe_weights(graph))  # fmt: skip
        figures["weights"] = cost.weights
        figures["float_accuracy"] = cost.float_accuracy
        cost.check()
    if model is not None:
        with torch.no_grad():
            reference = torch.cat([model(chunk).argmax(1) for chunk in images.split(1000)]).numpy()
        figures["torch_accuracy"] = float((reference == labels).mean())
        figures["agreement_with_torch"] = float((reference == result.predictions).mean())
    if plot:
        if path.suffix == ".nir":
            beside = path.with_suffix(".spikes.png")
        else:  # a run folder, or a checkpoint in one
            beside = (path if path.is_dir() else path.parent) / "spikes.png"
        figures["spike_plot"] = str(plot_spikes(result, beside, PLOTTED_SAMPLES))
    return result, figures


def simulation_text(result: Any, figures: dict[str, Any], arithmetic: str) -> str:
    """What ``whetstone simulate`` prints: the per-layer report, the accuracy, with ``--bits`` the float
    network's beside it, and for a checkpoint the PyTorch model's and how often the two agree."""
    where = f"{figures['samples']:,} {figures['dataset']} {figures['split']} images"
    lines = [result.report(arithmetic), f"simulated accuracy on {where}: {figures['accuracy']:.2%}"]
    if "float_accuracy" in figures:
        change = 100 * (figures["accuracy"] - figures["float_accuracy"])
        lines.append(f"with float weights: {figures['float_accuracy']:.2%} (the {figures['weights']} weights: {change:+.2f} points)")  # fmt: skip
    if "agreement_with_torch" in figures:
        agree = round(figures["agreement_with_torch"] * figures["samples"])
        lines.append(f"PyTorch model: {figures['torch_accuracy']:.2%}; same class as the simulator on {agree:,} of "
                     f"{figures['samples']:,}")  # fmt: skip
    if "spike_plot" in figures:
        lines.append(f"spike plot: {figures['spike_plot']}")
    return "\n".join(lines)


def precision_on_run(
    graph: SpikingGraph,
    prepared: SpikingGraph,
    checkpoint: dict[str, Any],
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
) -> str:
    """What a chip's integer weights cost a trained run: ``graph`` (float) and ``prepared`` (what the target
    writes) simulated on the first ``limit`` (default :data:`PRECISION_IMAGES`) test images of the run's
    dataset. Returns the line to print ("" for a float file; a line saying why where the data is
    missing); raises ``ValueError`` for a network left at chance, warns past a point
    (:meth:`~whetstone.graph.precision.PrecisionCost.check`)."""
    if prepared.metadata.get("quantized_bits") is None:
        return ""
    dataset = checkpoint["run"].get("dataset")
    try:
        data = load_dataset(dataset, "test", data_dir or recorded_data_dir(checkpoint), download)
    except (OSError, ValueError) as error:  # DatasetError is a ValueError
        return f"the integer weights' accuracy is not measured: {' '.join(str(error).split())}\n"
    count = limit or PRECISION_IMAGES
    images, labels = data.images[:count].float().div_(255.0).numpy(), data.labels[:count].numpy()
    cost = precision_cost(graph, prepared, images, labels)
    cost.check()
    return f"{cost.line()} ({dataset} test)\n"
