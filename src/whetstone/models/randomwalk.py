"""A spiking circuit that solves the 1-D diffusion equation ``dC/dt = D d2C/dx2`` by random walks.

Each walker is one spike moving on a line of ``sites`` positions. At every step two random input bits
``r1, r2`` pick its move: right when both are 1, left when both are 0, stay otherwise (a lazy walk:
variance 1/2 a step, so ``D = 1/4`` sites^2 per step). The circuit is threshold logic of integrate-and-fire
neurons whose membranes are cleared each step (``leak = 0``), every threshold 1:

- ``moves``, four neurons per site, one per way of arriving there: ``right_i = 1[p_i + r1 + r2 - 2 >= 1]``,
  ``left_i = 1[p_i - r1 - r2 >= 1]``, ``stay_i = 1[p_i + r1 - r2 - 1 >= 1]`` and
  ``1[p_i - r1 + r2 - 1 >= 1]``, where ``p_i`` is 1 where the walker is: the walker's starting site at
  the first step, and after it the sum of the move spikes of the previous step that land on site ``i``
  (a recurrent edge; exactly 0 or 1, as there is one walker);
- ``position``: ``p_i = 1[right_(i-1) + left_(i+1) + stay_i >= 1]``: where the walker is after this step.

The loop is one spiking layer with its recurrent synapses, the form NIR consumers run as a recurrent
layer. Walkers are independent, so they run as a batch through one circuit. The position spikes counted
over walkers after ``m`` moves estimate ``C(x, m)``; for a point source the analytic solution is the
Gaussian ``exp(-(x - x0)^2 / (4 D m)) / sqrt(4 pi D m)``. The random bits come from a seeded generator as
input spikes (a chip would use its own stochastic neurons or random source). Every sum is a small integer,
so every engine gives exactly these spikes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..graph.nodes import AffineNode, InputNode, SpikeNode, SpikingGraph
from ..graph.simulator import simulate
from ..utils.checks import int_at_least, positive_int

__all__ = ["DIFFUSION", "DiffusionEstimate", "analytic_solution", "diffuse", "random_walk_circuit", "walker_inputs"]

#: The diffusion coefficient of the circuit's lazy walk, in sites^2 per step.
DIFFUSION = 0.25


def random_walk_circuit(sites: int) -> SpikingGraph:
    """The circuit for a line of ``sites`` positions (walkers leaving it are lost: make it wide enough).
    Its input at each step is ``sites + 2`` values: the starting site (one-hot, first step only), then
    the two random bits."""
    int_at_least(sites, "sites", 2)
    f32 = np.float32
    # The move neurons: blocks [right, left, stay_a, stay_b] of ``sites``, each reading its own site.
    at_site = np.tile(np.eye(sites, dtype=f32), (4, 1))  # (4 sites, sites)
    from_inputs = np.zeros((4 * sites, sites + 2), f32)
    from_inputs[:, :sites] = at_site  # the starting site
    for block, bits in enumerate(((1, 1), (-1, -1), (1, -1), (-1, 1))):
        from_inputs[block * sites : (block + 1) * sites, sites:] = bits
    move_bias = np.repeat(np.array([-2, 0, -1, -1], f32), sites)
    # Where each move lands: site i gathers right_(i-1), left_(i+1), stay_a_i, stay_b_i.
    lands = np.zeros((sites, 4 * sites), f32)
    for i in range(sites):
        if i > 0:
            lands[i, i - 1] = 1
        if i < sites - 1:
            lands[i, sites + i + 1] = 1
        lands[i, 2 * sites + i] = lands[i, 3 * sites + i] = 1
    zeros, ones = (lambda n: np.zeros(n, f32)), (lambda n: np.ones(n, f32))
    nodes = [
        InputNode("input", [], (sites + 2,)),
        AffineNode("moves.input", ["input"], (4 * sites,), from_inputs, move_bias),
        AffineNode("moves.recurrent", ["moves"], (4 * sites,), at_site @ lands, zeros(4 * sites)),  # step t - 1
        SpikeNode("moves", ["moves.input", "moves.recurrent"], (4 * sites,), ones(4 * sites)),
        AffineNode("position.lands", ["moves"], (sites,), lands, zeros(sites)),
        SpikeNode("position", ["position.lands"], (sites,), ones(sites)),
    ]
    graph = SpikingGraph(nodes, "position", np.eye(sites, dtype=f32), {"circuit": "random walk", "sites": sites})
    graph.metadata["encoder"] = graph.encoder
    return graph


def walker_inputs(walkers: int, steps: int, sites: int, start: int, rng: np.random.Generator) -> np.ndarray:
    """The input spikes of ``walkers`` walkers over ``steps`` moves: (walkers, steps, sites + 2)."""
    inputs = np.zeros((walkers, steps, sites + 2), np.float32)
    inputs[:, 0, start] = 1.0
    inputs[:, :, sites:] = rng.integers(0, 2, size=(walkers, steps, 2))
    return inputs


@dataclass
class DiffusionEstimate:
    """Walker counts per site at each step and what the circuit did to get them."""

    counts: np.ndarray  # (steps, sites): walkers at each site after 1, 2, ..., steps moves
    walkers: int
    start: int
    spikes: int  # spikes of every neuron, all walkers, all steps
    synaptic_events: int  # synapses delivered (random inputs and spikes)

    def density(self, moves: int) -> np.ndarray:
        """The estimate of ``C(x, moves)`` (per site; sums to the fraction of walkers still on the line)."""
        if not 1 <= moves <= len(self.counts):
            raise ValueError(f"moves must be in 1..{len(self.counts)}, got {moves!r}")
        return self.counts[moves - 1] / self.walkers

    def error(self, moves: int) -> float:
        """Largest absolute difference between the estimate and :func:`analytic_solution` after ``moves``."""
        sites = self.counts.shape[1]
        return float(np.abs(self.density(moves) - analytic_solution(sites, self.start, moves)).max())


def analytic_solution(sites: int, start: int, time: int, diffusion: float = DIFFUSION) -> np.ndarray:
    """The Gaussian solution of ``dC/dt = D d2C/dx2`` from a unit point source at ``start`` after
    ``time`` steps, at each integer site."""
    if time < 1:
        raise ValueError(f"time must be >= 1 (the source is a point at time 0), got {time}")
    x = np.arange(sites) - start
    return np.exp(-(x**2) / (4 * diffusion * time)) / math.sqrt(4 * math.pi * diffusion * time)


def diffuse(walkers: int, steps: int, sites: int, seed: int = 0, chunk: int = 2000) -> DiffusionEstimate:
    """Run ``walkers`` walkers from the middle site for ``steps`` moves through the circuit (in chunks of
    ``chunk`` walkers) and count them per site after each move."""
    for name, value in (("walkers", walkers), ("steps", steps), ("chunk", chunk)):
        positive_int(value, name)
    graph = random_walk_circuit(sites)
    rng = np.random.default_rng(seed)
    start = sites // 2
    counts = np.zeros((steps, sites), np.int64)
    spikes = events = 0
    for lo in range(0, walkers, chunk):
        inputs = walker_inputs(min(chunk, walkers - lo), steps, sites, start, rng)
        result = simulate(graph, inputs, batch_size=chunk, record=("position",))
        counts += result.recorded["position"].sum(axis=0).astype(np.int64)
        spikes += sum(layer.spikes for layer in result.layers)
        events += sum(layer.events for layer in result.layers)
    return DiffusionEstimate(counts, walkers, start, spikes, events)
