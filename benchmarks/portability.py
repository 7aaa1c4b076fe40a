"""Deploy anywhere: each network written for every target and run in that target's own software on a
whole test set, image by image against the reference simulator; then each chip's fit report. Prints
Markdown for docs/results.md (``--write`` puts it there).

    python benchmarks/portability.py SOURCE [SOURCE ...] --data-dir ../shared/data [--limit N] [--write]

A SOURCE is a run directory or checkpoint, or a NIR file followed by ``@DATASET`` (``model.nir@mnist``).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from whetstone.data.datasets import load_dataset
from whetstone.graph.nodes import DeployError, SpikingGraph
from whetstone.graph.quantization import quantize
from whetstone.graph.simulator import simulate
from whetstone.targets import CHIPS, TARGETS, export, fit_report, verify
from whetstone.targets.loihi2 import LAVA_VERSION

from _common import load_source, machine, write_section

#: The package each consumer is, for the versions line.
PACKAGES = {"snntorch": "snntorch", "norse": "norse", "speck": "sinabs", "spikingjelly": "spikingjelly",
            "spyx": "spyx", "xylo": "rockpool", "onnx": "onnxruntime", "onnx-int8": "onnxruntime", "akida": "akida",
            "loihi2": "lava"}  # fmt: skip


def _version(package: str) -> str:
    if package == "lava":  # in its own Python 3.10 environment (whetstone.targets.loihi2)
        return f"lava-nc {LAVA_VERSION}, fixed_pt"
    return _installed(package)


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def measure(name: str, graph: SpikingGraph, dataset: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    """One record per (weights, target): refused by layer name, or what the target's software gave."""
    data = load_dataset(dataset, "test", args.data_dir)
    images = data.images[: args.limit].float().div_(255.0).numpy().reshape(-1, *graph.input_shape)
    labels = data.labels[: args.limit].numpy()
    records = []
    for bits in (None, 8):
        base = quantize(graph, bits) if bits else graph
        weights = "int8" if bits else "float32"
        started = time.perf_counter()
        expected = simulate(base, images, progress=not args.no_progress)
        records.append({"network": name, "target": "simulator", "software": "reference", "weights": weights,
                        "accuracy": float((expected.predictions == labels).mean()), "seconds": time.perf_counter() - started})  # fmt: skip
        for target in TARGETS.values():
            if target.run is None:
                continue
            record = {"network": name, "target": target.name, "weights": weights,
                      "software": f"{target.consumer} {_version(PACKAGES[target.name])}"}  # fmt: skip
            try:
                prepared = target.prepare(base)
            except DeployError as error:
                records.append({**record, "refused": str(error)})
                continue
            if bits is None and prepared.metadata.get("quantized_bits"):
                continue  # a chip target writes 8-bit weights whatever it is given: its int8 record says it
            path = export(base, folder / f"{name}-{target.name}-{weights}.{target.format}", target.name)
            started = time.perf_counter()
            # A NIR file reads back to the graph simulated above; another format is checked against what export
            # wrote (Akida's model holds 4-bit weights), which verify simulates itself.
            nir = target.format == "nir"
            result = verify(path, target.name, images, labels, None if nir else prepared, expected if nir else None,
                            progress=not args.no_progress)  # fmt: skip
            records.append({**record, "samples": result.samples, "spikes_equal": result.spikes_equal,
                            "classes_equal": result.classes_equal, "accuracy": result.accuracy,
                            "decided": result.decided, "decided_spikes_equal": result.decided_spikes_equal,
                            "seconds": time.perf_counter() - started})  # fmt: skip
            print(records[-1], flush=True)
    return records


def detail_table(records: list[dict]) -> list[str]:
    """Every record as a row: the software and its version, both agreements, accuracy and time."""
    lines = ["| network | target (software) | weights | same output spikes | same class | accuracy | s |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in records:
        if "refused" in r:
            if r["weights"] == "float32":  # the same refusal for both weights: shown once
                lines.append(
                    f"| {r['network']} | {r['target']} ({r['software']}) | any | refused: {r['refused']} | | | |"
                )
        elif r["target"] == "simulator":
            lines.append(
                f"| {r['network']} | simulator (reference) | {r['weights']} | - | - | {r['accuracy']:.2%} | {r['seconds']:.0f} |"
            )
        else:
            n = r["samples"]
            spikes = f"{r['spikes_equal']:,}/{n:,}"
            if r.get("decided") is not None and r["decided"] < n:
                spikes += f" ({r['decided_spikes_equal']:,}/{r['decided']:,} decided)"
            lines.append(f"| {r['network']} | {r['target']} ({r['software']}) | {r['weights']} | {spikes} | "
                         f"{r['classes_equal']:,}/{n:,} | {r['accuracy']:.2%} | {r['seconds']:.0f} |")  # fmt: skip
    return lines


def _share(count: int, total: int) -> str:
    """A share that reads 100% only when it is all (99.996% is 99.99%)."""
    return "100%" if count == total else f"{math.floor(count / total * 10000) / 100:.2f}%"


def _cell(record: dict) -> str:
    """The share of images with the simulator's spikes; ``*`` where every image that differs has a membrane
    within float32 rounding of its threshold (the float64 simulator and a float32 engine may round apart)."""
    cell = _share(record["spikes_equal"], record["samples"])
    if record["spikes_equal"] < record["samples"] and record.get("decided") == record.get("decided_spikes_equal"):
        cell += "*"
    return cell


def matrix(records: list[dict]) -> list[str]:
    """Networks x consumers: the share of test images on which the consumer's output spikes are the
    simulator's, float32 / int8 weights (a chip target writes int8 only), or why it cannot run there."""
    networks = list(dict.fromkeys(r["network"] for r in records))
    measured = {r["target"] for r in records}
    targets = [name for name in TARGETS if name in measured]
    lines = ["| network | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for network in networks:
        cells = []
        for target in targets:
            found = {r["weights"]: r for r in records if r["network"] == network and r["target"] == target}
            if any("refused" in r for r in found.values()):
                reason = next(r["refused"] for r in found.values() if "refused" in r)
                cells.append("cannot: " + reason.split(": ", 1)[-1].split(";")[0])
                continue
            shares = [_cell(found[w]) if w in found else "-" for w in ("float32", "int8")]
            cells.append(" / ".join(shares))
        lines.append(f"| {network} | " + " | ".join(cells) + " |")
    return lines


def fits(name: str, graph: SpikingGraph) -> list[str]:
    rows = []
    for chip in CHIPS:
        report = fit_report(graph, chip)
        failed = "; ".join(f"{c.part}: {c.limit}, needs {c.value}" for c in report.failures())
        rows.append(f"| {name} | {report.chip} | {'yes' if report.fits else 'no'} | {failed or '-'} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int, help="only the first N test images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/results.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = (
        "python benchmarks/portability.py " + " ".join(args.sources) + (f" --limit {args.limit}" if args.limit else "")
    )
    records, fit_rows = [], ["| network | chip | fits | limits exceeded |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for source in args.sources:
            name, graph, dataset = load_source(source)
            records += measure(name, graph, dataset, args, Path(folder))
            fit_rows += fits(name, graph)
    legend = ("Cells: the share of test images on which the file, run in that software, gives the simulator's "
              "output spikes, float32 / int8 weights (a chip target writes 8-bit weights only); `*`: every image that "
              "differs has a membrane within float32 rounding of a threshold (\"decided\" images: none does), where "
              "the float64 simulator and a float32 engine may round apart.")  # fmt: skip
    text = "\n".join([f"Measured with `{command}` on {machine()}.", "", *matrix(records), "", legend, "",
                      *detail_table(records), "", *fit_rows])  # fmt: skip
    print(text)
    if args.write:
        write_section(
            Path(__file__).parents[1] / "docs" / "results.md", "portability", "Deploy anywhere (issue #19)", text
        )


if __name__ == "__main__":
    main()
