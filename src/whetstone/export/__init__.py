"""Exporters of a deployable :class:`~whetstone.deploy.SpikingGraph` (optional extra ``export``)."""

from __future__ import annotations

from pathlib import Path

from ..deploy import SpikingGraph

__all__ = ["FORMATS", "export"]

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
