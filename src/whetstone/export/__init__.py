"""Exporters of a deployable :class:`~whetstone.graph.SpikingGraph` (optional extra ``export``): NIR
(:mod:`whetstone.export.nir`, which also reads NIR files back) and ONNX (:mod:`whetstone.export.onnx`).
Every file is written atomically: complete, or not at all."""

from __future__ import annotations

from pathlib import Path

from ..graph import SpikingGraph

__all__ = ["FORMATS", "export", "read_nir"]

FORMATS = ("nir", "onnx")


def export(graph: SpikingGraph, path: str | Path, format: str, target: str | None = None) -> Path:
    """Write ``graph`` to ``path`` as ``format`` (``"nir"`` or ``"onnx"``); returns the path. A NIR file is
    written for ``target`` (default ``generic``, the portable file; see :mod:`whetstone.targets`)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    from ..targets import export as export_for
    from ..targets import get_target

    chosen = get_target(target or ("onnx" if format == "onnx" else "generic"))
    if chosen.format != format:
        raise ValueError(f"target {chosen.name!r} is written as {chosen.format.upper()}, not {format.upper()}")
    return export_for(graph, path, chosen.name)


def read_nir(path: str | Path) -> SpikingGraph:
    """Read a NIR file back into a :class:`SpikingGraph` (see :func:`whetstone.export.nir.read_nir`)."""
    from .nir import read_nir as read

    return read(path)
