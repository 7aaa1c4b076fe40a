"""Speed, each figure a ratio against a baseline measured in the same process, same thread count.

1. step:      one training step (forward, backward, Adam) of the spiking network vs the same network with
              nn.ReLU, same batch; every layer mid-sharpening (uniform sharpness 0.5) so gradients flow
              everywhere, and every layer binary, learning through surrogate gradients.
2. binary:    wall time of sharpening runs to a fully binary network (the recipe, and binary from the first
              batches with surrogate gradients for 1-3 epochs) vs training the same network with nn.ReLU
              until it reaches the accuracy each ends with (read every quarter epoch at a constant rate, and
              at the end of short runs whose rate falls every batch, in the binary runs' batch sizes and
              output codes).  (--full)
3. inference: the deployed binary network (``ws.for_inference``: batch norm folded, in-place Heaviside) and its
              8-bit integer network (``ws.for_inference(bits=8)``: uint8 spikes, int8 kernels) vs the same folded
              network with nn.ReLU, batch 1 and 256, in inference mode.
4. peer:      snnTorch's surrogate-gradient training of the same CNN over 25 time steps vs ours: test
              accuracy, training time and inference time.  (--full, needs snntorch)
5. conversion: SpikingJelly's rate-coding ANN-to-SNN conversion of the same CNN trained with ReLU, at
              T = 1..32 time steps, vs ours at T = 1: accuracy and inference time, per seed (--seeds).  (--full or
              --only conversion, needs spikingjelly)
6. precision: samples/s of the training step under autocast (fp32, bf16, fp16), spiking vs ReLU, batch 128
              and 512, and channels-last for the conv nets (--channels-last), on the GPU when there is one
              (--device); with --compile also the step through torch.compile (--compile of whetstone train).
7. onnx:      ONNX Runtime inference of the 8-bit network in integer arithmetic (uint8 x int8) and of the
              float binary network vs the same folded network with ReLU, batch 1 and 256.

    python benchmarks/speed.py [--full | --only PART] [--data-dir ../shared/data] [--threads 1] [--write docs/results.md]

Timings are medians over rounds; the spread printed is (max - min) / median over the rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import whetstone as ws
from whetstone.checkpoint import RunFolder
from whetstone.run import build_scheduler

from _common import machine, write_section

TITLES = {"step": "training step (issue #5)", "binary": "time to a fully binary network (issue #5)",
          "inference": "inference (issue #5)", "peer": "against snnTorch (issue #5)",
          "conversion": "against ANN-to-SNN conversion (issue #21)",
          "precision": "training step per precision (issue #21)",
          "onnx": "integer inference in ONNX Runtime (issue #21)"}  # fmt: skip


class Report:
    """Prints rows and files each under the part being measured (``report.part``), so that each part
    replaces only its own section of docs/results.md and can be rerun alone."""

    def __init__(self) -> None:
        self.part = "header"
        self.rows: dict[str, list[str]] = {}

    def __call__(self, row: str) -> None:
        print(row, flush=True)
        self.rows.setdefault(self.part, []).append(row)


report = Report()


def with_relu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every spiking activation replaced by nn.ReLU."""
    relu = copy.deepcopy(model)
    for parent in list(relu.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ws.SpikingActivation):
                setattr(parent, name, nn.ReLU())
    return relu


def timed_rounds(fns: dict[str, Callable[[], None]], repeats: int, rounds: int) -> dict[str, list[float]]:
    """Median seconds per call of each function, for each round; rounds interleave the functions."""
    results: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(3):
            fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            results[name].append(statistics.median(times))
    return results


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32") -> Callable[[], None]:
    """One training step as the Trainer takes it: the forward pass under autocast at ``precision``."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(x.device.type, enabled=precision == "fp16")

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=precision != "fp32"):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if x.is_cuda:
            torch.cuda.synchronize()

    return step


def bench_precision(names: list[str], rounds: int, device: str, compiled: bool = False) -> None:
    """Samples per second of the spiking training step per precision (autocast), and against nn.ReLU; with
    ``compiled``, also the step through ``torch.compile`` (the first call of each compiles: untimed)."""
    report.part = "precision"
    report(f"\n### 6. Training step per precision ({device})\n")
    report(
        "| model | batch | precision | spiking samples/s | ReLU samples/s | spiking / ReLU time | vs fp32 (spiking) |"
    )
    report("|---|---:|---|---:|---:|---:|---:|")
    for name in names:
        for batch in (128, 512):
            torch.manual_seed(0)
            model = ws.create_model(name).to(device)
            ws.set_model_sharpness(model, 0.5, bottom_up=False)
            relu = with_relu(model)
            x, y = torch.rand(batch, 1, 28, 28, device=device), torch.randint(0, 10, (batch,), device=device)
            steps = {}
            for precision in ("fp32", "bf16", "fp16"):
                steps[f"spiking {precision}"] = train_step(model, x, y, precision)
                steps[f"relu {precision}"] = train_step(relu, x, y, precision)
            conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
            if conv:  # --channels-last: the same model and batch in NHWC
                nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
                x_nhwc = x.contiguous(memory_format=torch.channels_last)
                for precision in ("fp32", "bf16"):
                    steps[f"nhwc {precision}"] = train_step(nhwc, x_nhwc, y, precision)
            if compiled:  # --compile; timed_rounds warms each step up once, which compiles it
                steps["compiled fp32"] = train_step(torch.compile(model), x, y)
                steps["compiled relu fp32"] = train_step(torch.compile(relu), x, y)
                if conv:
                    steps["compiled nhwc bf16"] = train_step(torch.compile(nhwc), x_nhwc, y, "bf16")
            times = timed_rounds(steps, 30 if "dense" in name else 3, rounds)
            median = {key: statistics.median(values) for key, values in times.items()}
            for precision in ("fp32", "bf16", "fp16"):
                spiking, plain = median[f"spiking {precision}"], median[f"relu {precision}"]
                report(f"| {name} | {batch} | {precision} | {batch / spiking:,.0f} | {batch / plain:,.0f} | "
                       f"{spiking / plain:.2f} | {median['spiking fp32'] / spiking:.2f}x |")  # fmt: skip
            for precision in ("fp32", "bf16") if conv else ():
                spiking = median[f"nhwc {precision}"]
                report(f"| {name} | {batch} | {precision} + channels_last | {batch / spiking:,.0f} | | | "
                       f"{median['spiking fp32'] / spiking:.2f}x |")  # fmt: skip
            if compiled:
                spiking, plain = median["compiled fp32"], median["compiled relu fp32"]
                report(f"| {name} | {batch} | fp32 + compile | {batch / spiking:,.0f} | {batch / plain:,.0f} | "
                       f"{spiking / plain:.2f} | {median['spiking fp32'] / spiking:.2f}x |")  # fmt: skip
            if compiled and conv:
                spiking = median["compiled nhwc bf16"]
                report(f"| {name} | {batch} | bf16 + channels_last + compile | {batch / spiking:,.0f} | | | "
                       f"{median['spiking fp32'] / spiking:.2f}x |")  # fmt: skip


def bench_step(names: list[str], rounds: int) -> None:
    report.part = "step"
    report("\n### 1. Training step: spiking vs nn.ReLU (batch 128)\n")
    report(
        "Spiking: every layer mid-sharpening (uniform sharpness 0.5). Binary: every layer at sharpness 1, "
        "learning through surrogate gradients (`--surrogate 0`).\n"
    )
    report(
        "| model | spiking ms/step | binary ms/step | ReLU ms/step | spiking / ReLU (target <= 1.05) | binary / ReLU | spread |"
    )
    report("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        torch.manual_seed(0)
        model = ws.create_model(name)
        ws.set_model_sharpness(model, 0.5, bottom_up=False)
        binary = copy.deepcopy(model)
        ws.set_model_sharpness(binary, 1.0)
        ws.set_model_surrogate(binary, 0.0)
        x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
        repeats = 30 if "dense" in name else 5
        steps = {
            "spiking": train_step(model, x, y),
            "binary": train_step(binary, x, y),
            "relu": train_step(with_relu(model), x, y),
        }
        times = timed_rounds(steps, repeats, rounds)
        ms = {key: 1e3 * statistics.median(values) for key, values in times.items()}
        ratios = [a / b for a, b in zip(times["spiking"], times["relu"])]
        binary_ratio = statistics.median(a / b for a, b in zip(times["binary"], times["relu"]))
        report(f"| {name} | {ms['spiking']:.2f} | {ms['binary']:.2f} | {ms['relu']:.2f} | {statistics.median(ratios):.3f} | "
               f"{binary_ratio:.3f} | {spread(ratios):.0%} |")  # fmt: skip


def binary_model(name: str) -> nn.Module:
    """Registry model ``name`` (seed 0) at sharpness 1, its batch norms holding non-trivial running
    statistics to fold."""
    torch.manual_seed(0)
    model = ws.create_model(name)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.train()
        with torch.no_grad():
            model(torch.rand(256, 1, 28, 28))
    ws.set_model_sharpness(model, 1.0)
    return model


def bench_inference(names: list[str], rounds: int) -> None:
    from whetstone.integer import IntegerNetwork

    report.part = "inference"
    report("\n### 3. Inference: deployed binary network vs the same folded network with nn.ReLU\n")
    report("| model | batch | binary samples/s | ReLU samples/s | binary / ReLU (target >= 1.0) | spread | "
           "8-bit integer samples/s | integer / ReLU (target >= 1.5) | spread |")  # fmt: skip
    report("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    engine = ""
    for name in names:
        model = binary_model(name)
        binary = ws.for_inference(model)
        integer = ws.for_inference(model, bits=8, input_shape=(1, 28, 28))
        assert isinstance(integer, IntegerNetwork)
        engine = integer.engine + (", pixels as two channels (no VNNI)" if integer.pair_split else "")
        relu = ws.fold_batchnorm(with_relu(model))
        for batch in (1, 256):
            x = torch.rand(batch, 1, 28, 28)
            repeats = (200 if batch == 1 else 10) if "dense" in name else (50 if batch == 1 else 3)
            calls = {
                key: _torch_inference(net, x) for key, net in (("binary", binary), ("int8", integer), ("relu", relu))
            }
            times = timed_rounds(calls, repeats, rounds)
            rate = {key: batch / statistics.median(values) for key, values in times.items()}
            ratios = {key: [r / t for t, r in zip(times[key], times["relu"])] for key in ("binary", "int8")}
            report(f"| {name} | {batch} | {rate['binary']:,.0f} | {rate['relu']:,.0f} | "
                   f"{statistics.median(ratios['binary']):.3f} | {spread(ratios['binary']):.0%} | {rate['int8']:,.0f} | "
                   f"**{statistics.median(ratios['int8']):.2f}** | {spread(ratios['int8']):.0%} |")  # fmt: skip
    report(f"\nInteger engine: {engine}.")


def _torch_inference(net: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode():
            net(x)

    return call


def _relu_onnx(binary_onnx):
    """The float ONNX model with each spiking layer's GreaterOrEqual + Cast replaced by Relu: the same folded
    network with ReLU activations, in the same runtime."""
    from onnx import helper

    model = copy.deepcopy(binary_onnx)
    kept = []
    compares = {n.output[0]: n for n in model.graph.node if n.op_type == "GreaterOrEqual"}
    for node in model.graph.node:
        if node.op_type == "GreaterOrEqual":
            continue
        if node.op_type == "Cast" and node.input[0] in compares:
            node = helper.make_node("Relu", [compares[node.input[0]].input[0]], list(node.output), name=node.name)
        kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    unused = [init for init in model.graph.initializer if init.name.endswith("_threshold")]
    for init in unused:
        model.graph.initializer.remove(init)
    return model


def bench_onnx(names: list[str], rounds: int) -> None:
    """ONNX Runtime, one thread: the 8-bit network in integer arithmetic (``--target onnx-int8``) and the
    float binary network, against the same folded network with ReLU; PyTorch's for reference."""
    import onnxruntime as ort

    from whetstone.export.onnx import to_onnx
    from whetstone.export.onnx_integer import to_integer_onnx

    report.part = "onnx"
    report("\n### 7. Inference in ONNX Runtime: integer (int8) and float binary networks vs the folded ReLU network\n")
    report("| model | batch | int8 samples/s | float binary samples/s | ReLU samples/s | int8 / ReLU (target >= 1.5) | "
           "PyTorch ReLU samples/s | spikes as the int8 simulator (mnist-mini, 1,000) |")  # fmt: skip
    report("|---|---:|---:|---:|---:|---:|---:|---:|")
    test = ws.load_dataset("mnist-mini", "test")
    pixels = test.images.float().div(255).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    for name in names:
        model = binary_model(name)
        model.eval()
        graph = ws.quantize(ws.to_spiking_graph(model, (1, 28, 28)), 8)
        binary = to_onnx(graph)
        sessions = {
            "int8": ort.InferenceSession(
                to_integer_onnx(graph).SerializeToString(), options, providers=["CPUExecutionProvider"]
            ),
            "float": ort.InferenceSession(binary.SerializeToString(), options, providers=["CPUExecutionProvider"]),
            "relu": ort.InferenceSession(
                _relu_onnx(binary).SerializeToString(), options, providers=["CPUExecutionProvider"]
            ),
        }
        same = int(
            (sessions["int8"].run(["spikes"], {"input": pixels})[0] == ws.simulate(graph, pixels).output_spikes)
            .all(1)
            .sum()
        )
        relu_torch = ws.fold_batchnorm(with_relu(model))
        for batch in (1, 256):
            x = pixels[:batch] if batch <= len(pixels) else np.resize(pixels, (batch, *pixels.shape[1:]))
            calls = {key: (lambda s=session, x=x: s.run(["label"], {"input": x})) for key, session in sessions.items()}
            calls["torch"] = _torch_inference(relu_torch, torch.as_tensor(x))
            repeats = 200 if batch == 1 else 5
            times = timed_rounds(calls, repeats, rounds)
            rate = {key: batch / statistics.median(values) for key, values in times.items()}
            report(f"| {name} | {batch} | {rate['int8']:,.0f} | {rate['float']:,.0f} | {rate['relu']:,.0f} | "
                   f"**{rate['int8'] / rate['relu']:.2f}** | {rate['torch']:,.0f} | {same:,}/{len(pixels):,} |")  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the full-training comparisons (2, 4 and 5)")
    parser.add_argument("--only", choices=list(TITLES), help="run this part alone")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peer-epochs", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="part 6: also the step through torch.compile")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="for part 5, e.g. --seeds 0 1 2 3 4")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for part 6")
    parser.add_argument("--out", default="runs/speed")
    parser.add_argument("--write", help="replace the speed section of this markdown file (docs/results.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = ("--full " if args.full else "") + (f"--only {args.only} " if args.only else "")
    flags += "--compile " if args.compile else ""
    flags += f"--seeds {' '.join(map(str, args.seeds))} " if args.seeds != [0] else ""
    report(f"Measured with `python benchmarks/speed.py {flags}--threads {args.threads}` on {machine()}.")
    names, out = ["mnist-dense", "mnist-conv-small", "mnist-conv-bn"], Path(args.out)
    parts = {
        "step": lambda: bench_step(names, args.rounds),
        "inference": lambda: bench_inference(
            ["mnist-dense", "mnist-conv-small", "mnist-conv", "mnist-conv-bn"], args.rounds
        ),
        "binary": lambda: bench_time_to_binary(args.data_dir, args.threads, out),
        "peer": lambda: bench_peer(args.data_dir, args.threads, out, args.peer_epochs),
        "conversion": lambda: bench_conversion(args.data_dir, args.threads, out, args.seeds),
        "precision": lambda: bench_precision(["mnist-dense", "mnist-conv-bn"], args.rounds, args.device, args.compile),
        "onnx": lambda: bench_onnx(["mnist-dense", "mnist-conv-small", "mnist-conv", "mnist-conv-bn"], args.rounds),
    }
    chosen = (
        [args.only]
        if args.only
        else ["step", "inference", "precision"] + (["binary", "peer", "conversion"] if args.full else [])
    )
    for part in chosen:
        parts[part]()
    if args.write:
        header = "\n".join(report.rows.pop("header"))
        for part, rows in report.rows.items():
            write_section(Path(args.write), f"speed-{part}", f"Speed: {TITLES[part]}", header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
