"""Deployment: graph extraction, the reference simulator, NIR / ONNX export and their agreement."""

import copy
import json
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import whetstone as ws
from whetstone.cli.main import main
from whetstone.convert.graph_builder import to_spiking_graph
from whetstone.graph.nodes import WEIGHTED_NODES, AffineNode, DeployError, InputNode, SpikeNode
from whetstone.graph.quantization import quantize
from whetstone.graph.simulator import simulate

from conftest import assert_equal_where_decided, tiny_conv_bn


def _optional(module: str):
    """Import an optional dependency or skip visibly, naming it."""
    return pytest.importorskip(
        module, reason=f"optional dependency {module!r} is not installed (pip install -e '.[export]')"
    )


def _torch_outputs(model, x):
    with torch.no_grad():
        return model.features(x).numpy(), model(x).argmax(1).numpy()


def test_graph_of_conv_bn_model_folds_bn_and_names_the_encoder(trained):
    graph = to_spiking_graph(trained, (1, 28, 28))
    ops = [n.op for n in graph.nodes]
    assert ops == [
        "input",
        "conv2d",
        "spike",
        "maxpool2d",
        "conv2d",
        "spike",
        "flatten",
        "affine",
        "spike",
        "affine",
        "spike",
    ]
    assert graph.encoder == "features.0"
    assert graph.output == graph.nodes[-1].name and graph.key.shape == (10, 40)


@pytest.mark.parametrize("fixture", ["trained", "trained_residual"])
def test_simulator_reproduces_pytorch_spikes_exactly(fixture, request, mini_test):
    model = request.getfixturevalue(fixture)
    x, labels = mini_test
    spikes, predictions = _torch_outputs(model, x)
    result = simulate(to_spiking_graph(model, (1, 28, 28)), x.numpy(), batch_size=128)
    assert_equal_where_decided(result.output_spikes, spikes, result)
    assert_equal_where_decided(result.predictions, predictions, result)
    assert result.accuracy(labels.numpy()) > 0.5  # it learned something, so agreement is not vacuous


def test_simulator_counts_events_and_energy():
    model = ws.SpikingClassifier(nn.Sequential(nn.Linear(4, 3), ws.SpikingBReLU(1.0), nn.Linear(3, 2), ws.SpikingBReLU(1.0)),
                                 torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # fmt: skip
    with torch.no_grad():
        model.features[0].weight.copy_(torch.eye(3, 4))
        model.features[0].bias.zero_()
        model.features[2].weight.fill_(1.0)
        model.features[2].bias.zero_()
    graph = to_spiking_graph(model, (4,))
    x = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0]], np.float32)
    result = simulate(graph, x)
    by_name = {s.name: s for s in result.layers}
    assert by_name["features.0"].events == 4 * 3  # four non-zero pixels, fan-out 3
    assert by_name["features.1"].spikes == 3  # 1 + 2 + 0 hidden spikes
    assert by_name["features.2"].events == 3 * 2  # each hidden spike reaches 2 outputs
    assert by_name["features.2"].dense_macs == 3 * 6
    encoder, synops, dense = result.synaptic_ops()
    assert (encoder, synops, dense) == (4.0, 2.0, 12 + 6)
    snn, ann = result.energy("fp32")
    assert snn == pytest.approx((4.0 * 4.6 + 2.0 * 0.9) / 1e3) and ann == pytest.approx(18 * 4.6 / 1e3)
    assert "synaptic events" in result.report()
    with pytest.raises(ValueError, match="arithmetic"):
        result.energy("fp64")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), hidden=st.lists(st.integers(1, 12), max_size=3), batch=st.integers(1, 9))
def test_simulator_matches_torch_on_random_integer_networks(seed, hidden, batch):
    # Integer weights and half-integer inputs make every sum exact, so any difference is a bug.
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    widths = [5, *hidden, 4]
    for n_in, n_out in pairwise(widths):
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.copy_(torch.randint(-3, 4, (n_out, n_in), generator=generator).float())
            linear.bias.copy_(torch.randint(-2, 3, (n_out,), generator=generator).float())
        layers += [linear, ws.SpikingBReLU(1.0)]
    model = ws.SpikingClassifier(nn.Sequential(*layers), torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]))
    x = torch.randint(0, 3, (batch, 5), generator=generator).float() / 2
    result = simulate(to_spiking_graph(model, (5,)), x.numpy())
    np.testing.assert_array_equal(result.output_spikes, model.features(x).detach().numpy())
    np.testing.assert_array_equal(result.predictions, model.predict(x).numpy())


def test_refuses_unsharpened_layer_by_name(trained):
    model = tiny_conv_bn()
    with pytest.raises(DeployError, match=r"features\.2.*sharpness 0"):
        to_spiking_graph(model, (1, 28, 28))


def test_refuses_what_is_not_integrate_and_fire():
    features = nn.Sequential(nn.Linear(4, 8), ws.SpikingBReLU(1.0), nn.GELU())
    model = ws.SpikingClassifier(nn.Sequential(nn.Linear(4, 8), ws.SpikingBReLU(1.0)), torch.eye(2, 8).clamp(0, 1))
    pooled = ws.SpikingClassifier(
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), ws.SpikingBReLU(1.0), nn.AvgPool2d(2), nn.Flatten()),
        torch.eye(2, 8),
    )
    with pytest.raises(DeployError, match=r"features\.2.*not binary"):  # names the pooling, not the flatten
        to_spiking_graph(pooled, (1, 4, 4))
    with pytest.raises(DeployError, match="features.2: GELU has no single-time-step"):
        to_spiking_graph(ws.SpikingClassifier(features, torch.eye(2, 8)), (4,))
    assert to_spiking_graph(model, (4,)).output == "features.1"


def test_average_pooling_feeding_a_spiking_layer_is_exported(mini_test):
    x, _ = mini_test
    model = ws.SpikingClassifier(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            ws.SpikingBReLU(1.0),
            nn.AvgPool2d(2),
            ws.SpikingBReLU(1.0),
            nn.Flatten(),
            nn.Linear(4 * 14 * 14, 20),
            ws.SpikingBReLU(1.0),
        ),
        ws.key_generator(10, 20, overlapping=False),
    ).eval()
    graph = to_spiking_graph(model, (1, 28, 28))
    pool, spike = graph.node("features.2"), graph.node("features.3")
    assert pool.op == "sumpool2d" and np.all(spike.threshold == 0.5 * 4)  # sum pooling, the threshold times the window
    result = simulate(graph, x[:100].numpy())
    assert_equal_where_decided(result.output_spikes, model.features(x[:100]).detach().numpy(), result)


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AdaptiveAvgPool2d((7, 7))], ids=["avg", "adaptive-even"])
def test_average_pooling_before_synapses_folds_into_their_weights(pool):
    torch.manual_seed(0)
    model = ws.SpikingClassifier(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ws.SpikingBReLU(1.0), pool, nn.Conv2d(4, 6, 3, padding=1),
                      ws.SpikingBReLU(1.0), nn.Flatten(), nn.Linear(6 * 7 * 7, 20), ws.SpikingBReLU(1.0)),
        ws.key_generator(10, 20, overlapping=False),
    ).double().eval()  # fmt: skip
    graph = to_spiking_graph(copy.deepcopy(model).float(), (1, 14, 14))
    assert [n.op for n in graph.nodes][3:5] == ["sumpool2d", "conv2d"]
    expected_weight = model.features[3].weight.detach().float().numpy() / 4
    np.testing.assert_allclose(graph.node("features.3").weight, expected_weight, rtol=1e-6)
    x = torch.rand(50, 1, 14, 14, dtype=torch.float64)
    result = simulate(graph, x.float().numpy())
    expected = model.features(x).detach().numpy()
    assert_equal_where_decided(result.output_spikes, expected, result, tolerance=1e-9, min_decided=1.0)


def test_uneven_adaptive_pooling_folds_into_a_linear_and_is_refused_before_a_conv():
    torch.manual_seed(0)
    into_linear = ws.SpikingClassifier(
        nn.Sequential(nn.Conv2d(1, 4, 3), ws.SpikingBReLU(1.0), nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(),
                      nn.Linear(16, 20), ws.SpikingBReLU(1.0)),
        ws.key_generator(10, 20, overlapping=False),
    ).double().eval()  # 3x3 -> 2x2: overlapping windows of 2x2  # fmt: skip
    graph = to_spiking_graph(copy.deepcopy(into_linear).float(), (1, 5, 5))
    assert graph.node("features.4").weight.shape == (20, 4 * 3 * 3)  # reads the 3x3 spikes directly
    x = torch.rand(64, 1, 5, 5, dtype=torch.float64)
    result = simulate(graph, x.float().numpy())
    expected = into_linear.features(x).detach().numpy()
    assert_equal_where_decided(result.output_spikes, expected, result, tolerance=1e-9, min_decided=1.0)
    into_conv = nn.Sequential(nn.Conv2d(1, 4, 3), ws.SpikingBReLU(1.0), nn.AdaptiveAvgPool2d((2, 2)), nn.Conv2d(4, 4, 1),
                              ws.SpikingBReLU(1.0), nn.Flatten())  # fmt: skip
    with pytest.raises(DeployError, match="features.3: receives adaptive average pooling with uneven windows"):
        to_spiking_graph(ws.SpikingClassifier(into_conv, ws.key_generator(2, 16, overlapping=False)), (1, 5, 5))


def test_quantize_gives_integer_weights_and_keeps_most_predictions(trained, mini_test):
    x, labels = mini_test
    graph = to_spiking_graph(trained, (1, 28, 28))
    q = quantize(graph, bits=4)
    for node in q.nodes:
        if isinstance(node, WEIGHTED_NODES):
            w = node.weight
            assert np.all(w == np.round(w)) and np.abs(w).max() == 7
            # Integers; the encoder's in steps of 1/255 (its sums' step), with half a step of margin for ties.
            bias = node.bias.astype(np.float64) * 255 - 0.5 if node.name == q.encoder else node.bias
            assert np.allclose(bias, np.round(bias), atol=1e-2 if node.name == q.encoder else 1e-4)
    reference = simulate(graph, x.numpy())
    int8 = simulate(quantize(graph, 8), x.numpy())
    assert abs(reference.accuracy(labels.numpy()) - int8.accuracy(labels.numpy())) < 0.05
    # Finer integers approach the float network: nearly every prediction the same at 12 bits.
    assert (simulate(quantize(graph, 12), x.numpy()).predictions == reference.predictions).mean() >= 0.95
    with pytest.raises(ValueError, match="bits"):
        quantize(graph, bits=1)


def test_quantize_a_residual_graph_keeps_every_synapse_within_the_bits(trained_residual, mini_test):
    """A skip connection of spikes becomes explicit synapses that count among the layer's weights: every
    synapse, skip ones included, fits the bits, and the integer network keeps the float one's classes."""
    x, _ = mini_test
    graph = to_spiking_graph(trained_residual, (1, 28, 28))
    q = quantize(graph, bits=8)
    weighted = [node for node in q.nodes if isinstance(node, WEIGHTED_NODES)]
    assert len(weighted) > len([n for n in graph.nodes if isinstance(n, WEIGHTED_NODES)])  # the skip synapses
    for node in weighted:
        assert np.all(node.weight == np.round(node.weight)) and np.abs(node.weight).max() <= 127, node.name
    reference = simulate(graph, x.numpy())  # this tiny net: 81.5% of classes kept at 8 bits, 97.3% at 12
    assert (simulate(q, x.numpy()).predictions == reference.predictions).mean() >= 0.75
    assert (simulate(quantize(graph, 12), x.numpy()).predictions == reference.predictions).mean() >= 0.95


def test_max_pooling_of_potentials_before_a_spike_is_exported_as_spike_then_pool(mini_test):
    """conv - bn - maxpool - spike (how cifar-conv-bn's pool_first=True trains) is exactly conv - spike - OR."""
    x, _ = mini_test
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    nn.init.normal_(bn.weight)  # some negative scales: folding must still happen before the pool
    nn.init.normal_(bn.running_mean, 0, 0.3)
    model = ws.SpikingClassifier(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            bn,
            nn.MaxPool2d(2),
            ws.SpikingBReLU(1.0),
            nn.Flatten(),
            nn.Linear(4 * 14 * 14, 20),
            ws.SpikingBReLU(1.0),
        ),
        ws.key_generator(10, 20, overlapping=False),
    ).eval()
    graph = to_spiking_graph(model, (1, 28, 28))
    assert [n.op for n in graph.nodes][:4] == ["input", "conv2d", "spike", "maxpool2d"]
    assert graph.nodes[2].shape == (4, 28, 28) and graph.nodes[3].shape == (4, 14, 14)
    with torch.no_grad():
        pooled = model.features[:4](x[:100])
    assert 0.05 < pooled.mean() < 0.95  # the check below is not vacuous
    result = simulate(graph, x[:100].numpy())
    assert_equal_where_decided(result.output_spikes, model.features(x[:100]).detach().numpy(), result)

    not_spiked = ws.SpikingClassifier(
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Flatten()), torch.eye(2, 8)
    )
    with pytest.raises(DeployError, match=r"max pooling 'features.1'.*not binary"):
        to_spiking_graph(not_spiked, (1, 4, 4))


def test_onnx_runtime_agrees_with_pytorch(trained, trained_residual, mini_test, tmp_path):
    _optional("onnx")
    ort = _optional("onnxruntime")
    from whetstone.export.onnx import write_onnx

    x, _ = mini_test
    spikes, predictions = _torch_outputs(trained_residual, x)
    graph = to_spiking_graph(trained_residual, (1, 28, 28))
    session = ort.InferenceSession(str(write_onnx(graph, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    out_spikes, logits, label = session.run(["spikes", "logits", "label"], {"input": x.numpy()})
    result = simulate(graph, x.numpy())
    assert_equal_where_decided(out_spikes, spikes, result)
    assert_equal_where_decided(label, predictions, result)
    assert_equal_where_decided(logits, trained_residual(x).detach().numpy(), result)
    # Integer weights sum exactly in every engine: the quantized graph agrees on every sample, ties included.
    quantized = quantize(to_spiking_graph(trained, (1, 28, 28)), 8)
    session = ort.InferenceSession(str(write_onnx(quantized, tmp_path / "q.onnx")), providers=["CPUExecutionProvider"])
    out_spikes, label = session.run(["spikes", "label"], {"input": x.numpy()})
    reference = simulate(quantized, x.numpy())
    np.testing.assert_array_equal(out_spikes, reference.output_spikes)
    np.testing.assert_array_equal(label, reference.predictions)


def test_nir_round_trip_and_simulation(trained_residual, mini_test, tmp_path):
    _optional("nir")
    from whetstone.export.nir import read_nir, write_nir

    x, _ = mini_test
    graph = to_spiking_graph(trained_residual, (1, 28, 28))
    back = read_nir(write_nir(graph, tmp_path / "m.nir"))
    np.testing.assert_array_equal(back.key, graph.key)
    assert back.encoder == graph.encoder == "features.0"  # one naming: restored from each node's metadata
    assert "node 'features_0' is the encoder" in back.metadata["encoder"]  # the file's own node name
    assert {n.name for n in back.nodes} >= {n.name for n in graph.nodes}
    np.testing.assert_array_equal(simulate(back, x.numpy()).output_spikes, simulate(graph, x.numpy()).output_spikes)


def test_read_nir_refuses_a_file_with_two_inputs_and_eval_a_model_with_nan_weights(tmp_path):
    nir = _optional("nir")
    from whetstone.export.nir import read_nir, write_nir

    model = ws.SpikingClassifier(nn.Sequential(nn.Linear(4, 6), ws.SpikingBReLU(1.0)), ws.key_generator(2, 6)).eval()
    path = write_nir(to_spiking_graph(model, (4,)), tmp_path / "one.nir")
    source = nir.read(path)
    first = next(name for name, node in source.nodes.items() if isinstance(node, nir.Input))
    affine = next(name for name, node in source.nodes.items() if isinstance(node, nir.Affine))
    source.nodes["second"] = nir.Input(input_type={"input": np.array([4])})
    source.edges.append(("second", affine))
    nir.write(tmp_path / "two.nir", source)
    with pytest.raises(ValueError, match=rf"two.nir: a graph has exactly one input node, this one has 2: .*'{first}'"):
        read_nir(tmp_path / "two.nir")
    # NaN weights make every unit silent, which is 0/1: not "fully binary" all the same
    loader = ws.TensorLoader(torch.zeros(8, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), 4)
    assert ws.is_fully_binary(model, ws.binary_report(model, loader))
    with torch.no_grad():
        model.features[0].weight[0, 0] = float("nan")
    assert not ws.is_fully_binary(model, ws.binary_report(model, loader))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda n: setattr(n, "stride", np.array([0, 0])), r"node 'features_0' \(Conv2d\): stride is \[0, 0\]; it must be integers >= 1"),
        (lambda n: setattr(n, "dilation", np.array([1, -2])), r"'features_0' \(Conv2d\): dilation is \[1, -2\]; it must be integers >= 1"),
        (lambda n: setattr(n, "padding", np.array([0.5, 0])), r"'features_0' \(Conv2d\): padding is \[0.5, 0.0\]; it must be integers >= 0"),
        (lambda n: setattr(n, "weight", np.concatenate([n.weight, n.weight], axis=1)), "'features.0': its weight takes 2 channels but receives \\(1, 6, 6\\)"),
        (lambda n: setattr(n, "bias", n.bias[:1]), r"'features.0': weight \(4, 1, 3, 3\), bias \(1,\), groups 1: not a"),
    ],
    ids=["stride-0", "dilation-negative", "padding-fractional", "weight-of-another-width", "bias-of-another-length"],
)  # fmt: skip
def test_read_nir_names_the_node_of_a_crafted_file(tmp_path, change, message):
    nir = _optional("nir")
    from whetstone.export.nir import read_nir, write_nir

    model = ws.SpikingClassifier(nn.Sequential(nn.Conv2d(1, 4, 3), ws.SpikingBReLU(1.0), nn.Flatten(), nn.Linear(64, 20),
                                               ws.SpikingBReLU(1.0)), ws.key_generator(2, 20)).eval()  # fmt: skip
    source = nir.read(write_nir(to_spiking_graph(model, (1, 6, 6)), tmp_path / "m.nir"))
    conv = next(node for node in source.nodes.values() if isinstance(node, nir.Conv2d))
    change(conv)  # nir's own reader refuses some of these, whetstone's graph check the rest
    nir.write(tmp_path / "crafted.nir", source)
    with pytest.raises(ValueError, match=message) as info:
        read_nir(tmp_path / "crafted.nir")
    assert str(info.value).startswith(str(tmp_path / "crafted.nir")) and "\n" not in str(info.value)


def test_read_nir_names_a_neuron_of_the_wrong_length_and_a_type_nir_lacks(tmp_path):
    nir = _optional("nir")
    import h5py

    from whetstone.export.nir import read_nir, write_nir

    model = ws.SpikingClassifier(nn.Sequential(nn.Linear(4, 6), ws.SpikingBReLU(1.0)), ws.key_generator(2, 6)).eval()
    path = write_nir(to_spiking_graph(model, (4,)), tmp_path / "m.nir")
    for length, message in ((3, "v_threshold has shape \\(3,\\), but the layer before it gives \\(6,\\)"),
                            (2, "must have the same shape \\(r \\(6,\\), v_reset \\(6,\\), v_threshold \\(2,\\)\\)")):  # fmt: skip
        source = nir.read(path)
        neuron = next(node for node in source.nodes.values() if isinstance(node, nir.IF))
        neuron.v_threshold = np.ones(length, np.float32)  # 3: every field as long, NIR reads it; 2: NIR refuses
        if length == 3:
            neuron.r, neuron.v_reset = np.ones(3, np.float32), np.zeros(3, np.float32)
        nir.write(tmp_path / "short.nir", source)
        with pytest.raises(ValueError, match="node 'features_1' \\(IF\\)(:| is malformed:) .*" + message):
            read_nir(tmp_path / "short.nir")
    with h5py.File(path, "r+") as file:  # a node type no NIR version defines
        del file["node/nodes/features_0/type"]
        file["node/nodes/features_0/type"] = "Wormhole"
    with pytest.raises(ValueError, match="node 'features_0' has type 'Wormhole', which is not a NIR node type$"):
        read_nir(path)


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "whetstone_key",
            np.eye(2, 19, dtype=np.float32),
            "the decoder key has 19 columns but the output 'features.4' has 20",
        ),
        ("steps", "abc", "metadata 'steps' is 'abc'; it must be an integer >= 1"),
        ("quantized_bits", 99, "metadata 'quantized_bits' is 99; it must be an integer in \\[2, 16\\]"),
        ("layout", "nhwc", "metadata 'layout' is 'nhwc'; it must be 'chw' or 'hwc'"),
        ("whetstone_target", np.ones(3), "metadata 'whetstone_target' is array"),
    ],
    ids=["key-narrower-than-the-output", "steps", "bits", "layout", "target"],
)
def test_read_nir_names_the_metadata_field_that_is_wrong(tmp_path, field, value, message):
    nir = _optional("nir")
    from whetstone.export.nir import read_nir, write_nir

    model = ws.SpikingClassifier(nn.Sequential(nn.Conv2d(1, 4, 3), ws.SpikingBReLU(1.0), nn.Flatten(), nn.Linear(64, 20),
                                               ws.SpikingBReLU(1.0)), ws.key_generator(2, 20)).eval()  # fmt: skip
    source = nir.read(write_nir(to_spiking_graph(model, (1, 6, 6)), tmp_path / "m.nir"))
    source.metadata[field] = value
    nir.write(tmp_path / "crafted.nir", source)
    with pytest.raises(ValueError, match=message) as info:
        read_nir(tmp_path / "crafted.nir")
    assert str(info.value).startswith(str(tmp_path / "crafted.nir")) and "\n" not in str(info.value)


def test_cli_export_and_simulate(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "mnist-dense", "--dataset", "mnist-mini", "--out", str(run), "--epochs", "4",
            "--start-epoch", "0", "--steps", "1", "--limit", "600", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert main(["simulate", str(run), "--limit", "300", "--no-progress", "--json", str(tmp_path / "s.json")]) == 0
    figures = json.loads((tmp_path / "s.json").read_text())
    assert figures["agreement_with_torch"] == 1.0 and figures["samples"] == 300
    assert figures["synaptic_events"] > 0 and figures["energy_nj"] < figures["dense_energy_nj"]
    assert "synaptic events" in capsys.readouterr().out
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "nope" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    try:
        import nir  # noqa: F401
    except ImportError:
        pytest.skip("optional dependency 'nir' is not installed: NIR export part of the CLI test not run")
    assert main(["export", str(run), "--format", "nir", "--out", str(tmp_path / "m.nir"), "--bits", "8"]) == 0
    assert (
        main(["simulate", str(tmp_path / "m.nir"), "--dataset", "mnist-mini", "--limit", "100", "--no-progress"]) == 0
    )
    assert "simulated accuracy" in capsys.readouterr().out


def test_a_membrane_readout_deploys_the_linear_output_layer_as_scores(tmp_path, mini_test):
    """A network ending in a Linear (a Q-network's action values) reads its output layer's potentials."""
    from whetstone.export.nir import read_nir, write_nir

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), ws.SpikingBReLU(sharpness=1.0), nn.Linear(32, 4)).eval()
    images = mini_test[0][:100]
    graph = ws.to_spiking_graph(model, (1, 28, 28), readout="membrane")
    assert graph.readout == "membrane" and graph.output == "3" and graph.key.shape == (4, 4)
    result = ws.simulate(graph, images.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(result.output_spikes, model(images).numpy(), rtol=1e-5, atol=1e-5)
    back = read_nir(write_nir(graph, tmp_path / "q.nir"))
    assert back.readout == "membrane"
    np.testing.assert_array_equal(ws.simulate(back, images.numpy()).output_spikes, result.output_spikes)
    with pytest.raises(DeployError, match="model has no SoftmaxDecode"):
        ws.to_spiking_graph(model, (1, 28, 28))
    with pytest.raises(DeployError, match="readout must be one of"):
        ws.to_spiking_graph(model, (1, 28, 28), readout="rates")


def test_ties_in_the_decode_go_to_the_class_the_output_membranes_support_most():
    # Two classes with disjoint 2-hot codes over 4 output units; each unit fires on its own input.
    key = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], np.float32)
    nodes = [InputNode("input", [], (4,)),
             AffineNode("out", ["input"], (4,), np.eye(4, dtype=np.float32), np.zeros(4, np.float32)),
             SpikeNode("spikes", ["out"], (4,), np.full(4, 0.5, np.float32))]  # fmt: skip
    graph = ws.SpikingGraph(nodes, "spikes", key)
    # One unit of each code fires: a tie (score 0 each). Class 1's units lie nearer their firing side.
    inputs = np.array([[0.6, 0.1, 0.9, 0.45], [0.9, 0.45, 0.6, 0.1], [1.0, 1.0, 0.0, 0.0]], np.float32)
    lowest = simulate(graph, inputs)
    membrane = simulate(graph, inputs, tie_break="membrane")
    assert lowest.predictions.tolist() == [0, 0, 0]
    assert membrane.predictions.tolist() == [1, 0, 0]  # only the tie changes; a clear win stays
    with pytest.raises(ValueError, match="tie_break must be one of \\('lowest', 'membrane'\\), got 'random'"):
        simulate(graph, inputs, tie_break="random")


def test_a_membrane_readout_is_written_only_where_it_is_read_as_such(tmp_path):
    from whetstone.targets import export

    model = nn.Sequential(nn.Linear(4, 8), ws.SpikingBReLU(sharpness=1.0), nn.Linear(8, 2)).eval()
    graph = ws.to_spiking_graph(model, (4,), readout="membrane")
    for target, suffix in (("onnx", "onnx"), ("snntorch", "nir"), ("speck", "nir")):
        with pytest.raises(DeployError, match=f"--target {target}: the graph's output is read as membrane potentials"):
            export(graph, tmp_path / f"q.{suffix}", target)
    assert not list(tmp_path.iterdir())
    assert export(graph, tmp_path / "q.nir", "generic").is_file()


def test_ceil_mode_pooling_deploys_where_it_changes_nothing_and_is_refused_where_it_does():
    def net(size: int) -> ws.SpikingClassifier:
        layers = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ws.SpikingBReLU(1.0), nn.MaxPool2d(2, ceil_mode=True),
                               nn.Flatten(), nn.Linear(4 * ((size + 1) // 2) ** 2, 20), ws.SpikingBReLU(1.0))  # fmt: skip
        return ws.SpikingClassifier(layers, ws.key_generator(2, 20)).eval()

    model = net(8)  # 8 -> 4 either way
    graph = to_spiking_graph(model, (1, 8, 8))
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = simulate(graph, x.numpy())
    with torch.no_grad():
        expected = model.features(x).numpy()
    assert_equal_where_decided(result.output_spikes, expected, result, tolerance=1e-5, min_decided=0.9)
    with pytest.raises(
        DeployError, match=r"features.2: ceil_mode=True adds a partial window at the edge here \(\(7, 7\)"
    ):
        to_spiking_graph(net(7), (1, 7, 7))  # 7 -> 4 with ceil_mode, 3 without


def test_a_half_precision_model_deploys_as_its_float32_twin(trained, mini_test):
    """float16 and bfloat16 weights widen to float32 exactly: the graph is the float32 model's."""
    import copy

    for dtype in (torch.float16, torch.bfloat16):
        narrow = copy.deepcopy(trained).to(dtype)
        graph = to_spiking_graph(narrow, (1, 28, 28))
        twin = to_spiking_graph(copy.deepcopy(narrow).float(), (1, 28, 28))
        for node, same in zip(graph.nodes, twin.nodes, strict=True):
            if isinstance(node, WEIGHTED_NODES):
                np.testing.assert_array_equal(node.weight, same.weight)
        assert next(trained.parameters()).dtype == torch.float32  # the caller's model is untouched


def test_any_legal_module_name_round_trips_through_nir(tmp_path):
    """Module names may hold '/', '>', spaces or any character but '.': NIR's HDF5 file reads '/' as a path
    and the file lists delayed edges as 'a>b;c>d', so node names are written with '_' and read back whole."""
    from whetstone.export.nir import read_nir
    from whetstone.targets import export

    layers = torch.nn.Sequential()
    for name, module in [("conv/1", torch.nn.Conv2d(1, 2, 3)), ("spike>a;b", ws.SpikingBReLU(1.0)),
                         ("flat ten", torch.nn.Flatten()), ("lin-ear", torch.nn.Linear(8, 4)), ("out ☃", ws.SpikingBReLU(1.0))]:  # fmt: skip
        layers.add_module(name, module)
    graph = to_spiking_graph(ws.SpikingClassifier(layers, torch.eye(2, 4)), (1, 4, 4))
    back = read_nir(export(graph, tmp_path / "m.nir"))
    assert [node.name for node in back.nodes] == [node.name for node in graph.nodes]
    assert "features.conv/1" in {node.name for node in back.nodes}
    x = np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(simulate(back, x).output_spikes, simulate(graph, x).output_spikes)


def test_spikes_you_can_see_a_raster_per_layer_and_every_units_rate(trained, mini_test, tmp_path, capsys):
    """simulate keeps per-unit spike counts of every sample and, with record_samples, the recorded values of
    the first few only; plot_spikes draws them; simulate --plot writes spikes.png beside the run."""
    import json

    _optional("nir")
    from whetstone.export.nir import write_nir

    graph = to_spiking_graph(trained, (1, 28, 28))
    spiking = tuple(node.name for node in graph.spiking_nodes())
    images = mini_test[0][:300].numpy()
    result = simulate(graph, images, batch_size=128, record=spiking, record_samples=5)
    whole = simulate(graph, images, batch_size=128, record=spiking)
    for layer in result.layers:
        if layer.name in spiking:
            assert result.recorded[layer.name].shape[:2] == (5, 1)
            np.testing.assert_array_equal(result.recorded[layer.name], whole.recorded[layer.name][:5])
            assert layer.unit_spikes.sum() == layer.spikes == whole.recorded[layer.name].sum()
    json.dumps(result.figures(np.zeros(300)))  # the per-unit counts stay out of the JSON figures
    path = ws.plot_spikes(result, tmp_path / "spikes.png", samples=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="holds no recorded spiking layer: simulate with record="):
        ws.plot_spikes(simulate(graph, images[:4]), tmp_path / "none.png")
    with pytest.raises(ValueError, match="record_samples must be a positive integer, got 0"):
        simulate(graph, images[:4], record_samples=0)
    nir_file = write_nir(graph, tmp_path / "m.nir")
    assert main(["simulate", str(nir_file), "--dataset", "mnist-mini", "--limit", "20", "--plot", "--no-progress"]) == 0
    assert f"spike plot: {tmp_path / 'm.spikes.png'}" in capsys.readouterr().out
    assert (tmp_path / "m.spikes.png").stat().st_size > 0
