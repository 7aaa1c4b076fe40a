import contextlib

import numpy as np
import pytest
import torch
from torch import nn

import whetstone as ws


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
