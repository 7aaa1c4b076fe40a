import pytest
import torch
from torch import nn

import whetstone as ws


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    torch.manual_seed(0)
    yield


def three_layer_net(activation=ws.SpikingBReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), activation(), nn.Linear(8, 8), activation(), nn.Linear(8, 6), activation())


@pytest.fixture
def net():
    return three_layer_net()
