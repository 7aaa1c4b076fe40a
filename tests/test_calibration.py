"""Warm start of a trained ReLU network: ``spikify(..., calibrate=batches)`` keeps its accuracy at sharpness 0,
each layer's scale folds exactly into the deployed network, and the new state loads and saves like the rest."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import whetstone as ws
from whetstone.data.datasets import load_dataset

from conftest import assert_equal_where_decided, torch_threads


class SmallNet(nn.Module):  # PyTorch's MNIST example, smaller: functional ReLUs and pooling
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 16, 3)
        self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


@pytest.fixture(scope="module")
def trained_relu():
    """SmallNet trained as a ReLU network on the bundled digits (two epochs, one thread: the same weights anywhere)."""
    torch.manual_seed(0)
    train = load_dataset("mnist-mini", "train")
    loader = ws.TensorLoader.from_dataset(train, 64, shuffle=True, seed=0)
    model = SmallNet()
    with torch_threads(1):
        ws.Trainer(model, torch.optim.Adam(model.parameters(), 2e-3), progress=False).fit(loader, 2)
    batches = [x for _, (x, _) in zip(range(8), loader, strict=False)]
    return model.eval(), batches


def test_calibration_keeps_a_trained_networks_accuracy_at_sharpness_0(trained_relu, mini_test):
    model, batches = trained_relu
    x, y = mini_test
    with torch_threads(1), torch.no_grad():
        relu = (model(x).argmax(1) == y).float().mean().item()
        cold = ws.spikify(copy.deepcopy(model), num_classes=10)
        warm = ws.spikify(copy.deepcopy(model), num_classes=10, calibrate=batches)
        cold_accuracy = (cold.eval()(x).argmax(1) == y).float().mean().item()
        warm_accuracy = (warm.eval()(x).argmax(1) == y).float().mean().item()
    assert relu > 0.85
    assert abs(warm_accuracy - relu) <= 0.01, (relu, warm_accuracy)
    assert cold_accuracy < relu - 0.05, (relu, cold_accuracy)  # what calibration is for: clipping at 1 costs this
    scales = [layer.scale_value for layer in ws.spiking_layers(warm)]
    assert all(s > 0 for s in scales) and scales[-1] == 1.0 and len(set(scales[:-1])) == len(scales) - 1


def test_a_calibrated_binary_network_deploys_spike_for_spike_and_reports_binary(trained_relu, mini_test):
    model, batches = trained_relu
    warm = ws.spikify(copy.deepcopy(model), num_classes=10, calibrate=batches).eval()
    ws.set_model_sharpness(warm, 1.0)
    x = mini_test[0][:200]
    graph = ws.to_spiking_graph(warm, (1, 28, 28))
    first = graph.spiking_nodes()[0]
    layer = ws.spiking_layers(warm)[0]
    np.testing.assert_allclose(first.threshold, layer.membrane_threshold, rtol=1e-6)  # the scale is the threshold's
    result = ws.simulate(graph, x.numpy())
    with torch.no_grad():
        expected = warm.double()(x.double()).argmax(1).numpy()
        warm.float()
        fast = ws.for_inference(warm)(x).argmax(1).numpy()  # Heaviside steps emitting the layers' scales
    assert_equal_where_decided(result.predictions, expected, result, min_decided=0.9)
    assert_equal_where_decided(fast, expected, result, min_decided=0.9)
    reports = ws.binary_report(warm, [(x, mini_test[1][:200])])
    assert ws.is_fully_binary(warm, reports)  # 0 or the scale: spikes, counted as such
    assert all(0 < r.firing_rate < 1 for r in reports[:-1])


def test_scale_and_logit_scale_travel_in_the_state_dict_and_old_state_dicts_still_load(trained_relu):
    model, batches = trained_relu
    warm = ws.spikify(copy.deepcopy(model), num_classes=10, key_width=40, calibrate=batches)
    decoder = next(m for m in warm.modules() if isinstance(m, ws.SoftmaxDecode))
    assert decoder.logit_scale.item() == pytest.approx(0.25)  # one over the 4 units of a class
    state = warm.state_dict()
    fresh = ws.spikify(SmallNet(), num_classes=10, key_width=40)
    fresh.load_state_dict(state)
    assert [m.scale_value for m in ws.spiking_layers(fresh)] == [m.scale_value for m in ws.spiking_layers(warm)]
    x = batches[0][:16]
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), warm.eval()(x))
    no_levels = {k: v for k, v in state.items() if not k.endswith(".level")}
    fresh.load_state_dict(no_levels)  # saved before layers had a level: their spikes weigh the scale
    assert [m.level_value for m in ws.spiking_layers(fresh)] == [m.scale_value for m in ws.spiking_layers(warm)]
    old = {k: v for k, v in no_levels.items() if not k.endswith(".scale") and not k.endswith("logit_scale")}
    fresh.load_state_dict(old)  # saved before layers had a scale and decoders a logit scale: both 1
    assert all(m.scale_value == 1.0 == m.level_value for m in ws.spiking_layers(fresh))
    assert next(m for m in fresh.modules() if isinstance(m, ws.SoftmaxDecode))._logit_scale == 1.0


def test_a_layers_scale_moves_from_its_range_to_its_one_bit_level_as_it_sharpens(trained_relu):
    model, batches = trained_relu
    warm = ws.spikify(copy.deepcopy(model), num_classes=10, calibrate=batches)
    layer = ws.spiking_layers(warm)[0]
    scale, level = layer.scale_value, layer.level_value
    assert 0 < level < scale / 2  # a range is a high percentile; a one-bit copy fires on far more than its top half
    layer.set_sharpness(0.25)
    assert layer.scale_value == pytest.approx(0.75 * scale + 0.25 * level)
    layer.set_sharpness(1.0)
    assert layer.scale_value == level and layer.membrane_threshold == level * 0.5
    assert "level=" in repr(layer)
    state = {k: v.clone() for k, v in layer.state_dict().items()}  # (state_dict shares the buffers)
    layer.set_sharpness(0.0)
    assert layer.scale_value == scale
    layer.load_state_dict(state)
    assert layer.scale_value == level  # restored binary, at its level
    plain = ws.calibrate(ws.spikify(copy.deepcopy(model), num_classes=10), batches, levels=False)
    assert all(m.level_value == m.scale_value for m in ws.spiking_layers(plain))


def test_a_calibrated_n_hot_head_is_a_thermometer_code_and_keeps_its_accuracy_once_binary(trained_relu, mini_test):
    model, batches = trained_relu
    x, y = mini_test
    warm = ws.spikify(copy.deepcopy(model), num_classes=10, calibrate=batches).eval()
    decoder = next(m for m in warm.modules() if isinstance(m, ws.SoftmaxDecode))
    units = decoder.key.bool()  # (classes, width): 10 units per class
    bias = warm.fc2.bias.detach()
    steps = torch.stack([bias[row] - bias[row].mean() for row in units])
    torch.testing.assert_close(steps, (torch.arange(10.0) - 4.5).expand(10, 10) / 10)  # one step of 1/10 apart
    output = ws.spiking_layers(warm)[-1]
    output.set_sharpness(1.0)  # only the output layer binary: its code alone decides
    spikes: list[torch.Tensor] = []
    handle = output.register_forward_hook(lambda module, inputs, result: spikes.append(result))
    with torch_threads(1), torch.no_grad():
        relu = (model(x).argmax(1) == y).float().mean().item()
        binary = (warm(x).argmax(1) == y).float().mean().item()
    handle.remove()
    counts = spikes[0] @ decoder.key.t().float()  # each class's spike count, per image
    top = counts.topk(2, dim=1).values
    assert binary >= relu - 0.04, (relu, binary)  # copies firing together: 25% on this net (measured)
    assert (top[:, 0] == top[:, 1]).float().mean() < 0.2  # copies: 78% of images tied
    assert ((counts > 0) & (counts < 10)).any(1).float().mean() > 0.5  # counts between 0 and 10: a thermometer

    cold = ws.spikify(copy.deepcopy(model), num_classes=10)
    with torch.no_grad():
        cold.fc2.weight[units[0]] += 0.01 * torch.randn(10, cold.fc2.weight.shape[1])  # class 0: no longer copies
    ws.calibrate(cold, batches)
    bias = cold.fc2.bias.detach()
    steps = bias[units[0]] - bias[units[0]].mean()  # units that differ: mapped with the layer, not spread again
    offsets = ws.thermometer_offsets(decoder.key)[units[0]]  # spikify's spread, in the trained row's units
    torch.testing.assert_close(steps, offsets * (steps[-1] / offsets[-1]))
    assert not torch.allclose(steps, offsets)
    torch.testing.assert_close(bias[units[1]] - bias[units[1]].mean(), (torch.arange(10.0) - 4.5) / 10)


def test_calibrate_head_fits_a_fine_tuned_head_again_as_a_thermometer(trained_relu, mini_test):
    model, batches = trained_relu
    x, y = mini_test
    warm = ws.spikify(copy.deepcopy(model), num_classes=10, calibrate=batches).eval()
    units = next(m for m in warm.modules() if isinstance(m, ws.SoftmaxDecode)).key.bool()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # what fine-tuning does to a head: its units apart, its scores off the linear range
        weight, bias = warm.fc2.weight, warm.fc2.bias
        weight.mul_(3).add_(0.1 * weight.std() * torch.randn(weight.shape, generator=generator))
        bias.add_(1.0 + 0.1 * torch.randn(bias.shape, generator=generator))
    ws.spiking_layers(warm)[-1].set_sharpness(1.0)

    def accuracy() -> float:
        with torch_threads(1), torch.no_grad():
            return (warm(x).argmax(1) == y).float().mean().item()

    relu, before = (model(x).argmax(1) == y).float().mean().item(), accuracy()
    assert ws.calibrate_head(warm, batches) is warm
    after = accuracy()
    assert before < 0.5 and after >= relu - 0.04, (relu, before, after)  # every unit firing: classes tied
    for row in units:  # each class's units: one weight row, biases a thermometer's steps of 1/10
        torch.testing.assert_close(warm.fc2.weight[row], warm.fc2.weight[row][:1].expand(10, -1))
        torch.testing.assert_close(warm.fc2.bias[row] - warm.fc2.bias[row].mean(), (torch.arange(10.0) - 4.5) / 10)


def test_calibrate_head_needs_an_n_hot_head():
    with pytest.raises(ValueError, match=r"calibrate_head needs a model that ends in Linear \(or Conv2d\) -> spiking"):
        ws.calibrate_head(ws.spikify(SmallNet()), [torch.rand(2, 1, 28, 28)])
    with pytest.raises(ValueError, match=r"percentile must be a number in \(0, 100\], got 101"):
        ws.calibrate_head(ws.spikify(SmallNet(), num_classes=10), [torch.rand(2, 1, 28, 28)], percentile=101)


@pytest.mark.parametrize("kind", ["half-normal", "exponential", "sparse"])
def test_the_one_bit_level_is_the_best_one_bit_copy_of_the_values(kind):
    from whetstone.convert.calibration import _one_bit_level

    generator = torch.Generator().manual_seed(0)
    values = {
        "half-normal": torch.randn(20_000, generator=generator).relu(),
        "exponential": torch.empty(20_000).exponential_(generator=generator),
        "sparse": torch.rand(20_000, generator=generator).mul(3).sub(2).relu(),  # two thirds exactly 0
    }[kind].double()

    def error(a):
        return ((values - a * (values >= a / 2)) ** 2).mean()

    level = _one_bit_level(values)
    grid = torch.linspace(0.01, float(values.max()), 3000, dtype=torch.float64)
    assert error(level) <= min(error(a) for a in grid) * (1 + 1e-6)  # (the level is a float32)
    assert _one_bit_level(torch.zeros(8)) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m: ws.calibrate(m, [torch.rand(2, 1, 28, 28)], percentile=0),
            r"percentile must be a number in \(0, 100\]",
        ),
        (lambda m: ws.calibrate(m, [torch.rand(2, 1, 28, 28)], percentile=True), "percentile must be a number"),
        (lambda m: ws.calibrate(m, []), "calibrate: the batches yielded nothing"),
        (
            lambda m: ws.calibrate(m, [[1, 2]]),
            "calibrate: each batch must be a tensor or an .inputs, labels. pair, got int",
        ),
        (lambda m: ws.calibrate(None, []), "model must be an nn.Module, got NoneType"),
        (lambda m: ws.spiking_layers(m)[0].set_scale(0.0), "scale must be a positive finite number, got 0.0"),
        (lambda m: ws.spiking_layers(m)[0].set_scale(float("nan")), "scale must be a positive finite number, got nan"),
        (lambda m: ws.SoftmaxDecode(torch.eye(3), logit_scale=-1), "logit_scale must be a positive finite number"),
    ],
)
def test_bad_calibration_arguments_are_one_line_errors(call, message):
    model = ws.spikify(SmallNet(), num_classes=10)
    with pytest.raises(ValueError, match=message) as raised:
        call(model)
    assert "\n" not in str(raised.value)


def test_a_diverging_run_says_which_setting_to_change(trained_relu):
    model = ws.spikify(SmallNet(), num_classes=10)
    with torch.no_grad():
        model.get_submodule("fc1").weight.fill_(float("nan"))
    trainer = ws.Trainer(model, torch.optim.Adam(model.parameters()), progress=False)
    batches = [(x, torch.zeros(len(x), dtype=torch.long)) for x in trained_relu[1][:2]]
    with pytest.raises(FloatingPointError, match=r"lower the learning rate \(--lr\), or the loss's logit scale"):
        trainer.fit(batches, 1)


def test_concatenated_layers_share_one_scale_and_deploy_spike_for_spike():
    class Branches(nn.Module):  # two ReLU branches joined (one ranging 3 times further), then a sigmoid branch joined
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 1)
            self.d, self.e, self.f = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(1, 4, 1), nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            joined = torch.cat([F.relu(self.a(x)), F.relu(3 * self.b(x))], 1)
            mixed = torch.cat([torch.sigmoid(self.c(x)), F.relu(self.e(x))], 1)  # a sigmoid has no scale to share
            return self.fc(F.relu(self.d(joined) + self.f(mixed)).mean((2, 3)))

    torch.manual_seed(0)
    model = ws.spikify(Branches(), num_classes=10, calibrate=[torch.rand(32, 1, 8, 8)])
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ws.SpikingActivation)}
    assert layers["relu"].scale_value == layers["relu_1"].scale_value > 1.0  # the larger of the two ranges
    assert layers["sigmoid"].scale_value == 1.0 and layers["relu_2"].scale_value == 1.0  # joined with a sigmoid
    assert layers["relu_3"].scale_value not in (1.0, layers["relu"].scale_value)  # its own
    ws.set_model_sharpness(model, 1.0)
    graph = ws.to_spiking_graph(model.eval(), (1, 8, 8))
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    result = ws.simulate(graph, x.numpy())
    with torch.no_grad():
        expected = model.double()(x.double()).argmax(1).numpy()
    assert_equal_where_decided(result.predictions, expected, result, min_decided=0.9)
