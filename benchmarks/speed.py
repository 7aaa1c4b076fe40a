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
from pathlib import Path

import torch

from _common import machine, report, write_section
from speed_kernels import bench_inference, bench_onnx, bench_precision, bench_step
from speed_training import bench_conversion, bench_peer, bench_time_to_binary

TITLES = {"step": "training step (issue #5)", "binary": "time to a fully binary network (issue #5)",
          "inference": "inference (issue #5)", "peer": "against snnTorch (issue #5)",
          "conversion": "against ANN-to-SNN conversion (issue #21)",
          "precision": "training step per precision (issue #21)",
          "onnx": "integer inference in ONNX Runtime (issue #21)"}  # fmt: skip


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
