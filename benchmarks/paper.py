"""The paper's experiments, rerun: results table, N-hot output-code study, optimizer study.

    python benchmarks/paper.py --tables main nhot optimizers --data-dir ../shared/data [--seeds 0 1 2]
    python benchmarks/paper.py --tables nhot --quick          # smoke run on the bundled mnist-mini
    python benchmarks/paper.py --tables main --set gpu --jobs 8 --threads 1 --data-dir DATA   # on a GPU

main:       for each (dataset, model) in MAIN (MAIN_GPU with --set gpu): the network trained with sharpening to fully binary, and
            the same network trained for the same number of epochs without sharpening (continuous
            activations, sharpness 0); test accuracy of both, of the binary one with batch norm folded and
            with decode ties broken by the output neurons' membrane potentials (as the simulator does), epochs
            to fully binary (and epochs trained on while binary, with --surrogate), wall time.
nhot:       mnist-dense with a 1/2/4/8/16-hot output code per class (disjoint keys), paper recipe.
optimizers: mnist-dense with Adam, Adadelta, RMSprop and SGD+momentum, each at its usual learning rate
            (and with the decoder's logits scaled by 0.1 for SGD and Adam).
autoencoder: conv-autoencoder on MNIST with a binary code (sharpened) and without sharpening (same
            epochs): test mean squared error of both, and a PNG grid of originals and reconstructions.

Every run is an ordinary `whetstone train` command (printed with its figures); runs land in --out.
With --jobs N the main table's runs go N at a time, each in its own process (its log in RUN/log.txt):
small networks leave a GPU mostly idle, so several share one well.
With --write the tables replace the matching sections of docs/results.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from whetstone.models.zoo import recipe
from whetstone.runs.restore import model_from_checkpoint
from whetstone.training.checkpoint import HISTORY_NAME, load_checkpoint

from _common import machine, write_section

_COSINE = ["--lr-schedule", "cosine"]


def _slow_small(steps: int, start: int = 3, epochs: int | None = None, schedule: str = "cosine") -> list[str]:
    """mnist-conv-small's 3 layers sharpened ``steps`` epochs each from epoch ``start``, under cosine
    decay (lowered every epoch, or every batch with ``schedule="cosine-batch"``), for ``epochs`` in all
    (default: until binary)."""
    epochs = start + 3 * steps if epochs is None else epochs
    return ["--lr-schedule", schedule, "--epochs", str(epochs), "--start-epoch", str(start), "--steps", str(steps),
            "--per", "epoch"]  # fmt: skip


def _cifar_cpu(base: int = 16) -> list[str]:
    """cifar-conv-bn at ``base`` channels in its first block, 20 epochs under cosine decay (CPU-sized)."""
    return ["--model-option", f"base={base}", *_COSINE, "--epochs", "20"]


def _wide_small(conv1: int, conv2: int) -> list[str]:
    """mnist-conv-small with ``conv1`` and ``conv2`` channels (12 and 64 by default)."""
    return ["--model-option", f"conv1={conv1}", "--model-option", f"conv2={conv2}"]


_CIFAR_CPU = _cifar_cpu()
# Max pooling of potentials before the spike: the same network, but binary layers' surrogate gradients reach
# the unit nearest to firing (whetstone.pool_before_spikes).
_POOL_FIRST = ["--model-option", "pool_first=true"]
# The best CPU CIFAR-10 sharpening: binary after 16 of 20 epochs, surrogate gradients, pooling first.
_BEST_CIFAR = ["--start-epoch", "0", "--steps", "2", "--surrogate", "0", *_POOL_FIRST]
# Distil from the row's own unsharpened twin (trained first): TWIN stands for its run directory.
TWIN = "{twin}"
_DISTIL = ["--teacher", TWIN]

#: (dataset, model, extra train arguments) of the main table.
MAIN = [
    ("mnist", "mnist-dense", []),
    ("mnist", "mnist-conv-small", []),
    ("fashion-mnist", "mnist-conv-small", []),
    # The same small net sharpened one layer per 3 (then 5) epochs with a decaying learning rate.
    *[(dataset, "mnist-conv-small", _slow_small(steps)) for steps in (3, 5) for dataset in ("mnist", "fashion-mnist")],
    # Binary two epochs early, then those epochs spent training the binary net through surrogate gradients.
    *[
        (dataset, "mnist-conv-small", [*_slow_small(3, start=1, epochs=12), "--surrogate", "0", *pool])
        for pool in ([], _POOL_FIRST)
        for dataset in ("mnist", "fashion-mnist")
    ],
    # The last row on Fashion-MNIST, distilled from its unsharpened twin (three weightings of the teacher).
    *[
        (
            "fashion-mnist",
            "mnist-conv-small",
            [*_slow_small(3, start=1, epochs=12), "--surrogate", "0", *_POOL_FIRST, *_DISTIL, *distil],
        )
        for distil in ([], ["--distill-weight", "0.5"], ["--distill-temperature", "4"])
    ],
    # Issue #28: the best small-net recipe with augmentation, with more binary epochs, sharpened faster.
    *[
        (
            "fashion-mnist",
            "mnist-conv-small",
            [*_slow_small(steps, start=1, epochs=epochs), "--surrogate", "0", *_POOL_FIRST, *extra],
        )
        for steps, epochs, extra in ((3, 12, ["--augment"]), (3, 18, []), (3, 24, []), (2, 18, []))
    ],
    # Issue #28: the 18-epoch recipe on wider nets (the binary net underfits): twice and three times the channels.
    *[
        (
            "fashion-mnist",
            "mnist-conv-small",
            [*_slow_small(3, start=1, epochs=18), "--surrogate", "0", *_POOL_FIRST, *_wide_small(12 * k, 64 * k)],
        )
        for k in (2, 3)
    ],
    # The 18-epoch recipe on MNIST, for the gap over 3 seeds (a layer every 3 epochs, and every 2: +11 binary epochs).
    *[
        ("mnist", "mnist-conv-small", [*_slow_small(steps, start=1, epochs=18), "--surrogate", "0", *_POOL_FIRST])
        for steps in (3, 2)
    ],
    # ... the same with the rate lowered every batch, and the larger mnist-conv-bn (4 spiking layers, a layer every
    # 2 epochs: binary after 9 of 18).
    (
        "fashion-mnist",
        "mnist-conv-small",
        [*_slow_small(3, start=1, epochs=18, schedule="cosine-batch"), "--surrogate", "0", *_POOL_FIRST],
    ),
    ("fashion-mnist", "mnist-conv-bn", [*_slow_small(2, start=1, epochs=18), "--surrogate", "0", *_POOL_FIRST]),
    # Issue #28: the 18-epoch recipe with a finer output code (20 units a class, at the same and at half the logit
    # scale; 30 and 40 units a class) and with twice the steps (batches of 64); on MNIST with 20 units a class; on
    # twice the channels with 20 units a class.
    *[
        (
            "fashion-mnist",
            "mnist-conv-small",
            [*_slow_small(3, start=1, epochs=18), "--surrogate", "0", *_POOL_FIRST, *extra],
        )
        for extra in (
            ["--key-width", "200"],
            ["--key-width", "200", "--logit-scale", "0.05"],
            ["--key-width", "300"],
            ["--key-width", "400"],
            ["--batch-size", "64"],
        )
    ],
    (
        "mnist",
        "mnist-conv-small",
        [*_slow_small(3, start=1, epochs=18), "--surrogate", "0", *_POOL_FIRST, "--key-width", "200"],
    ),
    (
        "fashion-mnist",
        "mnist-conv-small",
        [
            *_slow_small(3, start=1, epochs=18),
            "--surrogate",
            "0",
            *_POOL_FIRST,
            *_wide_small(24, 128),
            "--key-width",
            "200",
        ],
    ),
    ("mnist", "mnist-conv-bn", []),
    ("fashion-mnist", "mnist-conv-bn", []),
    # A CIFAR-10 network small enough for a 2-core CPU (the registry's base-64 net is GPU-sized), as the
    # paper sharpens it, with surrogate gradients through the binary layers, and binary 2 epochs early.
    *[
        ("cifar10", "cifar-conv-bn", [*_CIFAR_CPU, "--start-epoch", str(start), "--steps", "2", *surrogate])
        for start, surrogate in (
            (4, []),
            (4, ["--surrogate", "0"]),
            (2, ["--surrogate", "0"]),
            (0, ["--surrogate", "0"]),
            (0, ["--surrogate", "0", *_POOL_FIRST]),
        )
    ],
    # The best of those distilled from its twin; binary sooner (after 8 epochs, or after 8 batches: straight-through
    # training of a binary net almost from the start).
    ("cifar10", "cifar-conv-bn", [*_CIFAR_CPU, *_BEST_CIFAR, *_DISTIL, "--distill-weight", "0.5"]),
    *[
        (
            "cifar10",
            "cifar-conv-bn",
            [*_CIFAR_CPU, "--start-epoch", "0", "--steps", "1", *per, "--surrogate", "0", *_POOL_FIRST],
        )
        for per in ([], ["--per", "batch"])
    ],
    # The same 2 epochs per layer in 782 small steps, one per batch (391 batches an epoch).
    (
        "cifar10",
        "cifar-conv-bn",
        [*_CIFAR_CPU, "--start-epoch", "2", "--steps", "782", "--per", "batch", "--surrogate", "0"],
    ),
    # The best CIFAR recipe 1.5x as wide (2.25x the compute): does the binary gap shrink with width?
    ("cifar10", "cifar-conv-bn", [*_cifar_cpu(24), *_BEST_CIFAR]),
]
#: Larger budgets for a GPU machine: learning rate decay, longer and slower sharpening, wider CIFAR net.
MAIN_GPU = [
    ("mnist", "resnet-small", [*_COSINE, "--epochs", "30", "--start-epoch", "6", "--steps", "3", "--augment"]),
    ("mnist", "mnist-conv-bn", [*_COSINE, "--epochs", "48", "--start-epoch", "8", "--steps", "10", "--augment"]),
    ("fashion-mnist", "mnist-conv-bn", [*_COSINE, "--epochs", "30", "--start-epoch", "6", "--steps", "6", "--augment"]),
    (
        "cifar10",
        "cifar-conv-bn",
        [*_COSINE, "--epochs", "56", "--start-epoch", "8", "--steps", "6", "--model-option", "base=128"],
    ),
    *[
        (
            "cifar10",
            "cifar-conv-bn",
            [
                *_COSINE,
                "--epochs",
                "96",
                "--start-epoch",
                "8",
                "--steps",
                steps,
                "--model-option",
                "base=128",
                "--optimizer",
                "adamw",
                "--weight-decay",
                "0.05",
                *surrogate,
            ],
        )
        for steps, surrogate in (("11", []), ("10", ["--surrogate", "0", *_POOL_FIRST]))
    ],  # binary at epoch 96; at 88, then 8 binary epochs
]
NHOT = [1, 2, 4, 8, 16]
OPTIMIZERS = [
    ("adam", "1e-3", None),
    ("adadelta", "4.0", None),
    ("rmsprop", "1e-3", None),
    ("sgd", "0.1", None),
    ("sgd", "0.01", None),
    ("sgd", "0.1", "0.1"),
    ("adam", "1e-3", "0.1"),
]  # (name, lr, logit scale)


#: Options that only steer sharpening (or distillation), with their values: the unsharpened twin leaves them
#: out, so rows that differ only in them share one twin run.
_SHARPENING_OPTIONS = (
    "--start-epoch",
    "--steps",
    "--per",
    "--surrogate",
    "--teacher",
    "--distill-weight",
    "--distill-temperature",
)


def _twin_extra(extra: list[str], epochs: str) -> list[str]:
    """A row's extra arguments for its unsharpened twin: no sharpening options, ``epochs`` epochs.

    ``pool_first`` is dropped too: unsharpened, it trains bit for bit the same network (same function,
    same gradients; tests/test_models_cli.py), so those rows share the twin of the plain model."""
    kept, skip = [], False
    for arg, following in zip(extra, [*extra[1:], None]):
        if skip:
            skip = False
        elif (
            arg in _SHARPENING_OPTIONS
            or arg == "--epochs"
            or (arg == "--model-option" and following == "pool_first=true")
        ):
            skip = True
        else:
            kept.append(arg)
    return [*kept, "--epochs", epochs]


def train(argv: list[str], out: Path, subprocess_log: bool = False) -> dict:
    """Run ``whetstone train`` (skipped if ``out`` already holds a finished run); returns figures.

    A run that was stopped (a time limit) continues from its checkpoint with ``--resume``; its wall time
    is then the sum of its epochs' times. With ``subprocess_log`` the run is a child process writing to
    ``out/log.txt`` (for parallel jobs)."""
    finished = (out / "done").exists()
    resumed = not finished and (out / "checkpoint.pt").exists()
    command = ["train", *argv, "--no-progress", *(["--resume", str(out)] if resumed else ["--out", str(out)])]
    print("$ whetstone " + " ".join(command[:-2] + (command[-2:] if resumed else [])), flush=True)
    started = time.perf_counter()
    if not finished:
        if subprocess_log:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "log.txt", "a" if resumed else "w") as log:
                code = subprocess.call(
                    [sys.executable, "-m", "whetstone", *command], stdout=log, stderr=subprocess.STDOUT
                )
            if code not in (0, 1):  # 1: finished but not fully binary, which the table reports
                raise RuntimeError(f"whetstone {' '.join(command)} failed (exit {code}); see {out / 'log.txt'}")
        else:
            code = subprocess.call([sys.executable, "-m", "whetstone", *command])
            if code not in (0, 1):
                raise RuntimeError(f"whetstone {' '.join(command)} failed (exit {code})")
    history = json.loads((out / HISTORY_NAME).read_text())  # the checkpoint's history, without loading its weights
    if not finished:
        seconds = sum(record["seconds"] for record in history) if resumed else time.perf_counter() - started
        (out / "done").write_text(f"{seconds:.1f}")
    sharp = [bool(record["sharpness"]) and all(v == 1.0 for v in record["sharpness"]) for record in history]
    return {
        "accuracy": history[-1]["eval_accuracy"],
        "epochs": len(history),
        "epochs_to_binary": sharp.index(True) + 1 if True in sharp else None,
        "seconds": float((out / "done").read_text()),
        "binary": sharp[-1],
    }


def folded_accuracies(run: Path, dataset: str, data_dir: str | None) -> tuple[float, float]:
    """Test accuracy of the run's binary network after folding its batch norm into the weights: decode ties to the
    lowest class index, and broken by the output neurons' potentials as ``simulate(..., tie_break="membrane")``
    breaks them (among the classes of top score, the one whose code ``v - threshold`` supports most; computed here
    in PyTorch, in the same pass: the event simulator takes minutes for a CIFAR-10 network)."""
    from whetstone.data.datasets import load_dataset
    from whetstone.data.loader import TensorLoader
    from whetstone.nn.activations import SpikingActivation
    from whetstone.nn.tracing import fold_batchnorm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = fold_batchnorm(model_from_checkpoint(load_checkpoint(run))).to(device)
    output = [module for module in model.features.modules() if isinstance(module, SpikingActivation)][-1]
    potentials: list[torch.Tensor] = []
    hook = output.register_forward_pre_hook(lambda module, args: potentials.append(args[0] - module.spike_threshold))
    lowest = membrane = 0
    test = load_dataset(dataset, "test", data_dir)
    with torch.no_grad():
        for x, y in TensorLoader.from_dataset(test, 1000, device=device):
            potentials.clear()
            scores = model(x)
            support = potentials[0].flatten(1) @ model.decoder.signed_key_t
            tied = scores == scores.amax(1, keepdim=True)
            lowest += int((scores.argmax(1) == y).sum())
            membrane += int((torch.where(tied, support, -torch.inf).argmax(1) == y).sum())
    hook.remove()
    return lowest / len(test), membrane / len(test)


def mean_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f}% ({100 * min(values):.2f}-{100 * max(values):.2f})"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.=]+", "-", text.lower()).strip("-")


def _run_name(dataset: str, model: str, extra: list[str]) -> str:
    return f"{dataset}-{model}-{_slug(' '.join(extra))}" if extra else f"{dataset}-{model}"


def _selected(only: list[str] | None, dataset: str, model: str, extra: list[str]) -> bool:
    """No --only, or one of its items is MODEL, DATASET/MODEL, the row's run name, or a part of the run name that
    is not another row's whole run name (mnist-... is a part of fashion-mnist-...)."""
    name = _run_name(dataset, model, extra)
    return not only or any(
        item in (model, f"{dataset}/{model}", name) or (item in name and item not in _all_run_names()) for item in only
    )


@functools.cache
def _all_run_names() -> frozenset[str]:
    return frozenset(_run_name(*row) for row in (*MAIN, *MAIN_GPU))


def table_main(args: argparse.Namespace, common: list[str]) -> str:
    """One sharpened run and its unsharpened twin per (row, seed). The twin trains for as many epochs
    as the sharpened run took; with --jobs > 1 both start together and the twin gets the row's whole
    --epochs budget (MAIN_GPU's budgets end exactly when sharpening does). Rows that differ only in
    sharpening options share one twin run. A row distilled from its twin (``TWIN``) trains the twin first."""
    rows = ["| dataset | model | recipe changes | without sharpening | fully binary | gap | binary, batch norm folded | binary, ties by membrane | its gap | epochs to binary | wall time (binary run) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    chosen = [row for row in (MAIN_GPU if args.set == "gpu" else MAIN) if _selected(args.only, *row)]
    child = args.jobs > 1

    def pair(dataset: str, model: str, extra: list[str], seed: int) -> tuple[dict, dict]:
        out = Path(args.out) / f"{_run_name(dataset, model, extra)}-s{seed}"
        base = [*common, "--model", model, "--dataset", dataset, "--seed", str(seed)]

        def twin_argv(epochs: str) -> tuple[list[str], Path]:
            twin_extra = _twin_extra(extra, epochs)
            return [*base, *twin_extra, "--sharpener", "none"], Path(
                args.out
            ) / f"{_run_name(dataset, model, twin_extra)}-s{seed}-plain"

        budget = extra[extra.index("--epochs") + 1] if "--epochs" in extra else str(recipe(model).epochs)
        distil = TWIN in extra  # the twin is the teacher: it trains first
        twin_command, twin_out = twin_argv(budget)
        binary_argv = [*base, *(str(twin_out) if arg == TWIN else arg for arg in extra)]
        if child:
            with twin_lock:  # rows sharing a twin must not train it twice at once
                if twin_out not in twin_runs:
                    twin_runs[twin_out] = twins.submit(train, twin_command, twin_out, True)
                plain = twin_runs[twin_out]
            if distil:
                plain.result()
            binary = train(binary_argv, out, True)
        elif distil:
            plain = train(twin_command, twin_out)
            binary = train(binary_argv, out)
        else:
            binary = train(binary_argv, out)
            plain = train(*twin_argv(str(binary["epochs"])))
        binary["folded"], binary["membrane"] = folded_accuracies(out, dataset, args.data_dir)
        return binary, plain.result() if child else plain

    # With --jobs N: N // 2 pairs at a time, each with its twin running beside it in the second pool.
    twin_runs: dict[Path, Future] = {}
    twin_lock = threading.Lock()
    workers = max(1, args.jobs // 2) if child else 1
    with ThreadPoolExecutor(workers) as pairs, ThreadPoolExecutor(workers) as twins:
        futures = {(i, seed): pairs.submit(pair, *row, seed) for i, row in enumerate(chosen) for seed in args.seeds}
        results = {key: future.result() for key, future in futures.items()}
    for i, (dataset, model, extra) in enumerate(chosen):
        binary, plain = zip(*(results[i, seed] for seed in args.seeds))
        label = f"{dataset} (JPEG copy)" if dataset == "cifar10" else dataset
        changes = " ".join(extra).replace("--", "").replace(TWIN, "(its twin)") or "the registry's"
        twin = statistics.mean(p["accuracy"] for p in plain)
        gap = twin - statistics.mean(b["accuracy"] for b in binary)
        membrane_gap = twin - statistics.mean(b["membrane"] for b in binary)
        flag = "" if all(b["binary"] for b in binary) else " (NOT fully binary)"
        rows.append(
            f"| {label} | {model} | {changes} | {mean_range([p['accuracy'] for p in plain])} | "
            f"**{mean_range([b['accuracy'] for b in binary])}**{flag} | {100 * gap:.2f} | {mean_range([b['folded'] for b in binary])} | "
            f"{mean_range([b['membrane'] for b in binary])} | {100 * membrane_gap:.2f} | "
            f"{_epochs_to_binary(binary)} | {statistics.mean(b['seconds'] for b in binary):.0f} s |"
        )
    return "\n".join(rows)


def _epochs_to_binary(runs: tuple[dict, ...]) -> str:
    """Mean epochs until fully binary, plus the epochs trained on while binary (surrogate gradients)."""
    reached = [run for run in runs if run["epochs_to_binary"] is not None]
    if not reached:
        return "-"
    text = f"{statistics.mean(run['epochs_to_binary'] for run in reached):.0f}"
    extra = statistics.mean(run["epochs"] - run["epochs_to_binary"] for run in reached)
    return text + (f" (+{extra:.0f} binary)" if extra else "")


def table_study(args: argparse.Namespace, common: list[str], variants: list[tuple[str, list[str]]]) -> str:
    rows = ["| variant | fully binary test accuracy | runs |", "|---|---:|---:|"]
    for label, extra in variants:
        results = []
        for seed in args.seeds:
            results.append(train([*common, "--model", "mnist-dense", "--seed", str(seed), *extra],
                                 Path(args.out) / f"study-{_slug(label)}-s{seed}"))  # fmt: skip
        ok = [r for r in results if r["binary"]]
        rows.append(
            f"| {label} | {mean_range([r['accuracy'] for r in ok]) if ok else 'not binary'} | {len(ok)}/{len(results)} |"
        )
    return "\n".join(rows)


def table_autoencoder(args: argparse.Namespace, common: list[str], dataset: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from whetstone.data.datasets import load_dataset
    from whetstone.data.loader import TensorLoader
    from whetstone.nn.losses import Reconstruction
    from whetstone.training.evaluation import evaluate

    rows = ["| code | test MSE, sharpened (binary code) | test MSE, not sharpened | epochs |", "|---|---:|---:|---:|"]
    runs = [*common, *dataset, "--model", "conv-autoencoder", "--seed", str(args.seeds[0])]
    sharp = train(runs, Path(args.out) / "autoencoder")
    train([*runs, "--sharpener", "none", "--epochs", str(sharp["epochs"])], Path(args.out) / "autoencoder-plain")
    models = [
        model_from_checkpoint(load_checkpoint(Path(args.out) / name)) for name in ("autoencoder", "autoencoder-plain")
    ]
    test = load_dataset(dataset[1], "test", args.data_dir)
    loader = TensorLoader.from_dataset(test, 1000)
    mse = [evaluate(model, loader, Reconstruction())[0] for model in models]
    code = models[0].encode(test.images[:1000].float() / 255)
    rows.append(
        f"| {code.shape[1]} bits, {100 * float(code.mean()):.0f}% ones | **{mse[0]:.4f}** | {mse[1]:.4f} | {sharp['epochs']} |"
    )
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
    figure.suptitle(
        f"conv-autoencoder, {dataset[1]} test: MSE {mse[0]:.4f} (binary code) vs {mse[1]:.4f} (not sharpened)",
        fontsize=9,
    )
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return "\n".join(rows) + "\n\n![reconstructions](autoencoder.png)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=["main", "nhot", "optimizers", "autoencoder"],
        default=["main", "nhot", "optimizers", "autoencoder"],
    )
    parser.add_argument(
        "--only",
        nargs="*",
        help="main table: only these rows (MODEL, DATASET/MODEL, or part of a run name, e.g. epochs-96)",
    )
    parser.add_argument(
        "--set", choices=["cpu", "gpu"], default="cpu", help="main table: MAIN, or MAIN_GPU's larger budgets"
    )
    parser.add_argument("--jobs", type=int, default=1, help="main table: runs at a time, each in its own process")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="mnist-mini, for a smoke run")
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument("--write", help="replace the tables' sections in this markdown file")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    torch.set_num_threads(args.threads)
    common = ["--threads", str(args.threads)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    dataset = ["--dataset", "mnist-mini" if args.quick else "mnist"]
    options = f"--seeds {' '.join(map(str, args.seeds))} --threads {args.threads}" + (
        " --quick" if args.quick else " --data-dir ../shared/data"
    )
    if args.set == "gpu":
        options = f"--set gpu --jobs {args.jobs} " + options
    if args.only:
        options = f"--only {' '.join(args.only)} " + options
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
        section, title = (
            (f"paper-{name}-gpu", f"{titles[name]}, GPU budgets")
            if args.set == "gpu" and name == "main"
            else (f"paper-{name}", titles[name])
        )
        print(f"\n## {title}\n\n{text}\n")
        if args.write:
            write_section(Path(args.write), section, title, text)


if __name__ == "__main__":
    main()
