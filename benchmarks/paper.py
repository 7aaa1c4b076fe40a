"""The paper's experiments, rerun: results table, N-hot output-code study, optimizer study.

    python benchmarks/paper.py --tables main nhot optimizers --data-dir ../shared/data [--seeds 0 1 2]
    python benchmarks/paper.py --tables nhot --quick          # smoke run on the bundled mnist-mini

main:       for each (dataset, model) in MAIN: the network trained with sharpening to fully binary, and
            the same network trained for the same number of epochs without sharpening (continuous
            activations, sharpness 0); test accuracy of both, epochs to fully binary, wall time.
nhot:       mnist-dense with a 1/2/4/8/16-hot output code per class (disjoint keys), paper recipe.
optimizers: mnist-dense with Adam, Adadelta, RMSprop and SGD+momentum, each at its usual learning rate
            (and with the decoder's logits scaled by 0.1 for SGD and Adam).
autoencoder: conv-autoencoder on MNIST with a binary code (sharpened) and without sharpening (same
            epochs): test mean squared error of both, and a PNG grid of originals and reconstructions.

Every run is an ordinary `whetstone train` command (printed with its figures); runs land in --out.
With --write the tables replace the matching sections of docs/results.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import torch

from whetstone.cli import main as cli_main
from whetstone.train import load_checkpoint

from _common import machine, write_section

#: (dataset, model, extra train arguments) of the main table.
MAIN = [
    ("mnist", "mnist-dense", []),
    ("mnist", "mnist-conv-small", []),
    ("fashion-mnist", "mnist-conv-small", []),
    ("mnist", "mnist-conv-bn", []),
    ("fashion-mnist", "mnist-conv-bn", []),
    ("mnist", "resnet-small", []),
    ("cifar10", "cifar-conv-bn", []),
]
NHOT = [1, 2, 4, 8, 16]
OPTIMIZERS = [("adam", "1e-3", None), ("adadelta", "4.0", None), ("rmsprop", "1e-3", None), ("sgd", "0.1", None),
              ("sgd", "0.01", None), ("sgd", "0.1", "0.1"), ("adam", "1e-3", "0.1")]  # (name, lr, logit scale)


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


def folded_accuracy(run: Path, dataset: str, data_dir: str | None) -> float:
    """Test accuracy of the run's model after folding its batch norm into the weights."""
    from whetstone.cli import model_from_checkpoint
    from whetstone.convert import fold_batchnorm
    from whetstone.data import TensorLoader, load_dataset
    from whetstone.train import evaluate

    model = fold_batchnorm(model_from_checkpoint(load_checkpoint(run)))
    return evaluate(model, TensorLoader.from_dataset(load_dataset(dataset, "test", data_dir), 1000))[1]


def mean_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f}% ({100 * min(values):.2f}-{100 * max(values):.2f})"


def table_main(args: argparse.Namespace, common: list[str]) -> str:
    rows = ["| dataset | model | without sharpening | fully binary | gap | binary, batch norm folded | epochs to binary | wall time (binary run) |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for dataset, model, extra in MAIN:
        if args.only and model not in args.only and f"{dataset}/{model}" not in args.only:
            continue
        binary, plain = [], []
        for seed in args.seeds:
            name = f"{dataset}-{model}-s{seed}"
            runs = [*common, "--model", model, "--dataset", dataset, "--seed", str(seed), *extra]
            b = train(runs, Path(args.out) / name)
            p = train([*runs, "--sharpener", "none", "--epochs", str(b["epochs"])], Path(args.out) / f"{name}-plain")
            b["folded"] = folded_accuracy(Path(args.out) / name, dataset, args.data_dir)
            binary.append(b)
            plain.append(p)
        label = f"{dataset} (JPEG copy)" if dataset == "cifar10" else dataset
        gap = statistics.mean(p["accuracy"] for p in plain) - statistics.mean(b["accuracy"] for b in binary)
        rows.append(
            f"| {label} | {model} | {mean_range([p['accuracy'] for p in plain])} | "
            f"**{mean_range([b['accuracy'] for b in binary])}** | {100 * gap:.2f} | {mean_range([b['folded'] for b in binary])} | "
            f"{statistics.mean(b['epochs'] for b in binary):.0f} | {statistics.mean(b['seconds'] for b in binary):.0f} s |"
        )
    return "\n".join(rows)


def table_study(args: argparse.Namespace, common: list[str], variants: list[tuple[str, list[str]]]) -> str:
    rows = ["| variant | fully binary test accuracy | runs |", "|---|---:|---:|"]
    for label, extra in variants:
        results = []
        for seed in args.seeds:
            slug = re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")
            results.append(train([*common, "--model", "mnist-dense", "--seed", str(seed), *extra],
                                 Path(args.out) / f"study-{slug}-s{seed}"))  # fmt: skip
        ok = [r for r in results if r["binary"]]
        rows.append(f"| {label} | {mean_range([r['accuracy'] for r in ok]) if ok else 'not binary'} | {len(ok)}/{len(results)} |")
    return "\n".join(rows)


def table_autoencoder(args: argparse.Namespace, common: list[str], dataset: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from whetstone.cli import model_from_checkpoint
    from whetstone.data import TensorLoader, load_dataset
    from whetstone.train import evaluate

    rows = ["| code | test MSE, sharpened (binary code) | test MSE, not sharpened | epochs |", "|---|---:|---:|---:|"]
    runs = [*common, *dataset, "--model", "conv-autoencoder", "--seed", str(args.seeds[0])]
    sharp = train(runs, Path(args.out) / "autoencoder")
    train([*runs, "--sharpener", "none", "--epochs", str(sharp["epochs"])], Path(args.out) / "autoencoder-plain")
    models = [model_from_checkpoint(load_checkpoint(Path(args.out) / name)) for name in ("autoencoder", "autoencoder-plain")]
    test = load_dataset(dataset[1], "test", args.data_dir)
    loader = TensorLoader.from_dataset(test, 1000)
    mse = [evaluate(model, loader, target="inputs")[0] for model in models]
    code = models[0].encode(test.images[:1000].float() / 255)
    rows.append(f"| {code.shape[1]} bits, {100 * float(code.mean()):.0f}% ones | **{mse[0]:.4f}** | {mse[1]:.4f} | {sharp['epochs']} |")
    images = test.images[:12].float() / 255
    with torch.no_grad():
        grid = [images, models[0](images), models[1](images)]
    figure, axes = plt.subplots(3, 12, figsize=(12, 3.4), layout="constrained")
    for row, (label, batch) in enumerate(zip(("original", "binary code", "not sharpened"), grid)):
        for column in range(12):
            axes[row, column].imshow(batch[column, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=8)
    png = (Path(args.write).parent if args.write else Path(args.out)) / "autoencoder.png"
    figure.suptitle(f"conv-autoencoder, {dataset[1]} test: MSE {mse[0]:.4f} (binary code) vs {mse[1]:.4f} (not sharpened)", fontsize=9)
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return "\n".join(rows) + "\n\n![reconstructions](autoencoder.png)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", choices=["main", "nhot", "optimizers", "autoencoder"],
                        default=["main", "nhot", "optimizers", "autoencoder"])
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
    options = f"--seeds {' '.join(map(str, args.seeds))} --threads {args.threads}" + (" --quick" if args.quick else " --data-dir ../shared/data")
    header = f"Measured on {machine()}; command: `python benchmarks/paper.py --tables {{}} {options}`.\n\n"
    tables = {}
    if "main" in args.tables:
        tables["main"] = table_main(args, common)
    if "nhot" in args.tables:
        variants = [(f"{n}-hot ({10 * n} output units)", [*dataset, "--key-width", str(10 * n)]) for n in NHOT]
        tables["nhot"] = table_study(args, common, variants)
    if "optimizers" in args.tables:
        variants = [
            (f"{name} lr {lr}" + (f", logit scale {scale}" if scale else ""),
             [*dataset, "--optimizer", name, "--lr", lr, *(["--logit-scale", scale] if scale else [])])
            for name, lr, scale in OPTIMIZERS
        ]  # fmt: skip
        tables["optimizers"] = table_study(args, common, variants)
    if "autoencoder" in args.tables:
        tables["autoencoder"] = table_autoencoder(args, common, dataset)
    titles = {"main": "Paper results table (issue #3)", "nhot": "N-hot output codes (issue #3)",
              "optimizers": "Optimizer comparison (issue #3)", "autoencoder": "Binary-code autoencoder (issue #3)"}  # fmt: skip
    for name, table in tables.items():
        text = header.format(name) + table
        print(f"\n## {titles[name]}\n\n{text}\n")
        if args.write:
            write_section(Path(args.write), f"paper-{name}", titles[name], text)


if __name__ == "__main__":
    main()
