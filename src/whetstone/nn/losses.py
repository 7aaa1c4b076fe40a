"""Training objectives as small objects: what the trainer minimises, and what counts as a right answer.

Every loss is called as ``loss(output, x, y)`` (the model's output, its input batch, the labels) and
says by ``target`` whether it scores labels (``"labels"``: accuracy is meaningful) or reconstructs the
input (``"inputs"``: an autoencoder, no accuracy). :meth:`Loss.for_evaluation` is the loss reported on
held-out data (for :class:`Distillation`, the plain classification loss: the teacher scores only the
training batches).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..utils.checks import positive_number

__all__ = ["Classification", "Distillation", "Loss", "Reconstruction", "as_loss", "distillation_loss"]


class Loss:
    """Base of the training objectives (see the module docs)."""

    target = "labels"

    def __call__(self, output: Tensor, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def for_evaluation(self) -> Loss:
        """The loss reported on evaluation data."""
        return self

    @property
    def reconstruct(self) -> bool:
        """True when the output is compared with the input rather than with labels."""
        return self.target == "inputs"


class Classification(Loss):
    """Cross-entropy of ``logit_scale *`` the decoder's class logits against the labels.

    The N-hot decoder's logits span +-width (100 for a 10x10 code), which saturates the softmax; some
    conv models learn faster with a smaller scale (the registry's recipes say which)."""

    def __init__(self, logit_scale: float = 1.0) -> None:
        self.logit_scale = positive_number(logit_scale, "logit_scale")

    def __call__(self, output: Tensor, x: Tensor, y: Tensor) -> Tensor:
        logits = output if self.logit_scale == 1.0 else output * self.logit_scale
        return nn.functional.cross_entropy(logits, y)

    def __repr__(self) -> str:
        return f"Classification(logit_scale={self.logit_scale:g})"


class Reconstruction(Loss):
    """Mean squared error between the output and the input (autoencoders)."""

    target = "inputs"

    def __call__(self, output: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.mse_loss(output, x)

    def __repr__(self) -> str:
        return "Reconstruction()"


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Knowledge distillation (Hinton, Vinyals, Dean 2015): the KL divergence from the teacher's class
    probabilities to the student's, both softmaxes of logits divided by ``temperature``, times
    ``temperature**2`` (so its gradients keep their scale as the temperature changes); mean over the batch."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"the teacher's logits have shape {tuple(teacher_logits.shape)}, the student's "
                         f"{tuple(student_logits.shape)}: both must score the same classes")  # fmt: skip
    student = torch.log_softmax(student_logits / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


class Distillation(Loss):
    """``(1 - weight) * base + weight *`` :func:`distillation_loss` against a frozen ``teacher``.

    The teacher (a trained classifier of the same classes: the same network trained without sharpening,
    or the ReLU model a spiking one was converted from) scores every training batch in eval mode. It is
    not saved in checkpoints: pass it again to resume."""

    def __init__(
        self, teacher: nn.Module, weight: float = 1.0, temperature: float = 1.0, base: Loss | None = None
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise ValueError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {weight!r}")
        temperature = positive_number(temperature, "distill_temperature")
        self.base = base if base is not None else Classification()
        if self.base.reconstruct:
            raise ValueError("a teacher distils class scores: its base loss must classify, not reconstruct")
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = float(weight), float(temperature)

    def __call__(self, output: Tensor, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        soft = distillation_loss(output, teacher_logits, self.temperature)
        return (1 - self.weight) * self.base(output, x, y) + self.weight * soft

    def for_evaluation(self) -> Loss:
        return self.base

    def __repr__(self) -> str:
        return f"Distillation(weight={self.weight:g}, temperature={self.temperature:g}, base={self.base!r})"


class _LabelLoss(Loss):
    """A plain ``fn(logits, labels)`` (e.g. ``nn.CrossEntropyLoss()``) as a classification loss."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, output: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.fn(output, y)

    def __repr__(self) -> str:
        return f"_LabelLoss({self.fn!r})"


def as_loss(loss: Loss | Callable[[Tensor, Tensor], Tensor] | None) -> Loss:
    """``loss`` as a :class:`Loss`: None is :class:`Classification`; any other callable is taken as
    ``fn(logits, labels)`` of a classifier."""
    if loss is None:
        return Classification()
    if isinstance(loss, Loss):
        return loss
    if callable(loss):
        return _LabelLoss(loss)
    raise ValueError(f"loss must be a whetstone Loss or a callable fn(logits, labels), got {type(loss).__name__}")
