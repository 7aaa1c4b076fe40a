"""``akida``: an ``akida.Model`` for BrainChip's Akida (AKD1000), run in Akida's own engine, and a fit report
from Akida's own mapper on the virtual AKD1000.

Akida's 1.0 layers with ``act_bits = 1`` are binary spiking layers (measured with akida 2.19.3): a
``FullyConnected`` or ``Convolutional`` layer emits 1 where its integer potential ``sum w x`` exceeds the
neuron's (per-unit or per-filter) integer threshold, 0 elsewhere, and can max-pool its output. Whetstone's
``S + b >= T`` over integer sums is Akida's ``S > T - b - 1``, so biases and thresholds become Akida
thresholds exactly. The encoder is an ``InputConvolutional`` (the only 1.0 layer with 8-bit weights) on the
8-bit pixels ``p``: ``sum w p / 255 + b >= T`` is ``sum w p > ceil(255 (T - b)) - 1``; a dense encoder is a
convolution whose kernel is the whole image (zero-padded to odd sides, which Akida's kernels have: the
image gets a zero row and column). The other layers hold 1-, 2- or 4-bit weights: the file is the
graph quantized to 4 bits with an 8-bit encoder, each filter or unit scaled by its own largest weight (its
thresholds are per filter: :func:`~whetstone.graph.quantization.quantize` with ``per_channel``). Akida's tensors
are channels-last and its ``Convolutional`` flips the kernel (a true convolution, measured; the input layer
does not); a fully connected layer after a feature map pairs its weights with the map flattened channel, width,
height (measured). 1.0 layers
form a chain (no skip connections: ``Add`` is an Akida 2 layer) and pad "same" or not at all.

``akida`` is BrainChip's proprietary engine from the package index (``pip install akida==2.19.3``, numpy only,
Python 3.11); the file is Akida's own ``.fbz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..graph.nodes import AffineNode, Conv2dNode, DeployError, FlattenNode, MaxPool2dNode, SpikeNode, SpikingGraph
from ..graph.quantization import quantize
from ..utils.files import atomic_write, scratch_folder
from .base import FitCheck, FitReport, Target, chain_only, weight_bits
from .consumer_process import ConsumerError

__all__ = ["TARGET", "build_model", "fit"]

WEIGHT_BITS, INPUT_WEIGHT_BITS, INPUT_LEVELS = 4, 8, 255
INSTALL = "pip install akida==2.19.3 (BrainChip's engine, Python 3.11)"
SOURCE = "akida 2.19.3 (its mapper on the virtual AKD1000)"


@dataclass(frozen=True)
class AkidaLayer:
    """One Akida layer: a weighted layer, its spiking layer and the max pooling of its spikes."""

    kind: str  # "input", "conv" or "dense"
    name: str  # the spiking layer it computes (the pooling's, when it pools)
    weights: np.ndarray  # Akida's layout: (kh, kw, c_in, filters)
    thresholds: np.ndarray  # int32, one per filter or unit
    padding: str  # "valid" or "same"
    stride: tuple[int, int]
    pool: tuple[tuple[int, int], tuple[int, int]] | None  # (size, stride) of max pooling
    input_shape: tuple[int, int, int]  # (h, w, c) it reads


def plan(graph: SpikingGraph) -> list[AkidaLayer]:
    """The graph as Akida 1.0 layers; ``DeployError`` naming the layer for what they cannot express."""
    chain_only(graph, "Akida")
    nodes = list(graph.nodes)
    shape = nodes[0].shape
    hwc = (shape[1], shape[2], shape[0]) if len(shape) == 3 else (1, 1, shape[0])
    layers: list[AkidaLayer] = []
    i = 1
    while i < len(nodes):
        node = nodes[i]
        if isinstance(node, FlattenNode):
            i += 1
            continue
        if not isinstance(node, (AffineNode, Conv2dNode)):
            raise DeployError(f"{node.name}: Akida 1.0 layers cannot compute a {node.op} here")
        if i + 1 >= len(nodes) or not isinstance(nodes[i + 1], SpikeNode):
            raise DeployError(f"{node.name}: Akida needs a spiking layer after each weighted layer")
        spike = nodes[i + 1]
        pool = None
        if i + 2 < len(nodes) and isinstance(nodes[i + 2], MaxPool2dNode):
            pooling = nodes[i + 2]
            if pooling.padding != (0, 0):
                raise DeployError(
                    f"{pooling.name}: Akida pools without padding; this pooling pads by {pooling.padding}"
                )
            pool = (tuple(pooling.kernel_size), tuple(pooling.stride))
        first = not layers
        weights, padding, stride = _kernel(node, hwc, first)
        if first and isinstance(node, AffineNode):  # Akida's kernels have odd sides: pad the image by zeros
            weights = np.pad(weights, ((0, 1 - hwc[0] % 2), (0, 1 - hwc[1] % 2), (0, 0), (0, 0)))
            hwc = (weights.shape[0], weights.shape[1], hwc[2])
        thresholds = _thresholds(node, spike, first)
        name = nodes[i + 2].name if pool else spike.name
        layers.append(AkidaLayer("input" if first else "conv" if isinstance(node, Conv2dNode) else "dense", name,
                                 weights, thresholds, padding, stride, pool, hwc))  # fmt: skip
        out = nodes[i + 2].shape if pool else spike.shape
        hwc = (out[1], out[2], out[0]) if len(out) == 3 else (1, 1, out[0])
        i += 3 if pool else 2
    if not layers or layers[-1].name != graph.output:
        raise DeployError(f"{graph.output}: Akida's model must end in the output spiking layer")
    return layers


def _kernel(node: AffineNode | Conv2dNode, hwc: tuple[int, int, int], first: bool) -> tuple[np.ndarray, str, tuple]:
    """Weights in Akida's layout (kh, kw, c_in, filters), padding and stride; a dense layer as a convolution
    whose kernel is its whole input (the encoder) or as Akida's fully connected layer (1x1xN after flattening)."""
    h, w, c = hwc
    if isinstance(node, AffineNode):
        kernel = node.weight.reshape(len(node.weight), c, h, w)  # our flattening is channel, height, width
        if first:
            return kernel.transpose(2, 3, 1, 0), "valid", (1, 1)
        # measured: FullyConnected pairs its weights with the map flattened channel, width, height
        return kernel.transpose(1, 3, 2, 0).reshape(1, 1, h * w * c, len(node.weight)), "valid", (1, 1)
    if node.groups != 1 or node.dilation != (1, 1):
        raise DeployError(f"{node.name}: Akida 1.0 convolutions have no groups or dilation")
    kh, kw = node.weight.shape[2:]
    same = node.padding == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 == 1 and kw % 2 == 1
    if node.padding != (0, 0) and not same:
        raise DeployError(f"{node.name}: Akida pads 'same' or not at all; this convolution pads by {node.padding}")
    if node.stride != (1, 1) and not first:
        raise DeployError(
            f"{node.name}: Akida 1.0 strides only its input layer; this convolution strides {node.stride}"
        )
    kernel = node.weight.transpose(2, 3, 1, 0)
    if not first:  # measured: Akida's Convolutional convolves (kernel flipped), its InputConvolutional correlates
        kernel = kernel[::-1, ::-1]
    return kernel, "same" if node.padding != (0, 0) else "valid", tuple(node.stride)


def _thresholds(node: AffineNode | Conv2dNode, spike: SpikeNode, first: bool) -> np.ndarray:
    """Akida's thresholds (fires on ``potential > threshold``) for ``S + b >= T``; the encoder's potential is
    ``sum w p`` over 8-bit pixels, 255 times ours."""
    theta = np.broadcast_to(np.asarray(spike.threshold, np.float64), spike.shape).reshape(len(node.bias), -1)
    if not np.all(theta == theta[:, :1]):
        raise DeployError(f"{spike.name}: Akida has one threshold per filter; this layer's vary within a channel")
    gap = theta[:, 0] - np.asarray(node.bias, np.float64)
    if first:
        return (np.ceil(INPUT_LEVELS * gap - 1e-6) - 1).astype(np.int32)
    if not np.all(gap == np.round(gap)):
        raise DeployError(f"{spike.name}: Akida holds integer thresholds; export with --target akida quantizes")
    return (np.ceil(gap) - 1).astype(np.int32)


def _akida() -> Any:
    try:
        import akida
    except ImportError as error:
        raise ImportError(f"Akida models need akida: {INSTALL} ({error})") from None
    except Exception as error:  # noqa: BLE001 - installed but broken (a missing library, another version's files)
        said = " ".join(str(error).split())[:300]
        raise ConsumerError(f"Akida is installed but cannot be imported: {type(error).__name__}: {said}") from None
    return akida


def build_model(graph: SpikingGraph) -> Any:
    """The ``akida.Model`` of an integer graph (:func:`_prepare`'s); ``ImportError`` without akida."""
    akida = _akida()

    layers = plan(graph)
    model = akida.Model()
    for index, layer in enumerate(layers):
        kh, kw, _, filters = layer.weights.shape
        options: dict[str, Any] = {"activation": True, "act_bits": 1}
        if layer.pool:
            options.update(pool_type=akida.PoolType.Max, pool_size=layer.pool[0], pool_stride=layer.pool[1])
        padding = akida.Padding.Same if layer.padding == "same" else akida.Padding.Valid
        if layer.kind == "input":
            model.add(akida.InputConvolutional(input_shape=layer.input_shape, kernel_size=(kh, kw), filters=filters,
                                               name=f"L{index}", padding=padding, kernel_stride=layer.stride,
                                               weights_bits=INPUT_WEIGHT_BITS, **options))  # fmt: skip
        elif layer.kind == "conv":
            model.add(akida.Convolutional(kernel_size=(kh, kw), filters=filters, name=f"L{index}", padding=padding,
                                          weights_bits=WEIGHT_BITS, **options))  # fmt: skip
        else:
            model.add(akida.FullyConnected(units=filters, name=f"L{index}", weights_bits=WEIGHT_BITS,
                                           **{k: v for k, v in options.items() if not k.startswith("pool")}))  # fmt: skip
        added = model.layers[-1]
        added.set_variable("weights", layer.weights.astype(np.int8))
        added.set_variable("threshold", layer.thresholds)
    return model


def _prepare(graph: SpikingGraph) -> SpikingGraph:
    held = weight_bits(graph)
    if held is None or held > WEIGHT_BITS:
        graph = quantize(graph, WEIGHT_BITS, INPUT_LEVELS, encoder_bits=INPUT_WEIGHT_BITS, per_channel=True)
    plan(graph)
    return graph


def _write(graph: SpikingGraph, path: Path, replace: bool) -> Path:
    model = build_model(graph)
    with scratch_folder("akida") as folder:  # Akida saves to a path only
        model.save(str(Path(folder) / "model.fbz"))
        payload = (Path(folder) / "model.fbz").read_bytes()
    return atomic_write(path, payload, replace)


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    akida = _akida()
    model = akida.Model(str(path))
    h, w, c = model.input_shape
    pixels = np.rint(np.asarray(images, np.float32).reshape(len(images), c, -1) * INPUT_LEVELS).astype(np.uint8)
    # A dense encoder's kernel has odd sides: an even side of the image was padded by a zero row or column.
    height, width = next((h - dh, w - dw) for dh in (0, 1) for dw in (0, 1) if (h - dh) * (w - dw) == pixels.shape[2])
    pixels = pixels.reshape(len(images), c, height, width)
    pixels = np.pad(pixels, ((0, 0), (0, 0), (0, h - height), (0, w - width)))
    out = model.forward(np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)))
    return out.transpose(0, 3, 1, 2).reshape(len(images), -1)  # channel, height, width: the graph's order


def fit(graph: SpikingGraph) -> FitReport:
    """Akida's own mapper on the virtual AKD1000: each layer on the chip's neural processors (NPs) or, where
    the mapper cannot place it, in Akida's software backend on the host (with the mapper's reason)."""
    akida = _akida()

    report = FitReport("Akida AKD1000 (virtual device)")
    model = build_model(_prepare(graph))
    device = akida.AKD1000()
    reason = ""
    try:
        model.map(device, hw_only=True)
    except RuntimeError as error:  # Akida's mapper says why in its own words; map again, the rest on the host
        reason = str(error).splitlines()[0]
        try:
            model.map(device)
        except RuntimeError as again:
            report.checks.append(FitCheck("network", "maps on the AKD1000", str(again).splitlines()[0], False, SOURCE))
            return report
    for sequence in model.sequences:
        hardware = sequence.backend != akida.BackendType.Software
        for number, step in enumerate(sequence.passes):
            for layer in step.layers:
                units = [] if not hardware or layer.mapping is None else [unit.type.name for unit in layer.mapping.nps]
                where = f"on the chip, pass {number + 1}: {', '.join(units)}" if hardware else "on the host (software)"
                # A layer Akida runs in software does not run on the chip: every image goes chip, host, chip.
                report.checks.append(FitCheck(layer.name, "on the chip (Akida's mapper)", where, hardware, SOURCE))
    # Akida's own count: neural processors, the input layer's HRC (its own block) not among them.
    counts = {kind.name: count for kind, count in model.component_count.items()}
    nps = sum(count for kind, count in counts.items() if kind != "HRC")
    available = len(device.mesh.nps)
    report.checks.append(FitCheck("network", f"<= {available} NPs", f"{nps}" + (" (+ the HRC)" if "HRC" in counts else ""),
                                  nps <= available, SOURCE))  # fmt: skip
    external = int(model.external_memory_size)
    report.checks.append(FitCheck("network", "external memory (the board's, not the chip's)", f"{external:,} bytes", True,
                                  SOURCE))  # fmt: skip
    if reason:
        report.notes.append(f"not all in hardware; Akida's mapper: {reason}")
    report.notes.append(f"weights: {INPUT_WEIGHT_BITS}-bit input layer, {WEIGHT_BITS}-bit others (Akida 1.0 layers)")
    return report


TARGET = Target(
    name="akida",
    consumer="Akida",
    aliases=("akd1000",),
    summary="an akida.Model: 1-bit activations, 8-bit input layer, 4-bit weights elsewhere; run in Akida's engine",
    prepare=_prepare,
    run=_run,
    unavailable=INSTALL,
    fit=fit,
    format="fbz",
    write=_write,
)
