"""What a trained run's checkpoint rebuilds: the PyTorch model (:func:`model_from_checkpoint`), its
deployable graph (:func:`graph_from_checkpoint`), and whether it takes a dataset's images
(:func:`check_dataset`). It reads what :mod:`whetstone.training.checkpoint` loads; nothing below imports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..convert.graph_builder import to_spiking_graph
from ..data.datasets import DATASETS, dataset_spec
from ..graph.nodes import SpikingGraph
from ..graph.quantization import quantize
from ..models.zoo import create_model
from ..nn.quantization_aware import TARGET_WEIGHTS, quantize_weights, weights_to_train
from ..training.checkpoint import describe_kind, describe_load_error, load_checkpoint

__all__ = ["check_dataset", "graph_from_checkpoint", "model_from_checkpoint", "recorded_data_dir"]


def model_from_checkpoint(checkpoint: dict[str, Any], source: str = "the checkpoint") -> nn.Module:
    """Rebuild a registry model from a checkpoint written by the trainer, in eval mode; a run trained for
    integer weights (``--bits``, ``--target``) computes with them, as it did in training.

    ``ValueError`` (one line, starting with ``source``) when the checkpoint names no registered model,
    or its weights do not fit the model it names (another model's weights, other options, tampering)."""
    run = checkpoint.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("model"), str):
        raise ValueError(f"{source} names no registered model; load its 'model' state_dict into your own model")
    options = run.get("model_options", {})
    if not isinstance(options, dict):
        raise ValueError(f"{source}: its model options are {describe_kind(options)}, not a dict")
    try:
        model = create_model(run["model"], **options)
    except (ValueError, TypeError, RuntimeError, MemoryError) as error:
        raise ValueError(f"{source}: cannot rebuild its model: {error}") from None
    broken = next((name for name, value in checkpoint["model"].items()
                   if value.is_floating_point() and not torch.isfinite(value).all()), None)  # fmt: skip
    if broken is not None:
        raise ValueError(f"{source}: its weights hold NaN or infinite values ({broken}); this is not a usable model")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise ValueError(
            f"{source}: its weights do not fit model {run['model']!r}: {describe_load_error(error)}"
        ) from None
    trained_for = trained_weights(checkpoint)
    if trained_for is not None:
        quantize_weights(model, *trained_for)
    return model.eval()


def trained_weights(checkpoint: dict[str, Any]) -> tuple[int, int | None, bool] | None:
    """The integer weights a run was trained for (``--bits``, ``--target``): (bits, bits of the layer that
    reads the pixels or None, per channel); None for a run trained in float."""
    run = checkpoint.get("run") if isinstance(checkpoint.get("run"), dict) else {}
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    target, bits = config.get("target"), config.get("bits")  # a damaged checkpoint's values count as unset
    valid_bits = isinstance(bits, int) and not isinstance(bits, bool) and 2 <= bits <= 16
    return weights_to_train(target if target in TARGET_WEIGHTS else None, bits if valid_bits else None)


def check_dataset(checkpoint: dict[str, Any], dataset: str, source: str = "the checkpoint") -> None:
    """``ValueError`` unless the checkpoint's model takes the images of ``dataset`` (channels, height,
    width) and decodes as many classes as it has."""
    spec = dataset_spec(dataset)
    run = checkpoint.get("run") or {}
    shape = run.get("model_options", {}).get("input_shape")
    trained_on = run.get("dataset")
    if shape is not None and tuple(shape) != spec.image_shape:
        raise ValueError(
            f"--dataset {dataset} has {'x'.join(map(str, spec.image_shape))} images but the model in "
            f"{source} takes {'x'.join(map(str, shape))} (it was trained on {trained_on})"
        )
    key = checkpoint["model"].get("decoder.key")
    if key is not None and key.shape[0] != len(spec.classes):
        raise ValueError(
            f"--dataset {dataset} has {len(spec.classes)} classes but the model in {source} decodes {key.shape[0]}"
        )


def recorded_data_dir(checkpoint: dict[str, Any]) -> str | None:
    """The data folder the run was trained from (its --data-dir), if it recorded one that still exists: where
    commands that read the run look for its dataset unless told otherwise."""
    config = (checkpoint.get("run") or {}).get("config") or {}
    folder = config.get("data_dir") if isinstance(config, dict) else None
    return folder if isinstance(folder, str) and Path(folder).is_dir() else None


def graph_from_checkpoint(path: str, bits: int | None = None) -> tuple[SpikingGraph, nn.Module, dict[str, Any]]:
    """The deployable graph of a trained run (its folder or a checkpoint file), quantized to ``bits``
    if given; also returns the rebuilt PyTorch model and the loaded checkpoint."""
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, str(path))
    run = checkpoint["run"]
    shape = run.get("model_options", {}).get("input_shape")
    if shape is None and run.get("dataset") not in DATASETS:
        raise ValueError(
            f"checkpoint {path} names no known dataset ({run.get('dataset')!r}): its input shape is unknown"
        )
    graph = to_spiking_graph(model, tuple(shape) if shape else dataset_spec(run["dataset"]).image_shape)
    return (quantize(graph, bits) if bits else graph), model, checkpoint


def quantized_as_trained(graph: SpikingGraph, checkpoint: dict[str, Any], bits: int | None = None) -> SpikingGraph:
    """``graph`` quantized to ``bits`` if given, else to the weights its run was trained for (a run trained
    for 2-bit weights is its 2-bit network: its float weights are not what it learned to compute), else as
    it is."""
    if bits:
        return quantize(graph, bits)
    trained_for = trained_weights(checkpoint)
    if trained_for is None:
        return graph
    bits, encoder_bits, per_channel = trained_for
    return quantize(graph, bits, encoder_bits=encoder_bits, per_channel=per_channel)


def graph_as_exported(run: str | Path, target: str, bits: int | None = None) -> SpikingGraph:
    """The graph ``whetstone export RUN --target TARGET [--bits N]`` writes (prepared for the target): what a
    file that does not hold its own graph (a PyNN script, ONNX, an Akida model) is verified against."""
    from ..targets import get_target

    trained, _, checkpoint = graph_from_checkpoint(str(run))
    return get_target(target).prepare(quantized_as_trained(trained, checkpoint, bits))


def _run_of_file(path: str | Path, run: str | Path | None, missing: str) -> Path:
    """The run a file was exported from: ``run``, else the file's folder where it holds a checkpoint;
    ``ValueError(missing)`` where neither is."""
    if run is not None:
        return Path(run)
    if not (Path(path).parent / "checkpoint.pt").is_file():
        raise ValueError(missing)
    return Path(path).parent


def reference_of_file(path: str | Path, target: str, run: str | Path | None = None) -> SpikingGraph | None:
    """What a file is verified against: None for NIR (it holds its graph), else the graph its run exports for
    ``target`` (``run``, default: the file's folder). ``ValueError`` where no run is given or beside it."""
    if Path(path).suffix == ".nir":
        return None
    missing = f"{path} holds no graph of its own: pass --run, the run it was exported from"
    return graph_as_exported(_run_of_file(path, run, missing), target)


def dataset_of_file(path: str | Path, run: str | Path | None = None) -> str:
    """The dataset the run a file was exported from trained on (``run``, default: the file's folder).
    ``ValueError`` saying to pass ``--dataset`` where no run records one."""
    missing = f"--dataset is required: no run beside {path} records the data it was trained on (or pass --run)"
    return load_checkpoint(_run_of_file(path, run, missing))["run"]["dataset"]
