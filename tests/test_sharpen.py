import itertools

import pytest
import torch
from torch import nn

import whetstone as ws

from conftest import three_layer_net


@pytest.mark.parametrize(
    "value,expected",
    [(0.0, [0, 0, 0]), (1 / 6, [0.5, 0, 0]), (1 / 3, [1, 0, 0]), (0.5, [1, 0.5, 0]), (2 / 3, [1, 1, 0]),
     (0.9, [1, 1, 0.7]), (1.0, [1, 1, 1])],
)  # fmt: skip
def test_bottom_up_map(value, expected):
    assert ws.sharpness_map(value, 3) == pytest.approx(expected)


def test_bottom_up_map_exact_ones_despite_float_drift():
    for total in range(1, 40):
        for step in range(total + 1):
            values = ws.sharpness_map(step / total, 3)
            assert all(v in (0.0, 1.0) or 0 < v < 1 for v in values)
            if step * 3 % total == 0:
                assert all(v in (0.0, 1.0) for v in values), (step, total, values)


def test_uniform_map_and_errors():
    assert ws.sharpness_map(0.3, 4, bottom_up=False) == [0.3] * 4
    with pytest.raises(ValueError, match="model sharpness must be in"):
        ws.sharpness_map(1.5, 3)
    with pytest.raises(ValueError, match="num_layers"):
        ws.sharpness_map(0.5, -1)


def test_spiking_layers_in_order_and_set_model_sharpness(net):
    layers = ws.spiking_layers(net)
    assert layers == [net[1], net[3], net[5]]
    assert ws.set_model_sharpness(net, 0.5) == [1.0, 0.5, 0.0]
    assert ws.model_sharpness(net) == [1.0, 0.5, 0.0]
    ws.set_model_sharpness(net, 0.25, bottom_up=False)
    assert ws.model_sharpness(net) == [0.25] * 3


def drive(sharpener, model, epochs, batches, losses=None):
    """Run the hooks as a training loop would; return sharpness after each epoch."""
    sharpener.on_train_begin(model)
    trajectory = []
    for epoch in range(epochs):
        for batch in range(batches):
            sharpener.on_batch_end(batch, 1.0)
        sharpener.on_epoch_end(epoch, 1.0 if losses is None else losses[epoch])
        trajectory.append(ws.model_sharpness(model))
    return trajectory


def drive_per_batch(sharpener, model, epochs, batches):
    """The same, with the batches per epoch known from the start; return sharpness after each batch."""
    sharpener.on_train_begin(model, batches_per_epoch=batches)
    seen = []
    for epoch in range(epochs):
        for batch in range(batches):
            sharpener.on_batch_end(batch, 1.0)
            seen.append(ws.model_sharpness(model))
        sharpener.on_epoch_end(epoch, 1.0)
    return seen


def test_simple_sharpener_per_epoch(net):
    sharpener = ws.SimpleSharpener(start_epoch=2, steps=2)
    trajectory = drive(sharpener, net, epochs=9, batches=3)
    assert trajectory[:2] == [[0, 0, 0]] * 2
    assert trajectory[2] == [0.5, 0, 0]
    assert trajectory[3] == [1, 0, 0]
    assert trajectory[5] == [1, 1, 0]
    assert trajectory[7] == [1.0, 1.0, 1.0] and sharpener.done
    assert not any(sharpener.done for sharpener in [ws.SimpleSharpener(0)])


def test_simple_sharpener_uniform_and_per_batch(net):
    sharpener = ws.SimpleSharpener(start_epoch=1, steps=8, per="batch", bottom_up=False)
    trajectory = drive(sharpener, net, epochs=4, batches=4)
    assert trajectory[0] == [0, 0, 0]
    assert trajectory[1] == [0.5] * 3
    assert trajectory[2] == [1.0] * 3 and sharpener.done


def test_scheduled_sharpener_linear_per_batch(net):
    sharpener = ws.ScheduledSharpener([(0, 2), (1, 3), (3, 4)])
    seen = drive_per_batch(sharpener, net, epochs=4, batches=4)
    assert seen[0] == pytest.approx([0.125, 0, 0])
    assert seen[3] == pytest.approx([0.5, 0, 0])
    assert seen[5] == pytest.approx([0.75, 0.25, 0])
    assert seen[7] == [1.0, 0.5, 0.0]
    assert seen[11] == [1.0, 1.0, 0.0]
    assert seen[13] == pytest.approx([1.0, 1.0, 0.5])
    assert sharpener.done


def test_scheduled_sharpener_windows_within_an_epoch(net):
    sharpener = ws.ScheduledSharpener([(0, 0.5), (0.5, 1.5), (1.5, 2)])
    seen = drive_per_batch(sharpener, net, epochs=2, batches=4)
    assert seen[0] == pytest.approx([0.5, 0, 0]) and seen[1] == [1.0, 0.0, 0.0]
    assert seen[3] == pytest.approx([1.0, 0.5, 0]) and seen[5] == [1.0, 1.0, 0.0]
    assert seen[6] == pytest.approx([1.0, 1.0, 0.5]) and sharpener.done


def test_ramp_schedule_gives_the_upper_layers_the_longer_windows():
    windows = ws.ramp_schedule(3, 0, 12, ramp=3.0)  # shares 1, 2, 3 of 12 epochs
    assert windows == [(0, 2), (2, 6), (6, 12)]
    assert ws.ramp_schedule(4, 1, 9) == [(1, 3), (3, 5), (5, 7), (7, 9)]  # ramp 1: even, as SimpleSharpener
    assert ws.ramp_schedule(1, 0, 2.5, ramp=4.0) == [(0, 2.5)]
    uneven = ws.ramp_schedule(19, 0, 9, ramp=4.0)
    lengths = [stop - start for start, stop in uneven]
    assert uneven[-1][1] == 9 and lengths[-1] == pytest.approx(4 * lengths[0])
    assert all(a[1] == b[0] for a, b in itertools.pairwise(uneven))  # consecutive: one layer sharpens at a time


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ws.ramp_schedule(0, 0, 1), "num_layers must be an integer >= 1, got 0"),
        (lambda: ws.ramp_schedule(3, 2, 2), "stop_epoch must be > start_epoch"),
        (lambda: ws.ramp_schedule(3, -1, 2), "start_epoch must be a finite number >= 0, got -1"),
        (lambda: ws.ramp_schedule(3, 0, 2, ramp=0), "ramp must be a positive finite number, got 0"),
        (lambda: ws.ScheduledSharpener([(0, float("nan"))]), r"schedule\[0\] stop_epoch must be a finite number"),
    ],
)
def test_ramp_schedule_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_scheduled_sharpener_learns_batches_per_epoch(net):
    sharpener = ws.ScheduledSharpener([(0, 2), (0, 2), (0, 2)])
    sharpener.on_train_begin(net)
    for batch in range(5):
        sharpener.on_batch_end(batch, 1.0)
    assert ws.model_sharpness(net) == [0, 0, 0]  # epoch 0 moves at its end only
    sharpener.on_epoch_end(0, 1.0)
    assert ws.model_sharpness(net) == [0.5] * 3 and sharpener.batches_per_epoch == 5
    sharpener.on_batch_end(0, 1.0)
    assert ws.model_sharpness(net) == pytest.approx([0.6] * 3)


def test_scheduled_sharpener_errors(net):
    with pytest.raises(ValueError, match="stop_epoch > start_epoch"):
        ws.ScheduledSharpener([(2, 2)])
    with pytest.raises(ValueError, match=r"schedule\[0\] must be a \(start_epoch, stop_epoch\) pair"):
        ws.ScheduledSharpener([5])
    with pytest.raises(ValueError, match="2 windows but the model has 3 spiking layers"):
        ws.ScheduledSharpener([(0, 1), (1, 2)]).on_train_begin(net)


def test_adaptive_waits_for_plateau_then_sharpens_per_batch(net):
    sharpener = ws.AdaptiveSharpener(min_init_epochs=3, rate=0.5, cz_rate=0.25, critical=0.75)
    losses = [1.0, 0.5, 0.25, 0.24, 0.24, 0.24]
    trajectory = drive(sharpener, net, epochs=4, batches=4, losses=losses)
    # epochs 0-2 improve by >= 15%; epoch 3 is the first without improvement (patience 1: not yet)
    assert trajectory[3] == [0, 0, 0] and not sharpener.sharpening
    sharpener.on_batch_end(0, 1.0)
    sharpener.on_epoch_end(4, 0.24)  # second stale epoch > patience -> start
    assert sharpener.sharpening
    for batch in range(4):
        sharpener.on_batch_end(batch, 1.0)
    # 0.5 / 4 per batch up to critical 0.75 (6 batches), then 0.25 / 4; 4 batches -> 0.5
    assert ws.model_sharpness(net) == pytest.approx([0.5, 0, 0])


def test_adaptive_rates_critical_zone_and_wait_after_layer(net):
    sharpener = ws.AdaptiveSharpener(min_init_epochs=0, rate=1.0, cz_rate=0.5, critical=0.5, patience=0)
    sharpener.on_train_begin(net, batches_per_epoch=4)
    sharpener.on_epoch_end(0, 1.0)  # sets the reference
    sharpener.on_epoch_end(1, 1.0)  # no improvement > patience 0 -> sharpening
    assert sharpener.sharpening
    values = []
    for batch in range(4):
        sharpener.on_batch_end(batch, 1.0)
        values.append(net[1].get_sharpness())
    assert values == pytest.approx([0.25, 0.5, 0.625, 0.75])
    for batch in range(4):
        sharpener.on_batch_end(batch, 1.0)
    assert net[1].get_sharpness() == 1.0 and sharpener.waiting
    assert net[3].get_sharpness() == 0.0  # waits for the next epoch
    sharpener.on_epoch_end(2, 1.0)
    sharpener.on_batch_end(0, 1.0)
    assert net[3].get_sharpness() == pytest.approx(0.25)


def test_adaptive_pauses_on_degradation_and_first_layer_rate(net):
    sharpener = ws.AdaptiveSharpener(min_init_epochs=0, rate=1.0, patience=0, first_layer_relative_rate=0.5)
    sharpener.on_train_begin(net, batches_per_epoch=2)
    sharpener.on_epoch_end(0, 1.0)
    sharpener.on_epoch_end(1, 1.0)
    sharpener.on_batch_end(0, 1.0)
    assert net[1].get_sharpness() == pytest.approx(0.25)  # 1.0 * 0.5 / 2
    sharpener.on_epoch_end(2, 1.2)  # +20% >= 15% -> pause
    assert not sharpener.sharpening and sharpener.reference_loss == 1.2
    sharpener.on_batch_end(0, 1.0)
    assert net[1].get_sharpness() == pytest.approx(0.25)


def test_adaptive_reaches_done(net):
    sharpener = ws.AdaptiveSharpener(min_init_epochs=1)
    trajectory = drive(sharpener, net, epochs=60, batches=10)
    assert sharpener.done and trajectory[-1] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "factory",
    [lambda: ws.SimpleSharpener(1, steps=3, per="batch"), lambda: ws.ScheduledSharpener([(0, 2), (1, 3), (2, 5)]),
     lambda: ws.AdaptiveSharpener(min_init_epochs=1, patience=0)],
)  # fmt: skip
def test_state_dict_resume_matches_uninterrupted(factory):
    losses = [1.0, 0.9, 0.9, 0.95, 0.9, 0.9, 0.9, 0.9]
    reference_net = three_layer_net()
    reference = drive(factory(), reference_net, epochs=8, batches=3, losses=losses)

    first_net = three_layer_net()
    first = factory()
    drive(first, first_net, epochs=3, batches=3, losses=losses)
    saved_sharpener, saved_model = first.state_dict(), first_net.state_dict()

    resumed_net = three_layer_net()
    resumed_net.load_state_dict(saved_model)
    resumed = factory()
    resumed.load_state_dict(saved_sharpener)
    resumed.on_train_begin(resumed_net)
    trajectory = []
    for epoch in range(3, 8):
        for batch in range(3):
            resumed.on_batch_end(batch, 1.0)
        resumed.on_epoch_end(epoch, losses[epoch])
        trajectory.append(ws.model_sharpness(resumed_net))
    assert trajectory == reference[3:]


def test_sharpener_errors(net):
    with pytest.raises(ValueError, match="start_epoch must be an integer >= 0, got -1"):
        ws.SimpleSharpener(-1)
    with pytest.raises(ValueError, match="per must be 'epoch' or 'batch'"):
        ws.SimpleSharpener(0, per="step")
    with pytest.raises(ValueError, match="rate must be a positive"):
        ws.AdaptiveSharpener(rate=0)
    with pytest.raises(ValueError, match="no spiking layers"):
        ws.SimpleSharpener(0).on_train_begin(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="on_train_begin"):
        ws.SimpleSharpener(0).on_epoch_end(0, 1.0)


def test_plain_pytorch_loop_sharpens_to_binary():
    torch.manual_seed(0)
    x = torch.rand(256, 4)
    y = (x[:, 0] > x[:, 1]).long()
    model = nn.Sequential(nn.Linear(4, 16), ws.SpikingBReLU(), nn.Linear(16, 20), ws.SpikingBReLU(),
                          ws.SoftmaxDecode(ws.key_generator(2, 20, seed=0)))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sharpener = ws.SimpleSharpener(start_epoch=15, steps=3)
    sharpener.on_train_begin(model)
    for epoch in range(40):
        for batch in range(4):
            xb, yb = x[batch * 64 : (batch + 1) * 64], y[batch * 64 : (batch + 1) * 64]
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sharpener.on_batch_end(batch, loss.item())
        sharpener.on_epoch_end(epoch, loss.item())
        if sharpener.done:
            break
    assert sharpener.done and epoch == 15 + 2 * 3 - 1
    hidden = model[:2](x)
    assert torch.all((hidden == 0) | (hidden == 1))
    assert (model(x).argmax(1) == y).float().mean() > 0.8
