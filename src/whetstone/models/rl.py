"""Deep Q-learning whose hidden layers sharpen into binary spikes (the paper's DQN), on a gymnasium
classic-control task (optional extra ``rl``: ``pip install gymnasium``).

The Q-network is ``Linear - spike - Linear - spike - Linear``: its hidden units become integrate-and-fire
neurons, and its action values are the last layer's potentials (a membrane readout,
``to_spiking_graph(..., readout="membrane")``). Observations are scaled into [0, 1] with fixed bounds
(clipped), the encoder's input range. Training is standard DQN (replay buffer held as tensors, a target
network, Huber loss, epsilon-greedy); the sharpener advances once per ``chunk`` environment steps, bottom-up,
and once binary the layers keep learning through surrogate gradients. The greedy policy is then run from
the exported graph in the reference simulator, controlling the environment.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..graph.simulator import simulate
from ..nn.activations import SpikingBReLU
from ..nn.sharpen import SimpleSharpener, set_model_surrogate
from ..utils.checks import install_hint, positive_int
from .zoo import center_on_threshold

__all__ = ["OBSERVATION_BOUNDS", "DQNConfig", "DQNResult", "evaluate_policy", "graph_policy", "q_network", "train_dqn"]

#: Bounds of each observation that map onto [0, 1] (values outside are clipped), per environment. CartPole:
#: position and angle at their termination limits; velocities where the task's states rarely go.
OBSERVATION_BOUNDS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "CartPole-v1": ((-2.4, -3.0, -0.21, -3.5), (2.4, 3.0, 0.21, 3.5)),
}


def _gymnasium():
    try:
        import gymnasium
    except ImportError as error:
        raise ImportError(f"reinforcement learning needs gymnasium: {install_hint('rl', 'gymnasium')}") from error
    return gymnasium


def _bounds(env_id: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if env_id not in OBSERVATION_BOUNDS:
        raise ValueError(f"env_id must be one of {sorted(OBSERVATION_BOUNDS)}, got {env_id!r}")
    return OBSERVATION_BOUNDS[env_id]


def unit_observations(observations: np.ndarray, env_id: str) -> np.ndarray:
    """Observations (N, dims) scaled by :data:`OBSERVATION_BOUNDS` into [0, 1], clipped, float32."""
    low, high = (np.asarray(b, np.float32) for b in _bounds(env_id))
    return np.clip((np.asarray(observations, np.float32) - low) / (high - low), 0.0, 1.0)


def q_network(
    observations: int, actions: int, hidden: tuple[int, ...] = (128, 128), activation: str = "brelu"
) -> nn.Sequential:
    """``Linear - SpikingBReLU`` per hidden layer (``activation="relu"``: a plain ``nn.ReLU``, for a
    reference agent that is never sharpened), then a ``Linear`` of one value per action."""
    if activation not in ("brelu", "relu"):
        raise ValueError(f"activation must be 'brelu' or 'relu', got {activation!r}")
    layers: list[nn.Module] = []
    width = observations
    for size in hidden:
        layers += [nn.Linear(width, size), SpikingBReLU() if activation == "brelu" else nn.ReLU()]
        width = size
    model = nn.Sequential(*layers, nn.Linear(width, actions))
    center_on_threshold(model)
    return model


@dataclass(frozen=True)
class DQNConfig:
    """The settings of one DQN run (defaults: CartPole-v1 on a CPU in a few minutes)."""

    env_id: str = "CartPole-v1"
    sharpen: bool = True  # False: the twin, never sharpened
    activation: str = "brelu"  # "relu": a plain-ReLU agent (only with sharpen=False)
    steps: int = 60_000  # environment steps
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 1e-3
    gamma: float = 0.99
    batch_size: int = 64
    buffer: int = 50_000
    learn_start: int = 1_000
    target_every: int = 500  # steps between target-network copies
    epsilon: tuple[float, float, int] = (1.0, 0.02, 10_000)  # start, end, steps of the linear decay
    chunk: int = 2_000  # environment steps per sharpener "epoch"
    sharpen_start: int = 10  # chunks before sharpening starts
    sharpen_steps: int = 4  # chunks per layer
    surrogate: float | None = 0.0  # binary layers keep learning with this sharpness's slope
    eval_episodes: int = 20  # greedy episodes after each chunk (the best binary weights are kept)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "buffer", "chunk", "sharpen_steps", "eval_episodes"):
            positive_int(getattr(self, name), name)
        _bounds(self.env_id)
        if self.activation not in ("brelu", "relu") or (self.activation == "relu" and self.sharpen):
            raise ValueError(f"activation must be 'brelu', or 'relu' with sharpen=False; got {self.activation!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")


@dataclass
class DQNResult:
    """The trained Q-network (the best weights seen by the chunk evaluations; binary when sharpened) and
    what happened."""

    model: nn.Sequential
    history: list[dict] = field(default_factory=list)  # per chunk: step, epsilon, loss, sharpness, mean return
    seconds: float = 0.0
    binary: bool = False


def train_dqn(config: DQNConfig = DQNConfig(), progress: Callable[[dict], None] | None = None) -> DQNResult:
    """Train a Q-network on ``config.env_id``; ``progress`` gets each chunk's history row."""
    gym = _gymnasium()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    env = gym.make(config.env_id)
    dims, actions = env.observation_space.shape[0], int(env.action_space.n)
    model = q_network(dims, actions, config.hidden, config.activation)
    target = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sharpener = SimpleSharpener(config.sharpen_start, config.sharpen_steps) if config.sharpen else None
    if sharpener is not None:
        sharpener.on_train_begin(model)
        set_model_surrogate(model, config.surrogate)
    states = torch.zeros(config.buffer, dims)
    next_states = torch.zeros(config.buffer, dims)
    taken = torch.zeros(config.buffer, dtype=torch.long)
    rewards = torch.zeros(config.buffer)
    ends = torch.zeros(config.buffer)

    def scaled(observation: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(unit_observations(observation[None], config.env_id)[0])

    state = scaled(env.reset(seed=config.seed)[0])
    best: tuple[float, dict] | None = None
    result = DQNResult(model)
    started, losses = time.perf_counter(), []
    start_eps, end_eps, decay = config.epsilon
    for step in range(config.steps):
        epsilon = max(end_eps, start_eps + (end_eps - start_eps) * step / decay)
        if rng.random() < epsilon:
            action = int(rng.integers(actions))
        else:
            with torch.no_grad():
                action = int(model(state[None]).argmax())
        observation, reward, terminated, truncated, _ = env.step(action)
        following = scaled(observation)
        slot, stored = step % config.buffer, step + 1
        states[slot], next_states[slot], taken[slot] = state, following, action
        rewards[slot], ends[slot] = float(reward), float(terminated)  # a time limit is not an end of the task
        state = following
        if terminated or truncated:
            state = scaled(env.reset(seed=int(rng.integers(2**31)))[0])
        if stored >= config.learn_start:
            index = torch.from_numpy(rng.integers(min(stored, config.buffer), size=config.batch_size))
            with torch.no_grad():  # double DQN: the model picks the next action, the target network values it
                pick = model(next_states[index]).argmax(dim=1, keepdim=True)
                best_next = target(next_states[index]).gather(1, pick).squeeze(1)
                goal = rewards[index] + config.gamma * (1 - ends[index]) * best_next
            value = model(states[index]).gather(1, taken[index, None]).squeeze(1)
            loss = nn.functional.smooth_l1_loss(value, goal)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            losses.append(loss.detach())
        if (step + 1) % config.target_every == 0:
            target.load_state_dict(model.state_dict())
        if (step + 1) % config.chunk == 0:
            chunk = (step + 1) // config.chunk - 1
            mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
            losses = []
            if sharpener is not None:
                sharpener.on_epoch_end(chunk, mean_loss)
                target.load_state_dict(model.state_dict())  # the target network sharpens with the model
            binary = sharpener is None or sharpener.done
            returns = evaluate_policy(torch_policy(model), config.env_id, config.eval_episodes, seed=10_000 + chunk)
            row = {"step": step + 1, "epsilon": round(epsilon, 4), "loss": mean_loss, "mean_return": float(np.mean(returns)),
                   "sharpness": [round(layer.get_sharpness(), 4) for layer in (sharpener.layers if sharpener else [])]}  # fmt: skip
            result.history.append(row)
            if progress is not None:
                progress(row)
            if binary and (best is None or row["mean_return"] >= best[0]):
                best = (row["mean_return"], copy.deepcopy(model.state_dict()))
    env.close()
    if best is not None:
        model.load_state_dict(best[1])
    result.seconds = time.perf_counter() - started
    result.binary = sharpener is not None and sharpener.done
    return result


def torch_policy(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Greedy actions of a PyTorch Q-network for a batch of scaled observations."""

    def act(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.eval()(torch.from_numpy(observations)).argmax(dim=1).numpy()

    return act


def graph_policy(graph) -> Callable[[np.ndarray], np.ndarray]:
    """Greedy actions of a deployed Q-network (a membrane-readout :class:`SpikingGraph`), run in the
    reference simulator for a batch of scaled observations."""
    return lambda observations: simulate(graph, observations).predictions


def evaluate_policy(
    policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int = 0
) -> list[float]:
    """The return of each of ``episodes`` greedy episodes (seeds ``seed``, ``seed + 1``, ...), run side by
    side: each step, one call of ``policy`` on the scaled observations of the episodes still running."""
    gym = _gymnasium()
    envs = [gym.make(env_id) for _ in range(episodes)]
    observations = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        active = np.flatnonzero(running)
        chosen = policy(unit_observations(observations[active], env_id))
        for i, action in zip(active, chosen):
            observation, reward, terminated, truncated, _ = envs[i].step(int(action))
            observations[i] = observation
            returns[i] += reward
            running[i] = not (terminated or truncated)
    for env in envs:
        env.close()
    return returns.tolist()
