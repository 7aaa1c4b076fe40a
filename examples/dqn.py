"""A deep Q-network whose hidden layers are binary spikes, on CartPole-v1 (whetstone.models.rl; needs gymnasium).

For each seed: trains the binary agent and two twins (the same network never sharpened, and a plain-ReLU
agent), evaluates each greedy policy on the same 100 episodes, then exports the binary agent to NIR,
reads the file back and lets the reference simulator drive the environment from it. Example:

    python examples/dqn.py --seeds 0 1 2 --out-dir runs/dqn
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import whetstone as ws
from whetstone.cli.flags import COUNT, OneLineParser, run_script
from whetstone.export.nir import read_nir, write_nir
from whetstone.models.rl import DQNConfig, evaluate_policy, graph_policy, torch_policy, train_dqn

AGENTS = {"binary": {"sharpen": True}, "twin": {"sharpen": False}, "relu": {"sharpen": False, "activation": "relu"}}


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=COUNT, default=DQNConfig.steps, help="environment steps of training")
    parser.add_argument("--episodes", type=COUNT, default=100, help="greedy evaluation episodes")
    parser.add_argument("--agents", nargs="+", choices=tuple(AGENTS), default=list(AGENTS))
    parser.add_argument("--out-dir", default="runs/dqn", help="where the binary agents' NIR files go")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for agent in args.agents:
            config = DQNConfig(seed=seed, steps=args.steps, **AGENTS[agent])
            result = train_dqn(config)
            returns = evaluate_policy(torch_policy(result.model), config.env_id, args.episodes, seed=1_000_000)
            row = {"agent": agent, "seed": seed, "mean_return": float(np.mean(returns)), "std": float(np.std(returns)),
                   "binary": result.binary, "seconds": round(result.seconds, 1)}  # fmt: skip
            if agent == "binary":
                path = write_nir(ws.to_spiking_graph(result.model, (4,), readout="membrane"), out / f"q-seed{seed}.nir")
                deployed = evaluate_policy(graph_policy(read_nir(path)), config.env_id, args.episodes, seed=1_000_000)
                row["nir_mean_return"] = float(np.mean(deployed))
                row["nir_same_return"] = int(sum(a == b for a, b in zip(returns, deployed)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'agent':8} {'episodes':>8} {'mean return (seeds)':>40} {'from NIR, simulator':>22}")
    for agent in args.agents:
        mine = [row for row in rows if row["agent"] == agent]
        means = ", ".join(f"{row['mean_return']:.1f}" for row in mine)
        nir = ", ".join(
            f"{row['nir_mean_return']:.1f} ({row['nir_same_return']} same)" for row in mine if "nir_mean_return" in row
        )
        print(f"{agent:8} {args.episodes:>8} {np.mean([r['mean_return'] for r in mine]):>8.1f} ({means}) {nir:>22}")


if __name__ == "__main__":
    sys.exit(run_script(main))
