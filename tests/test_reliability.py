"""Exact resume after SIGKILL, divergence rollback, and one clear line for each kind of bad input."""

import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import whetstone as ws
from whetstone.data.datasets import load_dataset
from whetstone.training.checkpoint import load_checkpoint

TRAIN = ["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--epochs", "6", "--start-epoch", "1",
         "--steps", "1", "--checkpoint-every", "5", "--threads", "1", "--deterministic", "--no-progress"]  # fmt: skip


def _run(argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "whetstone", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)  # fmt: skip


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def test_sigkill_at_a_random_point_then_resume_is_bit_identical(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = _run([*TRAIN, "--out", str(reference)])
    victim = _run([*TRAIN, "--out", str(killed)])
    # Kill once the first mid-epoch checkpoint exists, after a random further delay.
    delay = random.Random().uniform(0.0, 1.5)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, f"the run ended before it could be killed ({delay=:.2f}s)"
    position = load_checkpoint(killed)["position"]
    resumed = _run([*TRAIN[:1], "--resume", str(killed), "--no-progress", "--threads", "1"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resuming {killed} at epoch {position[0] + 1}, batch {position[1]}" in out
    assert uninterrupted.wait(timeout=300) == 0
    a, b = load_checkpoint(reference), load_checkpoint(killed)
    _same_weights(a["model"], b["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert a["sharpener"] == b["sharpener"]


def _mini_loader(limit=1000):
    train = load_dataset("mnist-mini", "train")
    return ws.TensorLoader(train.images[:limit], train.labels[:limit], 100, shuffle=True, seed=1)


def _model():
    torch.manual_seed(0)
    return ws.create_model("mnist-dense")


@pytest.mark.parametrize(
    ("cosine", "precision", "sync_every"),
    [
        (None, "fp32", 1),
        ("epoch", "fp32", 1),
        ("batch", "fp32", 1),
        (None, "bf16", 1),
        (None, "fp16", 1),
        (None, "fp32", 4),
    ],
    ids=["constant-lr", "cosine-lr", "cosine-lr-per-batch", "bf16", "fp16-loss-scaled", "read-back-every-4-batches"],
)
def test_resume_in_process_mid_epoch_matches_uninterrupted(tmp_path, cosine, precision, sync_every):
    from whetstone.runs.build import cosine_schedule

    def trainer(model, out=None, every=None, sync=1):
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        steps = 5 * (len(_mini_loader()) if cosine == "batch" else 1)  # 5 epochs
        return ws.Trainer(model, optimizer, ws.SimpleSharpener(1, steps=1), out_dir=out, progress=False,
                          checkpoint_every=every, scheduler=cosine_schedule(optimizer, steps) if cosine else None,
                          scheduler_per=cosine or "epoch", precision=precision, sync_every=sync)  # fmt: skip

    full_model = _model()
    full = trainer(full_model)
    full.fit(_mini_loader(), epochs=5)

    class Crash(Exception):
        pass

    model = _model()
    first = trainer(model, tmp_path, every=3, sync=sync_every)  # the interrupted run reads losses back in windows
    calls = {"n": 0}
    original = first.sharpener.on_batch_end

    def crash_after_batches(batch, loss):
        original(batch, loss)
        calls["n"] += 1
        if calls["n"] == 17:  # epoch 1, batch 7: after the checkpoint at batch 6
            raise Crash

    first.sharpener.on_batch_end = crash_after_batches
    with pytest.raises(Crash):
        first.fit(_mini_loader(), epochs=5)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["position"] == [1, 6]
    second_model = _model()
    second = trainer(second_model, tmp_path, every=3)
    second.load_state_dict(checkpoint)
    second.fit(_mini_loader(), epochs=5)
    _same_weights(full_model.state_dict(), second_model.state_dict())
    for ours, theirs in zip(second.history, full.history, strict=True):  # the same bookkeeping, in any window
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-12)
        assert ours.train_accuracy == theirs.train_accuracy
    if cosine:  # the schedule continued from where it was, not from the start
        steps = len(full.history) * (len(_mini_loader()) if cosine == "batch" else 1)
        assert second.scheduler.last_epoch == full.scheduler.last_epoch == steps >= 3
        assert second.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"] < 1e-3 / 2


class NaNOnce:
    """Cross-entropy that returns NaN at one chosen call."""

    def __init__(self, at_call):
        self.at_call, self.calls = at_call, 0
        self.loss = torch.nn.CrossEntropyLoss()

    def __call__(self, logits, y):
        self.calls += 1
        value = self.loss(logits, y)
        return value * float("nan") if self.calls == self.at_call else value


@pytest.mark.parametrize("sync_every", [1, 4])
def test_non_finite_loss_while_sharpening_rolls_back_and_slows_down(caplog, sync_every):
    model = _model()
    sharpener = ws.SimpleSharpener(1, steps=1)
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), 1e-3), sharpener, NaNOnce(at_call=15),
                         progress=False, sync_every=sync_every)  # fmt: skip
    result = trainer.fit(_mini_loader(), epochs=12)
    assert [r.rollbacks for r in result.history][:3] == [0, 1, 0]  # epoch 1 (calls 11-20) was retried once
    assert sharpener.steps == 2  # halved rate: two steps per layer from then on
    assert result.fully_binary
    assert "rolled back to the start of epoch 2" in caplog.text


def test_persistent_collapse_gives_up_after_bounded_retries():
    model = _model()

    def collapse_when_sharp(logits, y):
        loss = torch.nn.functional.cross_entropy(logits, y)
        sharp = any(layer.get_sharpness() > 0 for layer in ws.spiking_layers(model))
        return loss * float("inf") if sharp else loss

    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), 1e-3), ws.SimpleSharpener(0, steps=1, per="batch"),
                         loss=collapse_when_sharp, progress=False, max_retries=2)  # fmt: skip
    with pytest.raises(FloatingPointError, match="gave up after 2 rollbacks"):
        trainer.fit(_mini_loader(), epochs=3)


class LabelsShiftFrom:
    """A loader whose labels are all wrong (shifted by one class) from epoch ``start`` on."""

    def __init__(self, loader, start):
        self.loader, self.start, self.epoch = loader, start, 0

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            yield x, (y + 1) % 10 if self.epoch >= self.start else y


def test_accuracy_collapse_while_sharpening_counts_as_divergence(caplog):
    model = _model()
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), 2e-3), ws.SimpleSharpener(0, steps=2), progress=False,
                         max_retries=1)  # fmt: skip
    with pytest.raises(
        FloatingPointError,
        match=r"training accuracy fell to \d+\.\d% \(best \d+\.\d%\) while sharpening; gave up after 1",
    ):
        trainer.fit(LabelsShiftFrom(_mini_loader(), start=2), epochs=4)
    assert [record.epoch for record in trainer.history] == [0, 1]  # the collapsed epoch never entered the history
    assert "rolled back to the start of epoch 3" in caplog.text


@pytest.mark.parametrize(("sync_every", "reads"), [(1, 10), (4, 4), (100, 2)])
def test_losses_are_read_back_once_a_window(monkeypatch, sync_every, reads):
    """--sync-every N: one device-to-host read a window of N batches (and at the first and last batch of an
    epoch), not one a batch; the epoch's figures are the same."""
    from whetstone.training import distributed

    calls = []
    all_sum = distributed.all_sum
    monkeypatch.setattr(distributed, "all_sum", lambda tensor: calls.append(1) or all_sum(tensor))
    model = _model()
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), 1e-3), progress=False, sync_every=sync_every)
    loader = _mini_loader()
    assert len(loader) == 10
    record = trainer.fit(loader, epochs=1).history[0]
    assert len(calls) == reads
    model = _model()
    every_batch = ws.Trainer(model, torch.optim.Adam(model.parameters(), 1e-3), progress=False).fit(loader, epochs=1)
    assert record.train_loss == pytest.approx(every_batch.history[0].train_loss, rel=1e-12)
    assert record.train_accuracy == every_batch.history[0].train_accuracy
