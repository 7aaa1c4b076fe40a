"""What a layer's one-bit level is worth: a trained ReLU network, calibrated, with one layer at a time made
binary, its spikes weighing the layer's range (``calibrate(levels=False)``) or its one-bit level (the default).

No training: each row is the test accuracy of the converted network with every other layer at sharpness 0.
The last row makes the output layer binary, its units per class copies of the class's trained row (as they
were before the thermometer code) or spread into a thermometer code (what ``calibrate`` gives them).

    python benchmarks/warm_start.py --datasets cifar10 --seeds 0 --sharpen-epochs 0 --relu-cache runs/relu_cache ...
    python benchmarks/one_bit_levels.py runs/relu_cache/cifar10_ResNet20_seed0_3ep.pt --data-dir DATA
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch

import whetstone as ws

sys.path.insert(0, str(Path(__file__).parent))
from warm_start import _network

from _common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("relu", help="a trained ReLU network saved by warm_start.py --relu-cache")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _network(args.dataset)
    model.load_state_dict(torch.load(args.relu, weights_only=True)["state"])
    train = ws.load_dataset(args.dataset, "train", args.data_dir)
    test = ws.load_dataset(args.dataset, "test", args.data_dir)
    batches = [
        x for _, (x, _) in zip(range(8), ws.TensorLoader.from_dataset(train, 128, shuffle=True, seed=0), strict=False)
    ]
    test_batches = [
        b for _, b in zip(range(args.test_images // 1000), ws.TensorLoader.from_dataset(test, 1000), strict=False)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head's notice
        calibrated = ws.spikify(copy.deepcopy(model), num_classes=10, calibrate=batches)
    print(f"| layer | range | level | binary at its range | binary at its level |\n|---|---:|---:|---:|---:|\n"
          f"| (none) | | | {ws.evaluate(calibrated, test_batches)[1]:.2%} | |")  # fmt: skip
    names = {id(m): name for name, m in calibrated.named_modules()}
    for index, layer in enumerate(ws.spiking_layers(calibrated)[:-1]):
        row = []
        for weight in (layer.scale_value, layer.level_value):
            variant = copy.deepcopy(calibrated)
            one = ws.spiking_layers(variant)[index]
            one.set_scale(weight)
            one.set_sharpness(1.0)
            row.append(ws.evaluate(variant, test_batches)[1])
        print(
            f"| {names[id(layer)]} | {layer.scale_value:.2f} | {layer.level_value:.2f} | {row[0]:.2%} | {row[1]:.2%} |",
            flush=True,
        )
    row = []
    decoder = next(m for m in calibrated.modules() if isinstance(m, ws.SoftmaxDecode))
    head = next(n for n, m in reversed(list(calibrated.named_modules()))
                if isinstance(m, torch.nn.Linear) and m.out_features == decoder.width)  # fmt: skip
    for spread in (False, True):
        variant = copy.deepcopy(calibrated)
        if not spread:  # back to copies: every unit of a class at the class's mean bias
            with torch.no_grad():
                variant.get_submodule(head).bias.sub_(ws.thermometer_offsets(decoder.key))
        ws.spiking_layers(variant)[-1].set_sharpness(1.0)
        row.append(ws.evaluate(variant, test_batches)[1])
    units = int(decoder.key.sum(1)[0])
    print(
        f"| output layer, {units} units per class | | | as copies: {row[0]:.2%} | as a thermometer code: {row[1]:.2%} |"
    )
    print(f"\nMeasured on: {machine()}, the first {len(test_batches) * 1000} test images.")


if __name__ == "__main__":
    main()
