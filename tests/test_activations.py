import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import whetstone as ws
from whetstone.nn.activations import SHARPNESS_EPSILON

LAM = 1e-3  # DESIGN.md section 1


def brelu_reference(x: torch.Tensor, s: float) -> torch.Tensor:
    if s == 1:
        return (x >= 0.5).to(x.dtype)
    return torch.clamp((x - 0.5) / (1 - s + LAM) + 0.5, 0, 1)


def sigmoid_reference(x: torch.Tensor, s: float) -> torch.Tensor:
    if s == 1:
        return (x >= 0).to(x.dtype)
    k = 4 * math.log(2 + math.sqrt(3)) / (1 - s + LAM)
    return 1 / (1 + torch.exp(torch.clamp(-k * x, -40, 40)))


X = torch.linspace(-3, 3, 2001, dtype=torch.float64)


def test_lambda_matches_design():
    assert SHARPNESS_EPSILON == LAM


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.9, 0.999, 1.0])
def test_brelu_matches_formula(s):
    torch.testing.assert_close(ws.SpikingBReLU(s)(X), brelu_reference(X, s))


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.9, 0.999, 1.0])
def test_sigmoid_matches_formula(s):
    torch.testing.assert_close(ws.SpikingSigmoid(s)(X), sigmoid_reference(X, s))


def test_brelu_at_zero_sharpness_is_bounded_relu_through_half():
    act = ws.SpikingBReLU(0.0)
    x = torch.tensor([-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
    torch.testing.assert_close(act(x), torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]), atol=1e-3, rtol=0)


def test_sigmoid_transition_width_at_zero_sharpness():
    # k = 4 ln(2 + sqrt 3) / (1 + lam): y(-0.5) = 1 / (1 + (2 + sqrt 3) ** (2 / (1 + lam))), about 6.7%.
    y = ws.SpikingSigmoid(0.0)(torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64))
    expected = 1 / (1 + (2 + math.sqrt(3)) ** (2 / (1 + LAM)))
    assert y[1] == 0.5
    assert y[0].item() == pytest.approx(expected) and y[2].item() == pytest.approx(1 - expected)


@pytest.mark.parametrize("cls,threshold", [(ws.SpikingBReLU, 0.5), (ws.SpikingSigmoid, 0.0)])
def test_sharpness_one_is_exact_heaviside(cls, threshold):
    act = cls(1.0)
    x = torch.tensor([threshold - 1e-6, threshold, threshold + 1e-6, -5.0, 5.0])
    y = act(x)
    assert y.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert act.is_binary and act.spike_threshold == threshold


def test_gradient_in_linear_region_is_slope():
    s = 0.6
    x = torch.tensor([0.45, 0.5, 0.55], requires_grad=True)
    ws.SpikingBReLU(s)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 1 / (1 - s + LAM)))


def test_gradient_zero_outside_linear_region():
    x = torch.tensor([-2.0, 3.0], requires_grad=True)
    ws.SpikingBReLU(0.0)(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("bad", [-0.1, 1.0001, float("nan"), float("inf"), "0.5", True, None, torch.ones(2)])
def test_set_sharpness_rejects_bad_values(bad):
    act = ws.SpikingBReLU()
    with pytest.raises(ValueError, match="sharpness"):
        act.set_sharpness(bad)
    assert act.get_sharpness() == 0.0


def test_constructor_validates():
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got 2.0"):
        ws.SpikingSigmoid(2.0)


def test_sharpness_is_a_buffer_in_state_dict_and_restored():
    act = ws.SpikingBReLU()
    act.set_sharpness(0.7)
    state = act.state_dict()
    assert state["sharpness"].dim() == 0 and state["sharpness"].item() == pytest.approx(0.7)
    other = ws.SpikingBReLU()
    other.load_state_dict(state)
    assert other.get_sharpness() == pytest.approx(0.7)
    x = torch.linspace(0, 1, 11)
    torch.testing.assert_close(other(x), act(x))


def test_loaded_sharpness_through_parent_module():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), ws.SpikingBReLU(1.0))
    fresh = torch.nn.Sequential(torch.nn.Linear(2, 2), ws.SpikingBReLU(0.0))
    fresh.load_state_dict(model.state_dict())
    assert fresh[1].is_binary


def test_loading_out_of_range_sharpness_fails_clearly():
    act = ws.SpikingBReLU()
    with pytest.raises(ValueError, match="loaded sharpness"):
        act.load_state_dict({"sharpness": torch.tensor(1.5)})


@settings(max_examples=60, deadline=None)
@given(
    s=st.floats(0, 1),
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
)
def test_outputs_bounded_and_monotone(s, values):
    x = torch.tensor(sorted(values), dtype=torch.float64)
    for act in (ws.SpikingBReLU(s), ws.SpikingSigmoid(s)):
        y = act(x)
        assert torch.all((y >= 0) & (y <= 1))
        assert torch.all(y[1:] >= y[:-1])
        if s == 1:
            assert torch.all((y == 0) | (y == 1))


@pytest.mark.parametrize(
    "cls,fn,threshold", [(ws.SpikingBReLU, brelu_reference, 0.5), (ws.SpikingSigmoid, sigmoid_reference, 0.0)]
)
@pytest.mark.parametrize("surrogate", [0.0, 0.6])
def test_surrogate_keeps_the_step_forward_and_backpropagates_the_softer_slope(cls, fn, threshold, surrogate):
    # Points away from the bounded ReLU's kinks (threshold +- half its linear width), where its slope is defined.
    x = X[((X - threshold).abs() - 0.5 * (1 - surrogate + LAM)).abs() > 1e-6].clone().requires_grad_(True)
    act = cls(1.0)
    act.set_surrogate(surrogate)
    y = act(x)
    assert torch.equal(y.detach(), (x.detach() >= threshold).to(x.dtype))  # exactly the step
    y.backward(torch.linspace(0.5, 2.0, len(x), dtype=x.dtype))
    soft = x.detach().clone().requires_grad_(True)
    fn(soft, surrogate).backward(torch.linspace(0.5, 2.0, len(x), dtype=x.dtype))
    torch.testing.assert_close(x.grad, soft.grad)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [ws.SpikingBReLU, ws.SpikingSigmoid])
def test_binary_layer_without_surrogate_passes_no_gradient(cls):
    x = torch.randn(50, requires_grad=True)
    assert not cls(1.0)(x).requires_grad
    act = cls(0.5)
    act.set_surrogate(0.0)  # no effect below sharpness 1
    torch.testing.assert_close(act(x), cls(0.5)(x))


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "0.5", True])
def test_surrogate_must_be_below_one(bad):
    with pytest.raises(ValueError, match="surrogate must be None or a sharpness in"):
        ws.SpikingBReLU().set_surrogate(bad)


def test_set_model_surrogate_reaches_every_layer_and_not_the_state_dict():
    model = ws.create_model("mnist-dense")
    ws.set_model_surrogate(model, 0.25)
    assert [layer.surrogate for layer in ws.spiking_layers(model)] == [0.25] * 3
    assert "surrogate" not in " ".join(model.state_dict())
    ws.set_model_surrogate(model, None)
    assert all(layer.surrogate is None for layer in ws.spiking_layers(model))


@pytest.mark.parametrize("activation", [ws.SpikingBReLU, ws.SpikingSigmoid])
def test_compiled_forward_reads_the_sharpness_buffer_and_branches_on_binary_alone(activation):
    """Under torch.compile a soft layer reads its sharpness from the buffer (a graph input), so changing
    it recompiles nothing; turning binary does, once. The values are the eager layer's."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    layer = activation(0.0)
    layer.set_surrogate(0.0)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.linspace(-2, 2, 101, requires_grad=True)
    for sharpness in (0.0, 0.3, 0.7, 0.99, 1.0, 1.0):
        layer.set_sharpness(sharpness)
        out = compiled(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
        (expected_grad,) = torch.autograd.grad(layer(x).sum(), x)
        torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
    assert torch.equal(out, (x >= layer.spike_threshold).float())  # the exact step once binary
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # soft (any sharpness), binary
