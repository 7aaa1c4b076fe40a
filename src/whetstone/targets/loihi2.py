"""``loihi2``: NIR for Intel's Loihi 2 and its framework Lava, run bit-accurately in Lava 0.10, and a fit
report against Loihi 2's registers and published limits.

The file holds what Loihi 2 holds: 8-bit integer weights, integer biases and integer thresholds (fires on
``v >= v_threshold``); :mod:`.loihi2_program` turns it into Loihi 2's registers (weights in its mixed-sign
format, ``vth``, ``bias_mant``/``bias_exp``, relay populations that align skip connections) and refuses, by
layer, what the registers cannot hold. The encoder, whose real-valued pixels overflow Loihi 2's 24-bit
current, runs on the host and sends spikes.

Lava 0.10 has no NIR reader and needs Python 3.10 (on 3.11 ``import lava.proc.lif.process`` fails inside
dataclasses), so ``verify --consumer lava`` writes the program to a file and runs
:mod:`.lava_runner` in a Python 3.10 environment holding ``lava-nc==0.10.0``: ``$WHETSTONE_LAVA_PYTHON``,
else ``lava/bin/python`` inside the environment whetstone runs in (``make install`` creates it with the
machine's Python 3.10). Lava's ``Loihi2SimCfg(select_tag="fixed_pt")`` is the bit-accurate simulation of the
chip; :func:`run_in_lava` also runs ``floating_pt``.

Limits: Intel Labs, "Taking Neuromorphic Computing to the Next Level with Loihi 2", technology brief
(2021): 128 neuron cores per chip, up to 8,192 neurons per core, up to 120 M synapses per chip (the brief
gives no per-core synapse figure: the report takes the chip's figure over its 128 cores, 937,500). Register
widths: Lava 0.10 ``lava/proc/lif/models.py`` (bit-accurate LIF: 24-bit ``u``/``v``, 17-bit ``vth``,
13-bit ``bias_mant``, 3-bit ``bias_exp``, 6-bit MSB alignment) and ``lava/utils/weightutils.py`` (8-bit
mixed-sign weights lose their lowest bit).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..export.nir import NirStyle, read_nir
from ..graph.nodes import SpikingGraph
from ..graph.quantization import Registers
from ..graph.simulator import simulate
from ..utils.files import scratch_folder
from .base import FitCheck, FitReport, Target, at_most_bits, weight_bits_check
from .consumer_process import ConsumerError, run_consumer
from .loihi2_program import ACT_SHIFT, BIAS_MANT_MAX, STATE_LIMIT, VTH_MAX, LoihiProgram, program

__all__ = ["LAVA_VERSION", "TARGET", "fit", "lava_python", "run_in_lava"]

STYLE = NirStyle(target="loihi2", fires_on=">=",
                 run="Lava 0.10: the encoder on the host, each other layer LIFReset(reset_interval=1) fed by Sparse "
                     "synapses, one step per layer (whetstone.targets.loihi2_program)")  # fmt: skip
BRIEF = "Intel Labs Loihi 2 technology brief (2021)"
#: Where a figure is derived rather than published: the per-core synapse share.
ESTIMATE = "estimate: the brief's 120 M synapses per chip over its 128 cores"
LIF_SOURCE = "lava-nc 0.10 lava/proc/lif/models.py (PyLifResetModelBitAcc)"
WEIGHT_SOURCE = "lava-nc 0.10 lava/utils/weightutils.py"
CORES, NEURONS_PER_CORE, SYNAPSES_PER_CHIP, WEIGHT_BITS = 128, 8192, 120_000_000, 8
SYNAPSES_PER_CORE = SYNAPSES_PER_CHIP // CORES
#: The bias mantissa (with the threshold moved into it) and the 24-bit current, in weight steps: export
#: scales each channel's weights (8 bits at most) down until both hold.
REGISTERS = Registers(bias=BIAS_MANT_MAX, current=(STATE_LIMIT >> ACT_SHIFT) - 1)
#: Lava's time limit: its start (imports, compiling the processes) and a bound per image, several times the
#: slowest measured (93 ms an image for the drop-in ResNet-18 in fixed_pt; docs/results.md).
LAVA_START_SECONDS, LAVA_SECONDS_PER_IMAGE = 120.0, 0.5
#: The Lava release the runner is written for and ``make install`` installs.
LAVA_VERSION = "0.10.0"
#: How to make the environment Lava runs in.
SETUP = "python3.10 -m venv ENV && ENV/bin/pip install lava-nc==0.10.0, then set WHETSTONE_LAVA_PYTHON=ENV/bin/python"


def fit(graph: SpikingGraph) -> FitReport:
    """The graph, as Loihi 2's registers hold it (:func:`~.loihi2_program.program`), against one chip."""
    report = FitReport("Loihi 2 (one chip)")
    written = at_most_bits(graph, WEIGHT_BITS, registers=REGISTERS)
    plan = program(written)  # refuses what the registers cannot hold, as export does
    for name, units in plan.host.items():
        report.checks.append(FitCheck(name, "spikes into the chip", f"{units:,} units computed on the host (pixels)",
                                      True, "24-bit current: real-valued pixels overflow it"))  # fmt: skip
    cores = 0
    for layer in plan.layers:
        synapses = plan.synapse_count(layer)
        need = max(math.ceil(layer.size / NEURONS_PER_CORE), math.ceil(synapses / SYNAPSES_PER_CORE), 1)
        cores += need
        kind = "relay (skip connection delay)" if layer.relay else f"{synapses:,} synapses"
        report.checks.append(FitCheck(layer.name, f"<= {NEURONS_PER_CORE:,} neurons, ~{SYNAPSES_PER_CORE:,} synapses "
                                      "per core (estimate)", f"{layer.size:,} neurons, {kind} -> {need} core(s)", True,
                                      ESTIMATE))  # fmt: skip
    report.checks.append(FitCheck("network", f"<= {CORES} cores (an estimate: see above)", f"{cores}", cores <= CORES,
                                  ESTIMATE))  # fmt: skip
    synapses = sum(plan.synapse_count(layer) for layer in plan.layers)
    report.checks.append(FitCheck("network", f"<= {SYNAPSES_PER_CHIP:,} synapses", f"{synapses:,}",
                                  synapses <= SYNAPSES_PER_CHIP, BRIEF))  # fmt: skip
    report.checks.append(weight_bits_check(written, WEIGHT_BITS, WEIGHT_SOURCE))
    layers = [layer for layer in plan.layers if not layer.relay]
    vth = max(layer.vth for layer in layers)
    report.checks.append(
        FitCheck("network", f"vth <= {VTH_MAX:,} (17 bits)", f"largest {vth:,}", vth <= VTH_MAX, LIF_SOURCE)
    )
    current = (STATE_LIMIT >> ACT_SHIFT) - 1
    worst = max(layers, key=lambda layer: layer.worst_input)
    report.checks.append(FitCheck(worst.name, f"synaptic input + bias <= {current:,} (24-bit current, 6-bit alignment)",
                                  f"at most {worst.worst_input:,} for any input", True, LIF_SOURCE))  # fmt: skip
    mants = np.concatenate([layer.bias_mant for layer in layers])
    report.checks.append(FitCheck("network", "bias_mant in [-4,096, 4,095], bias_exp <= 7",
                                  f"mantissas {int(mants.min()):,} to {int(mants.max()):,}", True, LIF_SOURCE))  # fmt: skip
    report.notes.append("convolutions are counted as unrolled synapses; Loihi 2 may share kernels and need fewer")
    report.notes.append(f"synapses per core are an estimate: {ESTIMATE}; Intel publishes no per-core synapse or "
                        "memory figure (a core's synaptic memory is shared by weights of any precision)")  # fmt: skip
    report.notes.append(f"{plan.latency} steps from an image's encoder spikes to its output spikes; one image per step")
    return report


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    quantized = at_most_bits(graph, WEIGHT_BITS, registers=REGISTERS)
    program(quantized)  # refuses, by layer, what the registers cannot hold
    return quantized


def lava_python() -> str:
    """The Python 3.10 interpreter that runs Lava: ``$WHETSTONE_LAVA_PYTHON``, else ``lava/bin/python`` in
    the environment whetstone runs in. ``ImportError`` saying how to make one where there is none."""
    chosen = os.environ.get("WHETSTONE_LAVA_PYTHON")
    if chosen:
        if not Path(chosen).exists() and shutil.which(chosen) is None:
            raise ImportError(f"WHETSTONE_LAVA_PYTHON={chosen} does not exist; {SETUP}")
        return chosen
    beside = Path(sys.prefix) / "lava" / "bin" / "python"
    if beside.exists():
        return str(beside)
    raise ImportError(f"no Python 3.10 environment with Lava found (looked for {beside}): {SETUP}")


def run_in_lava(path: str | Path, images: np.ndarray, tag: str = "fixed_pt") -> tuple[np.ndarray, float]:
    """The output spikes (N, units) of the ``loihi2`` file at ``path`` on ``images`` in Lava 0.10
    (``fixed_pt``: Loihi 2 bit-accurate; ``floating_pt``), and Lava's seconds for the run."""
    if tag not in ("fixed_pt", "floating_pt"):
        raise ValueError(f"tag must be 'fixed_pt' or 'floating_pt', got {tag!r}")
    python = lava_python()
    stat = Path(path).stat()
    graph, plan = _read_program(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    images = np.asarray(images, dtype=np.float32).reshape(len(images), *graph.input_shape)
    recorded = simulate(graph, images, record=tuple(plan.host)).recorded  # the host's encoder
    arrays = {f"host:{name}": recorded[name][:, 0].reshape(len(images), -1).astype(np.uint8) for name in plan.host}
    with scratch_folder("lava") as folder:
        spec_path, out_path = Path(folder) / "program.npz", Path(folder) / "spikes.npz"
        np.savez(spec_path, spec=json.dumps(_spec(plan, len(images), arrays)), **arrays)
        runner = Path(__file__).with_name("lava_runner.py")
        command = [python, str(runner), str(spec_path), str(out_path), tag]
        setting = f"WHETSTONE_LAVA_PYTHON={python}" if os.environ.get("WHETSTONE_LAVA_PYTHON") else f"Lava at {python}"
        run_consumer(command, "Lava", LAVA_START_SECONDS + LAVA_SECONDS_PER_IMAGE * len(images), setting)
        try:
            with np.load(out_path) as result:
                spikes, seconds = np.asarray(result["spikes"]), float(result["seconds"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConsumerError(f"Lava ({setting}) wrote no readable spikes: {' '.join(str(error).split())}") from None
        units = math.prod(graph.node(graph.output).shape)
        if spikes.shape != (len(images), units) or not np.isin(spikes, (0, 1)).all():
            raise ConsumerError(
                f"Lava ({setting}) returned spikes of shape {spikes.shape}, not 0/1 of {(len(images), units)}"
            )
        return spikes, seconds


@functools.lru_cache(maxsize=2)
def _read_program(path: str, mtime_ns: int, size: int) -> tuple[SpikingGraph, LoihiProgram]:
    """The file's graph and Loihi 2 program, built once per version of the file (a test set runs in chunks)."""
    graph = read_nir(path)
    return graph, program(graph)


def _spec(plan: LoihiProgram, images: int, arrays: dict[str, np.ndarray]) -> dict:
    """The program as JSON plus arrays (added to ``arrays``) for :mod:`.lava_runner`."""
    layers = []
    for layer in plan.layers:
        arrays[f"{layer.name}:bias_mant"] = layer.bias_mant.astype(np.int32)
        arrays[f"{layer.name}:bias_exp"] = layer.bias_exp.astype(np.int32)
        arrays[f"{layer.name}:bias"] = layer.bias.astype(np.int64)
        for i, group in enumerate(layer.synapses):
            arrays[f"{layer.name}:{i}:rows"] = group.rows.astype(np.int64)
            arrays[f"{layer.name}:{i}:cols"] = group.cols.astype(np.int64)
            arrays[f"{layer.name}:{i}:weights"] = group.weights.astype(np.int16)
        layers.append({"name": layer.name, "size": layer.size, "vth": layer.vth,
                       "sources": [group.source for group in layer.synapses]})  # fmt: skip
    return {"host": plan.host, "layers": layers, "output": plan.output, "images": images, "latency": plan.latency}


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    return run_in_lava(path, images, "fixed_pt")[0]


TARGET = Target(
    name="loihi2",
    consumer="Lava",
    summary="8-bit integer weights, integer thresholds and biases; run bit-accurately in Lava 0.10 (fixed_pt)",
    style=STYLE,
    aliases=("lava",),
    prepare=_prepare,
    run=_run,
    unavailable="lava-nc 0.10 in a Python 3.10 environment (make install makes .venv/lava)",
    fit=fit,
)
