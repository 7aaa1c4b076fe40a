"""Redundant N-hot output codes ("keys") and the softmax decoder that reads them.

A key ``K`` is a {0, 1} matrix of shape (classes, width): class ``c`` is represented by the output
units where ``K[c] == 1``. The decoder scores each class by how well the binary output ``x`` matches
its code: ``z = (2x - 1) @ (2K - 1)^T`` (+1 per agreeing unit, -1 per disagreeing one). Training uses
softmax cross-entropy on ``z``; the prediction is ``argmax z``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..utils.checks import positive_int, positive_number

__all__ = ["SoftmaxDecode", "key_generator", "thermometer_offsets", "validate_key"]


def key_generator(num_classes: int, width: int, overlapping: bool = True, seed: int | None = None) -> Tensor:
    """Make a random N-hot key: a float tensor (num_classes, width) of 0/1.

    Each row has ``width // num_classes`` ones. With ``overlapping=False`` the rows use disjoint
    units; otherwise each row picks its units independently (rows may share units).

    Args:
        num_classes: number of classes (rows), at least 2.
        width: number of output units (columns), at least ``num_classes``.
        overlapping: allow classes to share output units.
        seed: seed of the random draw; ``None`` draws from PyTorch's global generator.
    """
    positive_int(num_classes, "num_classes")
    positive_int(width, "width")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if width < num_classes:
        raise ValueError(
            f"width must be at least num_classes so each class owns one unit, got width={width} "
            f"< num_classes={num_classes}"
        )
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    hot = width // num_classes
    key = torch.zeros(num_classes, width)
    if overlapping:
        # An independent random permutation per row; its first `hot` entries are the class's units.
        order = torch.rand(num_classes, width, generator=generator).argsort(dim=1)
        key.scatter_(1, order[:, :hot], 1.0)
    else:
        units = torch.randperm(width, generator=generator)[: hot * num_classes].view(num_classes, hot)
        key.scatter_(1, units, 1.0)
    return key


def thermometer_offsets(key: Tensor) -> Tensor:
    """Per output unit of ``key`` (classes x width), the bias offset that makes a class's units a thermometer
    code: the n units of a class get ``(2k + 1) / 2n - 1 / 2`` for k = 0..n-1, the midpoints of n equal steps
    over a width of 1 (a spiking activation's linear range) centred on 0. Units of several classes get 0.

    Units that compute the same score fire together once binary (a class's count is 0 or n); offset so, the
    k-th fires once the score passes the k-th step, and the count grows with the score."""
    key = validate_key(key)
    rank = key.cumsum(1) - 1  # a unit's index among its class's units, where the key has a 1
    offsets = (((2 * rank + 1) / (2 * key.sum(1, keepdim=True)) - 0.5) * key).sum(0)
    return torch.where(key.sum(0) == 1, offsets, torch.zeros_like(offsets))


def validate_key(key: Tensor) -> Tensor:
    """Check that ``key`` is a 2-D {0, 1} tensor with a non-empty code per class; return it as float."""
    if not isinstance(key, Tensor):
        raise ValueError(f"key must be a torch.Tensor, got {type(key).__name__}")
    if key.dim() != 2:
        raise ValueError(f"key must be 2-D (num_classes, width), got shape {tuple(key.shape)}")
    if key.shape[0] < 2:
        raise ValueError(f"key must have at least 2 rows (classes), got {key.shape[0]}")
    key = key.detach().float()
    if not torch.all((key == 0) | (key == 1)):
        raise ValueError("key must contain only 0 and 1")
    empty = (key.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"key rows {empty} have no active unit: those classes could never be decoded")
    return key


class SoftmaxDecode(nn.Module):
    """Decode binary N-hot outputs into class logits: ``(2x - 1) @ (2K - 1)^T``.

    Use the output with ``nn.CrossEntropyLoss``; :meth:`predict` returns the best-matched class.
    Ties (frequent once outputs are binary) go to the lowest class index, as ``argmax`` does.

    Args:
        key: {0, 1} tensor (num_classes, width), e.g. from :func:`key_generator`. Stored as a buffer,
            so checkpoints carry it.
        logit_scale: multiplies the logits: the softmax's inverse temperature in training (the prediction is
            the same). The logits of an N-hot code differ by up to ``4 N`` between classes, which saturates
            a softmax; :func:`~whetstone.spikify` gives its heads ``1 / N``. Stored as a buffer.
    """

    def __init__(self, key: Tensor, logit_scale: float = 1.0) -> None:
        super().__init__()
        key = validate_key(key)
        logit_scale = positive_number(logit_scale, "logit_scale")
        self.register_buffer("key", key)
        self.register_buffer("signed_key_t", (2.0 * key - 1.0).t().contiguous(), persistent=False)
        self.register_buffer("logit_scale", torch.tensor(logit_scale))
        self._logit_scale = float(self.logit_scale)

    @property
    def num_classes(self) -> int:
        return self.key.shape[0]

    @property
    def width(self) -> int:
        return self.key.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.width:
            raise ValueError(
                f"SoftmaxDecode expects inputs with {self.width} features (the key's width), got shape {tuple(x.shape)}"
            )
        logits = (2.0 * x - 1.0) @ self.signed_key_t.to(x.dtype)
        return logits if self._logit_scale == 1.0 else logits * self._logit_scale

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Predicted class index per sample."""
        return self(x).argmax(dim=-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Keep the derived matrix in step with a loaded key (it is not saved itself).
        key = state_dict.get(prefix + "key")
        if key is not None:
            if key.shape != self.key.shape:
                raise ValueError(
                    f"checkpoint key has shape {tuple(key.shape)} but the model's decoder expects "
                    f"{tuple(self.key.shape)} (classes, width)"
                )
            self.signed_key_t = (2.0 * validate_key(key) - 1.0).t().contiguous().to(self.key.device)
        scale = state_dict.setdefault(prefix + "logit_scale", torch.tensor(1.0))  # saved before it existed: 1
        if not isinstance(scale, Tensor) or scale.numel() != 1 or not 0 < float(scale) < math.inf:
            raise ValueError(f"checkpoint {prefix}logit_scale must be one positive finite number")
        self._logit_scale = float(scale)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        scale = "" if self._logit_scale == 1.0 else f", logit_scale={self._logit_scale:.4g}"
        return f"num_classes={self.num_classes}, width={self.width}{scale}"
