"""Speed benchmarks that train to the end: time to a fully binary network (binary), against snnTorch (peer) and
against ANN-to-SNN conversion (conversion); run through ``benchmarks/speed.py``."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

import whetstone as ws
from whetstone.runs.build import build_scheduler
from whetstone.training.checkpoint import RunFolder

from _common import report, with_relu


def run_train(config: ws.RunConfig) -> tuple[float, dict]:
    started = time.perf_counter()
    with RunFolder(config.out).claim(overwrite=True):
        ws.build_run(config).fit()
    seconds = time.perf_counter() - started
    return seconds, ws.load_checkpoint(config.out)


def bench_time_to_binary(data_dir: str | None, threads: int, out: Path) -> None:
    """Sharpening runs to a fully binary network (the recipe, and binary from the first batches with surrogate
    gradients for 1-3 epochs, at a constant learning rate or one lowered along a cosine every batch, with pooling
    first and a 20-hot code) vs the same network with nn.ReLU: the time it takes to reach each accuracy."""
    report.part = "binary"
    report("\n### 2. Time to a fully binary network (mnist-conv-small, full MNIST)\n")
    base = ws.RunConfig(model="mnist-conv-small", dataset="mnist", threads=threads, progress=False, data_dir=data_dir)
    fast = {"start_epoch": 0, "steps": 1, "per": "batch", "surrogate": 0.0}  # binary after 3 batches, then learns on
    runs = {"the recipe (one epoch a layer)": base.replace(out=str(out / "binary"))}
    for epochs in (1, 2, 3):
        runs[f"binary from batch 3, surrogate, {epochs} epoch(s)"] = base.replace(
            out=str(out / f"fast{epochs}"), epochs=epochs, **fast
        )
    for epochs in (1, 2):
        runs[f"binary from batch 3, surrogate, cosine-batch, {epochs} epoch(s)"] = base.replace(
            out=str(out / f"fast{epochs}-cosine"), epochs=epochs, lr_schedule="cosine-batch", **fast
        )
    # Issue #28: pooling potentials before the spike (whetstone.pool_before_spikes) and a 20-hot output code (200
    # units), in batches of 128 and of 64 (twice the steps an epoch).
    better = {"lr_schedule": "cosine-batch", "model_options": {"pool_first": True}, "key_width": 200, **fast}
    for epochs, batch_size in ((1, 128), (2, 128), (1, 64)):
        runs[f"the same, pooling first, 20-hot code, batches of {batch_size}, {epochs} epoch(s)"] = base.replace(
            out=str(out / f"fast{epochs}-better-{batch_size}"), epochs=epochs, batch_size=batch_size, **better
        )
    binary = {}
    for name, config in runs.items():
        seconds, checkpoint = run_train(config)
        binary[name] = (seconds, len(checkpoint["history"]), checkpoint["history"][-1]["eval_accuracy"])
    # The ReLU network: same model, recipe and data, activations never sharpened and swapped for ReLU; its
    # test accuracy every quarter epoch, against its training time so far (the evaluations not counted) ...
    target = max(accuracy for _, _, accuracy in binary.values())
    relu = base.replace(out=str(out / "relu"), sharpener="none", epochs=10)
    curve = QuarterEpochAccuracy()
    relu_run(relu, curve, stop_at=target)
    # ... and, as the binary runs may end their rate's cosine early, short ReLU runs whose rate falls along a
    # cosine every batch to the end of their quarter, half or whole epoch (their training time alone), with the
    # binary runs' batch sizes and output codes (units a class).
    short_runs: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    for batch_size, hot in ((128, 10), (128, 20), (64, 20)):
        for quarters in (1, 2, 4):
            short = relu.replace(out=str(out / f"relu-cosine{quarters}-{batch_size}-{hot}"), epochs=1,
                                 batch_size=batch_size, key_width=10 * hot, lr_schedule="cosine-batch",
                                 limit=quarters * 60_000 // 4)  # fmt: skip
            ended = QuarterEpochAccuracy(only_at_end=True)
            relu_run(short, ended)
            short_runs.setdefault((batch_size, hot), []).append((quarters / 4, *ended.points[-1][1:]))
    points = [*curve.points, *(point for runs in short_runs.values() for point in runs)]
    report("| sharpening run | epochs | wall s | test accuracy (fully binary) | ReLU at a constant rate: epochs, s to "
           "reach it | ratio | quickest ReLU run: epochs, s | ratio |")  # fmt: skip
    report("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (seconds, epochs, accuracy) in binary.items():
        cells = []
        for reference in (curve.points, points):
            reached = min(((t, e) for e, t, a in reference if a >= accuracy), default=None)
            cells += (
                ["-", "-"]
                if reached is None
                else [f"{reached[1]:g}, {reached[0]:.0f}", f"**{seconds / reached[0]:.2f}**"]
            )
        report(f"| {name} | {epochs} | {seconds:.0f} | {100 * accuracy:.2f}% | {' | '.join(cells)} |")
    after = "; ".join(
        f"batches of {size}, {hot}-hot: {', '.join(f'{100 * a:.2f}%' for _, _, a in runs)}"
        for (size, hot), runs in short_runs.items()
    )
    report("\nReLU test accuracy every quarter epoch (constant rate): "
           f"{', '.join(f'{100 * a:.2f}%' for _, _, a in curve.points)}; after a quarter, half and whole epoch "
           f"with the rate lowered every batch, {after}. "
           "The quickest ReLU run is the first of all these to reach the accuracy. Target ratio <= 1.5.")  # fmt: skip


def relu_run(config: ws.RunConfig, curve: QuarterEpochAccuracy, stop_at: float | None = None) -> None:
    """Train ``config``'s network with nn.ReLU in place of its spiking activations (a fresh Adam, and the
    run's learning-rate schedule rebuilt over it), ``curve`` reading its test accuracy; stop once it reaches
    ``stop_at``."""
    lock = RunFolder(config.out).claim(overwrite=True)
    run = ws.build_run(config)
    trainer, args = run.trainer, run.config
    trainer.model = trainer.module = with_relu(trainer.model)
    trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), args.lr)
    trainer.scheduler, trainer.scheduler_per = build_scheduler(args, trainer.optimizer, len(run.train_loader))
    curve.attach(run.eval_loader, len(run.train_loader))
    trainer.callbacks.append(curve)
    for epoch in range(args.epochs):
        trainer.fit(run.train_loader, epoch + 1, run.eval_loader)
        if stop_at is not None and curve.points[-1][2] >= stop_at:
            break
    lock.release()


class QuarterEpochAccuracy(ws.Callback):
    """Test accuracy every quarter epoch (or only at the end of each epoch), with the training time so far
    (evaluations excluded): ``points`` holds (epochs, seconds, accuracy)."""

    def __init__(self, only_at_end: bool = False) -> None:
        self.only_at_end = only_at_end
        self.points: list[tuple[float, float, float]] = []

    def attach(self, eval_loader, batches: int) -> None:
        """Read accuracy on ``eval_loader`` in epochs of ``batches``; the clock starts now."""
        self.eval_loader, self.batches = eval_loader, batches
        self.started, self.paused = time.perf_counter(), 0.0

    def on_batch_end(self, trainer: ws.Trainer, batch: int, loss: float) -> None:
        quarter = 4 * (batch + 1) // self.batches
        if (quarter != 4 * batch // self.batches and not self.only_at_end) or batch + 1 == self.batches:
            stopped = time.perf_counter()
            _, accuracy = ws.evaluate(trainer.module, self.eval_loader)
            trainer.module.train()
            epochs = trainer.position[0] + (batch + 1) / self.batches
            self.points.append((round(epochs * 4) / 4, stopped - self.started - self.paused, accuracy))
            self.paused += time.perf_counter() - stopped


def deployed_accuracy(model: nn.Module, test) -> tuple[float, float]:
    """Test accuracy of a fully binary ``model`` deployed with ``for_inference``, and the seconds its
    inference over the test set took (batches of 1000)."""
    deployed = ws.for_inference(model)
    correct, started = 0, time.perf_counter()
    with torch.inference_mode():
        for x, y in ws.TensorLoader.from_dataset(test, 1000):
            correct += int((deployed(x).argmax(1) == y).sum())
    return correct / len(test), time.perf_counter() - started


def bench_peer(data_dir: str | None, threads: int, out: Path, epochs: int) -> None:
    """snnTorch tutorial recipe (Leaky beta 0.5, fast sigmoid slope 25, Adam 1e-2, batch 128, 25 steps)
    on the same CNN, against our run of bench_time_to_binary."""
    import snntorch as snn
    import snntorch.functional as SF
    from snntorch import surrogate, utils

    report.part = "peer"
    report(f"\n### 4. Against snnTorch (same CNN, {threads} thread, full MNIST)\n")
    torch.manual_seed(0)
    grad = surrogate.fast_sigmoid(slope=25)
    net = nn.Sequential(
        nn.Conv2d(1, 12, 5),
        nn.MaxPool2d(2),
        snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
        nn.Conv2d(12, 64, 5),
        nn.MaxPool2d(2),
        snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 10),
        snn.Leaky(beta=0.5, spike_grad=grad, init_hidden=True, output=True),
    )
    steps = 25

    def forward(x: torch.Tensor) -> torch.Tensor:
        utils.reset(net)
        return torch.stack([net(x)[0] for _ in range(steps)])

    train = ws.load_dataset("mnist", "train", data_dir)
    test = ws.load_dataset("mnist", "test", data_dir)
    loader = ws.TensorLoader.from_dataset(train, 128, shuffle=True, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.9, 0.999))
    loss_fn = SF.ce_rate_loss()
    started = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = loss_fn(forward(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    peer_train = time.perf_counter() - started
    correct, started = 0, time.perf_counter()
    with torch.no_grad():
        for x, y in ws.TensorLoader.from_dataset(test, 1000):
            correct += int((forward(x).sum(0).argmax(1) == y).sum())
    peer_infer, peer_accuracy = time.perf_counter() - started, correct / len(test)

    ours = ws.load_checkpoint(out / "binary")
    _, ours_infer = deployed_accuracy(ws.model_from_checkpoint(ours), test)
    ours_train = sum(r["seconds"] for r in ours["history"])
    report("| method | time steps | epochs | train s | test accuracy | inference s (10,000 images) |")
    report("|---|---:|---:|---:|---:|---:|")
    report(
        f"| snnTorch surrogate gradient | {steps} | {epochs} | {peer_train:.0f} | {100 * peer_accuracy:.2f}% | {peer_infer:.1f} |"
    )
    report(f"| whetstone (fully binary) | 1 | {len(ours['history'])} | {ours_train:.0f} | "
           f"{100 * ours['history'][-1]['eval_accuracy']:.2f}% | {ours_infer:.1f} |")  # fmt: skip
    report(
        f"\ntraining time ratio snnTorch/ours: **{peer_train / ours_train:.1f}x** (target >= 5x); "
        f"inference time steps: **{steps}x** fewer; inference wall time ratio: {peer_infer / ours_infer:.1f}x"
    )


CONVERSION_STEPS = (1, 2, 4, 8, 16, 32)


def _converted_accuracies(seed: int, data_dir: str | None, epochs: int) -> tuple[float, dict[int, tuple[float, float]]]:
    """SpikingJelly's conversion of the CNN trained with ReLU from ``seed``: the ReLU network's test accuracy
    and, for each number of time steps, (test accuracy, inference seconds for the 10,000 images)."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe

    torch.manual_seed(seed)
    ann = nn.Sequential(
        nn.Conv2d(1, 12, 5), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 64, 5), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
    )  # fmt: skip
    train = ws.load_dataset("mnist", "train", data_dir)
    test = ws.load_dataset("mnist", "test", data_dir)
    loader = ws.TensorLoader.from_dataset(train, 128, shuffle=True, seed=seed)
    optimizer = torch.optim.Adam(ann.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        ann.train()
        for x, y in loader:
            loss = nn.functional.cross_entropy(ann(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    ann.eval()
    test_batches = list(ws.TensorLoader.from_dataset(test, 1000))
    with torch.no_grad():
        ann_accuracy = sum(int((ann(x).argmax(1) == y).sum()) for x, y in test_batches) / len(test)
    calibration = [x for _, (x, _) in zip(range(40), ws.TensorLoader.from_dataset(train, 128, shuffle=True, seed=1))]
    snn = Converter(RateCodingRecipe(calibration, mode="99.9%")).convert(ann)
    results = {}
    for steps in CONVERSION_STEPS:
        correct, started = 0, time.perf_counter()
        with torch.no_grad():
            for x, y in test_batches:
                functional.reset_net(snn)
                counts = sum(snn(x) for _ in range(steps))
                correct += int((counts.argmax(1) == y).sum())
        results[steps] = (correct / len(test), time.perf_counter() - started)
    return ann_accuracy, results


def _binary_accuracies(
    seed: int, data_dir: str | None, threads: int, out: Path, epochs: int
) -> tuple[float, float, float]:
    """Ours from ``seed``: test accuracy of the fully binary network with the lowest-index and the membrane
    tie-break, and the inference seconds of ``for_inference`` on the 10,000 images."""
    folder = out / f"binary-long-seed{seed}"
    config = ws.RunConfig(model="mnist-conv-small", dataset="mnist", threads=threads, progress=False, data_dir=data_dir,
                          out=str(folder), epochs=epochs, start_epoch=3, steps=3, per="epoch", lr_schedule="cosine",
                          surrogate=0.0, seed=seed)  # fmt: skip
    _, checkpoint = run_train(config)
    model = ws.model_from_checkpoint(checkpoint)
    test = ws.load_dataset("mnist", "test", data_dir)
    accuracy, seconds = deployed_accuracy(model, test)
    images, labels = test.images.float().div(255).numpy(), test.labels.numpy()
    graph = ws.to_spiking_graph(model, (1, 28, 28))
    membrane = ws.simulate(graph, images, batch_size=1000, tie_break="membrane").predictions
    return accuracy, float((membrane == labels).mean()), seconds


def bench_conversion(data_dir: str | None, threads: int, out: Path, seeds: list[int], epochs: int = 20) -> None:
    """SpikingJelly's RateCodingRecipe (IF neurons, soft reset, thresholds from the 99.9th percentile of
    activations on 40 training batches) on the CNN trained with ReLU, against our single step; both trained
    for ``epochs`` epochs of Adam under cosine decay, from each of ``seeds``."""
    report.part = "conversion"
    report(f"\n### 5. Against ANN-to-SNN conversion (SpikingJelly, same CNN, {threads} thread, full MNIST)\n")
    ann, converted, ours = {}, {}, {}
    for seed in seeds:
        ann[seed], converted[seed] = _converted_accuracies(seed, data_dir, epochs)
        ours[seed] = _binary_accuracies(seed, data_dir, threads, out, epochs)
        print(f"seed {seed}: ReLU {ann[seed]:.4f}, converted {converted[seed]}, ours {ours[seed]}", flush=True)

    def cells(values: list[float]) -> str:
        return " | ".join(f"{100 * v:.2f}%" for v in values) + f" | **{100 * statistics.mean(values):.2f}%**"

    relu = ", ".join(f"{100 * ann[s]:.2f}%" for s in seeds)
    report(f"ReLU CNN: {epochs} epochs of Adam 1e-3, cosine decay: {relu} test accuracy (seeds "
           f"{', '.join(map(str, seeds))}; mean {100 * statistics.mean(ann.values()):.2f}%).\n")  # fmt: skip
    report(f"| method | time steps | {' | '.join(f'seed {s}' for s in seeds)} | mean | inference s (10,000 images) |")
    report("|---|---:|" + "---:|" * (len(seeds) + 2))
    first = seeds[0]
    for steps in CONVERSION_STEPS:
        report(f"| SpikingJelly rate-coded conversion | {steps} | {cells([converted[s][steps][0] for s in seeds])} | "
               f"{converted[first][steps][1]:.1f} |")  # fmt: skip
    report(
        f"| whetstone, fully binary, lowest-index decode | 1 | {cells([ours[s][0] for s in seeds])} | {ours[first][2]:.1f} |"
    )
    report(f"| whetstone, fully binary, membrane tie-break | 1 | {cells([ours[s][1] for s in seeds])} | |")
    report(
        f"\n`whetstone train --model mnist-conv-small --dataset mnist --epochs {epochs} --start-epoch 3 --steps 3 "
        "--per epoch --lr-schedule cosine --surrogate 0 --seed S` gives the whetstone rows (`whetstone simulate RUN "
        "--tie-break membrane` the second); inference seconds are seed "
        f"{first}'s, the binary one in PyTorch (`for_inference`)."
    )
