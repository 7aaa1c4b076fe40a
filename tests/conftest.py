import contextlib

import numpy as np
import pytest
import torch
from torch import nn

import whetstone as ws
from whetstone.data.datasets import load_dataset


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@contextlib.contextmanager
def torch_threads(count: int = 1):
    """Run the block with ``count`` torch CPU threads, then restore. Training fixtures use it so the weights
    they produce do not depend on the machine (float sums are reduced in another order on more threads)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def assert_equal_where_decided(actual, expected, result, min_decided: float = 0.9, tolerance: float = 1e-5) -> None:
    """``actual == expected`` (arrays with one row per sample) on every sample whose spike decisions are
    all clear of their thresholds in ``result`` (a :class:`whetstone.SimResult` of the float graph), and
    enough samples are clear that the check is not vacuous. A sample with a membrane within float32
    rounding of its threshold may fire either way in a correct engine: it is excluded, never compared."""
    decided = result.decided(tolerance)
    assert decided.mean() >= min_decided, f"only {decided.mean():.1%} of the samples are clear of every threshold"
    np.testing.assert_array_equal(np.asarray(actual)[decided], np.asarray(expected)[decided])


def three_layer_net(activation=ws.SpikingBReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), activation(), nn.Linear(8, 8), activation(), nn.Linear(8, 6), activation())


@pytest.fixture
def net():
    return three_layer_net()


class Residual(nn.Module):
    """spike(conv(s) + s): a skip connection between spiking layers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.spike = ws.SpikingBReLU()

    def forward(self, x):
        return self.spike(self.bn(self.conv(x)) + x)


def tiny_conv_bn(residual: bool = False) -> ws.SpikingClassifier:
    """A small conv net with batch norm and max pooling (and, with ``residual``, a skip connection)."""
    layers = [nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), ws.SpikingBReLU(), nn.MaxPool2d(2)]
    if residual:
        layers.append(Residual(6))
    layers += [
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        ws.SpikingBReLU(),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 64),
        nn.BatchNorm1d(64),
        ws.SpikingBReLU(),
        nn.Linear(64, 40),
        nn.BatchNorm1d(40),
        ws.SpikingBReLU(),
    ]
    return ws.SpikingClassifier(nn.Sequential(*layers), ws.key_generator(10, 40, overlapping=False, seed=0))


def _train_tiny(model: nn.Module, epochs: int, lr: float = 3e-3) -> nn.Module:
    torch.manual_seed(0)
    train = load_dataset("mnist-mini", "train")
    loader = ws.TensorLoader.from_dataset(train, 64, shuffle=True, seed=0)
    trainer = ws.Trainer(
        model, torch.optim.Adam(model.parameters(), lr), ws.SimpleSharpener(1, steps=1), progress=False
    )
    with torch_threads(1):  # the same weights on every machine
        result = trainer.fit(loader, epochs=epochs)
    assert result.fully_binary
    return model.eval()


@pytest.fixture(scope="session")
def trained():
    """tiny_conv_bn trained on the bundled digits until fully binary."""
    torch.manual_seed(0)
    model = tiny_conv_bn()
    return _train_tiny(model, len(ws.spiking_layers(model)) + 2)


@pytest.fixture(scope="session")
def trained_residual():
    """tiny_conv_bn with a skip connection, trained until fully binary."""
    torch.manual_seed(0)
    model = tiny_conv_bn(residual=True)
    return _train_tiny(model, len(ws.spiking_layers(model)) + 2)


@pytest.fixture(scope="session")
def trained_dense():
    """mnist-dense trained on the bundled digits until fully binary."""
    torch.manual_seed(0)
    model = ws.create_model("mnist-dense")
    return _train_tiny(model, 4, lr=2e-3)


@pytest.fixture(scope="session")
def mini_test():
    test = load_dataset("mnist-mini", "test")
    return test.images[:500].float() / 255, test.labels[:500]
