"""Training for a chip's integer weights: layers compute with the integers export writes (straight-through
gradients), the state is unchanged, and the exported integer network is the trained one."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

import whetstone as ws
from whetstone.data.datasets import load_dataset
from whetstone.graph.nodes import WEIGHTED_NODES
from whetstone.nn.quantization_aware import TARGET_WEIGHTS, fake_quantize, quantized_bits

from conftest import tiny_conv_bn, torch_threads


def test_fake_quantize_rounds_each_channel_to_its_own_steps_and_passes_the_gradient_through():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float32, requires_grad=True)
    rounded = fake_quantize(weight, 3)  # 3 levels each side of zero, per output channel
    steps = rounded.detach().double().reshape(4, -1) / (weight.detach().double().abs().reshape(4, -1).amax(1, True) / 3)
    assert torch.allclose(steps, steps.round(), atol=1e-5) and torch.all(steps.abs().amax(1) == 3)
    rounded.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))  # straight through
    whole = fake_quantize(weight.detach(), 2, per_channel=False)
    assert set(torch.unique(whole / weight.detach().abs().max()).tolist()) <= {-1.0, 0.0, 1.0}


def test_quantize_weights_changes_what_layers_compute_not_what_they_hold():
    model = tiny_conv_bn()
    state = copy.deepcopy(model.state_dict())
    x = torch.rand(8, 1, 28, 28)
    before = model.eval()(x)
    assert ws.quantize_weights(model, 2, encoder_bits=8) is model
    assert list(model.state_dict()) == list(state) and all(
        torch.equal(model.state_dict()[k], v) for k, v in state.items()
    )
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [layer.weight_bits for layer in layers] == [8, 2, 2, 2] and quantized_bits(model) == 8
    assert not torch.equal(model(x), before)
    ws.float_weights(model)
    assert quantized_bits(model) is None and torch.equal(model(x), before)
    assert all(type(layer) in (nn.Conv2d, nn.Linear) for layer in layers)
    with pytest.raises(ValueError, match="bits must be an integer in \\[2, 16\\], got 1"):
        ws.quantize_weights(model, 1)
    with pytest.raises(ValueError, match="has no nn.Conv2d or nn.Linear"):
        ws.quantize_weights(nn.ReLU(), 4)


def _train(model: nn.Module, quantizer: ws.QuantizationAware | None, epochs: int) -> ws.Trainer:
    torch.manual_seed(0)
    loader = ws.TensorLoader.from_dataset(load_dataset("mnist-mini", "train"), 64, shuffle=True, seed=0)
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters(), 3e-3), ws.SimpleSharpener(1, steps=1),
                         quantizer=quantizer, progress=False)  # fmt: skip
    with torch_threads(1):
        trainer.fit(loader, epochs)
    return trainer


def test_the_exported_integer_network_is_the_one_trained_for_its_bits(mini_test):
    """Trained at 2 bits from the epoch sharpening starts: the graph quantized to 2 bits on export holds the
    trained integers (batch norm folded into them) and gives the trained network's classes."""
    torch.manual_seed(0)
    model = tiny_conv_bn()
    _train(model, ws.QuantizationAware(2, start_epoch=1), 6)
    model.eval()
    graph = ws.quantize(ws.to_spiking_graph(model, (1, 28, 28)), 2)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for node, layer in zip([n for n in graph.nodes if isinstance(n, WEIGHTED_NODES)], layers, strict=True):
        trained = fake_quantize(layer.weight.detach(), 2)
        steps = trained / layer.weight.detach().abs().reshape(len(trained), -1).amax(1).reshape(
            -1, *[1] * (trained.dim() - 1)
        )
        # The same integers per channel (a negative batch-norm factor flips a channel's sign).
        np.testing.assert_array_equal(np.abs(node.weight), steps.round().abs().numpy())
    x = mini_test[0]
    with torch.no_grad():
        torch_classes = model(x).argmax(1).numpy()
    assert (ws.simulate(graph, x.numpy()).predictions == torch_classes).mean() >= 0.99


def test_quantization_starts_at_its_epoch_and_a_cli_run_remembers_its_bits(tmp_path, capsys):
    torch.manual_seed(0)
    model = tiny_conv_bn()
    trainer = _train(model, ws.QuantizationAware(3, start_epoch=2), 2)
    assert quantized_bits(model) is None  # epochs 0 and 1 trained in float
    trainer.fit(ws.TensorLoader.from_dataset(load_dataset("mnist-mini", "train"), 64, shuffle=True, seed=0), 3)
    assert quantized_bits(model) == 3
    with pytest.raises(ValueError, match="start_epoch must be an integer >= 0"):
        ws.QuantizationAware(3, start_epoch=-1)
    from whetstone.cli.main import main

    assert main(["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--out", str(tmp_path / "x"),
                 "--bits", "4", "--target", "akida"]) == 2  # fmt: skip
    assert "--bits and --target akida both set the weights' precision: give one" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--limit", "600", "--epochs", "4",
                 "--start-epoch", "0", "--steps", "1", "--no-progress", "--threads", "1", "--target", "akida",
                 "--out", str(run)]) == 0  # fmt: skip
    rebuilt = ws.model_from_checkpoint(ws.load_checkpoint(run))  # computes with Akida's weights, as trained
    assert [m.weight_bits for m in rebuilt.modules() if isinstance(m, nn.Linear)] == [8, 4, 4]
    capsys.readouterr()
    assert main(["simulate", str(run), "--limit", "200", "--no-progress"]) == 0  # at the trained integers
    printed = capsys.readouterr().out
    assert "with float weights:" in printed and "(the 4-bit (input layer 8-bit) weights:" in printed
    assert int(re.search(r"same class as the simulator on (\d+) of 200", printed).group(1)) >= 198


def test_each_targets_training_precision_is_what_its_export_writes(trained):
    from whetstone.targets import get_target

    graph = ws.to_spiking_graph(trained, (1, 28, 28))
    dense = ws.create_model("mnist-dense").eval()
    ws.set_model_sharpness(dense, 1.0)
    for name, (bits, encoder_bits, per_channel) in TARGET_WEIGHTS.items():
        try:
            written = get_target(name).prepare(graph)
        except ws.DeployError:  # a target that cannot express this network (xylo: dense only)
            written = get_target(name).prepare(ws.to_spiking_graph(dense, (1, 28, 28)))
        weighted = [node for node in written.nodes if isinstance(node, WEIGHTED_NODES)]
        largest = [np.abs(node.weight).reshape(len(node.weight), -1).max(axis=1) for node in weighted]
        assert largest[0].max() == 2 ** ((encoder_bits or bits) - 1) - 1, name
        assert all(channel.max() == 2 ** (bits - 1) - 1 for channel in largest[1:]), name
        assert all(np.all(channel == channel.max()) for channel in largest) == per_channel, name
