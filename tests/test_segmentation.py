"""Segmentation with binary hidden layers: the canvases and their labels, mean IoU, a network that
learns and turns binary, and the clear refusal to export up-sampling."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import whetstone as ws
from whetstone.models.segmentation import digit_canvases, mean_iou, segmentation_network

from conftest import torch_threads


def test_canvases_hold_two_digits_labelled_where_their_pixels_are_bright():
    data = ws.load_dataset("mnist-mini", "train")
    canvases, masks = digit_canvases(data.images, data.labels, 50, seed=3)
    assert canvases.shape == (50, 1, 32, 64) and masks.shape == (50, 32, 64) and masks.dtype == torch.long
    assert 0.0 <= float(canvases.min()) and float(canvases.max()) <= 1.0
    assert torch.equal(masks > 0, canvases[:, 0] >= 0.5)  # labelled exactly where a digit pixel is bright
    for half in (masks[:, :, :32], masks[:, :, 32:]):  # one digit per half: one class per half
        for row in half:
            assert len(torch.unique(row[row > 0])) <= 1
    again, _ = digit_canvases(data.images, data.labels, 50, seed=3)
    assert torch.equal(again, canvases)
    with pytest.raises(ValueError, match="images must have shape \\(N, 1, 28, 28\\), got \\(4, 28, 28\\)"):
        digit_canvases(data.images[:4, 0], data.labels[:4], 2)


def test_mean_iou_counts_each_class_present():
    truth = torch.tensor([[0, 0, 1, 1], [2, 2, 0, 0]])
    predicted = torch.tensor([[0, 0, 1, 2], [2, 2, 0, 1]])
    miou, per_class = mean_iou(predicted, truth, classes=4)
    assert per_class[0] == 0.75 and per_class[1] == pytest.approx(1 / 3) and per_class[2] == pytest.approx(2 / 3)
    assert torch.isnan(torch.tensor(per_class[3])) and miou == pytest.approx((0.75 + 1 / 3 + 2 / 3) / 3)


def test_the_network_learns_turns_binary_and_refuses_export_by_naming_the_up_sampling():
    data = ws.load_dataset("mnist-mini", "train")
    canvases, masks = digit_canvases(data.images, data.labels, 128, seed=0)
    torch.manual_seed(0)
    model = segmentation_network(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch_threads(1):
        losses = []
        for step in range(30):
            batch = slice(32 * (step % 4), 32 * (step % 4 + 1))
            loss = F.cross_entropy(model(canvases[batch]), masks[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    ws.set_model_sharpness(model, 1.0)
    model.eval()
    layers = ws.binary_report(model, [(canvases[:32], masks[:32])])
    assert ws.is_fully_binary(model, layers)
    with pytest.raises(ws.DeployError, match="context.12: up-sampling \\(nn.Upsample\\) cannot be exported"):
        ws.to_spiking_graph(model, (1, 32, 64), readout="membrane")
