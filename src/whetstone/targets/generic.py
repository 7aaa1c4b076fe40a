"""``generic``: the portable NIR file, the default.

Only the node types the hardware toolchains read (NIR's support table): Input, Output, Affine, Conv2d,
Flatten, SumPool2d and IF; max pooling of spikes as SumPool2d + IF firing on a count of 0.5; thresholds
stored for NIR's own rule, ``v > v_threshold`` (one float32 below the trained threshold). Run it for one
time step from zero membrane potential. Each consumer's own target adapts it further where that consumer
differs (a ``>=`` comparison, AvgPool2d instead of SumPool2d, channels-last layout, no IF node).
"""

from __future__ import annotations

from ..export.nir import GENERIC
from .base import Target

TARGET = Target(
    name="generic",
    consumer="any NIR reader",
    summary="portable NIR: Affine, Conv2d, Flatten, SumPool2d, IF (v > v_threshold)",
    style=GENERIC,
    runs_in_time=True,
    unavailable="the generic file names no software of its own; run it in the reference simulator (whetstone simulate "
    "FILE --dataset D), or write the file for a consumer and verify it there (export --target norse --verify)",
)
