"""``onnx``: the network as standard ONNX operators (see :mod:`whetstone.export.onnx`); ``onnx-int8``: the
network quantized to 8 bits in integer arithmetic, uint8 activations times int8 weights in one
``QLinearConv`` per spiking layer (see :mod:`whetstone.export.onnx_integer`), bit-exact and 2-3.5x faster
on a CPU with int8 kernels. Both run with ONNX Runtime's CPU provider: ``spikes`` (the output code) for
the input batch, one pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export.onnx_integer import write_integer_onnx
from ..graph.nodes import SpikingGraph
from .base import Target, at_most_bits


def run(path: Path, images: np.ndarray) -> np.ndarray:
    """The ``spikes`` output of the file in ONNX Runtime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.asarray(images, dtype=np.float32)
    return np.concatenate([session.run(["spikes"], {"input": x[i : i + 1000]})[0] for i in range(0, len(x), 1000)])


TARGET = Target(
    name="onnx",
    consumer="ONNX Runtime",
    summary="standard ONNX operators (GreaterOrEqual + Cast per spiking layer)",
    format="onnx",
    run=run,
    unavailable="pip install onnx onnxruntime",
)


def _write_integer(graph: SpikingGraph, path: Path, replace: bool) -> Path:
    return write_integer_onnx(graph, path, replace)


INTEGER = Target(
    name="onnx-int8",
    consumer="ONNX Runtime",
    summary="8-bit weights in integer arithmetic (uint8 x int8 QLinearConv per spiking layer), bit-exact",
    format="onnx",
    prepare=lambda graph: at_most_bits(graph, 8, one_threshold=True, target="the integer ONNX file"),
    write=_write_integer,
    run=run,
    unavailable="pip install onnx onnxruntime",
)
