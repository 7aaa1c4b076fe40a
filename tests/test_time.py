"""Time: the multi-step simulator (membranes carried, leak, recurrent edges one step late), the recurrent
spiking network checked step by step against PyTorch, and its NIR file (a cycle) read back and run in
snnTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import whetstone as ws
from whetstone.export.nir import read_nir, write_nir
from whetstone.graph.nodes import AffineNode, DeployError, InputNode, SpikeNode, SpikingGraph
from whetstone.nn.sharpen import set_model_sharpness
from whetstone.targets import export, verify

from conftest import assert_equal_where_decided, torch_threads


def _neuron_graph(weight: float, leak: float, recurrent: float | None = None) -> SpikingGraph:
    """One input driving one neuron of threshold 1 through ``weight``; optionally the neuron's own spikes
    back into it through ``recurrent`` (one step late)."""
    nodes = [InputNode("input", [], (1,)), AffineNode("drive", ["input"], (1,), np.array([[weight]], np.float32),
                                                       np.zeros(1, np.float32))]  # fmt: skip
    inputs = ["drive"]
    if recurrent is not None:
        nodes.append(AffineNode("self", ["neuron"], (1,), np.array([[recurrent]], np.float32), np.zeros(1, np.float32)))
        inputs.append("self")
    nodes.append(SpikeNode("neuron", inputs, (1,), np.ones(1, np.float32), leak))
    return SpikingGraph(nodes, "neuron", np.eye(1, dtype=np.float32))


def _spike_train(graph: SpikingGraph, sequence: list[float]) -> list[int]:
    inputs = np.array(sequence, np.float32).reshape(1, -1, 1)
    return ws.simulate(graph, inputs, record=("neuron",)).recorded["neuron"].ravel().astype(int).tolist()


def test_an_integrate_and_fire_neuron_carries_its_membrane_and_resets_on_a_spike():
    # 0.3 a step: 0.3, 0.6, 0.9, 1.2 -> spike, reset to 0, again (no sum lies within 0.09 of the threshold).
    assert _spike_train(_neuron_graph(0.3, leak=1.0), [1.0] * 8) == [0, 0, 0, 1, 0, 0, 0, 1]
    # leak 0.5: 0.3, 0.45, 0.525, ... tends to 0.6 and never reaches 1.
    assert _spike_train(_neuron_graph(0.3, leak=0.5), [1.0] * 8) == [0] * 8
    # leak 0 (Whetstone's neuron): each step alone decides.
    assert _spike_train(_neuron_graph(1.2, leak=0.0), [1.0, 0.0, 1.0, 0.5]) == [1, 0, 1, 0]


def test_a_recurrent_edge_is_read_one_step_late():
    # A neuron exciting itself holds a spike it got once; the pulse at step 1 shows at step 1, not earlier.
    latch = _neuron_graph(1.5, leak=0.0, recurrent=1.5)
    assert latch.is_temporal and latch.delayed_edges() == [("neuron", "self")]
    assert _spike_train(latch, [0.0, 1.0, 0.0, 0.0, 0.0]) == [0, 1, 1, 1, 1]
    # Inhibiting itself: it fires every other step under a steady input.
    assert _spike_train(_neuron_graph(1.5, leak=0.0, recurrent=-1.0), [1.0] * 6) == [1, 0, 1, 0, 1, 0]


def test_a_single_step_graph_is_the_same_network_at_every_step(trained, mini_test):
    graph = ws.to_spiking_graph(trained, (1, 28, 28))
    images = mini_test[0][:50].numpy()
    once = ws.simulate(graph, images)
    repeated = ws.simulate(graph, np.repeat(images[:, None], 3, axis=1))
    assert not graph.is_temporal and repeated.steps == 3
    np.testing.assert_array_equal(repeated.output_spikes, once.output_spikes)


def _sharp_rnn(seed: int, hidden: int = 24) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ws.create_model("rnn", hidden=hidden)
    with torch.no_grad():  # a livelier drive than at initialisation, and biases off the threshold (a blank
        # row would otherwise put every membrane exactly on it)
        model.features.recurrent.weight.mul_(4.0)
        model.features.encoder.weight.mul_(4.0)
        model.features.encoder.bias.add_(0.3 * torch.randn(hidden))
        model.features.output.bias.add_(0.3 * torch.randn(model.features.output.out_features))
    set_model_sharpness(model, 1.0)
    return model.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_simulator_runs_the_recurrent_network_as_pytorch_does_step_by_step(seed, mini_test):
    model = _sharp_rnn(seed)
    graph = ws.to_spiking_graph(model, (1, 28, 28))
    assert graph.is_temporal and graph.metadata["steps"] == 28
    assert graph.delayed_edges() == [("features.hidden", "features.recurrent")]
    images = mini_test[0][:200]
    with torch_threads(1), torch.no_grad():
        spikes = model.features(images).numpy()
        hidden = []  # PyTorch's hidden spikes at every step, to compare the whole trace
        h = torch.zeros(len(images), 24)
        for row in images.reshape(len(images), 28, 28).unbind(1):
            h = model.features.hidden(model.features.encoder(row) + model.features.recurrent(h))
            hidden.append(h.numpy())
    result = ws.simulate(graph, images.numpy(), record=("features.hidden",))
    assert result.steps == 28 and result.recorded["features.hidden"].shape == (200, 28, 24)
    assert_equal_where_decided(spikes, result.output_spikes, result)
    assert_equal_where_decided(np.stack(hidden, 1).reshape(200, -1),
                               result.recorded["features.hidden"].reshape(200, -1), result)  # fmt: skip
    assert len(np.unique(result.recorded["features.hidden"].reshape(200, -1), axis=0)) > 100  # not a constant


def test_a_recurrent_graph_written_to_nir_reads_back_and_runs_in_snntorch(mini_test, tmp_path):
    model = _sharp_rnn(0)
    graph = ws.to_spiking_graph(model, (1, 28, 28))
    images = mini_test[0][:100].numpy()
    path = write_nir(graph, tmp_path / "rnn.nir")
    back = read_nir(path)
    assert back.delayed_edges() == graph.delayed_edges() and int(back.metadata["steps"]) == 28
    assert [n.leak for n in back.spiking_nodes()] == [0.0, 0.0]
    reference = ws.simulate(graph, images)
    np.testing.assert_array_equal(ws.simulate(back, images).output_spikes, reference.output_spikes)
    pytest.importorskip("snntorch", reason="consumer 'snntorch' is not installed (pip install snntorch)")
    export(graph, tmp_path / "s.nir", "snntorch")
    result = verify(tmp_path / "s.nir", "snntorch", images)
    assert result.decided >= 90 and result.decided_spikes_equal == result.decided


def test_a_recurrent_graph_is_refused_where_whetstone_does_not_write_time(tmp_path):
    graph = ws.to_spiking_graph(_sharp_rnn(0), (1, 28, 28))
    with pytest.raises(DeployError, match="--target speck: the graph runs in time"):
        export(graph, tmp_path / "m.nir", "speck")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="inputs must have shape \\(N, T, 28\\) or hold 28 step"):
        ws.simulate(graph, np.zeros((2, 3, 32, 32), np.float32))


def test_an_unsharpened_recurrent_layer_is_named():
    model = ws.create_model("rnn", hidden=8)
    with pytest.raises(DeployError, match="hidden: not binary"):
        ws.to_spiking_graph(model, (1, 28, 28))


def test_the_rnn_trains_binary_from_the_command_line_then_simulates_and_verifies_in_snntorch(tmp_path, capsys):
    from whetstone.cli.main import main

    out = tmp_path / "rnn"
    code = main(["train", "--model", "rnn", "--dataset", "mnist-mini", "--limit", "1000", "--epochs", "3", "--steps", "4",
                 "--model-option", "hidden=32", "--out", str(out), "--no-progress", "--threads", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "fully binary" in printed, printed
    assert main(["simulate", str(out), "--limit", "200", "--plot"]) == 0
    printed = capsys.readouterr().out
    assert "features.hidden" in printed  # the per-layer report of the recurrent layer
    assert f"spike plot: {out / 'spikes.png'}" in printed and (out / "spikes.png").stat().st_size > 0  # over time
    pytest.importorskip("snntorch", reason="consumer 'snntorch' is not installed (pip install snntorch)")
    code = main(["export", str(out), "--format", "nir", "--target", "snntorch", "--verify", "--limit", "100",
                 "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "snnTorch: the same class as the simulator on 100 of 100 images" in printed, printed


def test_event_digits_emit_on_and_off_events_where_brightness_changes_and_tonic_bins_them():
    """A bright square moved one pixel right emits ON events along its new leading edge and OFF along the
    edge it left, nothing where it stays bright or dark; a blank image emits nothing. Tonic's bins equal
    counting the events per window directly."""
    pytest.importorskip("tonic", reason="tonic is not installed (pip install tonic)")
    from whetstone.data.events import BORDER, event_frames, saccade_events

    square = np.zeros((2, 8, 8), np.uint8)
    square[0, 2:6, 2:6] = 255  # the second image stays blank
    moving, blank = saccade_events(square, steps_per_saccade=4, step_us=1000)
    assert len(blank) == 0
    first = moving[moving["t"] < 1000]  # the first step: one pixel right and no pixel down ((4, 2) / 4 -> (1, 0))
    on, off = first[first["p"] == 1], first[first["p"] == 0]
    assert set(on["x"]) == {BORDER + 6} and set(off["x"]) == {BORDER + 2}
    assert sorted(on["y"]) == sorted(off["y"]) == list(range(BORDER + 2, BORDER + 6))
    assert np.all(np.diff(moving["t"]) >= 0) and moving["t"].max() < 12 * 1000  # 3 saccades of 4 steps
    side = 8 + 2 * BORDER + 4
    frames = event_frames([moving, blank], (side, side), bins=4, duration_us=12_000)
    assert frames.shape == (2, 4, 2, side, side) and not frames[1].any()
    direct = np.zeros((4, 2, side, side), np.uint8)
    direct[moving["t"] // 3000, moving["p"], moving["y"], moving["x"]] = 1
    np.testing.assert_array_equal(frames[0], direct)


def test_a_temporal_binary_network_trains_on_event_digits_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("tonic", reason="tonic is not installed (pip install tonic)")
    from whetstone.cli.main import main

    out = tmp_path / "events"
    code = main(["train", "--model", "rnn", "--dataset", "whetstone.data.events:saccade_digits", "--epochs", "6",
                 "--start-epoch", "1", "--steps", "1", "--limit", "1000", "--no-progress", "--threads", "1",
                 "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "fully binary: every spiking unit" in printed, printed
    assert float(printed.split("final test accuracy: ")[1].split("%")[0]) > 60  # 10 classes: chance is 10%
    assert main(["simulate", str(out), "--limit", "200", "--no-progress"]) == 0  # run step by step, 8 time bins
    assert "same class as the simulator on 200 of 200" in capsys.readouterr().out
