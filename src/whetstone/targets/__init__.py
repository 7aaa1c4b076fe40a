"""Export targets: one file per consumer of whetstone's files, saying how a file is written for it, how it
is run in that consumer's own software, and (for chips) what the chip's published limits allow.

    graph = ws.to_spiking_graph(model, (1, 28, 28))
    path = export(graph, "model.nir", target="speck")          # the forms Sinabs reads, 8-bit weights
    print(verify(path, "speck", images).line())               # run in Sinabs, against the simulator
    print(fit_report(graph, "speck").table())                 # DYNAP-CNN cores and memories

``generic`` (the default) writes only what the hardware toolchains read; each named target adapts it to
its consumer and records in the file's metadata which target and which threshold rule it was written for.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import numpy as np

from ..data.datasets import check_holds, load_dataset
from ..export.nir import read_nir, write_nir
from ..export.onnx import write_onnx
from ..graph.nodes import DeployError, SpikingGraph
from ..graph.simulator import SimResult, simulate
from . import akida, generic, loihi2, norse, onnx, pynn, snntorch, speck, spikingjelly, spinnaker2, spyx, xylo
from .base import FitCheck, FitReport, Target, Verification
from .consumer_process import ConsumerError

__all__ = [
    "CHIPS",
    "TARGETS",
    "FitCheck",
    "FitReport",
    "Target",
    "Verification",
    "export",
    "fit_report",
    "get_target",
    "target_and_format",
    "verify",
    "verify_on_dataset",
]

#: Every target by name (aliases resolve through :func:`get_target`).
TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        generic.TARGET, snntorch.TARGET, norse.TARGET, speck.TARGET, spikingjelly.TARGET, spyx.TARGET, xylo.TARGET,
        loihi2.TARGET, akida.TARGET, spinnaker2.TARGET, pynn.TARGET, onnx.TARGET, onnx.INTEGER,
    )
}  # fmt: skip
_ALIASES = {alias: target.name for target in TARGETS.values() for alias in target.aliases}
#: The chips with a fit report.
CHIPS = tuple(name for name, target in TARGETS.items() if target.fit is not None)
#: The targets that write and run graphs that run in time (recurrent edges, membranes carried over steps).
IN_TIME = tuple(name for name, target in TARGETS.items() if target.runs_in_time)


def get_target(name: str) -> Target:
    """The target called ``name`` (or one of its aliases: ``sinabs``, ``lava``, ``rockpool``, ...)."""
    key = _ALIASES.get(name, name)
    if key not in TARGETS:
        names = sorted([*TARGETS, *_ALIASES])
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(names)}")
    return TARGETS[key]


#: The target a file format means when none is named.
_TARGET_OF_FORMAT = {"nir": "generic", "onnx": "onnx", "fbz": "akida", "py": "pynn"}


def target_and_format(target: str | None, file_format: str | None, out: str | Path | None = None) -> tuple[Target, str]:
    """What an export writes from what was given: the target named, else the one the format (or ``out``'s
    extension) means; the format given, else the target's. ``ValueError`` where the two contradict."""
    suffix = Path(out).suffix.lstrip(".") if out else ""
    file_format = file_format or (suffix if suffix in _TARGET_OF_FORMAT and not target else None)
    chosen = get_target(target or _TARGET_OF_FORMAT.get(file_format or "nir", "generic"))
    file_format = file_format or chosen.format
    if chosen.format != file_format:
        raise ValueError(f"--target {chosen.name} is written as {chosen.format.upper()}: pass --format {chosen.format}")
    return chosen, file_format


def export(graph: SpikingGraph, path: str | Path, target: str = "generic", replace: bool = True) -> Path:
    """Write ``graph`` for ``target``: rewritten into the forms its consumer reads (refusing, by layer name,
    what it cannot express), quantized where its chip needs it, in its format (``path`` must end in
    ``.nir`` or ``.onnx`` accordingly); returns the path. This is whetstone's one way to write a file.
    ``replace=False`` never replaces a file at ``path``, not even one another process wrote meanwhile."""
    chosen = get_target(target)
    graph.check()
    path = Path(path)
    if path.suffix != f".{chosen.format}":
        raise ValueError(
            f"path {str(path)!r}: target {chosen.name!r} is written as {chosen.format.upper()}; name the file "
            f"{path.stem or 'model'}.{chosen.format}"
        )
    prepared = _prepared(graph, chosen)
    if chosen.write is not None:
        return chosen.write(prepared, path, replace)
    if chosen.format == "onnx":
        return write_onnx(prepared, path, replace)
    return write_nir(prepared, path, chosen.style, replace)


def _prepared(graph: SpikingGraph, chosen: Target) -> SpikingGraph:
    """``graph`` rewritten for ``chosen``, or the ``DeployError`` that says, by layer, why it cannot be: what
    export writes and what a fit report checks are one and the same."""
    if graph.is_temporal and not chosen.runs_in_time:
        raise DeployError(
            f"--target {chosen.name}: the graph runs in time (recurrent edges or leaky membranes), which whetstone "
            f"writes for {', '.join(IN_TIME)} only"
        )
    if graph.readout != "spikes" and chosen.name != "generic":
        raise DeployError(
            f"--target {chosen.name}: the graph's output is read as membrane potentials (readout={graph.readout!r}), "
            "which whetstone writes as the generic NIR file only"
        )
    return chosen.prepare(graph)


def verify(
    path: str | Path,
    consumer: str,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    reference: SpikingGraph | None = None,
    expected: SimResult | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> Verification:
    """Run the file at ``path`` in ``consumer``'s own software for one time step on ``images`` (float pixels
    in [0, 1]) and compare, image by image, its output spikes and decoded classes with the reference
    simulator's on ``reference`` (default: the NIR file read back). ``expected``, the reference already
    simulated on these images, saves simulating it again; the consumer runs ``batch_size`` images at a
    time. ``ImportError`` naming what to install when the consumer is missing, ``ValueError`` when it
    cannot run here at all."""
    chosen = get_target(consumer)
    if chosen.run is None:
        raise ValueError(f"{chosen.consumer} cannot run here: {chosen.unavailable}")
    if Path(path).suffix != f".{chosen.format}":
        raise ValueError(f"{path}: {chosen.consumer} runs .{chosen.format} files")
    if reference is None:
        if chosen.format != "nir":
            raise ValueError(f"{path}: give the graph the file was written from (reference=) to verify it")
        reference = read_nir(path)
        _check_written_for(path, reference.metadata.get("whetstone_target"), chosen)
        if chosen.fit is not None:  # a chip's file read back is checked as export checks it (ranges, registers)
            chosen.prepare(reference)
    elif not Path(path).is_file():
        raise FileNotFoundError(f"no file {path}")
    elif chosen.check_reference is not None:
        chosen.check_reference(Path(path), reference)
    images = np.asarray(images, dtype=np.float32)
    if reference.is_temporal:
        if not chosen.runs_in_time:
            raise ValueError(
                f"{path} runs in time (recurrent or leaky); whetstone runs such files in {', '.join(IN_TIME)} only"
            )
        images = reference.as_steps(images)  # (N, T, *input_shape)
    elif images[0].size != int(np.prod(reference.input_shape)):
        shapes = ["x".join(map(str, shape)) for shape in (images.shape[1:], reference.input_shape)]
        raise ValueError(f"the images are {shapes[0]} but {path} takes {shapes[1]}")
    else:
        images = images.reshape(len(images), *reference.input_shape)
    if expected is None:
        expected = simulate(reference, images, progress=progress)
    elif len(expected.output_spikes) != len(images):
        raise ValueError(f"expected holds {len(expected.output_spikes)} images' spikes, not {len(images)}")
    try:
        chunks = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=chosen.consumer, unit="batch")
        parts = []
        for i in chunks:
            batch = images[i : i + batch_size]
            parts.append(np.asarray(chosen.run(Path(path), batch)).reshape(len(batch), -1))
            gc.collect()  # imported modules hold their activations in reference cycles (snnTorch: 0.5 GB a batch)
        spikes = np.concatenate(parts)
    except ImportError as error:
        raise ImportError(
            f"verifying in {chosen.consumer} needs it installed: {chosen.unavailable} ({error})"
        ) from None
    except (DeployError, ValueError, OSError):  # whetstone's own, already one line
        raise
    except Exception as error:  # the consumer's own failure, a broken install's included: one line naming it
        said = " ".join(str(error).split())[:300] or "no message"
        raise ConsumerError(f"{chosen.consumer} failed on {path}: {type(error).__name__}: {said}") from error
    classes = reference.decode(spikes).argmax(axis=1)
    accuracy = float((classes == np.asarray(labels)).mean()) if labels is not None else None
    same = (spikes == expected.output_spikes).all(axis=1)
    decided = None
    if not reference.metadata.get("quantized_bits") and expected.margin.size == len(images):
        decided = expected.decided()  # integer graphs sum exactly: every image is decided there
    return Verification(chosen.consumer, len(images), int(same.sum()), int((classes == expected.predictions).sum()), accuracy,
                        None if decided is None else int(decided.sum()),
                        None if decided is None else int((same & decided).sum()))  # fmt: skip


def _check_written_for(path: str | Path, written_for: object, chosen: Target) -> None:
    """Refuse a file written for software that reads it differently (another threshold rule, pooling,
    neuron form or layout): its spikes would differ from the simulator's for no fault of the consumer."""
    written_for = "generic" if written_for is None else written_for  # a file without it is read as NIR means it
    styles = {target.style.target: target.style for target in TARGETS.values()}
    style = styles.get(str(written_for))
    same = style is not None and dataclasses.replace(style, target="", run="") == dataclasses.replace(
        chosen.style, target="", run=""
    )
    if not same:
        raise ValueError(
            f"{path} was written for {written_for}, which {chosen.consumer} reads differently; "
            f"export it with --target {chosen.name} to run it there"
        )


def verify_on_dataset(
    path: str | Path,
    consumer: str,
    dataset: str,
    split: str = "test",
    limit: int | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
    reference: SpikingGraph | None = None,
    progress: bool = False,
) -> Verification:
    """:func:`verify` on the first ``limit`` images of a dataset split, with its labels."""

    if reference is None and Path(path).suffix == ".nir":  # the shapes checked before any data is read
        graph = read_nir(path)
    else:
        graph = reference
    if graph is not None:
        check_holds(dataset, graph.sample_shape, path)
    data = load_dataset(dataset, split, data_dir, download)
    images = data.images[:limit].float().div_(255.0).numpy()
    return verify(path, consumer, images, data.labels[:limit].numpy(), reference, progress=progress)


def fit_report(graph: SpikingGraph, chip: str) -> FitReport:
    """Check ``graph`` against ``chip``'s published limits (``speck``, ``loihi2``, ``akida``, ``spinnaker2``,
    ``xylo``)."""
    chosen = get_target(chip)
    if chosen.fit is None:
        raise ValueError(f"{chip!r} is not a chip with a fit report; choose one of {', '.join(CHIPS)}")
    _prepared(graph.check(), chosen)  # a graph export refuses for this chip does not fit it either
    return chosen.fit(graph)
