import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import whetstone as ws

from conftest import assert_equal_where_decided


def test_spikify_replaces_relu_keeps_weights():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2), nn.ReLU()))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    out = ws.spikify(model)
    assert out is model
    assert isinstance(model[1], ws.SpikingBReLU) and isinstance(model[2][1], ws.SpikingBReLU)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value)
    assert len(ws.spiking_layers(model)) == 2


def test_spikify_sigmoid_family_and_the_relu_family_choice():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.ReLU(), nn.Hardsigmoid())
    assert ws.spikify(model, activation="sigmoid") is model
    assert [type(m).__name__ for m in model] == ["Linear", "SpikingSigmoid", "SpikingSigmoid", "SpikingSigmoid"]
    bounded = ws.spikify(nn.Sequential(nn.ReLU6(), nn.Hardtanh(0, 1), nn.LeakyReLU(0.1)))
    assert all(isinstance(m, ws.SpikingBReLU) for m in bounded)


class SharedReLUBlock(nn.Module):
    """torchvision's BasicBlock pattern: one nn.ReLU module, called twice."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = SharedReLUBlock()
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.block(x))
        x = F.relu(x).relu()
        return self.fc(torch.flatten(x, 1))


def test_spikify_gives_every_call_site_its_own_spiking_module():
    model = Functional()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    spiking = ws.spikify(model)
    names = [name for name, m in spiking.named_modules() if isinstance(m, ws.SpikingActivation)]
    assert names == ["block.relu", "block.relu_1", "relu", "relu_1", "relu_2"]
    layers = ws.spiking_layers(spiking)
    assert [dict(spiking.named_modules())[n] for n in names] == layers  # execution order, one per call site
    assert len(set(map(id, layers))) == 5
    ws.set_model_sharpness(spiking, 0.2)  # bottom-up: the first call site is binary, the shared module's second is not
    assert ws.model_sharpness(spiking) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert all(torch.equal(spiking.state_dict()[k], v) for k, v in weights.items())  # the same parameters
    assert isinstance(model.block.relu, nn.ReLU)  # the original model is left as it was
    assert spiking(torch.randn(3, 2, 4, 4)).shape == (3, 3)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.Tanh(), "1: Tanh has no binary counterpart: it is negative for half its inputs"),
        (nn.Softsign(), "1: Softsign has no binary counterpart"),
        (nn.LayerNorm(4), "1: LayerNorm normalises each sample across units"),
        (nn.Softmax(dim=1), "1: Softmax normalises across units"),
    ],
)
def test_spikify_refuses_what_has_no_binary_counterpart_before_training(layer, message):
    with pytest.raises(ws.ConversionError, match=message):
        ws.spikify(nn.Sequential(nn.Linear(4, 4), layer, nn.Linear(4, 2), nn.ReLU()))


def test_spikify_refuses_functional_calls_naming_the_module_and_the_source_line():
    class Tanh(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(4, 4))

        def forward(self, x):
            return torch.tanh(self.inner(x))

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Tanh()

        def forward(self, x):
            return F.relu(self.body(x))

    line = r"\S*test_convert\.py:\d+: `return torch\.tanh\(self\.inner\(x\)\)`"
    with pytest.raises(
        ws.ConversionError, match=rf"tanh\(\) in the forward of body \({line}\) has no binary counterpart"
    ):
        ws.spikify(Outer())


@pytest.mark.parametrize("smooth", [nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Mish(), nn.ELU(), nn.Softplus()])
def test_smooth_relu_like_activations_become_the_spiking_brelu_with_a_warning_naming_each(smooth):
    model = nn.Sequential(nn.Linear(4, 8), smooth, nn.Linear(8, 8), nn.ReLU())
    with pytest.warns(UserWarning, match=rf"in place of smooth activations.*: 1 \({type(smooth).__name__}\)$"):
        spiking = ws.spikify(model)
    assert isinstance(spiking[1], ws.SpikingBReLU) and isinstance(spiking[3], ws.SpikingBReLU)


def test_smooth_functional_calls_are_named_by_module_and_line_in_the_warning():
    class Swish(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.silu(self.fc(x))

    with pytest.warns(
        UserWarning, match=r"silu\(\) in the forward of the model \(\S*test_convert\.py:\d+: `return F\.silu"
    ):
        spiking = ws.spikify(Swish())
    assert sum(isinstance(m, ws.SpikingBReLU) for m in spiking.modules()) == 1


def test_spikify_gives_a_classifier_an_n_hot_spiking_head():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    spiking = ws.spikify(model, num_classes=4, key_width=12, key_seed=3)
    decoder = spiking.get_submodule("decoder")
    assert isinstance(decoder, ws.SoftmaxDecode) and decoder.key.shape == (4, 12)
    torch.testing.assert_close(decoder.key, ws.key_generator(4, 12, overlapping=False, seed=3))
    head = spiking.get_submodule("3")
    assert head.weight.shape == (12, 8)
    owner = decoder.key.argmax(dim=0)
    assert torch.equal(head.weight, model[3].weight[owner])  # each unit starts as its class's row
    torch.testing.assert_close(head.bias, model[3].bias[owner] + ws.thermometer_offsets(decoder.key))  # spread
    assert len(ws.spiking_layers(spiking)) == 2 and spiking(torch.rand(5, 1, 4, 4)).shape == (5, 4)
    ws.set_model_sharpness(spiking, 1.0)
    graph = ws.to_spiking_graph(spiking, (1, 4, 4))
    assert graph.key.shape == (4, 12) and graph.output == "3_spike"
    with pytest.raises(
        ws.ConversionError, match=r"num_classes=5: the model's output must come from a Linear\(features, 5\)"
    ):
        ws.spikify(model, num_classes=5)


def test_spikify_warns_when_it_cannot_trace_and_swaps_modules():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x) if x.sum() > 0 else x  # data-dependent: torch.fx cannot trace it

    with pytest.warns(UserWarning, match="could not trace Branchy"):
        model = ws.spikify(Branchy())
    assert isinstance(model.relu, ws.SpikingBReLU)


def test_spiking_layers_follow_the_forward_pass_not_registration_order():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.late, self.fc2 = ws.SpikingBReLU(), nn.Linear(4, 4)
            self.early, self.fc1 = ws.SpikingBReLU(), nn.Linear(4, 4)

        def forward(self, x):
            return self.late(self.fc2(self.early(self.fc1(x))))

    model = Backwards()
    assert ws.spiking_layers(model) == [model.early, model.late]
    ws.set_model_sharpness(model, 0.5)
    assert (model.early.get_sharpness(), model.late.get_sharpness()) == (1.0, 0.0)


def test_spikify_errors():
    with pytest.raises(ValueError, match="activation must be one of"):
        ws.spikify(nn.ReLU(), activation="tanh")
    with pytest.warns(UserWarning, match="found no activation"):
        ws.spikify(nn.Linear(2, 2))


def _with_statistics(model, shape):
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(*shape) * 3 + 1)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                module.weight.uniform_(0.5, 2)
                module.bias.uniform_(-1, 1)
    return model.eval()


def test_fold_batchnorm_sequential_equal_outputs():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), ws.SpikingBReLU(0.3), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5), ws.SpikingBReLU(0.3),
    )  # fmt: skip
    _with_statistics(model, (8, 1, 8, 8))
    folded = ws.fold_batchnorm(model)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert not folded.training


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.conv2, self.bn2 = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.spike1, self.spike2 = ws.SpikingBReLU(), ws.SpikingBReLU()

    def forward(self, x):
        y = self.spike1(self.bn1(self.conv1(x)))
        return self.spike2(self.bn2(self.conv2(y)) + x)


def test_fold_batchnorm_traced_custom_module():
    model = _with_statistics(Residual(), (4, 2, 6, 6))
    folded = ws.fold_batchnorm(model)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    x = torch.randn(3, 2, 6, 6)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_binary_outputs_agree_with_trained_model():
    torch.manual_seed(1)
    model = ws.create_model("mnist-conv-bn")
    _with_statistics(model, (8, 1, 28, 28))
    ws.set_model_sharpness(model, 1.0)
    x = torch.rand(32, 1, 28, 28)
    folded = ws.fold_batchnorm(model)
    assert torch.equal(folded.predict(x), model.predict(x))


def test_fold_batchnorm_refuses_unfoldable():
    model = nn.Sequential(nn.Linear(3, 3), ws.SpikingBReLU(), nn.BatchNorm1d(3))
    with pytest.raises(
        ValueError, match=r"cannot fold batch norm 2: it follows 1 \(SpikingBReLU\), which is not a Linear"
    ):
        ws.fold_batchnorm(model)


def test_for_inference_folds_and_thresholds_in_place_with_identical_predictions():
    torch.manual_seed(0)
    model = ws.create_model("mnist-conv-bn")
    model.train()
    model(torch.rand(32, 1, 28, 28))
    model.eval()
    with pytest.raises(ValueError, match=r"features\.2 has sharpness 0"):
        ws.for_inference(model)
    ws.set_model_sharpness(model, 1.0)
    deployed = ws.for_inference(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, ws.SpikingActivation)) for m in deployed.modules())
    x = torch.rand(64, 1, 28, 28)
    reference = ws.fold_batchnorm(model)
    with torch.inference_mode():
        assert torch.equal(deployed(x), reference(x))
    with torch.no_grad():
        assert torch.equal(deployed.features(x), reference.features(x))
    assert torch.equal(deployed(x), reference(x))  # grad mode: the out-of-place path


class BNAfterSum(nn.Module):
    """bn(conv(s) + s) and bn2(conv2(s) + shortcut(s)): batch norm after the sum of a residual block; the
    second block's conv output also feeds a third path, so folding must not change it there."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 3, 3, padding=1)
        self.spike0 = ws.SpikingBReLU(1.0)
        self.conv1, self.bn1, self.spike1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), ws.SpikingBReLU(1.0)
        self.conv2, self.shortcut = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn2, self.spike2 = nn.BatchNorm2d(4), ws.SpikingBReLU(1.0)
        self.bn3, self.spike3 = nn.BatchNorm2d(4), ws.SpikingBReLU(1.0)

    def forward(self, x):
        s = self.spike0(self.conv0(x))
        s = self.spike1(self.bn1(self.conv1(s) + s))
        c = self.conv2(s)
        out = self.spike2(self.bn2(c + self.shortcut(s)))
        return self.spike3(self.bn3(c) + out)  # c feeds bn3 too


def test_fold_batchnorm_after_a_residual_sum_and_of_a_shared_output():
    torch.manual_seed(0)
    model = _with_statistics(BNAfterSum(), (8, 1, 6, 6)).double()
    for module in model.modules():
        if isinstance(module, ws.SpikingActivation):
            module.set_sharpness(0.0)  # continuous: compare the real-valued function, not thresholds
    folded = ws.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert (
        isinstance(folded.get_submodule("bn1_shortcut"), nn.Conv2d) and folded.get_submodule("bn1_shortcut").groups == 3
    )
    x = torch.rand(16, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original untouched
    for network in (model, folded):
        ws.set_model_sharpness(network, 1.0)
    graph = ws.to_spiking_graph(model.float(), (1, 6, 6), key=torch.eye(4, 4 * 6 * 6).clamp(0, 1))
    result = ws.simulate(graph, x.float().numpy())
    with torch.no_grad():
        expected = folded.double()(x).flatten(1).numpy()
    assert_equal_where_decided(result.output_spikes, expected, result, tolerance=1e-9, min_decided=1.0)


def test_spikify_with_an_input_shape_names_what_will_not_deploy_before_training():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2), nn.Flatten(),
                          nn.Linear(4 * 16 * 16, 10))  # fmt: skip
    with pytest.raises(ws.DeployError, match="2: up-sampling \\(nn.Upsample\\) cannot be exported"):
        ws.spikify(model, num_classes=10, input_shape=(1, 8, 8))
    fine = ws.spikify(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), num_classes=10,
                      input_shape=(1, 8, 8))  # fmt: skip
    assert ws.model_sharpness(fine) == [0.0, 0.0]  # the check works on a copy


class _Chatty(nn.Module):
    """A forward with effects beyond its tensors, as research code often has."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)
        self.functional, self.calls = functional, 0

    def forward(self, x):
        print("batch of", x.shape[0])
        self.calls += 1
        hidden = F.relu(self.fc1(x)) if self.functional else self.act(self.fc1(x))
        return self.fc2(hidden)


def test_spikify_names_the_forward_statements_a_traced_model_drops(capsys):
    """A traced model runs its graph, not its forward: the print and the counter would silently stop."""
    with pytest.warns(UserWarning, match=r"will not run again: _Chatty \(.*test_convert.py:\d+: `print\(\"batch of\", x.shape\[0\]\)`\); "
                      r"_Chatty \(.*: `self.calls \+= 1`\)"):  # fmt: skip
        converted = ws.spikify(_Chatty(functional=True))
    assert isinstance(converted, torch.fx.GraphModule)
    capsys.readouterr()
    converted(torch.rand(2, 4))
    assert capsys.readouterr().out == ""  # indeed dropped
    with warnings.catch_warnings():  # converted in place, the forward kept: nothing is dropped, nothing said
        warnings.filterwarnings("error", message="spikify returns the traced graph")
        kept = ws.spikify(_Chatty(functional=False))
    kept(torch.rand(2, 4))
    assert kept.calls == 2 and "batch of 2" in capsys.readouterr().out  # once while tracing, once here
