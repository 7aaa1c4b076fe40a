"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import copy
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import whetstone as ws
from whetstone.export.nir import read_nir
from whetstone.graph.nodes import SpikingGraph
from whetstone.runs.restore import graph_from_checkpoint


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


class Report:
    """Prints rows and files each under the part being measured (``report.part``), so that each part
    replaces only its own section of docs/results.md and can be rerun alone."""

    def __init__(self) -> None:
        self.part = "header"
        self.rows: dict[str, list[str]] = {}

    def __call__(self, row: str) -> None:
        print(row, flush=True)
        self.rows.setdefault(self.part, []).append(row)


report = Report()


def with_relu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every spiking activation replaced by nn.ReLU."""
    relu = copy.deepcopy(model)
    for parent in list(relu.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ws.SpikingActivation):
                setattr(parent, name, nn.ReLU())
    return relu


def timed_rounds(fns: dict[str, Callable[[], None]], repeats: int, rounds: int) -> dict[str, list[float]]:
    """Median seconds per call of each function, for each round; rounds interleave the functions."""
    results: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(3):
            fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            results[name].append(statistics.median(times))
    return results


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)
