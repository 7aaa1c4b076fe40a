"""Accuracy at each chip's precision: a network trained with its recipe, then written for every chip target
(each at its own bits and scheme) and simulated on the whole test set, beside the float binary network;
per-layer against per-channel scales at 4 and 2 bits; and quantization-aware training at 2 and 4 bits.
Results append to a JSON-lines file, one line per (data set, seed, training); ``--table`` writes the
table into docs/results.md.

    python benchmarks/chip_precision.py --datasets mnist fashion-mnist --seeds 0 1 --threads 1 --data-dir DATA
    python benchmarks/chip_precision.py --datasets mnist --seeds 0 1 --train-bits 2 --data-dir DATA
    python benchmarks/chip_precision.py --table runs/precision*.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import whetstone as ws
from whetstone.graph.nodes import DeployError
from whetstone.nn.quantization_aware import TARGET_WEIGHTS
from whetstone.runs.restore import graph_from_checkpoint
from whetstone.targets import get_target

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_record, machine, write_section

#: What each row quantizes: a chip target, or quantize() at some bits with one scale per layer or channel.
SCHEMES = [*TARGET_WEIGHTS, "4 bits per layer", "4 bits per channel", "2 bits per layer", "2 bits per channel"]


def _accuracy(graph: ws.SpikingGraph, images: np.ndarray, labels: np.ndarray) -> float:
    return float((ws.simulate(graph, images.reshape(len(images), *graph.input_shape)).predictions == labels).mean())


def _quantized(graph: ws.SpikingGraph, scheme: str) -> ws.SpikingGraph:
    if scheme in TARGET_WEIGHTS:
        return get_target(scheme).prepare(graph)
    bits, _, per = scheme.split()[0], scheme.split()[1], scheme.split()[-1]
    return ws.quantize(graph, int(bits), per_channel=per == "channel")


def run(dataset: str, seed: int, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        config = ws.RunConfig(model=args.model, dataset=dataset, seed=seed, threads=args.threads, progress=False,
                              data_dir=args.data_dir, out=folder, bits=args.train_bits, target=args.train_target, epochs=args.epochs,
                              start_epoch=args.start_epoch, steps=args.steps)  # fmt: skip
        built = ws.build_run(config.resolved().validate())
        if args.train_bits and args.bits_from is not None:  # quantization-aware from another epoch than sharpening
            built.trainer.quantizer = ws.QuantizationAware(args.train_bits, args.bits_from)
        result = built.fit()
        graph = graph_from_checkpoint(folder)[0]
    test = ws.load_dataset(dataset, "test", args.data_dir)
    images, labels = test.images.float().div(255).numpy(), test.labels.numpy()
    record = {"dataset": dataset, "seed": seed, "model": args.model, "train_bits": args.train_bits or args.train_target,
              "bits_from": args.bits_from if args.train_bits else None, "start_epoch": args.start_epoch, "epochs": args.epochs, "fully_binary": result.fully_binary,
              "float": _accuracy(graph, images, labels), "schemes": {}}  # fmt: skip
    trained_for = (
        [f"{args.train_bits} bits per channel"] if args.train_bits else [args.train_target] if args.train_target else []
    )
    for scheme in trained_for or SCHEMES:
        try:
            record["schemes"][scheme] = _accuracy(_quantized(graph, scheme), images, labels)
        except DeployError as error:  # a target that cannot express the network says so
            record["schemes"][scheme] = str(error).split(";")[0]
    return {**record, "seconds": round(time.perf_counter() - started), "machine": machine()}


def _cell(value: float, reference: float) -> str:
    return f"{value:.2%} ({100 * (value - reference):+.2f})"


def table(paths: list[str]) -> str:
    """Markdown: one row per (data set, training, weights), the seeds side by side. A network trained in float
    shows each scheme's change from its float binary network; one trained for its integers shows their
    accuracy (its float weights are not what it was trained to run)."""
    records = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(
        records, key=lambda r: (r["dataset"], str(r["train_bits"] or ""), r.get("bits_from") or 0, r["seed"])
    ):
        groups.setdefault((r["dataset"], r["model"], r["train_bits"], r.get("bits_from"), r["epochs"]), []).append(r)
    rows = ["| data set | network, training | weights | per seed: accuracy (change from float) | mean |",
            "|---|---|---|---|---:|"]  # fmt: skip
    for (dataset, model, trained_for, start, epochs), group in groups.items():
        training = f"{model}, recipe" + (f", {epochs} epochs" if epochs else "")
        if trained_for:
            what = f"{trained_for} bits" if isinstance(trained_for, int) else f"{trained_for}'s weights"
            when = f"epoch {start + 1}" if start is not None else "sharpening"
            training += f", **trained for {what}** from {when}"
        else:
            floats = [r["float"] for r in group]
            rows.append(f"| {dataset} | {training} | float (binary) | {', '.join(f'{v:.2%}' for v in floats)} | "
                        f"{sum(floats) / len(floats):.2%} |")  # fmt: skip
        for scheme in group[0]["schemes"]:
            values = [r["schemes"].get(scheme) for r in group]
            if not all(isinstance(v, float) for v in values):
                rows.append(f"| {dataset} | {training} | {scheme} | refused: {values[0]} | - |")
            elif trained_for:
                rows.append(f"| {dataset} | {training} | {scheme} | {', '.join(f'{v:.2%}' for v in values)} | "
                            f"{sum(values) / len(values):.2%} |")  # fmt: skip
            else:
                changes = [100 * (v - r["float"]) for v, r in zip(values, group, strict=True)]
                cells = ", ".join(_cell(v, r["float"]) for v, r in zip(values, group, strict=True))
                rows.append(f"| {dataset} | {training} | {scheme} | {cells} | {sum(changes) / len(changes):+.2f} |")
    return "\n".join(rows + ["", f"Measured on: {records[0]['machine']} per run." if records else ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--model", default="mnist-conv-small")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--start-epoch", type=int, help="sharpening (and training for --train-bits) starts here")
    parser.add_argument("--train-target", choices=list(TARGET_WEIGHTS), help="train for this chip target's weights")
    parser.add_argument("--steps", type=int, help="sharpening steps per layer (default: the recipe's)")
    parser.add_argument("--train-bits", type=int, help="train for integer weights of these bits (quantization-aware)")
    parser.add_argument(
        "--bits-from", type=int, help="with --train-bits: from this epoch (default: where sharpening starts)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/precision.jsonl")
    parser.add_argument("--table", nargs="+", metavar="JSONL", help="write these results' table into docs/results.md")
    args = parser.parse_args()
    if args.table:
        text = table(args.table)
        write_section(Path(__file__).parents[1] / "docs" / "results.md", "chip-precision",
                      "Accuracy at each chip's precision (issue #35)", text)  # fmt: skip
        print(text)
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        for seed in args.seeds:
            append_record(out, run(dataset, seed, args))


if __name__ == "__main__":
    main()
