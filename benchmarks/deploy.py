"""Agreement of every deployment path on a whole test set, plus the spike / synaptic-op / energy report.

For each checkpoint: the PyTorch model (as trained, batch norm unfolded), the same model with batch norm
folded, the event-driven numpy simulator, the NIR file run by snnTorch's importer for one time step, and
ONNX Runtime; then the same network quantized to integer weights. Prints markdown for docs/results.md.

    python benchmarks/deploy.py RUN_DIR [RUN_DIR ...] --data-dir ../shared/data [--limit N]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from whetstone.convert.graph_builder import to_spiking_graph
from whetstone.data.datasets import DATASETS, load_dataset
from whetstone.export.onnx import write_onnx
from whetstone.graph.quantization import quantize
from whetstone.graph.simulator import simulate
from whetstone.nn.tracing import fold_batchnorm
from whetstone.runs.restore import model_from_checkpoint
from whetstone.targets import export
from whetstone.targets.snntorch import run as run_in_snntorch
from whetstone.training.checkpoint import load_checkpoint


def torch_predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(1) for chunk in x.split(1000)]).numpy()


def onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["label"], {"input": x[i : i + 1000]})[0] for i in range(0, len(x), 1000)])


def snntorch_predict(path: Path, graph, x: np.ndarray) -> np.ndarray:
    spikes = np.concatenate([run_in_snntorch(path, x[i : i + 1000]) for i in range(0, len(x), 1000)])
    return graph.decode(spikes).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--bits", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread\n")
    rows, reports = [], []
    for run in args.runs:
        checkpoint = load_checkpoint(run)
        model = model_from_checkpoint(checkpoint, run)
        name, dataset = checkpoint["run"]["model"], checkpoint["run"]["dataset"]
        data = load_dataset(dataset, "test", args.data_dir)
        x = data.images[: args.limit].float() / 255
        labels = data.labels[: args.limit].numpy()
        graph = to_spiking_graph(model, DATASETS[dataset].image_shape)
        reference = torch_predict(model, x)
        with tempfile.TemporaryDirectory() as tmp:
            nir_path, onnx_path = (
                export(graph, Path(tmp) / "m.nir", "snntorch"),
                write_onnx(graph, Path(tmp) / "m.onnx"),
            )
            started = time.perf_counter()
            sim = simulate(graph, x.numpy(), progress=True)
            sim_seconds = time.perf_counter() - started
            paths = {
                "folded": torch_predict(fold_batchnorm(model), x),
                "simulator": sim.predictions,
                "NIR -> snnTorch": snntorch_predict(nir_path, graph, x.numpy()),
                "ONNX Runtime": onnx_predict(onnx_path, x.numpy()),
            }
            q = quantize(graph, args.bits)
            q_sim = simulate(q, x.numpy(), progress=True)
            q_nir, q_onnx = export(q, Path(tmp) / "q.nir", "snntorch"), write_onnx(q, Path(tmp) / "q.onnx")
            q_paths = {
                "NIR -> snnTorch": snntorch_predict(q_nir, q, x.numpy()),
                "ONNX Runtime": onnx_predict(q_onnx, x.numpy()),
            }
        n = len(labels)
        agree = ", ".join(f"{k} {int((v == reference).sum()):,}/{n:,}" for k, v in paths.items())
        q_agree = ", ".join(f"{k} {int((v == q_sim.predictions).sum()):,}/{n:,}" for k, v in q_paths.items())
        rows.append(
            f"| {name} ({dataset}) | {100 * (reference == labels).mean():.2f}% | {agree} | "
            f"{100 * q_sim.accuracy(labels):.2f}% (int{args.bits}); vs its simulator: {q_agree} | {sim_seconds:.0f} s |"
        )
        reports.append(f"#### {name} ({dataset} test, {n:,} images)\n\n```\n{sim.report('fp32')}\n```\n")
    print("| model | PyTorch accuracy | same class as PyTorch | integer weights | simulator time |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(reports))


if __name__ == "__main__":
    main()
