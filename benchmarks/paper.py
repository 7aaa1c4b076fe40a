"""The paper's experiments, rerun: results table, N-hot output-code study, optimizer study.

    python benchmarks/paper.py --tables main nhot optimizers --data-dir ../shared/data [--seeds 0 1 2]
    python benchmarks/paper.py --tables nhot --quick          # smoke run on the bundled mnist-mini

main:       for each (dataset, model) in MAIN: the network trained with sharpening to fully binary, and
            the same network trained for the same number of epochs without sharpening (continuous
            activations, sharpness 0); test accuracy of both, epochs to fully binary, wall time.
nhot:       mnist-dense with a 1/2/4/8/16-hot output code per class (disjoint keys), paper recipe.
optimizers: mnist-dense with Adam, Adadelta, RMSprop and SGD+momentum, each at its usual learning rate.

Every run is an ordinary `whetstone train` command (printed with its figures); runs land in --out.
With --write the tables replace the matching sections of docs/results.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from whetstone.cli import main as cli_main
from whetstone.train import load_checkpoint

from _common import machine, write_section

#: (dataset, model, extra train arguments) of the main table.
MAIN = [
    ("mnist", "mnist-conv-small", []),
    ("mnist", "mnist-conv-bn", ["--logit-scale", "0.1", "--lr", "3e-3"]),
    ("fashion-mnist", "mnist-conv-bn", ["--logit-scale", "0.1", "--lr", "3e-3"]),
    ("mnist", "resnet-small", []),
    ("cifar10", "cifar-conv-bn", []),
]
NHOT = [1, 2, 4, 8, 16]
OPTIMIZERS = [("adam", "1e-3"), ("adadelta", "4.0"), ("rmsprop", "1e-3"), ("sgd", "0.1")]


def train(argv: list[str], out: Path) -> dict:
    """Run ``whetstone train`` (skipped if ``out`` already holds a finished run); returns figures."""
    command = ["train", *argv, "--out", str(out), "--no-progress"]
    print("$ whetstone " + " ".join(command[:-3] + command[-1:]), flush=True)
    started = time.perf_counter()
    if not (out / "done").exists():
        cli_main(command)
        (out / "done").write_text(f"{time.perf_counter() - started:.1f}")
    checkpoint = load_checkpoint(out)
    history = checkpoint["history"]
    return {
        "accuracy": history[-1]["eval_accuracy"],
        "epochs": len(history),
        "seconds": float((out / "done").read_text()),
        "binary": history[-1]["sharpness"] and all(v == 1.0 for v in history[-1]["sharpness"]),
    }


def mean_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f}% ({100 * min(values):.2f}-{100 * max(values):.2f})"


def table_main(args: argparse.Namespace, common: list[str]) -> str:
    rows = ["| dataset | model | without sharpening | fully binary | gap | epochs to binary | wall time (binary run) |",
            "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for dataset, model, extra in MAIN:
        if args.only and model not in args.only and f"{dataset}/{model}" not in args.only:
            continue
        binary, plain = [], []
        for seed in args.seeds:
            name = f"{dataset}-{model}-s{seed}"
            runs = [*common, "--model", model, "--dataset", dataset, "--seed", str(seed), *extra]
            b = train(runs, Path(args.out) / name)
            p = train([*runs, "--sharpener", "none", "--epochs", str(b["epochs"])], Path(args.out) / f"{name}-plain")
            binary.append(b)
            plain.append(p)
        label = f"{dataset} (JPEG copy)" if dataset == "cifar10" else dataset
        gap = statistics.mean(p["accuracy"] for p in plain) - statistics.mean(b["accuracy"] for b in binary)
        rows.append(
            f"| {label} | {model} | {mean_range([p['accuracy'] for p in plain])} | "
            f"**{mean_range([b['accuracy'] for b in binary])}** | {100 * gap:.2f} | "
            f"{statistics.mean(b['epochs'] for b in binary):.0f} | {statistics.mean(b['seconds'] for b in binary):.0f} s |"
        )
    return "\n".join(rows)


def table_study(args: argparse.Namespace, common: list[str], variants: list[tuple[str, list[str]]]) -> str:
    rows = ["| variant | fully binary test accuracy | runs |", "|---|---:|---:|"]
    for label, extra in variants:
        results = []
        for seed in args.seeds:
            slug = label.replace(" ", "-").replace("+", "").replace("/", "-")
            results.append(train([*common, "--model", "mnist-dense", "--seed", str(seed), *extra],
                                 Path(args.out) / f"study-{slug}-s{seed}"))  # fmt: skip
        ok = [r for r in results if r["binary"]]
        rows.append(f"| {label} | {mean_range([r['accuracy'] for r in ok]) if ok else 'not binary'} | {len(ok)}/{len(results)} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", choices=["main", "nhot", "optimizers"], default=["main", "nhot", "optimizers"])
    parser.add_argument("--only", nargs="*", help="main table: only these models (NAME or DATASET/NAME)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="mnist-mini, for a smoke run")
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument("--write", help="replace the tables' sections in this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = ["--threads", str(args.threads)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    dataset = ["--dataset", "mnist-mini" if args.quick else "mnist"]
    header = f"Measured on {machine()}; seeds {args.seeds}; command: `python benchmarks/paper.py --tables {{}} --seeds {' '.join(map(str, args.seeds))}`.\n\n"
    tables = {}
    if "main" in args.tables:
        tables["main"] = table_main(args, common)
    if "nhot" in args.tables:
        variants = [(f"{n}-hot ({10 * n} output units)", [*dataset, "--key-width", str(10 * n)]) for n in NHOT]
        tables["nhot"] = table_study(args, common, variants)
    if "optimizers" in args.tables:
        variants = [(f"{name} lr {lr}", [*dataset, "--optimizer", name, "--lr", lr]) for name, lr in OPTIMIZERS]
        tables["optimizers"] = table_study(args, common, variants)
    titles = {"main": "Paper results table (issue #3)", "nhot": "N-hot output codes (issue #3)",
              "optimizers": "Optimizer comparison (issue #3)"}  # fmt: skip
    for name, table in tables.items():
        text = header.format(name) + table
        print(f"\n## {titles[name]}\n\n{text}\n")
        if args.write:
            write_section(Path(args.write), f"paper-{name}", titles[name], text)


if __name__ == "__main__":
    main()
