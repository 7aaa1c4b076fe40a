"""Speed benchmarks of kernels: a training step (parts step, precision) and inference (inference, onnx); run
through ``benchmarks/speed.py``."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import whetstone as ws

from _common import report, spread, timed_rounds, with_relu


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
    from whetstone.graph.integer import IntegerNetwork

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
