"""``onnx``: the network as standard ONNX operators (see :mod:`whetstone.export.onnx`), run with ONNX
Runtime's CPU provider: ``spikes`` (the output code) for the input batch, one pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Target


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
