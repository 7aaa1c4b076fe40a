"""The spiking DQN: hidden layers sharpen to binary during Q-learning, and the greedy policy run from its
NIR file in the reference simulator controls the environment exactly as the PyTorch network does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import whetstone as ws
from whetstone.export.nir import read_nir, write_nir
from whetstone.models.rl import (
    DQNConfig,
    evaluate_policy,
    graph_policy,
    q_network,
    torch_policy,
    train_dqn,
    unit_observations,
)

from conftest import torch_threads

pytest.importorskip("gymnasium", reason="optional dependency 'gymnasium' is not installed (pip install gymnasium)")

TINY = DQNConfig(steps=800, hidden=(16, 16), buffer=1000, learn_start=100, chunk=100, sharpen_start=1, sharpen_steps=1,
                 epsilon=(1.0, 0.1, 400), eval_episodes=2, target_every=100)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_agent():
    with torch_threads(1):
        return train_dqn(TINY)


def test_the_hidden_layers_become_binary_while_the_agent_learns(tiny_agent):
    assert tiny_agent.binary
    assert all(layer.is_binary for layer in ws.spiking_layers(tiny_agent.model))
    assert [row["step"] for row in tiny_agent.history] == list(range(100, 801, 100))
    assert tiny_agent.history[0]["sharpness"] == [0.0, 0.0] and tiny_agent.history[-1]["sharpness"] == [1.0, 1.0]


def test_the_policy_from_the_nir_file_gets_the_same_returns_in_the_simulator(tiny_agent, tmp_path):
    graph = ws.to_spiking_graph(tiny_agent.model, (4,), readout="membrane")
    path = write_nir(graph, tmp_path / "q.nir")
    with torch_threads(1):
        returns = evaluate_policy(torch_policy(tiny_agent.model), "CartPole-v1", 8, seed=123)
    deployed = evaluate_policy(graph_policy(read_nir(path)), "CartPole-v1", 8, seed=123)
    assert deployed == returns and min(returns) >= 8  # every episode, step for step


def test_observations_are_scaled_into_the_encoder_range_and_bad_settings_are_named():
    scaled = unit_observations(np.array([[0.0, 0.0, 0.0, 0.0], [9.0, -9.0, 0.105, 1.75]]), "CartPole-v1")
    np.testing.assert_allclose(scaled, [[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.75, 0.75]], rtol=1e-6)
    with pytest.raises(ValueError, match="env_id must be one of \\['CartPole-v1'\\], got 'Pong'"):
        DQNConfig(env_id="Pong")
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        DQNConfig(steps=0)
    with pytest.raises(ValueError, match="activation must be 'brelu', or 'relu' with sharpen=False"):
        DQNConfig(activation="relu")
    assert isinstance(torch.nn.ReLU(), type(q_network(4, 2, activation="relu")[1]))
