"""The integer network in PyTorch (whetstone.graph.integer): the quantized graph's spikes, exactly, on every engine."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import whetstone as ws
from whetstone.graph.integer import IntegerMaxPool2d, IntegerNetwork, cpu_has_vnni, onednn_available
from whetstone.graph.nodes import AffineNode, Conv2dNode, FlattenNode, InputNode, MaxPool2dNode, SpikeNode

from conftest import tiny_conv_bn

# (engine, pair_split): oneDNN's int8 kernels with pixels fed whole (CPUs with VNNI) and as two channels of
# at most 128 (CPUs without), and float32 sums.
ENGINES = [("onednn", False), ("onednn", True), ("float", False)]


def _unavailable(engine: str, pair_split: bool) -> str | None:
    """Why this engine cannot run exactly here, or None."""
    if engine == "onednn" and not onednn_available():
        return "this PyTorch has no oneDNN int8 convolution on this machine"
    if engine == "onednn" and not pair_split and not cpu_has_vnni():
        return "whole pixels on oneDNN need VNNI: this CPU sums pairs of products in 16 bits (the split runs)"
    return None


def _network(graph, engine: str, pair_split: bool) -> IntegerNetwork:
    reason = _unavailable(engine, pair_split)
    if reason:
        pytest.skip(reason)
    return IntegerNetwork(graph, engine, pair_split).eval()


def _spikes(network: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return network(images).numpy()


@pytest.mark.parametrize("engine,pair_split", ENGINES)
def test_trained_network_gives_the_simulators_spikes(engine, pair_split, trained, mini_test):
    images, _ = mini_test
    graph = ws.quantize(ws.to_spiking_graph(trained, (1, 28, 28)), 8)
    expected = ws.simulate(graph, images.numpy()).output_spikes
    network = _network(graph, engine, pair_split)
    np.testing.assert_array_equal(_spikes(network, images), expected)  # all 500 images, every output unit
    assert 0.05 < expected.mean() < 0.95  # the outputs are not all silent or all firing


def test_for_inference_in_integers_is_the_quantized_graph(trained, mini_test):
    images, _ = mini_test
    for bits in (8, 4):
        graph = ws.quantize(ws.to_spiking_graph(trained, (1, 28, 28)), bits)
        network = ws.for_inference(trained, bits=bits, input_shape=(1, 28, 28))
        assert isinstance(network, IntegerNetwork) and not network.training
        np.testing.assert_array_equal(_spikes(network, images), ws.simulate(graph, images.numpy()).output_spikes)


def _tie_graph(weight1: np.ndarray, weight2: np.ndarray):
    """A hand-built 8-bit graph: conv 3x3 on binary pixels, max pooling, a linear layer; every sum an integer,
    so the simulator decides each tie exactly (fires, as ``>=`` says)."""
    c1 = len(weight1)
    nodes = [
        InputNode("input", [], (1, 8, 8)),
        Conv2dNode("conv", ["input"], (c1, 8, 8), weight1, np.zeros(c1, np.float32), (1, 1), (1, 1), (1, 1), 1),
        SpikeNode("s1", ["conv"], (c1, 8, 8), np.full((c1, 8, 8), 3.0, np.float32)),
        MaxPool2dNode("pool", ["s1"], (c1, 4, 4), (2, 2), (2, 2), (0, 0)),
        FlattenNode("flat", ["pool"], (c1 * 16,)),
        AffineNode("dense", ["flat"], (10,), weight2, np.full(10, -1.0, np.float32)),
        SpikeNode("s2", ["dense"], (10,), np.full(10, 4.0, np.float32)),
    ]
    return ws.SpikingGraph(nodes, "s2", np.eye(10, dtype=np.float32), {"quantized_bits": 8})


@pytest.mark.parametrize("engine,pair_split", ENGINES)
def test_ties_fire_in_every_engine(engine, pair_split):
    generator = np.random.default_rng(0)
    weight1 = generator.integers(0, 2, (4, 1, 3, 3)).astype(np.float32)
    weight2 = generator.integers(-1, 2, (10, 64)).astype(np.float32)
    graph = _tie_graph(weight1, weight2)
    images = torch.as_tensor(generator.integers(0, 2, (200, 1, 8, 8)), dtype=torch.float32)
    expected = ws.simulate(graph, images.numpy(), record=("conv", "dense"))
    # Ties are common: sums exactly at each layer's threshold (bias 0 and -1).
    assert (expected.recorded["conv"] == 3).sum() > 1000 and (expected.recorded["dense"] == 4).sum() > 100
    np.testing.assert_array_equal(_spikes(_network(graph, engine, pair_split), images), expected.output_spikes)
    assert 0.1 < expected.output_spikes.mean() < 0.9


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 6),
    pool=st.sampled_from([((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 2), (1, 0))]),
    stride=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
)
def test_random_quantized_networks_match_the_simulator(seed, batch, pool, stride, groups):
    """Random convolution nets quantized to 8 bits, small float weights (so that integer ties are common),
    pooling that overlaps and pads, strides and groups: every engine gives the simulator's spikes."""
    torch.manual_seed(seed)
    kernel, pool_stride, padding = pool
    features = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), ws.SpikingBReLU(1.0), nn.MaxPool2d(kernel, pool_stride, padding),
        nn.Conv2d(4, 6, 3, stride=stride, padding=1, groups=groups), ws.SpikingBReLU(1.0), nn.Flatten(),
    )  # fmt: skip
    with torch.no_grad():
        size = features(torch.zeros(1, 2, 9, 9)).shape[1]
    model = ws.SpikingClassifier(
        nn.Sequential(*features, nn.Linear(size, 8), ws.SpikingBReLU(1.0)), ws.key_generator(2, 8, seed=0)
    ).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.randint(-2, 3, module.weight.shape) / 2)
                module.bias.copy_(torch.randint(-2, 3, module.bias.shape) / 4)
    graph = ws.quantize(ws.to_spiking_graph(model, (2, 9, 9)), 8)
    images = torch.randint(0, 256, (batch, 2, 9, 9)) / 255.0
    expected = ws.simulate(graph, images.numpy()).output_spikes
    for engine, pair_split in ENGINES:
        if _unavailable(engine, pair_split):
            continue  # the parametrized tests above skip it visibly, with the reason
        np.testing.assert_array_equal(_spikes(IntegerNetwork(graph, engine, pair_split), images), expected)


def test_pixel_sums_past_16_bits_stay_exact():
    """Bright pixels under large weights of one sign: pairs of products reach 2 x 255 x 127 = 64,770, past
    the 16-bit sums of int8 kernels on CPUs without VNNI; two channels of at most 128 keep them exact."""
    weight = np.full((3, 1, 2, 2), 127.0, np.float32)
    weight[1] = -127
    weight[2, 0, 0] = 127  # mixed signs
    weight[2, 0, 1] = -127
    thresholds = np.array([4 * 127 - 1, -1, 1], np.float32)
    nodes = [
        InputNode("input", [], (1, 3, 3)),
        Conv2dNode("conv", ["input"], (3, 2, 2), weight, -thresholds, (1, 1), (0, 0), (1, 1), 1),
        SpikeNode("spike", ["conv"], (3, 2, 2), np.zeros((3, 2, 2), np.float32)),
        FlattenNode("flat", ["spike"], (12,)),
    ]
    graph = ws.SpikingGraph(nodes, "flat", np.eye(12, dtype=np.float32), {"quantized_bits": 8})
    images = torch.tensor([[[[1.0, 1, 1], [1, 1, 1], [1, 1, 1]]], [[[254 / 255, 1, 1], [1, 1, 0], [1, 0, 1]]]])
    expected = ws.simulate(graph, images.numpy()).output_spikes
    assert expected[0].tolist() != expected[1].tolist()
    for engine, pair_split in ENGINES:
        if _unavailable(engine, pair_split):
            continue  # the parametrized tests above skip it visibly, with the reason
        np.testing.assert_array_equal(_spikes(IntegerNetwork(graph, engine, pair_split), images), expected)


def test_max_pooling_of_uint8_is_pytorchs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 5, 11, 10), generator=generator, dtype=torch.uint8)
    for kernel, stride, padding in [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (1, 3), (1, 1))]:
        node = MaxPool2dNode("pool", ["x"], (), kernel, stride, padding)
        expected = F.max_pool2d(x.float(), kernel, stride, padding).to(torch.uint8)
        assert torch.equal(IntegerMaxPool2d(node)(x.contiguous(memory_format=torch.channels_last)), expected)


def test_refuses_what_it_cannot_run_exactly(trained_residual):
    graph = ws.quantize(ws.to_spiking_graph(trained_residual, (1, 28, 28)), 8)
    with pytest.raises(ws.DeployError, match="the integer network needs each weighted layer to feed one spiking"):
        IntegerNetwork(graph)
    with pytest.raises(ws.DeployError, match="at most 8 bits"):
        IntegerNetwork(ws.quantize(ws.to_spiking_graph(_binary(tiny_conv_bn()), (1, 28, 28)), 12))
    wide = 140_000  # 127 x 140,000 > 2**24: float32 could round a sum
    nodes = [
        InputNode("input", [], (wide,)),
        AffineNode("a", ["input"], (1,), np.full((1, wide), 127.0, np.float32), np.zeros(1, np.float32)),
        SpikeNode("s", ["a"], (1,), np.ones(1, np.float32)),
        AffineNode("b", ["s"], (1,), np.ones((1, 1), np.float32), np.zeros(1, np.float32)),
        SpikeNode("t", ["b"], (1,), np.ones(1, np.float32)),
    ]
    with pytest.raises(ws.DeployError, match="a: sums reach"):
        IntegerNetwork(ws.SpikingGraph(nodes, "t", np.ones((1, 1), np.float32), {"quantized_bits": 8}))


def _binary(model: nn.Module) -> nn.Module:
    ws.set_model_sharpness(model, 1.0)
    return model.eval()


def test_copies_pickles_and_loaded_weights_after_a_forward_pass(trained, mini_test):
    """oneDNN's packed weights (made at the first call, opaque) stay out of copies and pickles, and a
    state dict loaded later is what runs, not the weights packed before."""
    import copy
    import io

    images, _ = mini_test
    network = ws.for_inference(trained, bits=8, input_shape=(1, 28, 28))
    expected = _spikes(network, images)
    np.testing.assert_array_equal(_spikes(copy.deepcopy(network), images), expected)
    buffer = io.BytesIO()
    torch.save(network, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(_spikes(torch.load(buffer, weights_only=False), images), expected)
    other = ws.for_inference(trained, bits=4, input_shape=(1, 28, 28))  # other integers, the same layout
    other_spikes = _spikes(other, images)
    assert not np.array_equal(other_spikes, expected)
    network.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(_spikes(network, images), other_spikes)
