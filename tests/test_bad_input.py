"""The catalogue of bad input and faults, across the command line and the Python API.

Every command-line case exits with status 2 and prints exactly one line on stderr that names the problem,
with no traceback, and leaves every run folder byte for byte as it was and no temporary file behind.
Every Python case raises the named exception with a one-line message. The full-disk cases run on a small
tmpfs where this machine allows mounting one, and skip visibly otherwise.

``python tests/test_bad_input.py`` prints the catalogue with what the user sees, as the table in
docs/results.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import whetstone as ws
from whetstone.cli.main import main
from whetstone.export.nir import read_nir
from whetstone.graph.precision import precision_cost
from whetstone.targets.consumer_process import ConsumerError
from whetstone.training.checkpoint import load_checkpoint, save_checkpoint
from whetstone.utils.files import FolderLock, atomic_write

TINY = ["--model", "mnist-dense", "--dataset", "mnist-mini", "--limit", "300", "--epochs", "3", "--start-epoch", "0",
        "--steps", "1", "--no-progress", "--threads", "1"]  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # with {placeholders} from Places
    expected: str  # a part of the one error line


def _cli(name: str, argv: str, expected: str) -> Case:
    return Case(name, tuple(argv.split()), expected)


TRAIN = "train --model mnist-dense --dataset mnist-mini --out {new}"
CLI_CASES = [
    # train: settings (all checked before anything is trained or written)
    _cli("unknown model", "train --model nope --out {new}", "--model 'nope' is not a model"),
    _cli("no --model", "train --out {new}", "--model is required"),
    _cli("no --out", "train --model mnist-dense", "--out is required"),
    _cli("training in fp8", TRAIN + " --precision fp8", "argument --precision: invalid choice: 'fp8'"),
    _cli("unknown dataset", "train --model mnist-dense --dataset imagenet --out {new}", "--dataset 'imagenet' is not a dataset; choose one of cifar10, fashion-mnist, mnist, mnist-mini, or give a folder"),
    _cli("your own dataset, a .npz file that is not there", "train --model mnist-dense --dataset {tmp}/mine.npz --out {new}", "--dataset {tmp}/mine.npz: no such .npz file"),
    _cli("your own dataset, a factory that cannot be imported", "train --model mnist-dense --dataset nowhere.data:make --out {new}",
         "--dataset nowhere.data:make: cannot import 'nowhere.data' (No module named 'nowhere')"),
    _cli("negative learning rate", TRAIN + " --lr -1", "--lr must be a positive finite number, got -1.0"),
    _cli("zero learning rate", TRAIN + " --lr 0", "--lr must be a positive finite number, got 0.0"),
    _cli("infinite learning rate", TRAIN + " --lr inf", "argument --lr: must be a finite number, got inf"),
    _cli("NaN learning rate", TRAIN + " --lr nan", "argument --lr: must be a finite number, got nan"),
    _cli("learning rate not a number", TRAIN + " --lr fast", "argument --lr: must be a number, got 'fast'"),
    _cli("zero epochs", TRAIN + " --epochs 0", "--epochs must be an integer >= 1, got 0"),
    _cli("negative epochs", TRAIN + " --epochs -3", "--epochs must be an integer >= 1, got -3"),
    _cli("zero epochs, cosine schedule", TRAIN + " --epochs 0 --lr-schedule cosine", "--epochs must be an integer >= 1"),
    _cli("fractional epochs", TRAIN + " --epochs 2.5", "argument --epochs: must be an integer, got '2.5'"),
    _cli("zero batch size", TRAIN + " --batch-size 0", "--batch-size must be an integer >= 1, got 0"),
    _cli("batch not divisible by processes", TRAIN + " --batch-size 7 --nproc 2", "--batch-size must be divisible by the 2 processes"),
    _cli("zero threads", TRAIN + " --threads 0", "--threads must be an integer >= 1, got 0"),
    _cli("negative threads", TRAIN + " --threads -1", "--threads must be an integer >= 1, got -1"),
    _cli("zero processes", TRAIN + " --nproc 0", "--nproc must be an integer >= 1, got 0"),
    _cli("zero limit", TRAIN + " --limit 0", "--limit must be an integer >= 1, got 0"),
    _cli("negative limit", TRAIN + " --limit -5", "--limit must be an integer >= 1, got -5"),
    _cli("holdout 0", TRAIN + " --holdout 0", "--holdout must be a fraction in (0, 1), got 0.0"),
    _cli("holdout above 1", TRAIN + " --holdout 1.5", "--holdout must be a fraction in (0, 1), got 1.5"),
    _cli("negative weight decay", TRAIN + " --weight-decay -1", "--weight-decay must be a finite number >= 0, got -1.0"),
    _cli("negative start epoch", TRAIN + " --start-epoch -1", "--start-epoch must be an integer >= 0, got -1"),
    _cli("zero sharpening steps", TRAIN + " --steps 0", "--steps must be an integer >= 1, got 0"),
    _cli("surrogate at 1", TRAIN + " --surrogate 1", "--surrogate must be a sharpness in [0, 1), got 1.0"),
    _cli("negative surrogate", TRAIN + " --surrogate -0.1", "--surrogate must be a sharpness in [0, 1), got -0.1"),
    _cli("zero logit scale", TRAIN + " --logit-scale 0", "--logit-scale must be a positive finite number, got 0.0"),
    _cli("key narrower than the classes", TRAIN + " --key-width 5", "--key-width must be at least the 10 classes of mnist-mini"),
    _cli("negative seed", TRAIN + " --seed -1", "--seed must be an integer >= 0, got -1"),
    _cli("checkpoint every 0 batches", TRAIN + " --checkpoint-every 0", "--checkpoint-every must be an integer >= 1, got 0"),
    _cli("scheduled sharpener without a schedule", TRAIN + " --sharpener scheduled", "--schedule is needed by --sharpener scheduled"),
    _cli("malformed schedule", TRAIN + " --sharpener scheduled --schedule 0:2,x", "--schedule must look like '0:2,2:4'"),
    _cli("schedule window stopping before it starts", TRAIN + " --sharpener scheduled --schedule 0:1,2:1.5",
         "--schedule window 1 (2:1.5) must start at 0 or later and stop after it starts"),
    _cli("unknown sharpener", TRAIN + " --sharpener sharp", "argument --sharpener: invalid choice: 'sharp'"),
    _cli("unknown optimizer", TRAIN + " --optimizer lbfgs", "argument --optimizer: invalid choice: 'lbfgs'"),
    _cli("unknown device", TRAIN + " --device tpu", "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    _cli("CUDA device on a machine without one", TRAIN + " --device cuda:3", "--device cuda:3: CUDA is not available"),
    _cli("model option without a value", TRAIN + " --model-option kernel", "--model-option must look like NAME=VALUE"),
    _cli("model option the model lacks", TRAIN + " --model-option kernel=3", "model 'mnist-dense' has no option kernel"),
    _cli("model option of the wrong type", TRAIN + " --model-option pool_first=yes", "pool_first must be True or False, got 'yes'"),
    _cli("model option whose size cannot be allocated", TRAIN.replace("mnist-dense", "mnist-conv-small") + " --model-option conv2=1000000000000",
         "--model-option conv2=1000000000000: model 'mnist-conv-small' at these sizes needs"),
    _cli("model option that is a size, zero", TRAIN.replace("mnist-dense", "mnist-conv-small") + " --model-option conv2=0", "model option conv2 must be a positive integer, got 0"),
    _cli("distillation weight without a teacher", TRAIN + " --distill-weight 0.5", "--distill-weight and --distill-temperature need --teacher"),
    _cli("teacher that does not exist", TRAIN + " --teacher {tmp}/nowhere", "--teacher {tmp}/nowhere: no checkpoint at"),
    _cli("teacher of another dataset", TRAIN + " --teacher {fashion_teacher}", "was trained on 'fashion-mnist', this run trains on 'mnist-mini'"),
    _cli("distillation weight above 1", TRAIN + " --teacher {run} --distill-weight 2", "--distill-weight must be in [0, 1], got 2.0"),
    _cli("zero distillation temperature", TRAIN + " --teacher {run} --distill-temperature 0", "--distill-temperature must be a positive finite number"),
    _cli("weight bits below 2", TRAIN + " --bits 1", "--bits must be an integer >= 2, got 1"),
    _cli("weight bits beyond 16", TRAIN + " --bits 17", "--bits must be an integer in [2, 16], got 17 (the integer weights quantize() writes)"),
    _cli("weight bits and a chip target", TRAIN + " --bits 4 --target akida", "--bits and --target akida both set the weights' precision: give one"),
    _cli("training for an unknown target", TRAIN + " --target loihi3", "argument --target: invalid choice: 'loihi3'"),
    _cli("--config that never ends", "train --config /dev/zero --out {new}", "--config /dev/zero: larger than 1,000,000 bytes"),
    _cli("missing --config file", TRAIN + " --config {tmp}/none.toml", "--config {tmp}/none.toml: no such file"),
    _cli("--config not TOML", TRAIN + " --config {not_toml}", "not a readable TOML file"),
    _cli("--config with an unknown setting", TRAIN + " --config {unknown_setting_toml}", "--learning-rate is not a setting"),
    _cli("--config with a bad value", "train --config {bad_value_toml} --out {new}", "--lr must be a positive finite number, got -1"),
    _cli("--config with a value of the wrong type", "train --config {bad_type_toml} --out {new}", "--data-dir must be text, got 5"),
    # train: run folders
    _cli("--out holds a finished run", "train --model mnist-dense --dataset mnist-mini --out {run}", "already holds a run (checkpoint.pt); continue it with --resume"),
    _cli("--out is a file", TRAIN.replace("{new}", "{text_file}"), "is a file, not a folder"),
    _cli("--download into a folder that cannot be made", "train --model mnist-dense --dataset mnist --download --data-dir /proc/nope --out {new}",
         "--download cannot create the data folder /proc/nope/mnist: No such file or directory"),
    _cli("--threads beyond what torch can start", TRAIN + " --threads 1000000", "--threads must be an integer in [1, 1024], got 1000000"),
    _cli("--seed beyond 64 bits", TRAIN + " --seed 1180591620717411303424", "--seed must be an integer in [0, 9223372036854775807]"),
    _cli("--model-option that the dataset sets", TRAIN + " --model-option num_classes=3", "--model-option num_classes is set by the dataset"),
    _cli("--model-option of the wrong type", TRAIN + " --model-option batch_norm=no", "model option batch_norm must be true or false, got 'no'"),
    _cli("--out holds another tool's config and history", TRAIN.replace("{new}", "{foreign_folder}"),
         "holds config.toml, history.json (names a run writes) but no checkpoint.pt"),
    _cli("--out holds a run whose checkpoint was deleted", TRAIN.replace("{new}", "{run_without_checkpoint}"),
         "holds best.pt, config.toml, history.json, history.csv, history.png (names a run writes) but no checkpoint.pt"),
    _cli("--out cannot be created", TRAIN.replace("{new}", "/proc/nope"), "is not writable"),
    _cli("--out in use by another process", TRAIN.replace("{new}", "{locked}"), "is in use by process"),
    _cli("--resume a folder without a run", "train --resume {tmp}", "no checkpoint at"),
    _cli("--resume with --config", "train --resume {run} --config {not_toml}", "--resume continues a run with its saved settings"),
    _cli("--resume with --overwrite", "train --resume {run} --overwrite", "--resume continues a run with its saved settings"),
    _cli("--resume with another learning rate", "train --resume {run} --lr 0.5", "--lr 0.5 (the run has 4.0) contradicts the saved run"),
    _cli("--resume with another model", "train --resume {run} --model mnist-conv", "--model mnist-conv (the run has mnist-dense) contradicts"),
    _cli("--resume with another --out", "train --resume {run} --out {new}", "(the run is in {run}) contradicts"),
    _cli("--resume a checkpoint at position -5", "train --resume {resume_negative_position}", "the checkpoint's position [-5, 0] is not a run's"),
    _cli("--resume a checkpoint whose optimizer state has other shapes", "train --resume {resume_misshapen_optimizer} --epochs 9",
         "the checkpoint's optimizer state does not fit the model: its "),
    _cli("--resume a checkpoint whose own settings are invalid", "train --resume {resume_bad_saved_lr} --epochs 9",
         "resume_bad_saved_lr: the run's saved setting lr must be a positive finite number, got -1.0; this run cannot continue"),
    _cli("--resume a checkpoint without optimizer state", "train --resume {resume_no_optimizer}", "the checkpoint's optimizer state cannot be restored: 'optimizer'"),
    _cli("--resume a checkpoint with a garbage history", "train --resume {resume_garbage_history}", "the checkpoint's history cannot be restored"),
    _cli("--resume a checkpoint with a broken RNG state", "train --resume {resume_bad_rng}", "the checkpoint's random number generator state cannot be restored"),
    _cli("--resume a checkpoint with a foreign sharpener state", "train --resume {resume_bad_sharpener}", "the checkpoint's sharpener state cannot be restored"),
    _cli("--resume a checkpoint holding another model's weights", "train --resume {resume_other_weights}", "the checkpoint's model weights cannot be restored: Missing key(s)"),
    _cli("--resume a cosine run with other epochs", "train --resume {cosine_run} --epochs 9", "its cosine schedule ends at epoch 3"),
    # train: data
    _cli("missing data folder", "train --model mnist-dense --dataset mnist --data-dir {tmp}/nodata --out {new}", "mnist train data not found: looked for"),
    _cli("IDX file with a bad magic number", "train --model mnist-dense --dataset mnist --data-dir {bad_magic} --out {new}", "bad magic number"),
    _cli("truncated IDX file", "train --model mnist-dense --dataset mnist --data-dir {truncated_idx} --out {new}", "truncated"),
    _cli("images of the wrong shape", "train --model mnist-dense --dataset mnist --data-dir {wrong_shape} --out {new}", "images must be uint8 of shape (N, 1, 28, 28)"),
    _cli("labels out of range", "train --model mnist-dense --dataset mnist --data-dir {bad_labels} --out {new}", "labels must be in [0, 9], found 12..12"),
    _cli("CIFAR zip with a non-JPEG member", "train --model cifar-conv-bn --data-dir {cifar_not_jpeg} --out {new}", "member train/cat/0001.jpg is unreadable"),
    _cli("CIFAR zip with a CRC error", "train --model cifar-conv-bn --data-dir {cifar_crc} --out {new}", "is unreadable: Bad CRC-32"),
    _cli("CIFAR file that is not a zip", "train --model cifar-conv-bn --data-dir {cifar_not_zip} --out {new}", "File is not a zip file"),
    # train --nproc 2: checked in this process before any worker starts
    _cli("--nproc 2 with a bad learning rate", TRAIN + " --nproc 2 --lr -1", "--lr must be a positive finite number"),
    _cli("--nproc 2 with missing data", "train --model mnist-dense --dataset mnist --data-dir {tmp}/nodata --nproc 2 --out {new}", "mnist train data not found"),
    _cli("--nproc 2 with a model option the model lacks", TRAIN + " --nproc 2 --model-option kernel=3", "has no option kernel"),
    _cli("--nproc 2 with a missing teacher", TRAIN + " --nproc 2 --teacher {tmp}/nowhere", "no checkpoint at"),
    _cli("--nproc 2 into a finished run", "train --model mnist-dense --dataset mnist-mini --nproc 2 --out {run}", "already holds a run"),
    # eval: checkpoints
    _cli("eval of a missing checkpoint", "eval {tmp}/nowhere", "no checkpoint at {tmp}/nowhere"),
    _cli("eval of a truncated checkpoint", "eval {truncated_checkpoint}", "cannot load checkpoint"),
    _cli("eval of a bare tensor", "eval {bare_tensor}", "is not a whetstone checkpoint: it holds a bare tensor of shape (3, 4)"),
    _cli("eval of a list", "eval {a_list}", "is not a whetstone checkpoint: it holds a list"),
    _cli("eval of a pickled object", "eval {pickled_object}", "holds Python objects other than tensors and plain values"),
    _cli("eval of a text file", "eval {text_file}", "cannot load checkpoint"),
    _cli("eval of another model's weights", "eval {other_models_weights}", "its weights do not fit model 'mnist-dense'"),
    _cli("eval of a checkpoint naming no known model", "eval {unknown_model_checkpoint}", "cannot rebuild its model: unknown model 'resnet-9000'"),
    _cli("eval of a decoder key of the wrong width", "eval {wrong_key}", "key"),
    _cli("eval of a sharpness outside [0, 1]", "eval {bad_sharpness}", "sharpness"),
    _cli("eval on a dataset of other images", "eval {run} --dataset cifar10", "--dataset cifar10 has 3x32x32 images but the model in"),
    _cli("eval with batch size 0", "eval {run} --batch-size 0", "argument --batch-size: must be a finite integer >= 1, got 0"),
    # export
    _cli("export over the run's checkpoint", "export {run} --format onnx --out {run}/checkpoint.pt", "is a checkpoint or a run's own file"),
    _cli("export over the run's history", "export {run} --format nir --out {run}/history.json", "is a checkpoint or a run's own file"),
    _cli("export over any checkpoint file", "export {run} --format nir --out {tmp}/model.pt", "is a checkpoint or a run's own file"),
    _cli("export to a folder", "export {run} --format onnx --out {tmp}", "is a folder; give a file name"),
    _cli("export into a missing folder", "export {run} --format onnx --out {tmp}/no/m.onnx", "directory {tmp}/no does not exist"),
    _cli("export over an existing file", "export {run} --format nir --out {text_file}", "exists; pass --overwrite to replace it"),
    _cli("export whose format contradicts its target", "export {run} --target akida --format nir --out {tmp}/a.nir",
         "--target akida is written as FBZ: pass --format fbz"),
    _cli("verify a file outside any run without --dataset", "verify {tmp}/m.nir --consumer snntorch",
         "--dataset is required: no run beside {tmp}/m.nir records the data it was trained on (or pass --run)"),
    _cli("export with 0 bits", "export {run} --format nir --out {tmp}/q.nir --bits 0", "argument --bits: must be a finite integer in [2, 16], got 0"),
    _cli("export with 17 bits", "export {run} --format nir --out {tmp}/q.nir --bits 17", "must be a finite integer in [2, 16], got 17"),
    _cli("export of an unsharpened run", "export {plain_run} --format nir --out {tmp}/p.nir", "has sharpness 0; only fully sharpened layers"),
    _cli("export to an unknown format", "export {run} --format tflite", "argument --format: invalid choice: 'tflite'"),
    _cli("export --verify where nothing can run the file", "export {run} --format nir --target spinnaker2 --verify --out {tmp}/l.nir",
         "--verify: py-spinnaker2 cannot run here"),
    _cli("export NIR to a .onnx name", "export {run} --format nir --out {tmp}/m.onnx", "--out {tmp}/m.onnx: a NIR file's name ends in .nir, e.g. m.nir"),
    # export for a target, verify in a consumer, fit on a chip
    _cli("export for an unknown target", "export {run} --format nir --target speck2", "argument --target: invalid choice: 'speck2'"),
    _cli("export for a NIR target as ONNX", "export {run} --format onnx --target speck", "--target speck is written as NIR: pass --format nir"),
    _cli("export 12-bit weights for an 8-bit chip", "export {run} --format nir --target speck --bits 12 --out {tmp}/s.nir", "--bits 12: --target speck holds at most 8-bit weights"),
    _cli("export --limit without --verify", "export {run} --format nir --limit 10 --out {tmp}/l.nir", "--limit counts the images --verify runs"),
    _cli("export a conv net for a dense-only chip", "export {conv_run} --format nir --target xylo --out {tmp}/x.nir", "features.0: Rockpool has dense layers only; this layer is a conv2d"),
    _cli("verify for a chip that cannot run here", "verify {nir} --consumer spinnaker2 --dataset mnist-mini", "py-spinnaker2 cannot run here: "),
    _cli("verify a file written for other software", "verify {speck_nir} --consumer norse --dataset mnist-mini", "was written for speck, which Norse reads differently; export it with --target norse"),
    _cli("verify a NIR file in onnxruntime", "verify {nir} --consumer onnx --dataset mnist-mini", "model.nir: ONNX Runtime runs .onnx files"),
    _cli("verify on images of another shape", "verify {nir} --consumer snntorch --dataset cifar10", "--dataset cifar10 has 3x32x32 images but {tmp}/model.nir takes 1x28x28"),
    _cli("verify a file that is missing", "verify {tmp}/gone.nir --consumer snntorch --dataset mnist-mini", "gone.nir"),
    _cli("verify with limit 0", "verify {nir} --consumer snntorch --dataset mnist-mini --limit 0", "argument --limit: must be a finite integer >= 1, got 0"),
    _cli("fit on a software target", "fit {run} --chip norse", "argument --chip: invalid choice: 'norse'"),
    _cli("fit an unsharpened run", "fit {plain_run} --chip loihi2", "has sharpness 0; only fully sharpened layers"),
    # simulate
    _cli("simulate an ONNX file", "simulate {tmp}/model.onnx --dataset mnist-mini", "an ONNX file runs in onnxruntime"),
    _cli("simulate NIR without --dataset", "simulate {nir} --limit 10", "--dataset is required to simulate a .nir file"),
    _cli("simulate NIR with NaN thresholds", "simulate {nir_nan_threshold} --dataset mnist-mini", "NaN or infinite values in the thresholds of 'features_2'"),
    _cli("simulate NIR with a NaN key", "simulate {nir_nan_key} --dataset mnist-mini", "NaN or infinite values in the decoder key"),
    _cli("simulate NIR with a cycle", "simulate {nir_cycle} --dataset mnist-mini", "the graph has a cycle"),
    _cli("simulate with an unknown tie-break", "simulate {run} --tie-break random --limit 10", "argument --tie-break: invalid choice: 'random'"),
    _cli("simulate a file that is not NIR", "simulate {not_nir} --dataset mnist-mini", "is not a readable NIR file"),
    _cli("simulate NIR on a dataset of other images", "simulate {nir} --dataset cifar10", "--dataset cifar10 has 3x32x32 images but"),
    _cli("simulate with limit 0", "simulate {run} --limit 0", "argument --limit: must be a finite integer >= 1, got 0"),
    _cli("simulate with limit -5", "simulate {run} --limit -5", "argument --limit: must be a finite integer >= 1, got -5"),
    _cli("simulate with batch size 0", "simulate {run} --batch-size 0", "argument --batch-size: must be a finite integer >= 1"),
    _cli("simulate --json to a folder", "simulate {run} --json {tmp}", "--json {tmp} is a folder; give a file name"),
    _cli("simulate --json over the checkpoint", "simulate {run} --json {run}/checkpoint.pt", "is a checkpoint or a run's own file"),
    _cli("simulate --json over an existing file", "simulate {run} --json {text_file}", "exists; pass --overwrite"),
    # sweep, demo
    _cli("sweep with 0 trials", "sweep --model mnist-dense --trials 0 --out {new}", "argument --trials: must be a finite integer >= 1, got 0"),
    _cli("sweep with holdout 1", "sweep --model mnist-dense --holdout 1 --out {new}", "argument --holdout: must be a finite number in (0, 1), got 1"),
    _cli("sweep of an unknown model", "sweep --model nope --out {new}", "argument --model: invalid choice: 'nope'"),
    _cli("demo with 0 epochs", "demo --epochs 0", "argument --epochs: must be a finite integer >= 1, got 0"),
    _cli("demo over a run it did not write", "demo --out {demo_over_a_run}", "{demo_over_a_run}/binary holds a run the demo did not write"),
]  # fmt: skip


# -- the inputs the cases name -------------------------------------------------------------------
def _write_idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> None:
    header = (bytes([0, 0, 0x08, array.ndim]) if magic is None else magic) + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, images=None, labels=None, magic=None, truncate=False) -> Path:
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    images = np.zeros((20, 28, 28), np.uint8) if images is None else images
    labels = np.arange(20) % 10 if labels is None else labels
    for split in ("train", "t10k"):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images, magic)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    if truncate:
        path = folder / "train-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:1000]))
    return root


def _jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _cifar(root: Path, member: bytes | None = None, corrupt: bool = False, not_zip: bool = False) -> Path:
    folder = root / "cifar10-jpeg"
    folder.mkdir(parents=True)
    path = folder / "cifar10-jpeg.zip"
    if not_zip:
        path.write_text("not a zip")
        return root
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("train/cat/0001.jpg", member if member is not None else _jpeg())
        archive.writestr("test/cat/0001.jpg", _jpeg())
    if corrupt:  # flip a byte inside the first member's stored data: its CRC no longer matches
        raw = bytearray(path.read_bytes())
        raw[raw.index(b"\xff\xd8") + 200] ^= 0xFF
        path.write_bytes(bytes(raw))
    return root


def _tampered(root: Path, run: Path, name: str, mutate: Callable[[dict], None]) -> Path:
    folder = root / name
    shutil.copytree(run, folder)
    checkpoint = load_checkpoint(folder)
    mutate(checkpoint)
    torch.save(checkpoint, folder / "checkpoint.pt")
    return folder


def _nir_graph(run: Path, change: Callable[[ws.SpikingGraph], None], path: Path) -> Path:
    from whetstone.export.nir import write_nir
    from whetstone.runs.restore import graph_from_checkpoint

    graph, _, _ = graph_from_checkpoint(str(run))
    change(graph)
    return write_nir(graph, path)


def _nir_cycle(path: Path) -> Path:
    import nir

    nodes = {"input": nir.Input(input_type={"input": np.array([4])}),
             "a": nir.Affine(weight=np.eye(4, dtype=np.float32), bias=np.zeros(4, np.float32)),
             "b": nir.IF(r=np.ones(4, np.float32), v_threshold=np.full(4, 0.5, np.float32), v_reset=np.zeros(4, np.float32)),
             "output": nir.Output(output_type={"output": np.array([4])})}  # fmt: skip
    edges = [("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")]
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=edges, metadata={"whetstone_key": np.eye(2, 4, dtype=np.float32)}))
    return path


class Places(dict):
    """The paths a case's ``{placeholder}`` names, each built the first time it is asked for."""

    def __init__(self, root: Path, runs: dict[str, Path]) -> None:
        super().__init__(tmp=str(root), new=str(root / "new-run"), **{name: str(path) for name, path in runs.items()})
        self.root, self.runs = root, runs
        self.held: list[FolderLock] = []

    def __missing__(self, key: str) -> str:
        root, run = self.root, self.runs["run"]
        if key == "locked":  # held by this process, as another process would hold it
            path = root / "locked"
            path.mkdir()
            self.held.append(FolderLock(path).acquire())
        elif key == "text_file":
            path = root / "notes.txt"
            path.write_text("just text\n")
        elif key == "fashion_teacher":
            path = root / "fashion-teacher"
            save_checkpoint(path / "checkpoint.pt", model=ws.create_model("mnist-dense").state_dict(),
                            run={"model": "mnist-dense", "model_options": {}, "dataset": "fashion-mnist"})  # fmt: skip
        elif key.endswith("_toml"):
            path = root / f"{key}.toml"
            path.write_text({"not_toml": "lr = = 3", "unknown_setting_toml": "learning_rate = 0.1\n",
                             "bad_value_toml": 'model = "mnist-dense"\ndataset = "mnist-mini"\nlr = -1\n',
                             "bad_type_toml": 'model = "mnist-dense"\ndata_dir = 5\n'}.get(key, ""))  # fmt: skip
        elif key == "not_toml":
            return self["not_toml_toml"]
        elif key == "bad_magic":
            path = _fake_mnist(root / key, magic=b"\x12\x34\x08\x03")
        elif key == "truncated_idx":
            path = _fake_mnist(root / key, truncate=True)
        elif key == "wrong_shape":
            path = _fake_mnist(root / key, images=np.zeros((20, 32, 32)))
        elif key == "bad_labels":
            path = _fake_mnist(root / key, labels=np.full(20, 12))
        elif key == "cifar_not_jpeg":
            path = _cifar(root / key, member=b"GIF89a not a jpeg")
        elif key == "cifar_crc":
            path = _cifar(root / key, corrupt=True)
        elif key == "cifar_not_zip":
            path = _cifar(root / key, not_zip=True)
        elif key == "truncated_checkpoint":
            path = root / "truncated.pt"
            path.write_bytes((run / "checkpoint.pt").read_bytes()[:4000])
        elif key == "bare_tensor":
            path = root / "tensor.pt"
            torch.save(torch.zeros(3, 4), path)
        elif key == "a_list":
            path = root / "list.pt"
            torch.save([1, 2, 3], path)
        elif key == "pickled_object":
            path = root / "object.pt"
            torch.save({"model": {"w": torch.zeros(1)}, "extra": Places}, path)
        elif key == "other_models_weights":
            path = root / "other.pt"
            save_checkpoint(path, model=ws.create_model("mnist-conv").state_dict(),
                            run={"model": "mnist-dense", "model_options": {}, "dataset": "mnist-mini"})  # fmt: skip
        elif key == "unknown_model_checkpoint":
            path = root / "unknown-model.pt"
            save_checkpoint(path, model={"w": torch.zeros(1)}, run={"model": "resnet-9000", "model_options": {}})
        elif key == "foreign_folder":  # another tool's files under the names a run writes
            path = root / key
            path.mkdir()
            (path / "config.toml").write_text("[tool]\nname = 'not whetstone'\n")
            (path / "history.json").write_text("[1, 2, 3]")
        elif key == "run_without_checkpoint":
            path = root / key
            shutil.copytree(run, path)
            (path / "checkpoint.pt").unlink()
        elif key == "demo_over_a_run":
            path = root / key
            if not path.exists():  # (the expected message names this folder too)
                shutil.copytree(run, path / "binary")
        elif key.startswith("resume_"):  # the finished run with one part of its checkpoint crafted
            mutations = {
                "resume_negative_position": lambda c: c.__setitem__("position", [-5, 0]),
                "resume_no_optimizer": lambda c: c.pop("optimizer"),
                "resume_bad_saved_lr": lambda c: c["run"]["config"].__setitem__("lr", -1.0),
                "resume_misshapen_optimizer": lambda c: [
                    state.__setitem__(name, torch.zeros(3, 3))
                    for state in c["optimizer"]["state"].values()
                    for name, value in list(state.items())
                    if value.dim() > 0
                ],
                "resume_garbage_history": lambda c: c.__setitem__("history", "garbage"),
                "resume_bad_rng": lambda c: c.__setitem__("rng", {"torch": torch.zeros(3), "cuda": []}),
                "resume_bad_sharpener": lambda c: c.__setitem__("sharpener", {"nonsense": 1}),
                "resume_other_weights": lambda c: c.__setitem__("model", ws.create_model("mnist-conv").state_dict()),
            }
            path = _tampered(root, run, key, mutations[key])
        elif key == "wrong_key":
            path = _tampered(root, run, key, lambda c: c["model"].__setitem__("decoder.key", torch.ones(10, 50)))
        elif key == "bad_sharpness":
            path = _tampered(
                root, run, key, lambda c: c["model"].__setitem__("features.2.sharpness", torch.tensor(1.5))
            )
        elif key == "nir":
            path = _nir_graph(run, lambda graph: None, root / "model.nir")
        elif key == "speck_nir":
            from whetstone.runs.restore import graph_from_checkpoint
            from whetstone.targets import export

            path = export(graph_from_checkpoint(str(run))[0], root / "model-speck.nir", "speck")
        elif key == "conv_run":  # a small convolutional run, trained the first time a case asks for it
            path = root / "conv-run"
            small = ["--model", "mnist-conv-small", *TINY[2:]]
            assert main(["train", *small, "--out", str(path)]) == 0
        elif key == "nir_nan_threshold":
            path = _nir_graph(
                run, lambda graph: graph.spiking_nodes()[0].threshold.__setitem__(0, np.nan), root / "nan-threshold.nir"
            )
        elif key == "nir_nan_key":
            path = _nir_graph(run, lambda graph: graph.key.__setitem__((0, 0), np.nan), root / "nan-key.nir")
        elif key == "nir_cycle":
            path = _nir_cycle(root / "cycle.nir")
        elif key == "not_nir":
            path = root / "text.nir"
            path.write_text("not hdf5")
        else:
            raise KeyError(key)
        self[key] = str(path)
        return self[key]

    def release(self) -> None:
        for lock in self.held:
            lock.release()


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


def _train_runs(root: Path) -> dict[str, Path]:
    runs = {"run": root / "run", "plain_run": root / "plain", "cosine_run": root / "cosine"}
    for name, extra in (
        ("run", []),
        ("plain_run", ["--sharpener", "none", "--epochs", "1"]),
        ("cosine_run", ["--lr-schedule", "cosine"]),
    ):
        assert main(["train", *TINY, *extra, "--out", str(runs[name])]) == 0
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished runs every case may read but must leave untouched."""
    return _train_runs(tmp_path_factory.mktemp("runs"))


def run_case(case: Case, root: Path, runs: dict[str, Path], capture: Callable[[], str]) -> tuple[int, str]:
    """Run one command-line case in ``root``; returns its exit status and what it printed on stderr."""
    places = Places(root, runs)
    try:
        argv = [arg.format_map(places) for arg in case.argv]
        capture()
        code = main(argv)
        return code, capture()
    finally:
        places.release()


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.name for case in CLI_CASES])
def test_command_line_case(case, runs, tmp_path, capsys):
    before = {name: _checksums(path) for name, path in runs.items()}
    code, err = run_case(case, tmp_path, runs, lambda: capsys.readouterr().err)
    expected = case.expected.format_map(Places(tmp_path, runs))
    assert code == 2, err
    assert err.startswith("whetstone: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert {name: _checksums(path) for name, path in runs.items()} == before  # no run file changed or lost
    assert not _temporary_files(tmp_path) and not any(_temporary_files(path) for path in runs.values())
    assert not (tmp_path / "new-run" / "checkpoint.pt").exists()  # nothing was trained


def test_the_catalogue_covers_at_least_80_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 80 and len({case.name for case in CLI_CASES}) == len(CLI_CASES)


# -- the Python API ------------------------------------------------------------------------------
def _model() -> ws.SpikingClassifier:
    return ws.SpikingClassifier(torch.nn.Sequential(torch.nn.Linear(4, 4), ws.SpikingBReLU(1.0)), torch.eye(2, 4))


def _graph() -> ws.SpikingGraph:
    return ws.to_spiking_graph(_model(), (4,))


def _conv_graph() -> ws.SpikingGraph:
    layers = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), ws.SpikingBReLU(1.0), torch.nn.Flatten(), torch.nn.Linear(8, 4),
                                 ws.SpikingBReLU(1.0))  # fmt: skip
    return ws.to_spiking_graph(ws.SpikingClassifier(layers, torch.eye(2, 4)), (1, 4, 4))


def _targets():
    from whetstone import targets

    return targets


def _recurrent_graph() -> ws.SpikingGraph:
    model = ws.create_model("rnn")
    ws.set_model_sharpness(model, 1.0)
    return ws.to_spiking_graph(model.eval(), (1, 28, 28))


def _concatenating_model() -> ws.SpikingClassifier:
    class Concatenate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.spike = torch.nn.Conv2d(1, 4, 3), ws.SpikingBReLU(1.0)
            self.fc, self.out = torch.nn.Linear(8 * 4 * 4, 20), ws.SpikingBReLU(1.0)

        def forward(self, x):
            x = self.spike(self.conv(x))
            return self.out(self.fc(torch.cat([x, x], 2).flatten(1)))  # along the height: not channels

    return ws.SpikingClassifier(Concatenate(), torch.eye(2, 20)).eval()


def _nan_model() -> ws.SpikingClassifier:
    model = _model()
    with torch.no_grad():
        model.features[0].weight[1, 2] = float("nan")
    return model


def _broken_graph(change: str) -> ws.SpikingGraph:
    """A well-formed graph, then one thing made wrong: an infinite bias, NaN thresholds or a second input."""
    import dataclasses

    graph = _graph()
    if change == "bias":
        graph.nodes[1] = dataclasses.replace(graph.nodes[1], bias=np.full(4, np.inf, np.float32))
    elif change == "threshold":
        graph.nodes[2] = dataclasses.replace(graph.nodes[2], threshold=np.full(4, np.nan, np.float32))
    else:
        graph.nodes.insert(1, dataclasses.replace(graph.nodes[0], name="second_input"))
    return graph


def _nan_checkpoint() -> dict:
    checkpoint = {"model": ws.create_model("mnist-dense").state_dict(), "run": {"model": "mnist-dense"}}
    checkpoint["model"]["features.1.weight"][0, 0] = float("inf")
    return checkpoint


def _branching_model() -> torch.nn.Module:
    class Auxiliary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.relu, self.fc = torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)

        def forward(self, x):
            x = self.relu(self.body(x))
            return self.fc(x) * 2 if self.training else self.fc(x)

    return Auxiliary()


class _Counting(torch.nn.Module):
    """A forward that prints and keeps a count: statements a traced model would never run again."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.calls = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3), 0

    def forward(self, x):
        print("batch", x.shape[0])
        self.calls += 1
        return self.fc2(torch.relu(self.fc1(x)))


def _as_error(call: Callable[[], object]) -> object:
    """``call()`` with warnings raised, so the catalogue shows what the user is told."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with contextlib.redirect_stdout(io.StringIO()):
            return call()


def _verify_in_lava(body: str | None, executable: bool = True) -> object:
    """verify a Loihi 2 file in Lava through WHETSTONE_LAVA_PYTHON set to a shell script with this ``body``
    (None: a path with nothing there), with a time limit of 1 s."""
    from unittest import mock

    from whetstone.targets import loihi2

    with tempfile.TemporaryDirectory() as folder:
        path, interpreter = _targets().export(_conv_graph(), Path(folder) / "m.nir", "loihi2"), Path(folder) / "python"
        if body is not None:
            interpreter.write_text(f"#!/bin/sh\n{body}\n")
            interpreter.chmod(0o755 if executable else 0o644)
        with mock.patch.dict(os.environ, {"WHETSTONE_LAVA_PYTHON": str(interpreter)}), \
                mock.patch.object(loihi2, "LAVA_START_SECONDS", 1.0), mock.patch.object(loihi2, "LAVA_SECONDS_PER_IMAGE", 0.0):  # fmt: skip
            return _targets().verify(path, "loihi2", np.zeros((1, 1, 4, 4), np.float32))


def _verify_in_a_broken_akida() -> object:
    """verify an Akida file where ``import akida`` fails as a damaged install does (a library missing)."""
    from unittest import mock

    with tempfile.TemporaryDirectory() as folder:
        graph = _targets().get_target("akida").prepare(_graph())
        path = _targets().export(graph, Path(folder) / "m.fbz", "akida")
        package = Path(folder) / "broken" / "akida"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("raise OSError('libakida.so: cannot open shared object file')\n")
        kept = {
            name: module for name, module in sys.modules.items() if name != "akida" and not name.startswith("akida.")
        }
        with (
            mock.patch.dict(sys.modules, kept, clear=True),
            mock.patch.object(sys, "path", [str(package.parent), *sys.path]),
        ):
            return _targets().verify(path, "akida", np.zeros((1, 4), np.float32), reference=graph)


def _edited_nir(target: str, edit: Callable[[object], None]) -> Callable[[], object]:
    """A file written for ``target``, then edited by hand (``edit`` gets the nir graph) and read back: verified
    for a chip target (which checks its integers), read for the generic one."""

    def call() -> object:
        import nir

        with tempfile.TemporaryDirectory() as folder:
            path = _targets().export(_conv_graph(), Path(folder) / "m.nir", target)
            graph = nir.read(path)
            edit(graph)
            nir.write(path, graph)
            if target == "generic":
                return read_nir(path)
            return _targets().verify(path, target, np.zeros((1, 1, 4, 4), np.float32))

    return call


def _first(graph, kind: str):
    import nir

    return next(node for node in graph.nodes.values() if isinstance(node, getattr(nir, kind)))


def _renamed_node_type(graph) -> None:
    import nir

    name = next(name for name, node in graph.nodes.items() if isinstance(node, nir.IF))
    graph.nodes[name] = dataclasses.replace(graph.nodes[name])
    graph.nodes[name].__class__ = type("Wormhole", (nir.IF,), {})  # written under a type name NIR does not know


def _names_read_back() -> str:
    """A network whose layers are named as nn.Module allows (slashes, '>', spaces, any letter), written to NIR
    and read back: the names read back."""
    layers = torch.nn.Sequential()
    for name, module in [("conv/1", torch.nn.Linear(4, 4)), ("spike>a;b ☃", ws.SpikingBReLU(1.0))]:
        layers.add_module(name, module)
    with tempfile.TemporaryDirectory() as folder:
        graph = ws.to_spiking_graph(ws.SpikingClassifier(layers, torch.eye(2, 4)), (4,))
        back = read_nir(_targets().export(graph, Path(folder) / "m.nir"))
    return "read back as " + ", ".join(node.name for node in back.nodes)


def _export_over_a_killed_exports_file() -> str:
    """An export killed (SIGKILL) while its temporary file existed, then the same export again: what is left."""
    with tempfile.TemporaryDirectory() as folder:
        finished = subprocess.Popen(["true"])
        finished.wait()
        dead = finished.pid  # the export that was killed: a process id nothing holds now
        left = Path(folder) / f".m.nir.{dead}.abc.tmp"
        left.write_bytes(b"half a file")
        _targets().export(_graph(), Path(folder) / "m.nir")
        return "the folder holds " + ", ".join(sorted(path.name for path in Path(folder).iterdir()))


def _write_through_a_link() -> str:
    """--json/--out given a symbolic link (as /dev/stdout is): the link stays, the file it names is written."""
    with tempfile.TemporaryDirectory() as folder:
        target, link = Path(folder) / "real.json", Path(folder) / "link.json"
        target.write_text("old")
        link.symlink_to(target)
        atomic_write(link, "new")
        return f"link kept: {link.is_symlink()}, the file it names holds {target.read_text()!r}"


API_CASES: list[tuple[str, Callable[[], object], type[BaseException] | None, str]] = [
    ("simulate raw 0-255 pixels", lambda: ws.simulate(_graph(), np.zeros((2, 4), np.uint8)), ValueError, "got uint8 (0-255): divide by 255"),
    ("simulate NaN pixels", lambda: ws.simulate(_graph(), np.full((2, 4), np.nan, np.float32)), ValueError, "images contain 8 NaN or infinite values"),
    ("simulate infinite pixels", lambda: ws.simulate(_graph(), np.full((2, 4), np.inf, np.float32)), ValueError, "NaN or infinite"),
    ("simulate pixels above 1", lambda: ws.simulate(_graph(), np.full((2, 4), 255.0)), ValueError, "must be in [0, 1], got values from 255"),
    ("simulate negative pixels", lambda: ws.simulate(_graph(), np.full((2, 4), -1.0)), ValueError, "must be in [0, 1]"),
    ("simulate images of another shape", lambda: ws.simulate(_graph(), np.zeros((2, 5))), ValueError, "must have shape (N, 4), got (2, 5)"),
    ("simulate no images", lambda: ws.simulate(_graph(), np.zeros((0, 4))), ValueError, "images is empty"),
    ("simulate with batch size 0", lambda: ws.simulate(_graph(), np.zeros((2, 4)), batch_size=0), ValueError, "batch_size must be a positive integer"),
    ("quantize to 1 bit", lambda: ws.quantize(_graph(), bits=1), ValueError, "bits must be an integer in [2, 16], got 1"),
    ("quantize to '8' bits", lambda: ws.quantize(_graph(), bits="8"), ValueError, "bits must be an integer in [2, 16], got '8'"),
    ("quantize with registers of the wrong kind", lambda: ws.quantize(_graph(), registers={"bias": 10}), ValueError,
     "registers must be a whetstone.graph.quantization.Registers or None"),
    ("graph of a float64 model", lambda: ws.to_spiking_graph(_model().double(), (4,)), ws.DeployError,
     "weights are float64; the graph holds float32, which would round them: convert with model.float() first"),
    ("graph of a model on the meta device", lambda: ws.to_spiking_graph(_model().to("meta"), (4,)), ws.DeployError,
     "weights are on the meta device (shapes without values): load them first"),
    ("train 1-bit weights", lambda: ws.quantize_weights(ws.create_model("mnist-dense"), 1), ValueError,
     "bits must be an integer in [2, 16], got 1"),
    ("quantization-aware from a negative epoch", lambda: ws.QuantizationAware(4, start_epoch=-1), ValueError,
     "start_epoch must be an integer >= 0, got -1"),
    ("trainer with a quantizer of the wrong kind", lambda: ws.Trainer(ws.create_model("mnist-dense"), torch.optim.SGD(
        ws.create_model("mnist-dense").parameters(), 0.1), quantizer=4), ValueError,
     "quantizer must be a whetstone QuantizationAware or None, got int"),
    ("the cost of integer weights, measured on a float graph", lambda: precision_cost(_graph(), _graph(), np.zeros((1, 4)),
     np.zeros(1)), ValueError, "quantized must be a graph with integer weights"),
    ("graph of an input shape with a 0", lambda: ws.to_spiking_graph(torch.nn.Linear(1, 1), (0, 28)), ws.DeployError, "input_shape must be positive integer sizes"),
    ("graph of an unsharpened model", lambda: ws.to_spiking_graph(ws.create_model("mnist-dense"), (1, 28, 28)), ws.DeployError, "features.2: SpikingBReLU has sharpness 0"),
    ("unknown model", lambda: ws.create_model("nope"), ValueError, "unknown model 'nope'; choose one of"),
    ("unknown activation", lambda: ws.create_model("mnist-dense", activation="tanh"), ValueError, "activation must be one of"),
    ("input shape of two numbers", lambda: ws.create_model("mnist-dense", input_shape=(28, 28)), ValueError, "input_shape must be (channels, height, width)"),
    ("key narrower than the classes", lambda: ws.key_generator(10, 5), ValueError, "width must be at least num_classes"),
    ("sharpener starting at epoch -1", lambda: ws.SimpleSharpener(-1), ValueError, "start_epoch must be an integer >= 0, got -1"),
    ("sharpener of 0 steps", lambda: ws.SimpleSharpener(0, steps=0), ValueError, "steps must be an integer >= 1, got 0"),
    ("sharpening per week", lambda: ws.SimpleSharpener(0, per="week"), ValueError, "per must be 'epoch' or 'batch'"),
    ("adaptive sharpening rate 0", lambda: ws.AdaptiveSharpener(rate=0), ValueError, "rate must be a positive finite number"),
    ("sharpness 2", lambda: ws.SpikingBReLU(sharpness=2.0), ValueError, "sharpness must be"),
    ("model sharpness NaN", lambda: ws.set_model_sharpness(ws.create_model("mnist-dense"), float("nan")), ValueError, "model sharpness must be"),
    ("trainer checkpointing every 0 batches", lambda: ws.Trainer(torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1),
                                                                  checkpoint_every=0), ValueError, "checkpoint_every must be a positive integer"),
    ("trainer in fp8", lambda: ws.Trainer(torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1),
                                           precision="fp8"), ValueError, "precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ("trainer reading losses back every 0 batches", lambda: ws.Trainer(torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1),
                                                                        sync_every=0), ValueError, "sync_every must be a positive integer, got 0"),
    ("trainer stepping its scheduler per step", lambda: ws.Trainer(torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1),
                                                                    scheduler_per="step"), ValueError, "scheduler_per must be 'epoch' or 'batch', got 'step'"),
    ("trainer with -1 retries", lambda: ws.Trainer(torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1),
                                                    max_retries=-1), ValueError, "max_retries must be a non-negative integer"),
    ("trainer with a loss that is not callable", lambda: ws.Trainer(torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1),
                                                                     loss=3), ValueError, "loss must be a whetstone Loss or a callable"),
    ("fit for 0 epochs", lambda: ws.Trainer(torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1),
                                             progress=False).fit([], 0), ValueError, "epochs must be a positive integer, got 0"),
    ("loader of batch size 0", lambda: ws.TensorLoader(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 0),
     ValueError, "batch_size must be a positive integer"),
    ("loader of mismatched lengths", lambda: ws.TensorLoader(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 2),
     ValueError, "images (4) and labels (3) differ in length"),
    ("config with a negative learning rate", lambda: ws.RunConfig(model="mnist-dense", lr=-1.0, out="x").resolved().validate(), ws.ConfigError,
     "lr must be a positive finite number, got -1.0"),
    ("config with an unknown setting", lambda: ws.RunConfig.from_dict({"learning_rate": 1}), ws.ConfigError, "learning_rate is not a setting"),
    ("config without a model", lambda: ws.RunConfig().resolved(), ws.ConfigError, "model is required"),
    ("classification with logit scale 0", lambda: ws.Classification(0), ValueError, "logit_scale must be a positive finite number"),
    ("distillation weight 2", lambda: ws.Distillation(torch.nn.Identity(), weight=2), ValueError, "distill_weight must be in [0, 1]"),
    ("load a missing checkpoint", lambda: ws.load_checkpoint("/nonexistent/run"), FileNotFoundError, "no checkpoint at /nonexistent/run"),
    ("unknown dataset", lambda: ws.load_dataset("imagenet"), ValueError, "unknown dataset 'imagenet'"),
    ("unknown split", lambda: ws.load_dataset("mnist-mini", "validation"), ValueError, "unknown split 'validation'"),
    ("spikify to an unknown activation", lambda: ws.spikify(torch.nn.ReLU(), activation="tanh"), ValueError, "activation must be one of"),
    ("spikify None", lambda: ws.spikify(None), ws.ConversionError, "spikify takes an nn.Module, got NoneType"),
    ("spikify a GRU", lambda: ws.spikify(torch.nn.Sequential(torch.nn.GRU(4, 8), torch.nn.ReLU())), ws.ConversionError,
     "0: GRU computes tanh and sigmoid gates inside, which have no binary counterpart"),
    ("spikify a TorchScript module", lambda: ws.spikify(torch.jit.script(torch.nn.Sequential(torch.nn.ReLU()))), ws.ConversionError,
     "Sequential is a TorchScript module, whose code cannot be converted"),
    ("spikify a head onto a forward that branches on training", lambda: ws.spikify(_branching_model(), num_classes=10), ws.ConversionError,
     "Auxiliary: its forward takes another path in train than in eval mode"),
    ("graph of a model that concatenates along the height", lambda: ws.to_spiking_graph(_concatenating_model(), (1, 6, 6)),
     ws.DeployError, "along the height: not channels`) concatenates along dimension 2; only channels (dim=1) deploy"),
    ("graph of a model with a NaN weight", lambda: ws.to_spiking_graph(_nan_model(), (4,)), ws.DeployError,
     "'features.0': its weight holds NaN or infinite values"),
    ("simulate a graph with NaN thresholds", lambda: ws.simulate(_broken_graph("threshold"), np.zeros((1, 4))), ws.DeployError,
     "'features.1': its threshold holds NaN or infinite values"),
    ("export a graph with an infinite bias", lambda: _targets().export(_broken_graph("bias"), "/nonexistent/m.nir"), ws.DeployError,
     "'features.0': its bias holds NaN or infinite values"),
    ("quantize a graph with two inputs", lambda: ws.quantize(_broken_graph("inputs")), ws.DeployError,
     "a graph has exactly one input node, this one has 2: ['input', 'second_input']"),
    ("model from a checkpoint with infinite weights", lambda: ws.model_from_checkpoint(_nan_checkpoint()), ValueError,
     "the checkpoint: its weights hold NaN or infinite values (features.1.weight)"),
    ("export for an unknown target", lambda: _targets().export(_graph(), "/nonexistent/m.nir", "speck2"), ValueError, "unknown target 'speck2'; choose one of"),
    ("export a convolution for Xylo", lambda: _targets().export(_conv_graph(), "/nonexistent/m.nir", "xylo"), ws.DeployError, "0: Rockpool has dense layers only; this layer is a conv2d"),
    ("export ONNX to a .nir name", lambda: _targets().export(_graph(), "/nonexistent/m.nir", "onnx"), ValueError, "path '/nonexistent/m.nir': target 'onnx' is written as ONNX; name the file m.onnx"),
    ("export for Speck with no extension", lambda: _targets().export(_graph(), "/nonexistent/m", "speck"), ValueError, "path '/nonexistent/m': target 'speck' is written as NIR; name the file m.nir"),
    ("integer ONNX of a float graph", lambda: __import__("whetstone.export.onnx_integer").export.onnx_integer.to_integer_onnx(_graph()),
     ws.DeployError, "integer ONNX needs a graph quantized to at most 8 bits (quantize(graph, 8)), got float weights"),
    ("integer network of a float graph", lambda: ws.IntegerNetwork(_graph()), ws.DeployError,
     "the integer network needs a graph quantized to at most 8 bits (quantize(graph, 8)), got float weights"),
    ("integer network on an unknown engine", lambda: ws.IntegerNetwork(ws.quantize(_graph(), 8), engine="cuda"), ValueError,
     "engine must be one of ('auto', 'onednn', 'float'), got 'cuda'"),
    ("integer network fed the wrong shape", lambda: ws.IntegerNetwork(ws.quantize(_graph(), 8))(torch.zeros(2, 5)), ValueError,
     "input must be (N, 4), got (2, 5)"),
    ("integer network fed raw pixels", lambda: ws.IntegerNetwork(ws.quantize(_graph(), 8))(torch.zeros(2, 4, dtype=torch.uint8)),
     ValueError, "input must be float images in [0, 1] (pixels / 255), got torch.uint8"),
    ("for_inference at 9 bits", lambda: ws.for_inference(_model(), bits=9, input_shape=(4,)), ValueError,
     "bits must be an integer in [2, 8] (int8 kernels) or None, got 9"),
    ("for_inference in integers without a shape", lambda: ws.for_inference(_model(), bits=8), ValueError,
     "for_inference(bits=...) needs input_shape"),
    ("fit report of a recurrent network on a chip export refuses it for", lambda: _targets().fit_report(_recurrent_graph(), "loihi2"),
     ws.DeployError, "--target loihi2: the graph runs in time (recurrent edges or leaky membranes), which whetstone writes for"),
    ("fit report for a software target", lambda: _targets().fit_report(_graph(), "norse"), ValueError, "'norse' is not a chip with a fit report; choose one of"),
    ("verify in software that cannot run here", lambda: _targets().verify("/nonexistent/m.nir", "spinnaker2", np.zeros((1, 4))), ValueError, "py-spinnaker2 cannot run here"),
    ("verify the generic file, which names no software", lambda: _targets().verify("/nonexistent/m.nir", "generic", np.zeros((1, 4))), ValueError,
     "any NIR reader cannot run here: the generic file names no software of its own; run it in the reference simulator"),
    ("verify an ONNX file without its graph", lambda: _targets().verify("/nonexistent/m.onnx", "onnx", np.zeros((1, 4))), ValueError, "give the graph the file was written from (reference=)"),
    ("atomic write into a missing folder", lambda: atomic_write("/nonexistent/dir/file.txt", "x"), OSError,
     "cannot write /nonexistent/dir/file.txt: No such file or directory"),
    ("verify a missing file against its graph", lambda: _targets().verify("/nonexistent/m.onnx", "onnx", np.zeros((1, 4)), reference=_graph()),
     FileNotFoundError, "no file /nonexistent/m.onnx"),
    ("spikify a forward that prints and counts", lambda: _as_error(lambda: ws.spikify(_Counting(), num_classes=3)), UserWarning,
     "these statements will not run again: _Counting (tests/test_bad_input.py:"),
    ("verify in Lava, WHETSTONE_LAVA_PYTHON naming nothing", lambda: _verify_in_lava(None), ImportError,
     "python does not exist; python3.10 -m venv"),
    ("verify in Lava, an interpreter that is not executable", lambda: _verify_in_lava("exit 0", executable=False), ConsumerError,
     "Lava cannot start (WHETSTONE_LAVA_PYTHON="),
    ("verify in Lava, an interpreter that hangs with a worker", lambda: _verify_in_lava("sleep 600 & sleep 600"), ConsumerError,
     "Lava did not finish within 1 s (WHETSTONE_LAVA_PYTHON="),
    ("verify in Lava, an interpreter without lava", lambda: _verify_in_lava("echo 'ModuleNotFoundError: No module named lava' >&2; exit 1"),
     ConsumerError, "Lava failed (exit status 1) (WHETSTONE_LAVA_PYTHON="),
    ("verify in Lava, an interpreter that prints garbage", lambda: _verify_in_lava("echo '%$#@ garbage'"), ConsumerError,
     "wrote no readable spikes"),
    ("verify in an Akida install that cannot be imported", _verify_in_a_broken_akida, ConsumerError,
     "Akida is installed but cannot be imported: OSError: libakida.so: cannot open shared object file"),
    ("verify a Loihi 2 file edited to hold a weight of 1000", _edited_nir("loihi2", lambda g: _first(g, "Affine").weight.__setitem__((0, 0), 1000.0)),
     ws.DeployError, "a weight of 1000 is not an integer within the 8-bit weights"),
    ("verify a Speck file edited to hold a threshold of 40000", _edited_nir("speck", lambda g: _first(g, "IF").v_threshold.__setitem__(..., 40000.0)),
     ws.DeployError, "features.1: a threshold of 40000 does not fit the chip's 16-bit states (|T| <= 32767)"),
    ("read a NIR file with a stride of 0", _edited_nir("generic", lambda g: setattr(_first(g, "Conv2d"), "stride", np.array([0, 0]))),
     ValueError, "node 'features_0' (Conv2d): stride is [0, 0]; it must be integers >= 1"),
    ("read a NIR file with thresholds of the wrong length", _edited_nir("generic", lambda g: [setattr(_first(g, "IF"), field, value) for field, value in
     (("v_threshold", np.ones(3, np.float32)), ("r", np.ones(3, np.float32)), ("v_reset", np.zeros(3, np.float32)))]),
     ValueError, "v_threshold has shape (3,), but the layer before it gives (2, 2, 2)"),
    ("read a NIR file with a node type NIR lacks", _edited_nir("generic", _renamed_node_type), ValueError,
     "has type 'Wormhole', which is not a NIR node type"),
    ("read a NIR file whose metadata says 99-bit weights", _edited_nir("generic", lambda g: g.metadata.__setitem__("quantized_bits", 99)),
     ValueError, "metadata 'quantized_bits' is 99; it must be an integer in [2, 16]"),
    ("read a NIR file whose key is narrower than the output layer", _edited_nir("generic", lambda g: g.metadata.__setitem__(
        "whetstone_key", np.eye(2, 3, dtype=np.float32))), ValueError, "the decoder key has 3 columns but the output 'features.4' has 4 units"),
    ("graph of a float16 model (converted exactly to float32)", lambda: ws.to_spiking_graph(_model().half(), (4,)).nodes[1].weight.dtype, None, "float32"),
    ("graph of a bfloat16 model (converted exactly to float32)", lambda: ws.to_spiking_graph(_model().bfloat16(), (4,)).nodes[1].weight.dtype, None, "float32"),
    ("export a recurrent network for a chain-only chip", lambda: _targets().get_target("akida").prepare(_recurrent_graph()), ws.DeployError,
     "runs layers in a chain only; this graph branches here (a recurrent edge"),
    ("layers named with '/', '>', ';', spaces, any letter", _names_read_back, None, "read back as input, features.conv/1, features.spike>a;b ☃"),
    ("export again after an export was killed mid-write", _export_over_a_killed_exports_file, None, "the folder holds m.nir"),
    ("write through a symbolic link", _write_through_a_link, None, "link kept: True, the file it names holds 'new'"),
    ("spikify at an input size no machine holds", lambda: ws.spikify(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)), num_classes=10, input_shape=(3, 2_000_000, 2_000_000)),
     ws.DeployError, "input_shape (3, 2000000, 2000000) needs 44,703.5 GB in one tensor; this machine has"),
]  # fmt: skip


@pytest.mark.parametrize("name,call,kind,expected", API_CASES, ids=[case[0] for case in API_CASES])
def test_python_api_case(name, call, kind, expected):
    if kind is None:  # a case that succeeds: what it returns says how
        assert expected in str(call())
        return
    with pytest.raises(kind) as raised:
        call()
    message = str(raised.value)
    assert expected in message and "\n" not in message, message


# -- full disks ----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A mount point with a tmpfs of a chosen size; skips visibly where this machine cannot mount one."""
    mounted: list[Path] = []

    def mount(size_kib: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point)], capture_output=True, check=False
        )
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'}): full-disk cases not run"
            )
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def _fill(folder: Path) -> None:
    """Fill a (small) file system completely."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        except OSError:
            pass


@pytest.mark.parametrize("fmt", ["nir", "onnx"])
def test_export_onto_a_full_disk_is_one_line_and_leaves_no_file(runs, small_disk, capsys, fmt):
    disk = small_disk(64)
    capsys.readouterr()
    assert main(["export", str(runs["run"]), "--format", fmt, "--out", str(disk / f"m.{fmt}")]) == 2
    err = capsys.readouterr().err
    assert err == f"whetstone: error: no space left on device writing {disk / f'm.{fmt}'}\n"
    assert sorted(p.name for p in disk.iterdir()) == []  # no half-written file, no temporary file


def test_report_onto_a_full_disk_is_one_line_and_leaves_no_file(runs, small_disk, capsys):
    disk = small_disk(64)
    _fill(disk)
    capsys.readouterr()
    assert main(["simulate", str(runs["run"]), "--limit", "20", "--no-progress", "--json", str(disk / "r.json")]) == 2
    assert capsys.readouterr().err.endswith(f"no space left on device writing {disk / 'r.json'}\n")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_run_that_fills_its_disk_keeps_its_last_checkpoint(runs, small_disk, capsys):
    disk = small_disk(5000)  # room for a copy of the run (about 2.8 MB), not for another checkpoint beside it
    run = disk / "run"
    shutil.copytree(runs["plain_run"], run)
    before = _checksums(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("whetstone: error: no space left on device writing") and err.count("\n") == 1, err
    after = _checksums(run)
    assert after["checkpoint.pt"] == before["checkpoint.pt"] and not _temporary_files(disk)
    assert load_checkpoint(run)["position"] == [1, 0]  # still the last complete state: resumable when space is freed


# -- processes: signals, locks, two trainings at once --------------------------------------------
def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "whetstone", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "run"
    process = _start(
        ["train", *TINY, "--epochs", "200", "--start-epoch", "150", "--checkpoint-every", "1", "--out", str(out)]
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # inside the stream of per-batch checkpoint writes
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "whetstone: terminated (the last complete checkpoint is kept)"
    assert not _temporary_files(out) and not (out / ".whetstone.lock").exists()
    position = load_checkpoint(out)["position"]
    resumed = _start(["train", "--resume", str(out), "--epochs", str(position[0] + 1)])
    printed, err = resumed.communicate(timeout=300)
    assert resumed.returncode in (0, 1), err  # 1: not binary yet, which is right at this epoch
    assert f"resuming {out} at epoch {position[0] + 1}, batch {position[1]}" in printed


def test_two_trainings_into_one_folder_cannot_both_run(tmp_path):
    out = tmp_path / "run"
    first = _start(["train", *TINY, "--epochs", "20", "--start-epoch", "15", "--out", str(out)])
    deadline = time.monotonic() + 120
    while not (out / ".whetstone.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = _start(["train", *TINY, "--out", str(out), "--overwrite"])
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and "is in use by process" in err, err
    assert first.wait(timeout=300) == 0  # the first run was not disturbed
    assert load_checkpoint(out)["history"][-1]["sharpness"] == [1.0, 1.0, 1.0]


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".whetstone.lock").write_text("process 999999 on elsewhere (since yesterday)")  # no one holds it
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert not (out / ".whetstone.lock").exists()


def test_overwrite_replaces_a_run_only_when_asked(runs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(runs["run"], out)
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 2
    assert len(load_checkpoint(out)["history"]) == 3  # untouched
    assert (
        main(["train", *TINY, "--epochs", "2", "--start-epoch", "1", "--out", str(out), "--overwrite"]) == 1
    )  # not binary yet
    assert (
        len(load_checkpoint(out)["history"]) == 2 and not (out / "best.pt").exists()
    )  # nothing of the old run is left


# -- fuzzing the numeric flags -------------------------------------------------------------------
NUMERIC_FLAGS = ["--lr", "--epochs", "--batch-size", "--threads", "--limit", "--holdout", "--weight-decay", "--surrogate",
                 "--logit-scale", "--key-width", "--seed", "--start-epoch", "--steps", "--checkpoint-every", "--min-init-epochs",
                 "--nproc", "--distill-weight", "--distill-temperature", "--bits"]  # fmt: skip
NUMBERS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "0x10", "1e400", "-0", "+3", " 7", "1_000", "nan", "-inf", "½", "3.0", "1e-300"]),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.lists(st.tuples(st.sampled_from(NUMERIC_FLAGS), NUMBERS), min_size=1, max_size=3))
def test_numeric_flags_never_crash(flags, tmp_path, capsys):
    argv = [
        "train",
        "--model",
        "mnist-dense",
        "--dataset",
        "mnist-mini",
        "--out",
        str(tmp_path / "fuzz"),
        "--print-config",
    ]
    for flag, value in flags:
        argv.append(f"{flag}={value}")
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, err)
    if code == 2:
        assert err.startswith("whetstone: error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    else:
        import tomllib

        config = ws.RunConfig.from_dict(tomllib.loads(out))
        config.validate()  # what was printed is a valid, complete config
    assert not (tmp_path / "fuzz").exists()  # --print-config writes nothing


def _markdown(root: Path) -> str:
    """The catalogue as a Markdown table of what the user sees."""
    with contextlib.redirect_stdout(io.StringIO()):  # the table alone on stdout
        runs = _train_runs(root / "runs")
    lines = ["| # | case | command | what the user sees (exit 2) |", "|---:|---|---|---|"]
    stream = io.StringIO()

    def capture() -> str:
        text = stream.getvalue()
        stream.seek(0)
        stream.truncate()
        return text

    for number, case in enumerate(CLI_CASES, 1):
        work = root / f"case{number}"
        work.mkdir()
        saved = sys.stderr
        sys.stderr = stream
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                code, err = run_case(case, work, runs, capture)
        finally:
            sys.stderr = saved
        shown = err.strip().replace(str(work), "T").replace(str(root), "T").replace("|", "\\|")
        command = " ".join(case.argv).replace("|", "\\|")
        lines.append(f"| {number} | {case.name} | `whetstone {command}` | {shown} (exit {code}) |")
    lines.append("")
    lines.append("| # | Python call | raises (or, where it succeeds, what it gives) |")
    lines.append("|---:|---|---|")
    for number, (name, call, kind, _) in enumerate(API_CASES, len(CLI_CASES) + 1):
        try:
            result = call()
            shown = f"succeeds: {result}" if kind is None else "(nothing raised)"
        except Exception as error:  # noqa: BLE001 - shown as the user would see it
            shown = f"{type(error).__name__}: {error}"
        shown = re.sub(r"/tmp/tmp\w+", "T", shown).replace("|", "\\|")
        lines.append(f"| {number} | {name} | {shown} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as folder:
        print(_markdown(Path(folder)))


def test_install_hints_work_from_where_the_user_stands():
    """whetstone-snn is not on a package index: a hint names the packages themselves, or the extra from a checkout."""
    from whetstone.utils.checks import install_hint

    assert install_hint("export", "nir") == "pip install nir (or, in a whetstone checkout, pip install -e '.[export]')"
    sources = "".join(path.read_text() for path in (Path(ws.__file__).parent).rglob("*.py"))
    assert "pip install 'whetstone-snn[" not in sources
