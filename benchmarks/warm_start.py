"""Warm start, end to end: a network written the way model collections write it, trained as a ReLU network,
converted with ``spikify(..., calibrate=...)`` and sharpened to binary spikes.

Per data set and seed it trains the ReLU network for a stated budget, then measures on the whole test set:
the ReLU network's accuracy; the converted network at sharpness 0 without and with calibration (what
``calibrate=`` keeps); after fine-tuning while sharpening, the fully binary network's accuracy (checked 0/1 on
every unit) and its gap to the ReLU network. Results append to a JSON-lines file, one line per (data set,
seed), so an interrupted run continues where it stopped. The binary network's batch-norm statistics are
re-estimated over an epoch of the augmented training images (``--bn-statistics``); with ``--head-refit``
only the hidden layers sharpen while training and the output layer is fitted as a thermometer code at the end
(``ws.calibrate_head``).

    python benchmarks/warm_start.py --datasets mnist fashion-mnist --seeds 0 1 --threads 1 --data-dir DATA
    python benchmarks/warm_start.py --datasets cifar10 --relu-epochs 30 --sharpen-epochs 10 --data-dir DATA
    python benchmarks/warm_start.py --table runs/warm_*.jsonl     # the table of every result, into docs/results.md

The networks are this file's own rewrites of two widely copied layouts: PyTorch's MNIST example (functional
ReLUs and ``F.max_pool2d``, dropout) and the CIFAR-10 ResNet-20 of the model collections (functional ReLUs,
``out += shortcut``, an ``F.avg_pool2d`` head).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import whetstone as ws
from whetstone.data.loader import augmentation

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_record, machine, write_section


class MnistExample(nn.Module):  # PyTorch's MNIST example, as written there (our rewrite)
    def __init__(self, channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return self.fc2(x)


class BasicBlock(nn.Module):  # the CIFAR ResNet block of the model collections
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet20(nn.Module):  # three stages of three blocks, 16-32-64 channels
    def __init__(self, num_blocks: tuple[int, ...] = (3, 3, 3), num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1)
        self.layer2 = self._make_layer(32, num_blocks[1], 2)
        self.layer3 = self._make_layer(64, num_blocks[2], 2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


def _network(dataset: str) -> nn.Module:
    return ResNet20() if dataset == "cifar10" else MnistExample()


def _cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, max(1, steps), eta_min=optimizer.param_groups[0]["lr"] / 100
    )


def _windows(num_layers: int, args: argparse.Namespace) -> list[tuple[float, float]]:
    """Each spiking layer's sharpening window: bottom-up over the epochs before the binary ones, the upper
    layers taking ``--ramp`` times the lower ones' time; with ``--head-refit`` the output layer stays soft while
    the network learns (its window lies after the last epoch) and is fitted as a thermometer code at the end."""
    sharpened = num_layers - 1 if args.head_refit else num_layers
    stop = max(args.sharpen_epochs - args.binary_epochs, 1)
    windows = ws.ramp_schedule(sharpened, 0, stop, args.ramp) if sharpened else []
    return windows + [(args.sharpen_epochs, args.sharpen_epochs + 1)] * (num_layers - sharpened)


def run(dataset: str, seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    train, test = ws.load_dataset(dataset, "train", args.data_dir), ws.load_dataset(dataset, "test", args.data_dir)
    transform = augmentation(dataset) if dataset != "mnist" else None
    loader = ws.TensorLoader.from_dataset(train, args.batch_size, shuffle=True, seed=seed, transform=transform)
    test_loader = ws.TensorLoader.from_dataset(test, 1000)
    started = time.perf_counter()

    # 1. The ordinary ReLU network, trained as its authors would (Adam, a cosine schedule); kept in --relu-cache
    # so that settings of the conversion can be compared on the same trained network without training it again.
    model, reused = _network(dataset), 0.0
    name = f"{dataset}_{type(model).__name__}_seed{seed}_{args.relu_epochs}ep.pt"
    cached = Path(args.relu_cache) / name if args.relu_cache else None
    if cached and cached.exists():
        saved = torch.load(cached, weights_only=True)
        model.load_state_dict(saved["state"])
        relu_seconds = reused = saved["seconds"]  # counted in the run's time as if trained here
    else:
        optimizer = torch.optim.Adam(model.parameters(), args.lr)
        ws.Trainer(model, optimizer, scheduler=_cosine(optimizer, args.relu_epochs * len(loader)), scheduler_per="batch",
                   progress=False).fit(loader, args.relu_epochs)  # fmt: skip
        relu_seconds = time.perf_counter() - started
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state": model.state_dict(), "seconds": relu_seconds}, cached.with_suffix(".tmp"))
            cached.with_suffix(".tmp").replace(cached)
    relu = ws.evaluate(model, test_loader)[1]

    # 2. Converted, at sharpness 0: without and with calibration on a few training batches.
    calibration = [x for _, (x, _) in zip(range(args.calibration_batches), loader, strict=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head's and any smooth activation's notices
        cold = ws.spikify(copy.deepcopy(model), num_classes=10, key_width=args.key_width)
        warm = ws.spikify(copy.deepcopy(model), num_classes=10, key_width=args.key_width)
        ws.calibrate(warm, calibration, percentile=args.percentile, levels=args.levels)
    cold_accuracy, warm_accuracy = ws.evaluate(cold, test_loader)[1], ws.evaluate(warm, test_loader)[1]

    record = {
        "dataset": dataset, "seed": seed, "network": type(model).__name__, "relu_epochs": args.relu_epochs,
        "sharpen_epochs": args.sharpen_epochs, "binary_epochs": args.binary_epochs, "finetune_dropout": args.finetune_dropout,
        "distill": args.distill, "key_width": args.key_width, "levels": args.levels, "head": "thermometer",
        "surrogate": args.surrogate, "head_refit": args.head_refit, "ramp": args.ramp, "bn_statistics": args.bn_statistics, "relu": relu,
        "converted": cold_accuracy, "calibrated": warm_accuracy, "binary": None, "fully_binary": False, "gap": None,
        "relu_seconds": round(relu_seconds), "machine": machine(),
    }  # fmt: skip
    if args.sharpen_epochs:  # 3. Fine-tune while sharpening, bottom-up a little every batch, then binary.
        if not args.finetune_dropout:  # binary units already quantize; dropping half of 128 of them is much noise
            for module in warm.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        ws.set_model_surrogate(warm, args.surrogate)
        optimizer = torch.optim.Adam(warm.parameters(), args.finetune_lr)
        loss = ws.Distillation(model, weight=args.distill) if args.distill else None  # the ReLU network as teacher
        sharpener = ws.ScheduledSharpener(_windows(len(ws.spiking_layers(warm)), args))
        trainer = ws.Trainer(warm, optimizer, sharpener, loss,
                             scheduler=_cosine(optimizer, args.sharpen_epochs * len(loader)), scheduler_per="batch",
                             progress=False)  # fmt: skip
        try:
            result = trainer.fit(loader, args.sharpen_epochs, test_loader)
        except FloatingPointError as error:  # recorded as such: the figures before sharpening still count
            record["diverged"] = str(error)
        else:
            # The binary network's batch-norm statistics, three ways, each measured; --bn-statistics picks the one
            # that goes on: the trainer's running averages (over its last batches), or the average over a whole
            # epoch of the final network on the augmented training images (what it trained on) or un-augmented ones.
            clean = ws.TensorLoader.from_dataset(train, 500, shuffle=True, seed=seed)
            variants = {}
            for kind, batches in (("running", None), ("train", loader), ("clean", clean)):
                variant = copy.deepcopy(warm)
                if batches is not None:
                    ws.reestimate_batchnorm(variant, batches, max_batches=len(batches))
                record[f"binary_bn_{kind}"] = ws.evaluate(variant, test_loader)[1]
                variants[kind] = variant
            warm, layers = variants[args.bn_statistics], ws.spiking_layers(variants[args.bn_statistics])
            binary = record[f"binary_bn_{args.bn_statistics}"]
            fully_binary = result.fully_binary
            if args.head_refit:  # the hidden layers binary: the output layer fitted as a thermometer, then binary
                record["binary_before_head_refit"] = binary
                ws.calibrate_head(warm, [x for _, (x, _) in zip(range(10), clean, strict=False)])
                layers[-1].set_sharpness(1.0)
                binary = ws.evaluate(warm, test_loader)[1]
                fully_binary = ws.is_fully_binary(warm, ws.binary_report(warm, test_loader))
            record.update(binary=binary, fully_binary=fully_binary, gap=relu - binary)
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                torch.save(warm.state_dict(), Path(args.save) / f"{dataset}_seed{seed}_binary.pt")
    return {**record, "seconds": round(time.perf_counter() - started + reused)}


def _setting(record: dict) -> tuple:
    """What makes two results comparable: everything but the seed (results written before a setting existed
    ran at its default; before the thermometer head, a class's output units were copies)."""
    return (record["dataset"], record["relu_epochs"], record["sharpen_epochs"], record.get("distill", 0.0),
            record.get("key_width", 100), record.get("binary_epochs", 1), record.get("finetune_dropout", True),
            record.get("levels", False), record.get("head", "copies"), record.get("surrogate", 0.0),
            _bn_statistics(record), record.get("head_refit", False), record.get("ramp", 1.0))  # fmt: skip


def _bn_statistics(record: dict) -> str:
    """Which batch-norm statistics the binary network was measured with (older results: a yes/no flag)."""
    return record.get("bn_statistics") or ("clean" if record.get("update_bn") else "running")


def _binary_cell(record: dict) -> str:
    """The fully binary accuracy, or what became of the run instead."""
    if record.get("diverged"):
        return f"sharpening diverged ({record['diverged'].split(';')[0]})"
    if record["binary"] is None:
        return "not sharpened" if not record["sharpen_epochs"] else "-"
    return f"{record['binary']:.2%}" + ("" if record["fully_binary"] else " (not fully binary)")


def table(paths: list[str]) -> str:
    """The markdown table of the results in ``paths`` (JSON lines), one row per run and a mean per setting."""
    records = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: _setting(r) + (r["seed"],))
    header = "| data set | network | epochs ReLU + sharpening | seed | ReLU | converted, s=0 | calibrated, s=0 | fully binary | gap | time |"
    rows = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def row(r: dict, seed: str) -> str:
        gap = "-" if r["gap"] is None else f"{100 * r['gap']:.2f}"
        extra = "".join([f", distilled {r['distill']:g}" if r.get("distill") else "",
                         f", {r['key_width']} outputs" if r.get("key_width", 100) != 100 else "",
                         f", binary for the last {r['binary_epochs']}" if r.get("binary_epochs", 1) != 1 else "",
                         ", no dropout in fine-tuning" if not r.get("finetune_dropout", True) else "",
                         ", one-bit levels" if r.get("levels") else "",
                         ", thermometer head" if r.get("head") == "thermometer" else "",
                         ", no surrogate gradient" if r.get("surrogate", 0.0) is None else "",
                         {"running": "", "train": ", batch-norm statistics re-estimated on augmented images",
                          "clean": ", batch-norm statistics re-estimated on un-augmented images"}[_bn_statistics(r)],
                         ", output layer fitted at the end" if r.get("head_refit") else "",
                         f", upper layers {r['ramp']:g}x the lower's sharpening time" if r.get("ramp", 1.0) != 1 else ""])  # fmt: skip
        return (f"| {r['dataset']} | {r['network']} | {r['relu_epochs']} + {r['sharpen_epochs']}{extra} | {seed} | "
                f"{r['relu']:.2%} | {r['converted']:.2%} | {r['calibrated']:.2%} | {_binary_cell(r)} | "
                f"{gap} | {r.get('seconds', 0)} s |")  # fmt: skip

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(_setting(r), []).append(r)
    for group in groups.values():
        rows += [row(r, str(r["seed"])) for r in group]
        if len(group) > 1:
            values = {k: [r[k] for r in group] for k in ("relu", "converted", "calibrated", "binary", "gap")}
            mean = {k: None if None in v else sum(v) / len(v) for k, v in values.items()}
            rows.append(row({**group[0], **mean, "fully_binary": all(r["fully_binary"] for r in group), "seconds": round(sum(r["seconds"] for r in group) / len(group))},
                            f"**mean of {len(group)}**"))  # fmt: skip
    return "\n".join(rows + ["", f"Measured on: {records[0]['machine']} per run." if records else ""])


def _ramp(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number (1: every layer the same time), got {text!r}")
    return value


def _surrogate(text: str) -> float | None:
    return None if text == "none" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"],
                        choices=["mnist", "fashion-mnist", "cifar10", "mnist-mini"])  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--relu-epochs", type=int, default=3)
    parser.add_argument("--sharpen-epochs", type=int, default=3)
    parser.add_argument("--binary-epochs", type=int, default=1, help="of --sharpen-epochs, the last ones fully binary")
    parser.add_argument("--finetune-dropout", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the network's dropout while fine-tuning (--no-finetune-dropout: off)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--key-width", type=int, default=100)
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--distill", type=float, default=0.0, help="weight of distillation from the ReLU network")
    parser.add_argument("--percentile", type=float, default=99.9, help="of each layer's activations: its scale")
    parser.add_argument("--levels", action=argparse.BooleanOptionalAction, default=True,
                        help="calibrate each layer's one-bit level too (--no-levels: spikes weigh the range)")  # fmt: skip
    parser.add_argument("--surrogate", type=_surrogate, default=0.0,
                        help="binary layers' surrogate gradient while fine-tuning ('none': a step's own zero slope)")  # fmt: skip
    parser.add_argument("--bn-statistics", choices=["running", "train", "clean"], default="train",
                        help="the binary network's batch-norm statistics: the trainer's running averages, or an epoch's "
                             "average on the augmented (train) or un-augmented (clean) training images")  # fmt: skip
    parser.add_argument("--head-refit", action=argparse.BooleanOptionalAction, default=False,
                        help="sharpen the hidden layers only; fit the output layer as a thermometer code at the end")  # fmt: skip
    parser.add_argument("--ramp", type=_ramp, default=1.0,
                        help="the top sharpened layer's share of the sharpening time over the bottom one's (linear)")  # fmt: skip
    parser.add_argument("--save", help="folder for the binary network's state_dict")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--relu-cache", help="folder keeping each trained ReLU network, reused by later runs")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/warm_start.jsonl", help="JSON lines, one per (data set, seed)")
    parser.add_argument("--table", nargs="+", metavar="JSONL", help="write the table of these results into "
                        "docs/results.md instead of running")  # fmt: skip
    args = parser.parse_args()
    if args.table:
        text = table(args.table)
        write_section(Path(__file__).parents[1] / "docs" / "results.md", "warm-start", "Warm start", text)
        print(text)
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    keys = {_setting(r) + (r["seed"],) for r in done}
    for dataset in args.datasets:
        for seed in args.seeds:
            if _setting({"dataset": dataset, **vars(args)}) + (seed,) in keys:
                continue
            append_record(out, run(dataset, seed, args))


if __name__ == "__main__":
    main()
