import pytest
import torch

import whetstone as ws


@pytest.mark.parametrize("overlapping", [True, False])
def test_key_shape_and_rows(overlapping):
    key = ws.key_generator(10, 100, overlapping=overlapping, seed=3)
    assert key.shape == (10, 100) and key.dtype == torch.float32
    assert set(key.unique().tolist()) <= {0.0, 1.0}
    assert key.sum(dim=1).tolist() == [10.0] * 10


def test_disjoint_key_rows_do_not_overlap():
    key = ws.key_generator(7, 30, overlapping=False, seed=1)
    assert key.sum(dim=1).tolist() == [4.0] * 7
    assert key.sum(dim=0).max() == 1


def test_overlapping_key_draws_rows_independently():
    keys = [ws.key_generator(10, 20, overlapping=True, seed=s) for s in range(20)]
    assert any(k.sum(dim=0).max() > 1 for k in keys)


def test_key_seed_reproducible():
    assert torch.equal(ws.key_generator(10, 100, seed=5), ws.key_generator(10, 100, seed=5))
    assert not torch.equal(ws.key_generator(10, 100, seed=5), ws.key_generator(10, 100, seed=6))


def test_thermometer_offsets_spread_each_class_over_a_width_of_one_and_leave_shared_units_alone():
    key = ws.key_generator(4, 12, overlapping=False, seed=2)
    offsets = ws.thermometer_offsets(key)
    for row in key.bool():  # 3 units per class: the midpoints of 3 steps over [-0.5, 0.5]
        torch.testing.assert_close(offsets[row], torch.tensor([-1 / 3, 0.0, 1 / 3]))
    shared = torch.tensor([[1.0, 1, 0, 1], [0, 1, 1, 0]])  # unit 1 in both classes
    torch.testing.assert_close(ws.thermometer_offsets(shared), torch.tensor([-1 / 3, 0.0, 0.25, 1 / 3]))


@pytest.mark.parametrize(
    "args,message",
    [((10, 9), "width must be at least num_classes"), ((1, 10), "at least 2"), ((0, 10), "positive integer"),
     ((10.0, 100), "num_classes"), ((10, "100"), "width")],
)  # fmt: skip
def test_key_errors(args, message):
    with pytest.raises(ValueError, match=message):
        ws.key_generator(*args)


def test_decode_formula_and_predict():
    key = ws.key_generator(3, 6, overlapping=False, seed=0)
    decode = ws.SoftmaxDecode(key)
    x = torch.rand(5, 6).round()
    expected = (2 * x - 1) @ (2 * key - 1).T
    torch.testing.assert_close(decode(x), expected)
    assert torch.equal(decode.predict(x), expected.argmax(dim=1))


def test_decode_perfect_code_wins_and_trains_with_cross_entropy():
    key = ws.key_generator(4, 12, overlapping=False, seed=0)
    decode = ws.SoftmaxDecode(key)
    assert decode.predict(key).tolist() == [0, 1, 2, 3]
    x = torch.full((4, 12), 0.5, requires_grad=True)
    torch.nn.functional.cross_entropy(decode(x), torch.arange(4)).backward()
    assert x.grad.abs().sum() > 0


def test_decode_rejects_bad_key_and_width():
    with pytest.raises(ValueError, match="only 0 and 1"):
        ws.SoftmaxDecode(torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="2-D"):
        ws.SoftmaxDecode(torch.ones(4))
    with pytest.raises(ValueError, match=r"rows \[1\] have no active unit"):
        ws.SoftmaxDecode(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    decode = ws.SoftmaxDecode(ws.key_generator(2, 4, seed=0))
    with pytest.raises(ValueError, match="expects inputs with 4 features"):
        decode(torch.zeros(3, 5))


def test_decode_key_round_trips_and_mismatch_is_clear():
    source = ws.SoftmaxDecode(ws.key_generator(3, 9, seed=1))
    target = ws.SoftmaxDecode(ws.key_generator(3, 9, seed=2))
    target.load_state_dict(source.state_dict())
    x = torch.rand(4, 9).round()
    torch.testing.assert_close(target(x), source(x))
    with pytest.raises(ValueError, match=r"checkpoint key has shape \(3, 9\).*expects \(4, 9\)"):
        ws.SoftmaxDecode(ws.key_generator(4, 9, seed=0)).load_state_dict(source.state_dict())
