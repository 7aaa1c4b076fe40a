"""No silent loss at a chip's precision: what integer weights cost is measured against the float network on
the same images, warned about past a point, and refused where it leaves the network at chance."""

from __future__ import annotations

import re
import warnings

import pytest

import whetstone as ws
from whetstone.graph.precision import PrecisionCost, PrecisionWarning, precision_cost


def test_a_network_at_chance_is_refused_with_the_measured_figure():
    with pytest.raises(ValueError, match=r"2-bit weights: 11.00% on 1,000 images, float 97.00% \(-86.00 points\): "
                                         "the quantized network is at chance"):  # fmt: skip
        PrecisionCost(2, 1000, 0.97, 0.11, 10).check()
    PrecisionCost(2, 1000, 0.12, 0.11, 10).check()  # a float network at chance too: nothing lost to the bits


def test_a_loss_past_one_point_is_warned_and_a_smaller_one_is_not():
    with pytest.warns(PrecisionWarning, match=r"4-bit weights: 95.50% .* \(-1.50 points\): more than 1 point lost"):
        PrecisionCost(4, 1000, 0.97, 0.955, 10).check()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PrecisionCost(8, 1000, 0.97, 0.965, 10).check()


def test_precision_cost_simulates_both_graphs_on_the_same_images(trained, mini_test):
    graph = ws.to_spiking_graph(trained, (1, 28, 28))
    images, labels = mini_test[0][:300].numpy(), mini_test[1][:300].numpy()
    floats = float((ws.simulate(graph, images.reshape(-1, 1, 28, 28)).predictions == labels).mean())
    cost = precision_cost(graph, ws.quantize(graph, 3), images, labels)
    assert cost.bits == 3 and cost.samples == 300 and cost.classes == 10 and cost.float_accuracy == floats
    coarse = ws.simulate(ws.quantize(graph, 3), images.reshape(-1, 1, 28, 28)).predictions
    assert cost.quantized_accuracy == float((coarse == labels).mean())
    with pytest.raises(ValueError, match="quantized must be a graph with integer weights"):
        precision_cost(graph, graph, images, labels)
    with pytest.raises(ValueError, match="images and labels must be equally many"):
        precision_cost(graph, ws.quantize(graph, 3), images, labels[:10])


def test_the_cli_prints_the_cost_of_the_weights_it_writes_and_simulates(tmp_path, capsys, monkeypatch):
    from whetstone.cli.main import main
    from whetstone.runs import report as run_report

    monkeypatch.setattr(run_report, "PRECISION_IMAGES", 300)  # the default 1,000 measures the same way, slower
    run = tmp_path / "run"
    assert main(["train", "--model", "mnist-conv-small", "--dataset", "mnist-mini", "--limit", "2000", "--epochs", "6", "--steps", "5",
                 "--no-progress", "--threads", "1", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["export", str(run), "--format", "nir", "--target", "loihi2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"8-bit weights: [\d.]+% on 300 images, float [\d.]+% \([+-][\d.]+ points\) \(mnist-mini test\)",
                     printed)  # fmt: skip
    assert main(["simulate", str(run), "--bits", "6", "--limit", "200", "--no-progress"]) == 0
    assert re.search(r"with float weights: [\d.]+% \(the 6-bit weights: [+-][\d.]+ points\)", capsys.readouterr().out)
    assert main(["fit", str(run), "--chip", "akida"]) in (0, 1)
    assert re.search(r"4-bit \(input layer 8-bit\) weights: [\d.]+% on 300 images", capsys.readouterr().out)


def test_the_weights_are_described_as_the_chip_holds_them(trained):
    from whetstone.graph.precision import describe_weights

    graph = ws.to_spiking_graph(trained, (1, 28, 28))
    assert describe_weights(ws.quantize(graph, 8)) == "8-bit"
    assert describe_weights(ws.quantize(graph, 4, encoder_bits=8)) == "4-bit (input layer 8-bit)"  # Akida's
