"""Exporters of a deployable :class:`~whetstone.graph.SpikingGraph` (optional extra ``export``): NIR
(:mod:`whetstone.export.nir`, which also reads NIR files back) and ONNX (:mod:`whetstone.export.onnx`).
Every file is written atomically: complete, or not at all."""

from __future__ import annotations

from pathlib import Path

from ..graph import SpikingGraph

__all__ = ["FORMATS", "export", "read_nir"]

FORMATS = ("nir", "onnx")


def export(graph: SpikingGraph, path: str | Path, format: str) -> Path:
    """Write ``graph`` to ``path`` as ``format`` (``"nir"`` or ``"onnx"``); returns the path."""
    if format == "nir":
        from .nir import write_nir

        return write_nir(graph, path)
    if format == "onnx":
        from .onnx import write_onnx

        return write_onnx(graph, path)
    raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")


def read_nir(path: str | Path) -> SpikingGraph:
    """Read a NIR file back into a :class:`SpikingGraph` (see :func:`whetstone.export.nir.read_nir`)."""
    from .nir import read_nir as read

    return read(path)
