import pytest
import torch
from torch import nn

import whetstone as ws


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


def test_spikify_sigmoid_and_leaves_other_activations():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.ReLU())
    ws.spikify(model, activation="sigmoid")
    assert isinstance(model[1], ws.SpikingSigmoid) and isinstance(model[2], nn.ReLU)


def test_spikify_errors_and_warning():
    with pytest.raises(ValueError, match="activation must be one of"):
        ws.spikify(nn.ReLU(), activation="tanh")

    class Functional(nn.Module):
        def forward(self, x):
            return torch.relu(x)

    with pytest.warns(UserWarning, match="found no nn.ReLU"):
        ws.spikify(Functional())


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
    with pytest.raises(ValueError, match=r"cannot fold batch norm \['2'\]"):
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
