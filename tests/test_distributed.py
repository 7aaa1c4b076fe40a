"""Distributed data parallel training on 2 CPU processes (gloo)."""

import json

import torch
import torch.distributed as dist

import whetstone as ws
from whetstone.cli.main import main
from whetstone.data.datasets import load_dataset
from whetstone.training import distributed
from whetstone.training.checkpoint import load_checkpoint


def _ddp_job(out_dir: str) -> int:
    """Runs in each of the spawned processes: train a small model with DDP and record what this rank saw."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train = load_dataset("mnist-mini", "train")
    model = ws.create_model("mnist-dense")
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    loader = ws.TensorLoader(
        train.images[:2000], train.labels[:2000], 50, shuffle=True, seed=0, rank=rank, world_size=world
    )
    trainer = ws.Trainer(ddp, torch.optim.Adam(ddp.parameters(), 1e-3), ws.AdaptiveSharpener(min_init_epochs=1, patience=0, sig_decrease=0.9, rate=1.0),
                         progress=False, sync_every=3)  # fmt: skip  # losses summed over ranks in windows of 3
    trainer.fit(loader, epochs=6)
    seen = {"sharpness": [r.sharpness for r in trainer.history], "loss": [r.train_loss for r in trainer.history],
            "layers": ws.model_sharpness(model)}  # fmt: skip
    with open(f"{out_dir}/rank{rank}.json", "w") as handle:
        json.dump(seen, handle)
    return 0


def test_every_rank_holds_the_same_sharpness_after_every_epoch(tmp_path):
    # The adaptive sharpener decides from the loss, which differs per rank unless it is averaged first.
    assert distributed.launch(_ddp_job, 2, str(tmp_path)) == 0
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1
    assert any(value > 0 for epoch in rank0["sharpness"] for value in epoch)  # it did sharpen


def test_cli_nproc_2_trains_like_one_process_and_resumes(tmp_path):
    common = ["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--epochs", "6", "--start-epoch", "2",
              "--steps", "1", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "single"), "--threads", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "ddp"), "--nproc", "2"]) == 0
    single, ddp = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "ddp")
    assert not any(key.startswith("module.") for key in ddp["model"])  # saved without the DDP wrapper
    assert ddp["history"][-1]["sharpness"] == [1.0, 1.0, 1.0]
    accuracy_single, accuracy_ddp = single["history"][-1]["eval_accuracy"], ddp["history"][-1]["eval_accuracy"]
    assert abs(accuracy_single - accuracy_ddp) < 0.05, (accuracy_single, accuracy_ddp)
    # Resume the finished DDP run with more epochs: nothing left to sharpen, so it ends at once.
    assert main(["train", "--resume", str(tmp_path / "ddp"), "--nproc", "2", "--no-progress"]) == 0
    assert len(load_checkpoint(tmp_path / "ddp")["history"]) == len(ddp["history"])
