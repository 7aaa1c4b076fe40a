"""Semantic segmentation with binary spiking hidden layers (whetstone.models.segmentation), and its twin.

Builds two-digit canvases from MNIST, trains the same fully convolutional network twice (sharpened to
binary hidden layers, and not sharpened), prints per-epoch mean IoU on test canvases and writes a PNG of
predicted masks beside the truth. Example:

    python examples/segmentation.py --data-dir DATA --canvases 12000 --epochs 12 --out segmentation.png
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

import whetstone as ws
from whetstone.cli.flags import COUNT, OneLineParser, number, run_script
from whetstone.models.segmentation import digit_canvases, mean_iou, segmentation_network


def train(canvases, masks, test, sharpen: bool, args) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(args.seed)
    model = segmentation_network(width=args.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.lr / 100)
    sharpener = ws.SimpleSharpener(start_epoch=args.start_epoch, steps=args.steps) if sharpen else None
    if sharpener is not None:
        sharpener.on_train_begin(model)
        ws.set_model_surrogate(model, 0.0)  # once binary, layers keep learning through surrogate gradients
    history = []
    for epoch in range(args.epochs):
        started, total = time.perf_counter(), torch.zeros(())
        model.train()
        order = torch.randperm(len(canvases))
        for batch in order.split(args.batch_size):
            loss = F.cross_entropy(model(canvases[batch]), masks[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach()
        schedule.step()
        if sharpener is not None:
            sharpener.on_epoch_end(epoch, float(total))
        miou, pixels = evaluate(model, *test)
        row = {"epoch": epoch + 1, "mean_iou": miou, "pixel_accuracy": pixels, "seconds": time.perf_counter() - started,
               "sharpness": [layer.get_sharpness() for layer in ws.spiking_layers(model)]}  # fmt: skip
        history.append(row)
        print(("binary " if sharpen else "twin   ") + json.dumps(row), flush=True)
    return model, history


@torch.no_grad()
def predict(model: torch.nn.Module, canvases: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk).argmax(dim=1) for chunk in canvases.split(500)])


def evaluate(model: torch.nn.Module, canvases: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    predicted = predict(model, canvases)
    return mean_iou(predicted, masks)[0], float((predicted == masks).float().mean())


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--canvases", type=COUNT, default=12000, help="training canvases")
    parser.add_argument("--test-canvases", type=COUNT, default=2000)
    parser.add_argument("--epochs", type=COUNT, default=12)
    parser.add_argument("--start-epoch", type=number(int, 0), default=2)
    parser.add_argument("--steps", type=COUNT, default=1, help="sharpening epochs per layer")
    parser.add_argument("--width", type=COUNT, default=16)
    parser.add_argument(
        "--lr",
        type=number(float, 0, open_interval=True),
        default=2e-3,
        help="Adam's, falling along half a cosine to lr / 100",
    )
    parser.add_argument("--batch-size", type=COUNT, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("binary", "twin"), help="train one of the two")
    parser.add_argument("--out", default="segmentation.png")
    args = parser.parse_args()
    train_set, test_set = (ws.load_dataset("mnist", split, args.data_dir) for split in ("train", "test"))
    canvases, masks = digit_canvases(train_set.images, train_set.labels, args.canvases, seed=0)
    test = digit_canvases(test_set.images, test_set.labels, args.test_canvases, seed=1)
    models = {}
    for kind in ("binary", "twin"):
        if args.only in (None, kind):
            models[kind], _ = train(canvases, masks, test, kind == "binary", args)
    if "binary" in models:
        model = models["binary"].eval()
        layers = ws.binary_report(model, [(test[0][:500], test[1][:500])])
        print(f"binary: every hidden unit 0 or 1 on 500 test canvases: {ws.is_fully_binary(model, layers)}")
    for kind, model in models.items():
        miou, pixels = evaluate(model, *test)
        print(f"{kind}: mean IoU {miou:.4f}, pixel accuracy {pixels:.4f} on {len(test[0]):,} test canvases")
    try:
        ws.to_spiking_graph(models.get("binary", next(iter(models.values()))), (1, 32, 64), readout="membrane")
    except ws.DeployError as error:
        print(f"export: {error}")
    plot(test, {kind: predict(model, test[0][:6]) for kind, model in models.items()}, args.out)


def plot(test, predictions: dict[str, torch.Tensor], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["canvas", "truth", *predictions]
    figure, axes = plt.subplots(6, len(columns), figsize=(2.6 * len(columns), 6.5))
    for row in range(6):
        panels = [test[0][row, 0], test[1][row], *(p[row] for p in predictions.values())]
        for column, (axis, panel) in enumerate(zip(axes[row], panels)):
            axis.imshow(
                np.asarray(panel), cmap="gray" if column == 0 else "tab20", vmin=0, vmax=None if column == 0 else 19
            )
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column])
    figure.suptitle("Per-pixel classes (0 background, 1 + digit): truth vs the binary network and its twin")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run_script(main))
