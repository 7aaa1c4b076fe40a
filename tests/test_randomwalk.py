"""The random-walk diffusion circuit: each walker's spike moves as its random bits say, the counts
approach the diffusion equation's solution, and the circuit's NIR file runs alike in snnTorch."""

from __future__ import annotations

import numpy as np
import pytest

import whetstone as ws
from whetstone.export.nir import read_nir
from whetstone.models.randomwalk import analytic_solution, diffuse, random_walk_circuit, walker_inputs
from whetstone.targets import export, verify


def test_each_walker_is_one_spike_that_moves_as_its_random_bits_say():
    sites, steps = 21, 12
    inputs = walker_inputs(300, steps, sites, start=10, rng=np.random.default_rng(1))
    trace = ws.simulate(random_walk_circuit(sites), inputs, record=("position",)).recorded["position"]
    assert (trace.sum(axis=2) == 1).all()  # one position spike per walker and step: never lost, never doubled
    position = np.concatenate([np.full((300, 1), 10), trace.argmax(axis=2)], axis=1)
    r1, r2 = inputs[:, :, sites], inputs[:, :, sites + 1]
    np.testing.assert_array_equal(np.diff(position, axis=1), r1 * r2 - (1 - r1) * (1 - r2))


def test_the_counts_approach_the_solution_of_the_diffusion_equation():
    sites, steps = 41, 21
    exact = np.zeros(sites)
    exact[sites // 2] = 1.0
    for _ in range(steps):  # the lazy walk's distribution: convolve with (1/4, 1/2, 1/4) each move
        exact = np.convolve(exact, [0.25, 0.5, 0.25], mode="same")
    few, many = diffuse(200, steps, sites, seed=0), diffuse(8000, steps, sites, seed=0)
    error_few, error_many = (np.abs(e.density(steps) - exact).max() for e in (few, many))
    assert error_many < 0.02 and error_many < error_few / 2  # about 1 / sqrt(walkers)
    np.testing.assert_allclose(analytic_solution(sites, sites // 2, steps), exact, atol=2e-3)
    assert many.spikes == 8000 * 2 * steps  # one move spike and one position spike a step


def test_the_circuit_written_to_nir_runs_alike_in_snntorch(tmp_path):
    sites = 15
    graph = random_walk_circuit(sites)
    inputs = walker_inputs(100, 8, sites, start=7, rng=np.random.default_rng(0))
    reference = ws.simulate(graph, inputs)
    path = export(graph, tmp_path / "walk.nir", "generic")
    np.testing.assert_array_equal(ws.simulate(read_nir(path), inputs).output_spikes, reference.output_spikes)
    pytest.importorskip("snntorch", reason="consumer 'snntorch' is not installed (pip install snntorch)")
    export(graph, tmp_path / "walk-snntorch.nir", "snntorch")
    result = verify(tmp_path / "walk-snntorch.nir", "snntorch", inputs)
    assert result.spikes_equal == 100


def test_bad_circuit_settings_are_named():
    with pytest.raises(ValueError, match="sites must be an integer >= 2, got 1"):
        random_walk_circuit(1)
    with pytest.raises(ValueError, match="walkers must be a positive integer, got 0"):
        diffuse(0, 5, 9)
