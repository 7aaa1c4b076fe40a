"""The chips' own toolchains on whole test sets: each network written for Loihi 2 and run in Lava 0.10
(``fixed_pt``, bit-accurate, and ``floating_pt``), written as an Akida model and run in Akida's engine, and
written as the PyNN script for SpiNNaker 1 and run on NEST, image by image against the reference simulator;
with each one's time per image and the accuracy at Akida's weight bits. Prints Markdown for docs/results.md (``--write`` puts it there).

    python benchmarks/chips.py SOURCE [SOURCE ...] --data-dir ../shared/data [--limit N] [--write]

A SOURCE is a run directory or checkpoint, or a NIR file followed by ``@DATASET`` (``model.nir@mnist``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from whetstone.data.datasets import load_dataset
from whetstone.graph.nodes import DeployError
from whetstone.graph.quantization import quantize
from whetstone.graph.simulator import simulate
from whetstone.targets import export, get_target
from whetstone.targets.loihi2 import LAVA_VERSION, run_in_lava

from _common import load_source, machine, write_section

CHUNK = 1000  # images per Lava run (its input buffer holds every step)


def lava_rows(name: str, graph, images: np.ndarray, folder: Path, float_limit: int | None) -> list[str]:
    prepared = get_target("loihi2").prepare(graph)
    path = export(graph, folder / f"{name}-loihi2.nir", "loihi2")
    expected = simulate(prepared, images).output_spikes
    rows = []
    for tag, count in (("fixed_pt", len(images)), ("floating_pt", min(len(images), float_limit or len(images)))):
        parts, lava_seconds, started = [], 0.0, time.perf_counter()
        for i in range(0, count, CHUNK):
            spikes, seconds = run_in_lava(path, images[i : min(i + CHUNK, count)], tag)
            parts.append(spikes)
            lava_seconds += seconds
        wall = time.perf_counter() - started
        same = int((np.concatenate(parts) == expected[:count]).all(axis=1).sum())
        rows.append(f"| {name} | Lava {LAVA_VERSION} `{tag}` | {same:,}/{count:,} | "
                    f"{lava_seconds / count * 1000:.1f} ms | {wall:.0f} |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def akida_rows(name: str, graph, images: np.ndarray, labels: np.ndarray, folder: Path) -> list[str]:
    target = get_target("akida")
    try:
        prepared = target.prepare(graph)
    except DeployError as error:
        return [f"| {name} | refused: {error} | | | | |"]
    path = export(graph, folder / f"{name}.fbz", "akida")
    started = time.perf_counter()
    spikes = target.run(path, images)
    seconds = time.perf_counter() - started
    reference = simulate(prepared, images)
    same = int((spikes == reference.output_spikes).all(axis=1).sum())
    full = simulate(graph, images).predictions
    eight = simulate(quantize(graph, 8), images).predictions
    accuracy = [float((predictions == labels).mean()) for predictions in (full, eight, reference.predictions)]
    row = (f"| {name} | {same:,}/{len(images):,} | {accuracy[0]:.2%} | {accuracy[1]:.2%} | {accuracy[2]:.2%} | "
           f"{seconds / len(images) * 1000:.2f} ms |")  # fmt: skip
    return [row]


def pynn_rows(name: str, graph, images: np.ndarray, folder: Path) -> list[str]:
    import nest
    import pyNN

    target = get_target("pynn")
    prepared = target.prepare(graph)
    path = export(graph, folder / f"{name}-pynn.py", "pynn")
    expected = simulate(prepared, images).output_spikes
    started = time.perf_counter()
    spikes = np.concatenate([target.run(path, images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)])
    wall = time.perf_counter() - started
    same = int((spikes == expected).all(axis=1).sum())
    return [(f"| {name} | PyNN {pyNN.__version__} on NEST {nest.__version__} | {same:,}/{len(images):,} | "
            f"{wall / len(images) * 1000:.1f} ms (the script's whole run) | {wall:.0f} |")]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int, help="only the first N test images")
    parser.add_argument("--float-limit", type=int, help="run Lava's floating_pt on only the first N images")
    parser.add_argument("--parts", nargs="+", choices=["lava", "akida", "pynn"], default=["lava", "akida"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the tables into docs/results.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/chips.py " + " ".join(args.sources) + (f" --limit {args.limit}" if args.limit else "")
    command += " --parts " + " ".join(args.parts) if args.parts != ["lava", "akida"] else ""
    command += f" --float-limit {args.float_limit}" if args.float_limit else ""
    lava = ["| network | software | same output spikes as the simulator | Lava's time per image | wall s |",
            "|---|---|---:|---:|---:|"]  # fmt: skip
    header = ("| network | same output spikes (Akida engine vs simulator) | accuracy float | 8-bit | Akida bits (8-bit "
              "input layer, 4-bit others) | Akida's time per image |")  # fmt: skip
    akida = [header, "|---|---:|---:|---:|---:|---:|"]
    pynn = [
        "| network | software | same output spikes as the simulator | time per image | wall s |",
        "|---|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for source in args.sources:
            name, graph, dataset = load_source(source)
            data = load_dataset(dataset, "test", args.data_dir)
            images = data.images[: args.limit].float().div_(255.0).numpy().reshape(-1, *graph.input_shape)
            labels = data.labels[: args.limit].numpy()
            if "lava" in args.parts:
                lava += lava_rows(name, graph, images, Path(folder), args.float_limit)
            if "akida" in args.parts:
                akida += akida_rows(name, graph, images, labels, Path(folder))
                print(akida[-1], flush=True)
            if "pynn" in args.parts:
                pynn += pynn_rows(name, graph, images, Path(folder))
                print(pynn[-1], flush=True)
    results = Path(__file__).parents[1] / "docs" / "results.md"
    for part, table, title in (("lava", lava, "Loihi 2 in Lava (issue #27)"), ("akida", akida, "Akida (issue #27)"),
                               ("pynn", pynn, "SpiNNaker 1 through PyNN (issue #37)")):  # fmt: skip
        if part in args.parts:
            text = "\n".join([f"Measured with `{command}` on {machine()}.", "", *table])
            print(text)
            if args.write:
                write_section(results, f"chips-{part}", f"Chips' own toolchains: {title}", text)


if __name__ == "__main__":
    main()
