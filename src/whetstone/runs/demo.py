"""The demo: the paper's dense network on the bundled MNIST digits, trained twice with the same epoch
budget, once as an ordinary network (no sharpening) and once sharpened to binary spikes, then compared."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from ..nn.sharpen import set_model_sharpness
from ..training.callbacks import format_seconds
from ..training.checkpoint import RunFolder
from ..training.evaluation import evaluate
from ..training.history import TrainResult
from ..utils.files import atomic_write
from .build import build_run
from .config import RunConfig

__all__ = ["run_demo"]


def _train(config: RunConfig) -> tuple[TrainResult, torch.nn.Module, object]:
    with RunFolder(config.out).claim(overwrite=True):  # the demo replaces an earlier demo's run (checked before)
        run = build_run(config)
        return run.fit(), run.model, run.eval_loader


#: Marks a folder the demo writes into: it replaces its own runs there, and only those.
DEMO_MARKER = ".whetstone-demo"


def _check_demo_folder(out: Path) -> None:
    """The demo replaces the runs in ``out/relu`` and ``out/binary`` only where it wrote them itself."""
    marker = out / DEMO_MARKER
    for name in ("relu", "binary"):
        if RunFolder(out / name).run_files() and not marker.is_file():
            raise ValueError(
                f"--out {out}: {out / name} holds a run the demo did not write, which it would replace; choose another "
                "--out"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, "whetstone demo writes here: it replaces its own runs in relu/ and binary/\n")


def run_demo(out: str = "runs/demo", epochs: int = 21, progress: bool = True) -> TrainResult:
    """Train ``mnist-dense`` on ``mnist-mini`` without and with sharpening for ``epochs`` epochs each (in
    ``out/relu`` and ``out/binary``), print the comparison, and return the sharpened run's result."""
    started = time.perf_counter()
    _check_demo_folder(Path(out))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    base = RunConfig(model="mnist-dense", dataset="mnist-mini", epochs=epochs, progress=progress)
    print("whetstone demo: mnist-dense (784-256-64-100, 10x100 key) on 4,000 bundled MNIST digits, Adadelta lr 4.0,")
    print(f"the same {epochs}-epoch budget twice: an ordinary network, then one sharpened bottom-up from epoch 6\n")
    print("1. without sharpening (continuous bounded-ReLU activations)")
    plain, plain_model, loader = _train(base.replace(sharpener="none", out=str(Path(out) / "relu")))
    thresholded = copy.deepcopy(plain_model)
    set_model_sharpness(thresholded, 1.0)
    thresholded_accuracy = evaluate(thresholded, loader)[1]
    print("\n2. sharpened to binary spikes (simple sharpener, 5 steps per layer)")
    binary, _, _ = _train(base.replace(out=str(Path(out) / "binary")))
    print()
    print(f"test accuracy on 1,000 digits after {epochs} epochs each:")
    print(f"  ordinary network, continuous activations:           {100 * plain.history[-1].eval_accuracy:.2f}%")
    print(f"  the same network simply thresholded (no sharpening): {100 * thresholded_accuracy:.2f}%")
    print(f"  sharpened network, binary spikes in one time step:   {100 * binary.history[-1].eval_accuracy:.2f}%"
          f" ({len(binary.history)} epochs)")  # fmt: skip
    for layer in binary.layers:
        print(f"  {layer.name:>12}: {layer.units:4d} units  binary={'yes' if layer.binary else 'NO'}  "
              f"firing rate {layer.firing_rate:.3f}  never fired {layer.never_fired}")  # fmt: skip
    if binary.fully_binary:
        print("fully binary: every spiking unit emitted only 0 or 1 on the test set (one time step)")
    print(f"done in {format_seconds(time.perf_counter() - started)}; plots: {Path(out) / 'relu' / 'history.png'}, "
          f"{Path(out) / 'binary' / 'history.png'}")  # fmt: skip
    return binary
