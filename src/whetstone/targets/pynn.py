"""``pynn`` (aliases ``spinnaker``, ``spinnaker1``): a PyNN script for SpiNNaker 1 (sPyNNaker) or any other
PyNN backend, run in NEST here, and a fit report against SpiNNaker 1's published limits.

Whetstone's first networks ran on a SpiNNaker board through PyNN. The file is one Python script, the network
inside it (:mod:`.pynn_network` is its code, and documents how the network runs): integrate-and-fire
``IF_curr_delta`` populations, synapses as ``FromListConnector`` lists with one step of delay per layer,
biases as synapses from a source that spikes at every image's onset, and the layers that read pixels
computed on the host as spike sources. It needs numpy and PyNN only. Weights are 8-bit integers per channel
and every number is an integer, so a backend's fixed point sums them exactly: sPyNNaker holds membranes in
signed 16.15 fixed point (``REAL`` is ``accum``, ``neural_modelling/src/common/maths-util.h``), so export
keeps every neuron's largest input within 65,535.

``verify --consumer pynn`` runs the file as a user would (``python model.py --backend nest``) in a process of
its own, on NEST 3 through PyNN 0.13.

Limits of SpiNNaker 1: Furber, Galluppi, Temple, Plana, "The SpiNNaker project", Proc. IEEE 102(5), 2014
(18 ARM968 cores per chip, 16 of them for applications; 128 MB of SDRAM per chip; 48 chips on a SpiNN-5
board); Rhodes et al., "sPyNNaker: a software package for running PyNN simulations on SpiNNaker", Front.
Neurosci. 12:816, 2018 (each synapse a 32-bit word in SDRAM: 16-bit weight, delay, type, neuron index; memory
beyond the synapse words is not counted, so the SDRAM check is a lower bound); sPyNNaker 7.4.1's source
(``abstract_pynn_neuron_model.py``: 256 neurons per core by default; ``constants.py``: a synaptic row, the
synapses from one neuron in one projection, holds at most 256, and a ``FromListConnector`` row of 897 was
refused, measured: the script splits longer rows over several projections between the same populations).
Where sPyNNaker is installed, the report also runs its own mapping (placement, routing, data generation) on a
virtual SpiNN-5 board: the script's ``--map``, in a process of its own.
"""

from __future__ import annotations

import ast
import binascii
import functools
import importlib.util
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np

from ..graph.connectivity import connectivity
from ..graph.nodes import DeployError, SpikingGraph
from ..graph.quantization import Registers
from ..utils.checks import install_hint
from ..utils.files import atomic_write, scratch_folder
from . import pynn_network
from .base import FitCheck, FitReport, Target, at_most_bits, weight_bits_check
from .consumer_process import ConsumerError, run_consumer

__all__ = ["TARGET", "check_written_from", "fit", "network_of", "read_network", "write_script"]

WEIGHT_BITS = 8
#: sPyNNaker's membrane is signed 16.15 fixed point: a neuron's whole input, in weight steps, stays below 2**16.
REGISTERS = Registers(current=2**16 - 1)
PROJECT = "Furber et al., Proc. IEEE 102(5), 2014"
SPYNNAKER = "sPyNNaker 7.4.1 (DEFAULT_MAX_ATOMS_PER_CORE, POP_TABLE_MAX_ROW_LENGTH)"
SYNAPSE_WORDS = "Rhodes et al., Front. Neurosci. 12:816, 2018"
CORES_PER_CHIP, NEURONS_PER_CORE, SDRAM_BYTES, BYTES_PER_SYNAPSE, CHIPS_PER_BOARD = 16, 256, 128 * 2**20, 4, 48
ROW_SYNAPSES = pynn_network.ROW  # sPyNNaker's longest synaptic row: the synapses from one neuron in a projection
#: sPyNNaker's configuration for a mapping without a board (its ~/.spynnaker.cfg, in a scratch home).
VIRTUAL_BOARD = "[Machine]\nvirtual_board = True\nversion = 5\n"
MAP_SECONDS = 300.0
#: The time limit of a NEST run, about four times what was measured: its start, building every synapse once
#: per run of pynn_network.CHUNK images (ResNet-18's 23.1 M: under 1.4e-5 s each), and each image (0.2 s,
#: and what its synapses cost), so a large network is not taken for a hung one and a hung one still stops.
START_SECONDS, SECONDS_PER_IMAGE, SECONDS_PER_SYNAPSE, SECONDS_PER_SYNAPSE_IMAGE = 120.0, 0.2, 5e-5, 3e-7


def network_of(graph: SpikingGraph) -> tuple[dict, dict[str, np.ndarray]]:
    """The network of the file (spec and arrays, as :mod:`.pynn_network` reads them) for an integer graph.
    ``DeployError`` naming the layer for what the script cannot express."""
    populations = connectivity(graph)
    input_name = graph.nodes[0].name
    host = {p.name for p in populations if p.reads_input}
    if graph.output in host:
        raise DeployError(f"{graph.output}: the output layer reads the pixels; nothing would run in PyNN")
    arrays: dict[str, np.ndarray] = {}
    spec: dict = {"host": [], "layers": [], "output": graph.output, "input_shape": list(graph.input_shape)}
    depth = dict.fromkeys(host, 0)
    shift = max(0.0, 1.0 - min(float(p.threshold.min()) for p in populations if p.name not in host))
    for population in populations:
        name = population.name
        on_chip = [source for source in population.sources if source != input_name and source not in host]
        if name in host and on_chip:
            raise DeployError(f"{name}: it reads the pixels and the spikes of {on_chip[0]}; PyNN would need both")
        threshold, bias = population.threshold, population.bias
        if name not in host:  # v_rest = 0 must lie below every threshold: both move up alike, exactly
            threshold, bias = threshold + shift, bias + shift
        arrays[f"{name}:threshold"], arrays[f"{name}:bias"] = threshold.astype(np.float64), bias.astype(np.float64)
        sources = []
        for i, (source, matrix) in enumerate(population.sources.items()):
            rows, cols = matrix.indices().numpy()
            weights = matrix.values().numpy()
            keep = weights != 0
            integral = np.all(weights == np.round(weights))
            arrays[f"{name}:{i}:rows"], arrays[f"{name}:{i}:cols"] = (
                rows[keep].astype(np.int32),
                cols[keep].astype(np.int32),
            )
            arrays[f"{name}:{i}:weights"] = weights[keep].astype(np.int32 if integral else np.float64)
            sources.append("input" if source == input_name else source)
        if name in host:
            spec["host"].append({"name": name, "size": population.size, "sources": sources})
            continue
        depth[name] = 1 + max(depth[source] for source in population.sources)
        spec["layers"].append({"name": name, "size": population.size, "depth": depth[name], "sources": sources})
    spec["latency"] = depth[graph.output]
    arrays["key"] = np.asarray(graph.key, dtype=np.uint8)
    return spec, arrays


def write_script(graph: SpikingGraph, path: str | Path, replace: bool = True) -> Path:
    """Write the PyNN script of a prepared (integer) ``graph``, atomically; returns the path."""
    return atomic_write(path, _script(graph, *network_of(graph)), replace)


def _script(graph: SpikingGraph, spec: dict, arrays: dict[str, np.ndarray]) -> str:
    """The script's text: :mod:`.pynn_network`'s code with ``graph``'s network (``network_of``) packed in."""
    spec = {**spec, "metadata": {k: v for k, v in graph.metadata.items() if isinstance(v, (str, int, float, bool))}}
    text = pynn_network.pack(spec, arrays)
    lines = "\n".join(f'    "{text[i : i + 100]}"' for i in range(0, len(text), 100))
    source = Path(pynn_network.__file__).read_text()
    return f'{source}\n\nNETWORK = (\n{lines}\n)\n\nif __name__ == "__main__":\n    main(NETWORK)\n'


def read_network(path: str | Path) -> dict:
    """The network a written script holds, read without running the script (``NETWORK`` is a literal)."""
    try:
        tree = ast.parse(Path(path).read_text())
        text = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    and [getattr(t, "id", None) for t in node.targets] == ["NETWORK"])  # fmt: skip
        return pynn_network.load(text)
    except (OSError, SyntaxError, ValueError, StopIteration, TypeError, zlib.error, binascii.Error) as error:
        raise ValueError(f"{path}: not a PyNN script written by whetstone ({type(error).__name__})") from None


def check_written_from(path: Path, graph: SpikingGraph) -> None:
    """``ValueError`` unless the script at ``path`` holds ``graph``'s network, number for number."""
    held, (spec, arrays) = read_network(path), network_of(graph)
    same = held["spec"]["layers"] == spec["layers"] and held["spec"]["host"] == spec["host"] and set(
        held["arrays"]) == set(arrays) and all(np.array_equal(held["arrays"][k], v) for k, v in arrays.items())  # fmt: skip
    if not same:
        raise ValueError(
            f"{path} holds another network than the run's (exported from another run, or with other --bits): "
            "verify it against the run it was written from (--run)"
        )


def fit(graph: SpikingGraph) -> FitReport:
    """The graph, as the PyNN script holds it, against SpiNNaker 1 (cores, chips, SDRAM; see the module docs)."""
    report = FitReport("SpiNNaker 1 (sPyNNaker)")
    written = at_most_bits(graph, WEIGHT_BITS, registers=REGISTERS)
    spec, arrays = network_of(written)  # once: it refuses what the script cannot express, as _prepare does
    for layer in spec["host"]:
        report.checks.append(FitCheck(layer["name"], "spike sources", f"{layer['size']:,} units computed on the host "
                                      "(pixels)", True, "real-valued pixels are not spikes"))  # fmt: skip
    cores = synapses = 0
    network = {"spec": spec, "arrays": arrays}
    for layer in spec["layers"]:
        into = pynn_network.synapses(network, layer)
        count = sum(len(weights) for *_, weights in into)
        row, source = _longest_row(into)
        need = math.ceil(layer["size"] / NEURONS_PER_CORE)
        cores, synapses = cores + need, synapses + count
        report.checks.append(FitCheck(layer["name"], f"<= {NEURONS_PER_CORE} neurons per core",
                                      f"{layer['size']:,} neurons, {count:,} synapses -> {need} core(s)", True,
                                      SPYNNAKER))  # fmt: skip
        split = f", written as {math.ceil(row / ROW_SYNAPSES)} projections" if row > ROW_SYNAPSES else ""
        report.checks.append(FitCheck(layer["name"], f"<= {ROW_SYNAPSES} synapses from one neuron per projection",
                                      f"{row:,} (from {source}){split}", True, SPYNNAKER))  # fmt: skip
    chips = max(1, math.ceil(cores / CORES_PER_CHIP))
    report.checks.append(FitCheck("network", f"<= {CORES_PER_CHIP * CHIPS_PER_BOARD} application cores (a SpiNN-5 "
                                  f"board: {CHIPS_PER_BOARD} chips x {CORES_PER_CHIP})", f"{cores} cores on {chips} "
                                  "chip(s)", chips <= CHIPS_PER_BOARD, PROJECT))  # fmt: skip
    need = BYTES_PER_SYNAPSE * synapses
    report.checks.append(FitCheck("network", f"synapse words <= {chips} x {SDRAM_BYTES // 2**20} MB of SDRAM",
                                  f"{need / 2**20:,.1f} MB (4 bytes a synapse; a lower bound)",
                                  need <= chips * SDRAM_BYTES, SYNAPSE_WORDS))  # fmt: skip
    report.checks.append(weight_bits_check(written, WEIGHT_BITS, "16-bit synaptic weights; whetstone writes 8"))
    report.notes.append(f"{spec['latency']} steps from an image's host spikes to its output spikes; one image every "
                        f"{spec['latency'] + 1} steps of 1 ms")  # fmt: skip
    mapped = _map_with_spynnaker(_script(written, spec, arrays))
    if mapped is None:
        report.notes.append(
            "sPyNNaker is not installed: its own mapping was not run (pip install 'spynnaker==1!7.4.1')"
        )
    elif "error" in mapped:  # its first sentence: sPyNNaker's messages run on with advice
        report.checks.append(FitCheck("network", "sPyNNaker maps it (a virtual SpiNN-5 board)",
                                      mapped["error"].split(". ")[0], False,
                                      "sPyNNaker 7.4.1's own mapper"))  # fmt: skip
    else:
        used = sum(mapped["cores"].values())
        report.checks.append(FitCheck("network", "sPyNNaker maps it (a virtual SpiNN-5 board)", f"{used} cores on "
                                      f"{mapped['chips']} chip(s)", True, "sPyNNaker 7.4.1's own mapper"))  # fmt: skip
    return report


def _longest_row(into: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> tuple[int, str]:
    """The most synapses one source neuron has into a layer (excitatory and inhibitory ones apart), and the
    source: the script splits a longer row over several projections (``pynn_network.rows_within``)."""
    rows = [(int(np.bincount(cols[chosen]).max(initial=0)), source) for source, _, cols, weights in into
            for chosen in (weights > 0, weights < 0)]  # fmt: skip
    return max(rows, default=(0, ""))


def _map_with_spynnaker(script_text: str) -> dict | None:
    """sPyNNaker's own mapping of a script (its text) on a virtual SpiNN-5 board (the script's ``--map``, run in
    a scratch home holding sPyNNaker's configuration), or None where sPyNNaker is not installed."""
    if importlib.util.find_spec("spynnaker") is None:
        return None
    with scratch_folder("spynnaker") as folder:
        home = Path(folder)
        (home / ".spynnaker.cfg").write_text(VIRTUAL_BOARD)
        script, out = atomic_write(home / "model.py", script_text), home / "mapping.json"
        run_consumer([sys.executable, str(script), "--map", "--out", str(out)], "sPyNNaker", MAP_SECONDS,
                     cwd=folder, env={"HOME": folder})  # fmt: skip
        try:
            return json.loads(out.read_text())
        except (OSError, ValueError) as error:
            raise ConsumerError(f"sPyNNaker wrote no readable mapping: {' '.join(str(error).split())}") from None


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    quantized = at_most_bits(graph, WEIGHT_BITS, registers=REGISTERS)
    network_of(quantized)  # refuses, by layer, what the script cannot express
    return quantized


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    """The output spikes of the script at ``path`` on ``images``, run as a user runs it, on NEST."""
    for module, package in (("pyNN", "pyNN"), ("nest", "nest-simulator")):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"{package} is not installed; {install_hint('pynn', 'pyNN nest-simulator')}")
    with scratch_folder("pynn") as folder:
        images_path, out_path = Path(folder) / "images.npy", Path(folder) / "spikes.npy"
        np.save(images_path, np.asarray(images, dtype=np.float32))
        command = [sys.executable, str(path), "--backend", "nest", "--images", str(images_path), "--out", str(out_path)]
        run_consumer(command, "PyNN (NEST)", time_limit(path, len(images)))
        try:
            spikes = np.load(out_path)
        except (OSError, ValueError) as error:
            raise ConsumerError(f"PyNN (NEST) wrote no readable spikes: {' '.join(str(error).split())}") from None
    if spikes.ndim != 2 or len(spikes) != len(images) or not np.isin(spikes, (0, 1)).all():
        raise ConsumerError(f"PyNN (NEST) returned spikes of shape {spikes.shape}, not 0/1 for {len(images)} images")
    return spikes


def time_limit(path: Path, images: int) -> float:
    """How long NEST may take to run the script at ``path`` on ``images`` images: scaled to its synapses."""
    written = Path(path).stat()
    synapses = _synapses(str(path), written.st_mtime_ns, written.st_size)
    runs = -(-images // pynn_network.CHUNK)
    return (
        START_SECONDS
        + SECONDS_PER_IMAGE * images
        + synapses * (SECONDS_PER_SYNAPSE * runs + SECONDS_PER_SYNAPSE_IMAGE * images)
    )


@functools.lru_cache(maxsize=8)
def _synapses(path: str, mtime_ns: int, size: int) -> int:  # the file's version (mtime, size) keys the cache
    """The synapses of the script at ``path`` as written then, read once: verify runs a script a batch at a
    time, and a large one takes seconds to unpack."""
    arrays = read_network(path)["arrays"]
    return sum(array.size for name, array in arrays.items() if name.endswith(":weights"))


TARGET = Target(
    name="pynn",
    consumer="PyNN (NEST)",
    summary="a PyNN script (IF_curr_delta, 8-bit integer weights) for SpiNNaker 1 or any PyNN backend; run in NEST",
    aliases=("spinnaker", "spinnaker1"),
    prepare=_prepare,
    run=_run,
    unavailable="PyNN 0.13 and nest-simulator 3 (pip install pyNN nest-simulator)",
    fit=fit,
    format="py",
    write=write_script,
    check_reference=check_written_from,
)
