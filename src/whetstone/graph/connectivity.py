"""A graph as populations of neurons and the synapses into each (:func:`connectivity`): what a chip or a
neural simulator holds, whatever nodes the graph was built from.

Every spiking layer (and every max pooling, the OR of a window of spikes: neurons firing on a count >= 1)
is a population. Whatever lies between populations (dense and convolutional layers, sum and average
poolings, flattening, sums of branches) is linear, so each population's input is a sum, over the populations
it reads, of one sparse matrix times their spikes, plus a bias: the matrices are composed here, once, in
float64, exactly for integer weights. A population that reads the input itself (the encoder) reads
real-valued pixels, which no spike can carry: a chip runs it on the host.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .nodes import (
    AffineNode,
    AvgPool2dNode,
    Conv2dNode,
    DeployError,
    FlattenNode,
    GraphNode,
    InputNode,
    MaxPool2dNode,
    Pool2dNode,
    SpikeNode,
    SpikingGraph,
    SumPool2dNode,
)

__all__ = ["Population", "connectivity"]

#: A node's value as linear maps of what it reads: population (or input) name -> (sparse matrix, bias).
_Reach = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Population:
    """Neurons firing on ``sum over sources of matrix @ spikes + bias >= threshold`` (per neuron)."""

    name: str
    shape: tuple[int, ...]
    sources: dict[str, torch.Tensor]  # source population (or the input node) -> sparse (size, source size) float64
    bias: np.ndarray  # float64, one per neuron
    threshold: np.ndarray  # float64, one per neuron
    reads_input: bool  # reads the graph's real-valued input (the encoder)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def connectivity(graph: SpikingGraph) -> list[Population]:
    """The populations of ``graph`` in order of computation, each with its synapses (see the module docs).
    ``DeployError`` naming the node for a node that is not linear between two populations."""
    by_name = {node.name: node for node in graph.nodes}
    shapes = {node.name: node.shape for node in graph.nodes}
    reach: _Reach = {}

    def summed(names: list[str]) -> _Reach:
        """The sum of these nodes' values, as linear maps of the populations (or the input) they read."""
        total: _Reach = {}
        for name in names:
            for source, (matrix, bias) in contributions(name).items():
                if source in total:
                    matrix, bias = total[source][0] + matrix, total[source][1] + bias
                total[source] = (matrix, bias)
        return total

    def contributions(name: str) -> _Reach:
        """source population (or the input) -> (matrix, bias) of ``name``'s value as a linear map of it."""
        if name not in reach:
            node = by_name[name]
            if isinstance(node, (InputNode, SpikeNode, MaxPool2dNode)):
                size = math.prod(node.shape)
                reach[name] = {name: (_eye(size), torch.zeros(size, dtype=torch.float64))}
            else:
                reach[name] = _through(node, shapes[node.inputs[0]], summed(node.inputs))
        return reach[name]

    populations = []
    for node in graph.nodes:
        if isinstance(node, MaxPool2dNode):  # the OR of a window of spikes: a count >= 1
            window = SumPool2dNode(node.name, node.inputs, node.shape, node.kernel_size, node.stride, node.padding)
            sources, threshold = _through(window, shapes[node.inputs[0]], summed(node.inputs)), np.ones(1)
        elif isinstance(node, SpikeNode):
            sources, threshold = summed(node.inputs), np.asarray(node.threshold, dtype=np.float64)
        else:
            continue
        size = math.prod(node.shape)
        bias = sum((bias for _, bias in sources.values()), start=torch.zeros(size, dtype=torch.float64)).numpy()
        populations.append(Population(
            node.name, tuple(node.shape), {source: matrix for source, (matrix, _) in sources.items()}, bias,
            np.broadcast_to(threshold, node.shape).reshape(-1).astype(np.float64), graph.nodes[0].name in sources,
        ))  # fmt: skip
    return populations


def _through(node: GraphNode, in_shape: tuple[int, ...], sources: _Reach) -> _Reach:
    """``sources`` carried through a linear node: its matrix times each, its bias added once (a population's bias
    is the sum over its sources: a layer reading two populations would otherwise count its own bias twice)."""
    linear, own_bias = _linear_map(node, in_shape)
    carried: _Reach = {}
    for index, (source, (matrix, bias)) in enumerate(sources.items()):
        carried[source] = (_compose(linear, matrix), _apply(linear, bias) + (own_bias if index == 0 else 0.0))
    return carried


def _eye(size: int) -> torch.Tensor:
    index = torch.arange(size)
    return _sparse(torch.stack([index, index]), torch.ones(size, dtype=torch.float64), (size, size))


def _sparse(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=True).coalesce()


def _compose(later: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """``later @ earlier`` of two sparse matrices (PyTorch warns that it goes through its beta CSR format)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(later, earlier).coalesce()


def _apply(linear: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(linear, vector[:, None])[:, 0]


def _linear_map(node: GraphNode, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear node as a sparse (out, in) float64 matrix and its bias (zero padding adds nothing)."""
    size_in, size_out = math.prod(in_shape), math.prod(node.shape)
    if isinstance(node, FlattenNode):
        return _eye(size_in), torch.zeros(size_out, dtype=torch.float64)
    if isinstance(node, AffineNode):
        weight = torch.as_tensor(np.asarray(node.weight, dtype=np.float64))
        bias = np.broadcast_to(np.asarray(node.bias, dtype=np.float64), (size_out,))
        return weight.to_sparse().coalesce(), torch.as_tensor(bias.copy())
    if isinstance(node, Conv2dNode):
        weight = np.asarray(node.weight, dtype=np.float64)
        rows, cols, values = _conv_entries(weight, node.groups, in_shape, node.shape, node.stride, node.padding,
                                           node.dilation)  # fmt: skip
        bias = np.repeat(np.asarray(node.bias, dtype=np.float64), math.prod(node.shape[1:]))
    elif isinstance(node, Pool2dNode) and not isinstance(node, MaxPool2dNode):
        channels = in_shape[0]  # a pooling is a depthwise convolution of ones (of 1 / window, averaging)
        k = node.kernel_size[0] * node.kernel_size[1]
        weight = np.full((channels, 1, *node.kernel_size), 1.0 / k if isinstance(node, AvgPool2dNode) else 1.0)
        rows, cols, values = _conv_entries(weight, channels, in_shape, node.shape, node.stride, node.padding, (1, 1))
        bias = np.zeros(size_out)
    else:
        raise DeployError(f"{node.name}: a {node.op} between spiking layers has no synapses that compute it")
    keep = values != 0
    matrix = _sparse(
        torch.as_tensor(np.stack([rows[keep], cols[keep]])), torch.as_tensor(values[keep]), (size_out, size_in)
    )
    return matrix, torch.as_tensor(bias)


def _conv_entries(weight: np.ndarray, groups: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                  stride: tuple[int, int], padding: tuple[int, int],
                  dilation: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(rows, cols, values) of a (grouped) convolution's (out, in) matrix, one kernel entry at a time."""
    c_out, c_group, kh, kw = weight.shape
    _, height, width = in_shape
    _, h_out, w_out = out_shape
    oy, ox = np.meshgrid(np.arange(h_out), np.arange(w_out), indexing="ij")
    out_index = (np.arange(c_out)[:, None, None] * h_out + oy) * w_out + ox  # (c_out, h_out, w_out)
    first_input = (np.arange(c_out) // (c_out // groups)) * c_group  # each output channel's group's first input
    rows, cols, values = [], [], []
    for ci in range(c_group):
        for ky in range(kh):
            for kx in range(kw):
                iy = oy * stride[0] - padding[0] + ky * dilation[0]
                ix = ox * stride[1] - padding[1] + kx * dilation[1]
                inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
                position = iy[inside] * width + ix[inside]
                rows.append(out_index[:, inside].ravel())
                cols.append(((first_input + ci)[:, None] * (height * width) + position[None, :]).ravel())
                values.append(np.repeat(weight[:, ci, ky, kx], int(inside.sum())))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)
