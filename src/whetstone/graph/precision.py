"""What a network's integer weights cost, measured: the float graph and the quantized one it becomes on a
chip, simulated on the same images. ``whetstone export``, ``fit`` and ``simulate --bits`` print the figure,
warn when the quantized network loses more than a point, and refuse a bit width that leaves it at chance.

    cost = precision_cost(graph, quantize(graph, 4), images, labels)
    print(cost.line())   # 4-bit weights: 97.10% on 1,000 images, float 98.20% (-1.10 points)
    cost.check()         # warns (PrecisionWarning) past 1 point; ValueError at chance
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .nodes import AffineNode, Conv2dNode, SpikingGraph
from .simulator import simulate

__all__ = ["CHANCE_MARGIN", "WARN_DROP", "PrecisionCost", "PrecisionWarning", "describe_weights", "precision_cost"]

#: A quantized network that loses more than this (a fraction: one point) is warned about.
WARN_DROP = 0.01
#: Within this of chance (1 / classes), a quantized network is refused, unless the float one is there too.
CHANCE_MARGIN = 0.05


class PrecisionWarning(UserWarning):
    """The quantized network is measurably worse than the float one."""


@dataclass(frozen=True)
class PrecisionCost:
    """The float and the quantized network's accuracy on the same ``samples`` images."""

    bits: int
    samples: int
    float_accuracy: float
    quantized_accuracy: float
    classes: int
    weights: str = ""  # what the integers are, in words ("4-bit (input layer 8-bit)"); default "{bits}-bit"

    @property
    def drop(self) -> float:
        """Accuracy lost to the integer weights (a fraction; negative if they gained)."""
        return self.float_accuracy - self.quantized_accuracy

    @property
    def at_chance(self) -> bool:
        """The quantized network guesses (within :data:`CHANCE_MARGIN` of 1 / classes) where the float one
        did not."""
        chance = 1.0 / self.classes + CHANCE_MARGIN
        return self.quantized_accuracy < chance <= self.float_accuracy

    def line(self) -> str:
        return (
            f"{self.weights or f'{self.bits}-bit'} weights: {self.quantized_accuracy:.2%} on {self.samples:,} images, float "
            f"{self.float_accuracy:.2%} ({100 * (self.quantized_accuracy - self.float_accuracy):+.2f} points)"
        )

    def check(self, remedy: str = "use more bits, or train for them (--bits at training time)") -> None:
        """Raise ``ValueError`` if the quantized network is at chance; warn if it loses more than a point."""
        if self.at_chance:
            raise ValueError(f"{self.line()}: the quantized network is at chance; {remedy}")
        if self.drop > WARN_DROP:
            warnings.warn(f"{self.line()}: more than {100 * WARN_DROP:g} point lost; {remedy}", PrecisionWarning,
                          stacklevel=2)  # fmt: skip


def precision_cost(
    float_graph: SpikingGraph, quantized: SpikingGraph, images: np.ndarray, labels: np.ndarray
) -> PrecisionCost:
    """Simulate ``float_graph`` and ``quantized`` (its integer form, from
    :func:`~whetstone.graph.quantization.quantize` or a target's preparation) on ``images`` (float pixels in
    [0, 1]) and compare their accuracies on ``labels``."""
    bits = quantized.metadata.get("quantized_bits")
    if bits is None:
        raise ValueError("quantized must be a graph with integer weights (from quantize() or a chip target)")
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"images and labels must be equally many (at least one), got {len(images)} and {len(labels)}")
    accuracy = [  # each graph reads the images in its own shape (a chip may take them flat)
        float((simulate(g, images.reshape(len(images), *g.input_shape)).predictions == labels).mean())
        for g in (float_graph, quantized)
    ]
    classes = int(np.asarray(float_graph.key).shape[0])
    return PrecisionCost(int(bits), len(images), accuracy[0], accuracy[1], classes, describe_weights(quantized))


def describe_weights(graph: SpikingGraph) -> str:
    """The integer weights of a quantized graph in words: ``"8-bit"``, ``"4-bit (input layer 8-bit)"``
    (Akida), or ``"4- to 8-bit"``; each layer's width is what its largest weight needs."""
    widths = {node.name: int(np.abs(node.weight).max(initial=0)).bit_length() + 1 for node in graph.nodes
              if isinstance(node, (AffineNode, Conv2dNode))}  # fmt: skip
    if not widths:
        return f"{graph.metadata.get('quantized_bits')}-bit"
    rest = {bits for name, bits in widths.items() if name != graph.encoder}
    encoder = widths.get(graph.encoder)
    if len(rest) == 1 and encoder is not None and encoder not in rest:
        return f"{rest.pop()}-bit (input layer {encoder}-bit)"
    low, high = min(widths.values()), max(widths.values())
    return f"{high}-bit" if low == high else f"{low}- to {high}-bit"
