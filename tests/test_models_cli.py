import json

import pytest
import torch

import whetstone as ws
from whetstone.cli.main import main
from whetstone.data.datasets import DATASETS
from whetstone.models.zoo import recipe

from conftest import assert_equal_where_decided

# rnn runs in time, one row a step: its graph is checked step by step in tests/test_time.py
CLASSIFIERS = [name for name in ws.list_models() if recipe(name).target == "labels" and name != "rnn"]
SHAPES = [(name, DATASETS[recipe(name).dataset].image_shape) for name in CLASSIFIERS] + [
    ("resnet-small", (3, 32, 32)), ("mnist-conv-bn", (3, 32, 32))]  # fmt: skip


@pytest.mark.parametrize("name,shape", SHAPES)
def test_models_build_forward_fold_and_deploy(name, shape):
    torch.manual_seed(0)
    model = ws.create_model(name, input_shape=shape)
    x = torch.rand(4, *shape)
    assert model(x).shape == (4, 10)
    assert len(ws.spiking_layers(model)) >= 3
    model.train()
    model(torch.rand(16, *shape))  # batch-norm statistics that are not the identity
    model.eval()
    ws.set_model_sharpness(model, 1.0)
    folded = ws.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert (folded.predict(x) == model.predict(x)).float().mean() >= 0.75  # float rounding may flip a tie
    graph = ws.to_spiking_graph(model, shape)
    result = ws.simulate(graph, x.numpy())
    # Untrained, threshold-centred units sit close to their thresholds: compare in float64, where both
    # sides sum the same float32 weights exactly enough that only a true tie could decide differently.
    assert_equal_where_decided(
        result.predictions, folded.double().predict(x.double()).numpy(), result, tolerance=1e-9, min_decided=1.0
    )


def test_pool_first_changes_only_which_unit_a_pooled_gradient_reaches():
    """cifar-conv-bn's pool_first=True max-pools before each pooled spike: the same function at every
    sharpness (the activation is monotone), the same gradients unsharpened, and the same deployed graph."""
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    models = []
    for pool_first in (False, True):
        torch.manual_seed(0)
        models.append(ws.create_model("cifar-conv-bn", input_shape=(3, 32, 32), base=4, pool_first=pool_first))
    plain, pooled = models
    assert [type(m).__name__ for m in pooled.features[3:7]] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "SpikingBReLU"]
    grads = []
    for model in models:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    for sharpness in (0.5, 1.0):
        for model in models:
            ws.set_model_sharpness(model, sharpness)
        torch.testing.assert_close(pooled(x), plain(x))
    plain.eval(), pooled.eval()
    graphs = [ws.to_spiking_graph(model, (3, 32, 32)) for model in models]
    assert [n.op for n in graphs[0].nodes] == [n.op for n in graphs[1].nodes]
    result = ws.simulate(graphs[1], x.numpy())
    expected = ws.fold_batchnorm(pooled).double().predict(x.double()).numpy()  # float64, as above
    assert_equal_where_decided(result.predictions, expected, result, tolerance=1e-9, min_decided=1.0)

    small = ws.create_model("mnist-conv-small", pool_first=True)
    assert [type(m).__name__ for m in small.features[:4]] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "SpikingBReLU"]
    assert small.features[1].bias.eq(0.5).all()  # still centred on the threshold through the pooling
    with pytest.raises(ValueError, match="pool_first=True does not apply to model 'mnist-dense'"):
        ws.create_model("mnist-dense", pool_first=True)
    with pytest.raises(ValueError, match="pool_first must be True or False, got 'yes'"):
        ws.create_model("mnist-conv-small", pool_first="yes")
    with pytest.raises(ValueError, match=r"its options: base \(and pool_first, if it max-pools spikes\)"):
        ws.create_model("cifar-conv-bn", bsae=4)


def test_pooling_before_a_binary_spike_sends_the_surrogate_gradient_to_the_largest_potential():
    potentials = torch.tensor([[[[0.2, 0.45], [0.1, 0.3]]]])  # no unit fires; the second is nearest to firing
    spike = ws.SpikingBReLU(1.0)
    spike.set_surrogate(0.0)
    grads = []
    for order in ((spike, torch.nn.MaxPool2d(2)), (torch.nn.MaxPool2d(2), spike)):
        v = potentials.clone().requires_grad_()
        torch.nn.Sequential(*order)(v).sum().backward()
        grads.append((v.grad.flatten() > 0.99).tolist())  # the slope of the sharpness-0 ramp, ~1
    assert grads == [[True, False, False, False], [False, True, False, False]]  # spike first: the first unit of a tie


def test_conv_autoencoder_builds_folds_and_trains_to_a_binary_code(tmp_path, capsys):
    torch.manual_seed(0)
    model = ws.create_model("conv-autoencoder", key_width=32)
    x = torch.rand(8, 1, 28, 28)
    assert model(x).shape == x.shape and model.encode(x).shape == (8, 32)
    model.train()
    model(x)
    model.eval()
    ws.set_model_sharpness(model, 1.0)
    folded = ws.fold_batchnorm(model)  # includes the transposed convolution's batch norm
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert torch.allclose(folded(x), model(x), atol=1e-4)
    code = model.encode(x)
    assert set(code.unique().tolist()) <= {0.0, 1.0}
    out = tmp_path / "ae"
    argv = ["train", "--model", "conv-autoencoder", "--dataset", "mnist-mini", "--out", str(out), "--epochs", "6",
            "--start-epoch", "1", "--steps", "1", "--limit", "1000", "--key-width", "32", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "final test loss" in printed and "fully binary" in printed
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["train_accuracy"] is None and history[-1]["eval_loss"] < 0.1  # an all-black image scores 0.104
    assert main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["fully_binary"]


def test_create_model_options_and_errors():
    model = ws.create_model("mnist-dense", num_classes=5, key_width=20, activation="sigmoid")
    assert model.decoder.key.shape == (5, 20)
    assert all(isinstance(layer, ws.SpikingSigmoid) for layer in ws.spiking_layers(model))
    with pytest.raises(ValueError, match="unknown model 'resnet9000'; choose one of"):
        ws.create_model("resnet9000")
    assert recipe("mnist-dense").optimizer == "adadelta"
    wide = ws.create_model("mnist-conv-small", conv1=20, conv2=96)
    assert [m.out_channels for m in wide.modules() if isinstance(m, torch.nn.Conv2d)] == [20, 96]
    assert wide(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    for name, options in (("cifar-conv-bn", {"base": 0}), ("mnist-conv-bn", {"kernel": -3}), ("rnn", {"hidden": 0})):
        with pytest.raises(ValueError, match=f"model option {next(iter(options))} must be a positive integer"):
            ws.create_model(name, input_shape=(3, 32, 32) if name == "cifar-conv-bn" else (1, 28, 28), **options)


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--epochs", "8", "--start-epoch",
                 "3", "--steps", "1", "--limit", "1000", "--optimizer", "adam", "--lr", "0.002", "--out", str(out), "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "fully binary" in printed and "epoch   6" in printed
    assert (out / "checkpoint.pt").exists() and (out / "history.png").exists()
    assert main(["eval", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fully_binary"] and report["samples"] == 1000 and report["accuracy"] > 0.5


def test_cli_cosine_schedule_model_option_and_weight_decay_are_saved_and_reused(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "mnist-conv", "--dataset", "mnist-mini", "--limit", "300", "--epochs", "3",
            "--start-epoch", "1", "--steps", "1", "--lr", "0.002", "--lr-schedule", "cosine", "--model-option", "kernel=3",
            "--optimizer", "adamw", "--weight-decay", "0.01", "--augment", "--device", "cpu", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 1  # 3 epochs: the 4 layers are not all binary yet
    said = capsys.readouterr().err
    assert "did not end fully binary within 3 epochs (exit status 1); train it again with more --epochs" in said
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    group = checkpoint["optimizer"]["param_groups"][0]
    # After all 3 epochs the cosine schedule is at its floor: 1/100 of the learning rate.
    assert group["lr"] == pytest.approx(0.002 * 0.01) and group["weight_decay"] == 0.01
    assert checkpoint["scheduler"]["last_epoch"] == 3
    assert checkpoint["run"]["model_options"]["kernel"] == 3
    assert checkpoint["model"]["features.0.weight"].shape[-1] == 3
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0  # rebuilt with kernel 3 from the checkpoint
    assert json.loads(capsys.readouterr().out)["samples"] == 1000


def test_cli_cosine_batch_schedule_lowers_the_rate_every_batch(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--limit", "300", "--epochs", "2",
                 "--sharpener", "none", "--lr", "0.002", "--lr-schedule", "cosine-batch", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["scheduler"]["last_epoch"] == 2 * 3  # 300 samples: 3 batches of 128 (the last of 44) an epoch
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.002 * 0.01)
    # A schedule that ends at --epochs cannot be extended on resume.
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 2


def test_cli_surrogate_trains_past_binary_and_survives_resume(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--no-progress", "--device", "cpu"]
    assert main(["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--limit", "300", "--epochs", "4", "--start-epoch", "0",
          "--steps", "1", "--surrogate", "0.5", "--out", str(out), *base]) == 0  # fmt: skip
    history = json.loads((out / "history.json").read_text())
    assert [record["sharpness"] for record in history][2:] == [[1, 1, 1]] * 2  # binary after 3 epochs, trained on
    assert torch.load(out / "checkpoint.pt", weights_only=True)["run"]["config"]["surrogate"] == 0.5
    assert main(["train", "--resume", str(out), "--epochs", "5", *base]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 5  # the resumed run still learns while binary
    printed = capsys.readouterr().out
    assert "fully binary" in printed and "resuming with --epochs 5\n" in printed


def test_a_changed_switch_is_said_as_on_or_off_never_as_its_inverted_flag():
    from whetstone.runs.config import describe_change

    assert describe_change("progress", False) == "progress off"  # not "--no-progress False"
    assert describe_change("augment", True) == "augment on"
    assert describe_change("epochs", 8) == "--epochs 8"


def test_parse_model_options_types():
    from whetstone.runs.config import parse_model_options

    assert parse_model_options(["base=128", "scale=0.5", "batch_norm=false", "name=wide"]) == {
        "base": 128, "scale": 0.5, "batch_norm": False, "name": "wide"}  # fmt: skip


def test_python_dash_m_whetstone_runs_the_cli():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "whetstone", "models"], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "resnet-small" in result.stdout


def test_cli_models_lists_registry(capsys):
    assert main(["models"]) == 0
    assert "mnist-dense" in capsys.readouterr().out


def test_demo_runs_offline_and_ends_fully_binary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ordinary network, continuous activations" in printed and "simply thresholded" in printed
    assert "fully binary: every spiking unit emitted only 0 or 1" in printed
    assert (tmp_path / "demo" / "relu" / "history.png").exists() and (tmp_path / "demo" / "binary" / "best.pt").exists()
    plain = json.loads((tmp_path / "demo" / "relu" / "history.json").read_text())
    binary = json.loads((tmp_path / "demo" / "binary" / "history.json").read_text())
    assert len(plain) == 21 and binary[-1]["sharpness"] == [1.0, 1.0, 1.0]  # the same budget; the second binary
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress", "--epochs", "2"]) == 1  # reruns over itself


def test_cli_distils_from_a_teacher_run_and_resumes_with_it(tmp_path, capsys, monkeypatch):
    base = ["--model", "mnist-dense", "--dataset", "mnist-mini", "--limit", "300", "--no-progress", "--device", "cpu"]
    assert main(["train", *base, "--sharpener", "none", "--epochs", "1", "--out", str(tmp_path / "teacher")]) == 0
    monkeypatch.chdir(tmp_path)  # a relative --teacher is saved as an absolute path
    student = tmp_path / "student"
    assert main(["train", *base, "--epochs", "3", "--start-epoch", "0", "--steps", "1", "--surrogate", "0", "--teacher", "teacher",
          "--distill-weight", "0.5", "--distill-temperature", "2", "--out", str(student)]) == 0  # fmt: skip
    saved = torch.load(student / "checkpoint.pt", weights_only=True)["run"]["config"]
    assert (saved["teacher"], saved["distill_weight"], saved["distill_temperature"]) == (
        str(tmp_path / "teacher"),
        0.5,
        2.0,
    )
    monkeypatch.chdir(tmp_path.parent)
    assert main(["train", "--resume", str(student), "--epochs", "4", "--no-progress", "--device", "cpu"]) == 0
    assert len(json.loads((student / "history.json").read_text())) == 4
    assert "fully binary" in capsys.readouterr().out


def test_commands_that_read_a_run_find_its_data_where_it_was_trained_from(tmp_path, monkeypatch, capsys):
    from test_data import make_mnist_folder

    data = make_mnist_folder(tmp_path / "data")
    monkeypatch.delenv("WHETSTONE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nothing in the default place either
    out = tmp_path / "run"
    argv = ["train", "--model", "mnist-dense", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "3",
            "--start-epoch", "0", "--steps", "1", "--out", str(out), "--no-progress", "--logit-scale", "0.25"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0  # no --data-dir: the run's own
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["samples"] == 10
    # The loss the history records, at the run's logit scale (it was the loss at scale 1, 2.05 against 0.83).
    assert evaluated["loss"] == pytest.approx(json.loads((out / "history.json").read_text())[-1]["eval_loss"], rel=1e-5)
    assert main(["simulate", str(out)]) == 0
    assert "simulated accuracy on 10 mnist test images" in capsys.readouterr().out
    assert main(["eval", str(out), "--data-dir", str(tmp_path / "elsewhere")]) == 2  # a folder given is the one used
    assert "mnist test data not found" in capsys.readouterr().err


def test_export_verify_that_fails_after_writing_says_the_file_is_kept(tmp_path, monkeypatch, capsys):
    from whetstone import targets

    out = tmp_path / "run"
    assert main(["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--limit", "300", "--epochs", "3",
                 "--start-epoch", "0", "--steps", "1", "--out", str(out), "--no-progress"]) == 0  # fmt: skip

    def missing(*args, **kwargs):
        raise ImportError("snnTorch is not installed: pip install snntorch nirtorch")

    monkeypatch.setattr(targets, "verify_on_dataset", missing)
    capsys.readouterr()
    assert (
        main(
            [
                "export",
                str(out),
                "--format",
                "nir",
                "--target",
                "snntorch",
                "--verify",
                "--out",
                str(tmp_path / "s.nir"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{tmp_path / 's.nir'} is written (and kept), but --verify failed: snnTorch is not installed" in err
    assert (tmp_path / "s.nir").is_file() and err.count("\n") == 1


def test_version_is_the_installed_distributions(capsys):
    from importlib import metadata

    from whetstone.cli.main import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"whetstone-snn {metadata.version('whetstone-snn')}" != "whetstone-snn "
    assert ws.__version__ == metadata.version("whetstone-snn")


def test_a_stopped_command_claims_a_checkpoint_only_where_one_is(tmp_path):
    import argparse

    from whetstone.cli.flags import stopped_line
    from whetstone.utils.files import Terminated

    fresh = argparse.Namespace(command="train", out=str(tmp_path / "run"), resume=None)
    assert stopped_line(KeyboardInterrupt(), fresh) == "interrupted (before its first checkpoint: nothing to resume)"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    assert stopped_line(Terminated(), fresh) == "terminated (the last complete checkpoint is kept)"
    assert stopped_line(KeyboardInterrupt(), argparse.Namespace(command="export", out=None)) == "interrupted"


USER_NETWORK = """
import torch
from torch import nn


def small_cnn(num_classes, input_shape, channels=8):
    \"\"\"An ordinary ReLU network, as its author wrote it.\"\"\"
    return nn.Sequential(nn.Conv2d(input_shape[0], channels, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(channels * 12 * 12, 32), nn.ReLU(), nn.Linear(32, num_classes))

NOT_A_FACTORY = 3
"""


def test_a_model_of_your_own_trains_evaluates_and_exports_by_module_path(tmp_path, monkeypatch, capsys):
    """--model package.module:factory trains the user's ordinary network converted (spikify), with its options;
    eval and export rebuild it from the checkpoint by importing it again."""
    (tmp_path / "user_nets.py").write_text(USER_NETWORK)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = ["train", "--model", "user_nets:small_cnn", "--dataset", "mnist-mini", "--limit", "600", "--epochs", "3",
            "--start-epoch", "0", "--steps", "1", "--model-option", "channels=4", "--out", str(out), "--no-progress",
            "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "fully binary" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=False)["run"]["model_options"]["channels"] == 4
    assert main(["eval", str(out)]) == 0 and json.loads(capsys.readouterr().out)["fully_binary"]
    assert main(["export", str(out), "--format", "nir", "--no-progress"]) == 0
    capsys.readouterr()
    for model, said in (("user_nets:nope", "module 'user_nets' has no 'nope'"), ("no_such_module:f", "cannot import 'no_such_module'"),
                        ("user_nets:NOT_A_FACTORY", "'NOT_A_FACTORY' is a int, not a function that builds a model")):  # fmt: skip
        assert main(["train", "--model", model, "--dataset", "mnist-mini", "--out", str(tmp_path / "x")]) == 2
        assert said in capsys.readouterr().err
    assert main(["train", "--model", "user_nets:small_cnn", "--dataset", "mnist-mini", "--model-option", "depth=3",
                 "--out", str(tmp_path / "y")]) == 2  # fmt: skip
    assert (
        "model 'user_nets:small_cnn' has no option depth; its options: num_classes, input_shape, channels"
        in capsys.readouterr().err
    )


def test_register_model_names_a_network_of_your_own_for_python_and_the_cli():
    from whetstone.models import zoo

    def tiny(num_classes):
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, num_classes)
        )

    ws.register_model("tiny-test-net", tiny, recipe=ws.Recipe(dataset="mnist-mini", epochs=2))
    try:
        model = ws.create_model("tiny-test-net", num_classes=3, key_width=12)
        assert isinstance(model.decoder if hasattr(model, "decoder") else model, torch.nn.Module)
        assert sum(isinstance(m, ws.SoftmaxDecode) for m in model.modules()) == 1
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)
        assert ws.RunConfig(model="tiny-test-net").resolved().epochs == 2  # its recipe
        with pytest.raises(ValueError, match="model 'tiny-test-net' is already registered"):
            ws.register_model("tiny-test-net", tiny)
        with pytest.raises(ValueError, match="name must be a non-empty string without ':'"):
            ws.register_model("a:b", tiny)
    finally:
        zoo._REGISTRY.pop("tiny-test-net")
