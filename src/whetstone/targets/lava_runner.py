"""Run a Loihi 2 program (:mod:`whetstone.targets.loihi2_program`) in Lava 0.10 and write its output spikes.

Lava 0.10 needs Python 3.10, so this file is a script for a separate interpreter: it imports numpy, scipy
and Lava only (never whetstone), and :mod:`whetstone.targets.loihi2` runs it in a subprocess::

    python3.10 lava_runner.py PROGRAM.npz SPIKES.npz fixed_pt|floating_pt

``PROGRAM.npz`` holds ``spec`` (JSON: host layers, populations in order, output, images, latency) and the
arrays it names. Each host layer is a ``RingBuffer`` source of its spikes, one image per step; each
population a ``LIFReset`` (``reset_interval = 1``: every step from rest) fed by ``Sparse`` synapses; the
output a ``RingBuffer`` sink. ``fixed_pt`` is Loihi 2's bit-accurate arithmetic (weights ``2 w`` with
``weight_exp = -1``, ``bias_mant << bias_exp``, ``v > vth << 6``), ``floating_pt`` the same network in floats.
``SPIKES.npz`` holds ``spikes`` (images, output units) and ``seconds`` (Lava's run, without building).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def run(program_path: str, out_path: str, tag: str) -> None:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import Sparse
    from scipy import sparse

    data = np.load(program_path, allow_pickle=False)
    spec = json.loads(str(data["spec"]))
    images, latency = spec["images"], spec["latency"]
    steps = images + latency
    fixed = tag == "fixed_pt"
    processes = {}
    for name, size in spec["host"].items():
        buffer = np.zeros((size, steps))
        buffer[:, :images] = data[f"host:{name}"].T
        processes[name] = Source(data=buffer)
    sizes = dict(spec["host"])
    for layer in spec["layers"]:
        name, size = layer["name"], layer["size"]
        if fixed:
            neurons = LIFReset(shape=(size,), du=4095, dv=0, vth=layer["vth"], bias_mant=data[f"{name}:bias_mant"],
                               bias_exp=data[f"{name}:bias_exp"], reset_interval=1)  # fmt: skip
        else:
            neurons = LIFReset(shape=(size,), du=1.0, dv=0.0, vth=float(layer["vth"]),
                               bias_mant=data[f"{name}:bias"].astype(float), bias_exp=0.0, reset_interval=1)  # fmt: skip
        for i, source in enumerate(layer["sources"]):
            rows, cols, weights = (data[f"{name}:{i}:{part}"] for part in ("rows", "cols", "weights"))
            values = 2 * weights.astype(np.int32) if fixed else weights.astype(float)
            matrix = sparse.csr_matrix((values, (rows, cols)), shape=(size, sizes[source]))
            synapses = Sparse(weights=matrix, weight_exp=-1 if fixed else 0)
            processes[source].s_out.connect(synapses.s_in)
            synapses.a_out.connect(neurons.a_in)
        processes[name] = neurons
        sizes[name] = size
    sink = Sink(shape=(sizes[spec["output"]],), buffer=steps)
    processes[spec["output"]].s_out.connect(sink.a_in)
    start = time.perf_counter()
    sink.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag=tag))
    recorded = sink.data.get()
    seconds = time.perf_counter() - start
    sink.stop()
    spikes = recorded[:, latency : latency + images].T.astype(np.uint8)
    np.savez(out_path, spikes=spikes, seconds=np.float64(seconds))


if __name__ == "__main__":
    run(*sys.argv[1:4])
