"""Solve the 1-D diffusion equation with a spiking random-walk circuit (whetstone.models.randomwalk).

Runs the circuit in the multi-step simulator for growing numbers of walkers, prints the largest error of
the estimated concentration against the analytic Gaussian, the spikes and synaptic events it took, and
writes a plot of the estimate beside the solution. Example:

    python examples/random_walk.py --steps 64 --sites 65 --out random_walk.png
"""

from __future__ import annotations

import sys
import time

import numpy as np

from whetstone.cli.flags import COUNT, OneLineParser, run_script
from whetstone.graph.simulator import ENERGY_PER_OP
from whetstone.models.randomwalk import DIFFUSION, analytic_solution, diffuse


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=COUNT, default=64, help="moves of each walker")
    parser.add_argument("--sites", type=COUNT, default=65, help="positions on the line")
    parser.add_argument("--walkers", type=COUNT, nargs="+", default=[100, 1000, 10000, 100000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="random_walk.png", help="where to write the plot")
    args = parser.parse_args()
    energy = ENERGY_PER_OP["int8"]
    print(f"D = {DIFFUSION} sites^2/step; error = max |estimate - Gaussian| after {args.steps} moves")
    print(f"{'walkers':>8} {'error':>8} {'error*sqrt(walkers)':>20} {'spikes/walker':>14} {'events/walker':>14} "
          f"{'energy/walker':>14} {'time':>7}")  # fmt: skip
    estimates = {}
    for walkers in args.walkers:
        start = time.perf_counter()
        estimate = diffuse(walkers, args.steps, args.sites, seed=args.seed)
        seconds = time.perf_counter() - start
        estimates[walkers] = estimate
        error = estimate.error(args.steps)
        nanojoules = estimate.synaptic_events * energy.add_pj / 1e3 / walkers
        print(f"{walkers:>8,} {error:>8.4f} {error * np.sqrt(walkers):>20.3f} {estimate.spikes / walkers:>14.0f} "
              f"{estimate.synaptic_events / walkers:>14,.0f} {nanojoules:>11.2f} nJ {seconds:>6.1f}s")  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    x = np.arange(args.sites) - args.sites // 2
    for moves in (args.steps // 4, args.steps):
        axis.plot(x, analytic_solution(args.sites, args.sites // 2, moves), "k-", lw=1)
        for walkers in (min(args.walkers), max(args.walkers)):
            axis.plot(x, estimates[walkers].density(moves), ".", label=f"t={moves}, {walkers:,} walkers")
    axis.set(xlabel="site - start", ylabel="C(x, t)", title="Spiking random walks vs the Gaussian solution (lines)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_script(main))
