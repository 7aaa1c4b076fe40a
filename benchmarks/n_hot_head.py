"""What the N-hot head's thermometer code is worth to a network trained from scratch after ``spikify``.

``spikify(model, num_classes=10)`` makes each of a class's N output units from the class's row of the model's
classifier. Copies of one unit get the same gradient, so they stay copies through training and, once binary,
fire together: a class's count is 0 or N. Per seed, the same network is trained twice, its head's units left
as copies (each class's biases at their mean) or spread into a thermometer code (``spikify``'s head), with
the same recipe: Adam, sharpened bottom-up per batch, binary for the last epoch; the fully binary test
accuracy of each, on the whole test set.

    python benchmarks/n_hot_head.py --dataset mnist-mini --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

import whetstone as ws

sys.path.insert(0, str(Path(__file__).parent))
from warm_start import MnistExample

from _common import machine


def binary_accuracy(dataset: str, seed: int, spread: bool, args: argparse.Namespace) -> tuple[float, bool]:
    """The fully binary test accuracy of the spikified network trained from scratch, and whether it is binary."""
    torch.manual_seed(seed)
    train, test = ws.load_dataset(dataset, "train", args.data_dir), ws.load_dataset(dataset, "test", args.data_dir)
    loader = ws.TensorLoader.from_dataset(train, args.batch_size, shuffle=True, seed=seed)
    model = ws.spikify(MnistExample(), num_classes=10)
    if not spread:  # every unit of a class back at the class's mean bias: copies, as spikify made them before
        decoder = next(m for m in model.modules() if isinstance(m, ws.SoftmaxDecode))
        with torch.no_grad():
            model.get_submodule("fc2").bias.sub_(ws.thermometer_offsets(decoder.key))
    steps = max(1, (args.epochs - 1) * len(loader) // len(ws.spiking_layers(model)))
    optimizer = torch.optim.Adam(model.parameters(), args.lr)
    result = ws.Trainer(model, optimizer, ws.SimpleSharpener(0, steps=steps, per="batch"), progress=False).fit(
        loader, args.epochs
    )
    return ws.evaluate(model, ws.TensorLoader.from_dataset(test, 1000))[1], result.fully_binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-mini")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| seed | units as copies | units as a thermometer code |\n|---:|---:|---:|")
    columns: list[list[float]] = [[], []]
    for seed in args.seeds:
        row = []
        for spread in (False, True):
            accuracy, binary = binary_accuracy(args.dataset, seed, spread, args)
            columns[spread].append(accuracy)
            row.append(f"{accuracy:.2%}" + ("" if binary else " (not fully binary)"))
        print(f"| {seed} | {row[0]} | {row[1]} |", flush=True)
    means = [f"{statistics.mean(c):.2%}" for c in columns]
    print(f"| **mean of {len(args.seeds)}** | {means[0]} | {means[1]} |")
    print(f"\n{args.dataset}, {args.epochs} epochs (binary for the last). Measured on: {machine()}.")


if __name__ == "__main__":
    main()
