"""A binary spiking network written by whetstone-snn for PyNN: run it on any PyNN backend.

    python model.py --backend nest --images images.npy --out spikes.npy
    python model.py --backend spiNNaker ...     # on a SpiNNaker board, through sPyNNaker
    python model.py --backend brian2 ...
    python model.py --map --out mapping.json    # sPyNNaker's placement on a board (or a virtual one) only

or from Python: ``network = load(NETWORK)``, ``run(pyNN.nest, network, images)``. ``images`` are float pixels
in [0, 1], shaped (N, *input shape) or (N, pixels); the output is the output layer's spikes (N, units), 0/1.

Each spiking layer is a population of ``IF_curr_delta`` neurons (integrate-and-fire, delta synapses: a
spike adds its weight to the membrane at once) that fires on ``v >= v_thresh``; every synapse's delay is one
time step per layer it skips, so all of an image's input reaches a layer in one step, from rest, and the
layer fires at most once. The membrane decays to rest within a step (``tau_m`` far below the 1 ms step),
so images, presented one every ``latency + 1`` steps, are independent of each other. A neuron's bias is a
synapse from one source that spikes at every image's onset. Weights, biases and thresholds are integers
(8-bit weights), so every backend sums them exactly. The first layers, which read real-valued pixels that no
spike carries, are computed here, on the host, and enter as spike sources.

This module imports only numpy and the standard library (the PyNN backend on demand): a file written with
``whetstone export --target pynn`` is this text with its network appended, and needs no whetstone to run.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import io
import json
import zlib

import numpy as np

TIMESTEP = 1.0  # ms: one layer per step
#: NEST takes spike-source times only after the first step (and PyNN's minimum delay): images start here.
START = 2.0
#: The membrane time constant, ms: a sub-threshold membrane decays by exp(-100) every step, to rest.
TAU_M = 0.01
#: Images simulated in one run of the backend.
CHUNK = 500
#: sPyNNaker's longest synaptic row (the synapses from one neuron in one projection): the biases come from as
#: many onset neurons as keep each one's row within it.
ROW = 256


def pack(spec: dict, arrays: dict[str, np.ndarray]) -> str:
    """The network as the text constant ``NETWORK`` of a written file (zlib-compressed NumPy archive, base64)."""
    buffer = io.BytesIO()
    np.savez(buffer, spec=np.frombuffer(json.dumps(spec).encode(), dtype=np.uint8), **arrays)
    return base64.b64encode(zlib.compress(buffer.getvalue(), 9)).decode()


def load(text: str) -> dict:
    """The network a file holds: ``{"spec": ..., "arrays": {...}}``."""
    with np.load(io.BytesIO(zlib.decompress(base64.b64decode(text)))) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return {"spec": json.loads(arrays.pop("spec").tobytes().decode()), "arrays": arrays}


def host_spikes(network: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """The spikes (N, units) of the layers computed on the host, in float64 (exact: their biases keep half a
    pixel step away from every threshold)."""
    spec, arrays = network["spec"], network["arrays"]
    values = {"input": np.asarray(images, dtype=np.float64).reshape(len(images), -1)}
    for layer in spec["host"]:
        name = layer["name"]
        membrane = np.tile(arrays[f"{name}:bias"], (len(images), 1))
        for i, source in enumerate(layer["sources"]):
            rows, cols, weights = (arrays[f"{name}:{i}:{part}"] for part in ("rows", "cols", "weights"))
            order = np.argsort(rows, kind="stable")
            rows, cols, weights = rows[order], cols[order], weights[order].astype(np.float64)
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, int)
            for first in range(0, len(images), 64):  # (images x synapses) at a time
                products = values[source][first : first + 64][:, cols] * weights
                if len(starts):
                    membrane[first : first + 64, rows[starts]] += np.add.reduceat(products, starts, axis=1)
        values[name] = (membrane >= arrays[f"{name}:threshold"]).astype(np.float64)
    return {layer["name"]: values[layer["name"]] > 0 for layer in spec["host"]}


def run(sim, network: dict, images: np.ndarray) -> np.ndarray:
    """The output spikes (N, units) of ``network`` on ``images``, simulated by the PyNN backend ``sim``
    (``pyNN.nest``, ``pyNN.spiNNaker``, ...), ``CHUNK`` images to a run."""
    images = np.asarray(images, dtype=np.float64)
    parts = [_run_chunk(sim, network, images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)]
    units = _output(network["spec"])["size"]
    return np.concatenate(parts) if parts else np.zeros((0, units), np.uint8)


def build(sim, network: dict, images: np.ndarray) -> tuple[dict, float]:
    """The network set up on the backend ``sim`` for ``images``: its populations by name, and how long to run."""
    spec, arrays = network["spec"], network["arrays"]
    sequence = getattr(sim, "Sequence", lambda times: [float(t) for t in times])  # sPyNNaker: lists of floats
    fired = host_spikes(network, images)
    period = spec["latency"] + 1
    onsets = START + TIMESTEP * period * np.arange(len(images))
    sim.setup(timestep=TIMESTEP, min_delay=TIMESTEP, max_delay=TIMESTEP * spec["latency"])
    populations, depth = {}, {"onset": 0}
    for name, spikes in fired.items():
        times = [sequence(onsets[spikes[:, unit]]) for unit in range(spikes.shape[1])]
        populations[name] = sim.Population(spikes.shape[1], sim.SpikeSourceArray(spike_times=times), label=name)
        depth[name] = 0
    biases = [cols for layer in spec["layers"] for source, _, cols, _ in synapses(network, layer) if source == "onset"]
    width = max([1] + [int(cols.max()) + 1 for cols in biases if len(cols)])  # onset neurons: ROW biases each
    populations["onset"] = sim.Population(
        width, sim.SpikeSourceArray(spike_times=[sequence(onsets)] * width), label="onset"
    )
    for layer in spec["layers"]:
        name = layer["name"]
        cell = sim.IF_curr_delta(tau_m=TAU_M, cm=1.0, v_rest=0.0, v_reset=0.0, tau_refrac=TIMESTEP, i_offset=0.0,
                                 v_thresh=arrays[f"{name}:threshold"])  # fmt: skip
        populations[name] = cells = sim.Population(layer["size"], cell, label=name)
        cells.initialize(v=0.0)
        depth[name] = layer["depth"]
        for source, rows, cols, weights in synapses(network, layer):
            delay = TIMESTEP * (layer["depth"] - depth[source])
            for receptor, chosen in (("excitatory", weights > 0), ("inhibitory", weights < 0)):
                for part in rows_within(cols, chosen):
                    connections = np.column_stack([cols[part], rows[part], weights[part], np.full(len(part), delay)])
                    sim.Projection(populations[source], cells, sim.FromListConnector(connections), sim.StaticSynapse(),
                                   receptor_type=receptor)  # fmt: skip
    return populations, float(onsets[-1] + TIMESTEP * period) if len(images) else TIMESTEP


def rows_within(cols: np.ndarray, chosen: np.ndarray) -> list[np.ndarray]:
    """The ``chosen`` connections (their indices) as projections in which no source neuron ``cols`` has more
    than ``ROW`` synapses: sPyNNaker holds a neuron's synapses in one projection as one row of at most ``ROW``
    (a 5x5 convolution after pooling gives rows of 897); the k-th ``ROW`` of each row go to projection k."""
    index = np.flatnonzero(chosen)
    index = index[np.argsort(cols[index], kind="stable")]
    if not len(index):
        return []
    sources = cols[index]
    starts = np.flatnonzero(np.r_[True, sources[1:] != sources[:-1]])
    rank = np.arange(len(index)) - np.repeat(starts, np.diff(np.r_[starts, len(index)]))
    return [index[rank // ROW == k] for k in range(int(rank.max()) // ROW + 1)]


def synapses(network: dict, layer: dict) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """The synapses into a layer as ``(source, rows, cols, weights)``, its biases from the ``onset`` source last
    (the k-th positive, or negative, bias from onset neuron ``k // ROW``)."""
    arrays, name = network["arrays"], layer["name"]
    bias = arrays[f"{name}:bias"]
    into = [(source, *(arrays[f"{name}:{i}:{part}"] for part in ("rows", "cols", "weights")))
            for i, source in enumerate(layer["sources"])]  # fmt: skip
    rows = np.flatnonzero(bias)
    rank = np.where(bias[rows] > 0, np.cumsum(bias[rows] > 0) - 1, np.cumsum(bias[rows] < 0) - 1)
    return [*into, ("onset", rows, rank // ROW, bias[rows])]


def _run_chunk(sim, network: dict, images: np.ndarray) -> np.ndarray:
    spec = network["spec"]
    populations, duration = build(sim, network, images)
    output = _output(spec)
    populations[output["name"]].record("spikes")
    sim.run(duration)
    spikes = np.zeros((len(images), output["size"]), np.uint8)
    for unit, train in enumerate(populations[output["name"]].get_data().segments[0].spiketrains):
        index = np.rint(
            (np.asarray(train.magnitude) - START - TIMESTEP * output["depth"]) / (TIMESTEP * (spec["latency"] + 1))
        )
        spikes[index.astype(int), unit] = 1
    sim.end()
    return spikes


def map_on_board(network: dict) -> dict:
    """sPyNNaker's own mapping of the network (its placement, routing and data generation; on a virtual board
    where its configuration says ``virtual_board = True``): application cores by population and chips used,
    or the one-line error sPyNNaker refuses it with."""
    sim = importlib.import_module("pyNN.spiNNaker")
    try:
        build(sim, network, np.zeros((1, int(np.prod(network["spec"]["input_shape"])))))
        sim.run(TIMESTEP * (network["spec"]["latency"] + 1))
        from pacman.model.graphs.machine import MachineVertex
        from spinn_front_end_common.data import FecDataView

        spec = network["spec"]
        labels = {"onset", *(layer["name"] for layer in spec["host"] + spec["layers"])}
        cores: dict[str, int] = {}
        chips = set()  # the chips our populations occupy (sPyNNaker's system cores aside)
        for placement in FecDataView.iterate_placements_by_vertex_type(MachineVertex):
            vertex = placement.vertex.app_vertex or placement.vertex
            if vertex.label in labels:
                cores[vertex.label] = cores.get(vertex.label, 0) + 1
                chips.add((placement.x, placement.y))
        result = {"cores": cores, "chips": len(chips)}
    except Exception as error:  # noqa: BLE001 (sPyNNaker's refusals have no common base class: each is reported)
        result = {"error": f"{type(error).__name__}: {' '.join(str(error).split())}"}
    finally:
        sim.end()
    return result


def _output(spec: dict) -> dict:
    return next(layer for layer in spec["layers"] if layer["name"] == spec["output"])


def classes(network: dict, spikes: np.ndarray) -> np.ndarray:
    """The classes of output spikes (N, units): the N-hot code each is nearest to (ties: the first)."""
    key = network["arrays"]["key"].astype(np.float64)
    return ((2.0 * spikes - 1.0) @ (2.0 * key - 1.0).T).argmax(axis=1)


def main(text: str, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="nest", help="the PyNN backend: nest, spiNNaker, brian2, ...")
    parser.add_argument("--images", help=".npy of float pixels in [0, 1], (N, *input shape)")
    parser.add_argument("--out", required=True, help=".npy to write the output spikes (N, units) to (--map: .json)")
    parser.add_argument(
        "--map", action="store_true", help="only map the network with sPyNNaker (a board or a virtual one)"
    )
    args = parser.parse_args(argv)
    if args.map:
        with open(args.out, "w") as file:
            json.dump(map_on_board(load(text)), file)
        return
    if not args.images:
        parser.error("--images is required (unless --map)")
    spikes = run(importlib.import_module(f"pyNN.{args.backend}"), load(text), np.load(args.images))
    np.save(args.out, spikes)
