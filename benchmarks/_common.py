"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import torch

from whetstone.export.nir import read_nir
from whetstone.graph import SpikingGraph
from whetstone.restore import graph_from_checkpoint


def machine() -> str:
    """One line naming where a figure was measured."""
    device = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"CPU {platform.machine()}"
    return f"{device}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` to the JSON-lines file ``path`` (one result per line, so an interrupted benchmark
    keeps what it finished) and print it."""
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def write_section(path: Path, name: str, title: str, text: str) -> None:
    """Replace the block between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``path`` (append a
    titled section holding it if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in content:
        content = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, content, flags=re.DOTALL)
    else:
        content = content.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    path.write_text(content)


def load_source(source: str) -> tuple[str, SpikingGraph, str]:
    """(name, graph, dataset) of a run directory / checkpoint or ``file.nir@dataset``."""
    if "@" in source:
        path, dataset = source.rsplit("@", 1)
        return Path(path).stem, read_nir(path), dataset
    graph, _, checkpoint = graph_from_checkpoint(source)
    return checkpoint["run"]["model"], graph, checkpoint["run"]["dataset"]
