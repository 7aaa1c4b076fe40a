"""Optional integrations: the Optuna sweep and the Lightning callback (each skips visibly without its extra)."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import whetstone as ws
from whetstone.cli.main import main
from whetstone.data.datasets import load_dataset


def test_sweep_runs_trials_and_continues_its_study(tmp_path, capsys):
    optuna = pytest.importorskip(
        "optuna", reason="optional dependency 'optuna' not installed (pip install -e '.[sweep]')"
    )
    argv = ["sweep", "--model", "mnist-dense", "--dataset", "mnist-mini", "--limit", "800", "--epochs", "4",
            "--trials", "2", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert "best of 2 trials" in capsys.readouterr().out
    assert main(argv) == 0  # continues the same study
    study = optuna.load_study(study_name="whetstone", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 4 and all(t.value is not None for t in study.trials)
    assert (tmp_path / "trial-3" / "checkpoint.pt").exists()
    assert all(-1.0 <= t.value <= 1.0 for t in study.trials)
    capsys.readouterr()
    other = [*argv[:2], "mnist-conv-small", *argv[3:]]  # another model's trials would be ranked with these
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "--model mnist-conv-small (the study has mnist-dense)" in err and err.count("\n") == 1
    assert len(optuna.load_study(study_name="whetstone", storage=f"sqlite:///{tmp_path / 'study.db'}").trials) == 4
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "study.db").write_text("not a database")
    assert main([*argv[:-1], str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err
    assert "study.db is not a study whetstone can continue" in err and "Traceback" not in err and err.count("\n") == 1


def test_lightning_callback_sharpens_a_lightning_module_to_binary():
    pl = pytest.importorskip(
        "lightning.pytorch", reason="optional dependency 'lightning' not installed (pip install -e '.[lightning]')"
    )
    from whetstone.integrations.lightning import SharpenerCallback

    class LitClassifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = ws.create_model("mnist-dense")

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)

    train = load_dataset("mnist-mini", "train")
    data = DataLoader(
        TensorDataset(train.images[:1000].float() / 255, train.labels[:1000]), batch_size=100, shuffle=True
    )
    module, sharpener = LitClassifier(), ws.SimpleSharpener(1, steps=1)
    trainer = pl.Trainer(max_epochs=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[SharpenerCallback(sharpener)])  # fmt: skip
    trainer.fit(module, data)
    assert sharpener.done and trainer.current_epoch == 4  # 1 warm-up epoch + 3 layers, then it stopped
    test = load_dataset("mnist-mini", "test")
    loader = ws.TensorLoader.from_dataset(test, 500)
    assert all(layer.binary for layer in ws.binary_report(module.net, loader))
    assert ws.evaluate(module.net, loader)[1] > 0.5
    with pytest.raises(TypeError, match="Sharpener"):
        SharpenerCallback("simple")
    # Quantization-aware: from the epoch sharpening starts, the layers compute with 4-bit weights.
    module, sharpener = LitClassifier(), ws.SimpleSharpener(1, steps=1)
    callback = SharpenerCallback(sharpener, quantizer=ws.QuantizationAware(4, start_epoch=1))
    trainer = pl.Trainer(max_epochs=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])  # fmt: skip
    trainer.fit(module, data)
    assert {m.weight_bits for m in module.net.modules() if isinstance(m, torch.nn.Linear)} == {4}
