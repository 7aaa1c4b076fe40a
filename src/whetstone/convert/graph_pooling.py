"""How a deployable graph pools: max pooling of spikes, average and adaptive average pooling folded into
the synapses or the threshold that read them, spatial means, and functional poolings with constant arguments.
A part of :mod:`.graph_builder`'s builder (:class:`Pooling` is one of its bases)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph.nodes import DeployError, FlattenNode, MaxPool2dNode, SumPool2dNode
from ..nn.tracing import describe_call
from .graph_term import Term, is_spike, pair, traced_shape

__all__ = ["MAX_POOLS", "Pooling"]


class Pooling:
    """The builder's handlers of pooling calls (mixed into :class:`~.graph_builder._GraphBuilder`, whose state
    and bookkeeping they use)."""

    def _pool_module(self, fx_node: torch.fx.Node, kind: type) -> nn.Module:
        """The pooling module a call stands for: the module itself, or one built from a functional call's
        constant arguments (``F.max_pool2d(x, 2)``, ``F.avg_pool2d(out, out.size(3))``); an adaptive max
        pooling with even windows is the max pooling of those windows."""
        if fx_node.op == "call_module" and not isinstance(self.modules[fx_node.target], nn.AdaptiveMaxPool2d):
            return self.modules[fx_node.target]
        settings = {key: self._constant(fx_node, value) for key, value in fx_node.kwargs.items()}
        names = _POOL_ARGUMENTS[fx_node.target if fx_node.target in _POOL_ARGUMENTS else kind]
        settings.update(zip(names, (self._constant(fx_node, a) for a in fx_node.args[1:])))
        if settings.pop("return_indices", False):
            raise DeployError(f"{describe_call(fx_node)} returns the indices of the maxima, which no neuron computes")
        if fx_node.target is nn.functional.adaptive_max_pool2d or fx_node.op == "call_module":
            (_, height, width), (_, out_h, out_w) = self._shape(fx_node.args[0]), self._shape(fx_node)
            if height % out_h or width % out_w:
                raise DeployError(f"{describe_call(fx_node)}: adaptive max pooling with uneven windows ({height}x{width} -> "
                                  f"{out_h}x{out_w}) cannot be exported; pool to a size that divides the input")  # fmt: skip
            return nn.MaxPool2d((height // out_h, width // out_w))
        return kind(**settings)

    def _constant(self, fx_node: torch.fx.Node, value: Any) -> Any:
        """An argument of a call as the number it is for this input shape (``out.size(3)`` is one)."""
        if not isinstance(value, torch.fx.Node):
            return value
        if "value" not in value.meta:
            raise DeployError(f"{describe_call(fx_node)} takes an argument computed from the data, not from sizes")
        return value.meta["value"]

    def max_pool(self, fx_node: torch.fx.Node) -> None:
        module = self._pool_module(fx_node, nn.MaxPool2d)
        settings = _pool_settings(fx_node, module)
        if pair(module.dilation) != (1, 1):
            raise DeployError(f"{self._name(fx_node)}: dilated max pooling cannot be exported")
        terms = self._terms(fx_node)
        spikes = all(term.spatial is None and self.origin[term.name] is None for term in terms)
        scale = self._common_scale(fx_node, terms) if spikes else 1.0  # max(s x) = s max(x): OR, still scaled
        inputs = [t.name for t in terms] if spikes else self._plain(fx_node, f"max pooling {self._name(fx_node)!r}")
        node = MaxPool2dNode(self._name(fx_node), inputs, self._shape(fx_node), *settings)
        users = list(fx_node.users)
        if any(self.origin[i] is not None for i in inputs) and len(users) == 1 and is_spike(users[0], self.modules):
            # Max pooling of membrane potentials straight into a spike: exported as spike, then pool.
            self.pools_before_spike[fx_node] = (self._shape(fx_node.args[0]), node)
            self.alias[fx_node] = [Term(name) for name in inputs]
            return
        self._require_binary(inputs, f"max pooling {self._name(fx_node)!r}")
        self._add(fx_node, node, Term(node.name, scale))

    def avg_pool(self, fx_node: torch.fx.Node) -> None:
        module = self._pool_module(fx_node, nn.AvgPool2d)
        kernel, stride, padding = _pool_settings(fx_node, module)
        if module.divisor_override is not None or (padding != (0, 0) and not module.count_include_pad):
            raise DeployError(f"{self._name(fx_node)}: only plain average pooling can be exported")
        self._sum_pool(fx_node, kernel, stride, padding)

    def adaptive_avg_pool(self, fx_node: torch.fx.Node) -> None:
        channels, height, width = self._shape(fx_node.args[0])
        _, out_h, out_w = self._shape(fx_node)
        if height % out_h == 0 and width % out_w == 0:  # even windows: an ordinary average pooling
            kernel = (height // out_h, width // out_w)
            self._sum_pool(fx_node, kernel, kernel, (0, 0))
            return
        name = self._name(fx_node)
        term = self._one_term(fx_node, name)
        if not term.plain:
            raise DeployError(f"{name}: adaptive average pooling of already averaged values cannot be folded")
        spatial = _adaptive_average_matrix((height, width), (out_h, out_w))
        self.alias[fx_node] = [Term(term.name, 1.0, spatial, (channels, height, width), name)]

    def _sum_pool(
        self, fx_node: torch.fx.Node, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
    ) -> None:
        """Average pooling = sum pooling (an exact count of the inputs) whose 1 / window scale waits in the term."""
        name = self._name(fx_node)
        terms = self._terms(fx_node)  # a sum (a concatenation's placements) pools as one: pooling is linear
        if any(term.spatial is not None for term in terms) or len({term.scale for term in terms}) != 1:
            raise DeployError(f"{name}: pooling of unevenly averaged values cannot be folded")
        node = SumPool2dNode(name, [term.name for term in terms], self._shape(fx_node), kernel, stride, padding)
        self._add(fx_node, node, Term(name, terms[0].scale / (kernel[0] * kernel[1]), pooled_by=name))

    def spatial_mean(self, fx_node: torch.fx.Node) -> None:
        """``x.mean((2, 3))``: global average pooling (a sum over the whole map, its ``1 / (h w)`` folded into what
        reads it), then a flatten unless ``keepdim``."""
        source = self._shape(fx_node.args[0])
        dims = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get("dim")
        keepdim = fx_node.args[2] if len(fx_node.args) > 2 else fx_node.kwargs.get("keepdim", False)
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        if len(source) != 3 or sorted(d % 4 for d in dims) != [2, 3]:
            self.unsupported_call(fx_node)
        channels, height, width = source
        name = self._name(fx_node)
        term = self._one_term(fx_node, name)
        if term.spatial is not None:
            raise DeployError(f"{name}: the mean of unevenly averaged values cannot be folded")
        pool = SumPool2dNode(name if keepdim else f"{name}.sum", [term.name], (channels, 1, 1), (height, width),
                             (height, width), (0, 0))  # fmt: skip
        scaled = Term(pool.name, term.scale / (height * width), pooled_by=name)
        if keepdim:
            self._add(fx_node, pool, scaled)
            return
        self.nodes.append(pool)
        self.origin[pool.name] = pool.name
        self._add(fx_node, FlattenNode(name, [pool.name], (channels,)), dataclasses.replace(scaled, name=name))


#: The arguments of F.max_pool2d and F.avg_pool2d after the input, in order (they differ from the modules').
_POOL_ARGUMENTS = {
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    nn.functional.adaptive_max_pool2d: ("output_size", "return_indices"),
}
#: Functional max poolings (with constant arguments, as modules would hold them).
MAX_POOLS = {nn.functional.max_pool2d, torch.max_pool2d, nn.functional.adaptive_max_pool2d}


def _adaptive_average_matrix(size: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """The (out_h * out_w, h * w) matrix of ``nn.AdaptiveAvgPool2d(out)`` on one channel of size ``size``:
    window ``i`` spans ``floor(i * h / out_h)`` to ``ceil((i + 1) * h / out_h)``, as PyTorch computes it."""

    def windows(n: int, m: int) -> np.ndarray:
        matrix = np.zeros((m, n), dtype=np.float64)
        for i in range(m):
            start, stop = (i * n) // m, -((-(i + 1) * n) // m)
            matrix[i, start:stop] = 1.0 / (stop - start)
        return matrix

    rows, cols = windows(size[0], out[0]), windows(size[1], out[1])
    return np.kron(rows, cols).astype(np.float32)


def _pool_settings(
    fx_node: torch.fx.Node, module: nn.Module
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Kernel, stride and padding of a pooling; ``ceil_mode=True`` is refused only where it changes the output
    (a partial window at the edge), since the node is written with floor's arithmetic."""
    kernel, stride, padding = (pair(module.kernel_size), pair(module.stride or module.kernel_size),
                               pair(module.padding))  # fmt: skip
    if module.ceil_mode:
        size = traced_shape(fx_node.args[0])[1:]
        floor = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(size, padding, kernel, stride, strict=True))
        if floor != traced_shape(fx_node)[1:]:
            raise DeployError(
                f"{describe_call(fx_node)}: ceil_mode=True adds a partial window at the edge here ({size} -> "
                f"{traced_shape(fx_node)[1:]}, not {floor}), which cannot be exported; use ceil_mode=False"
            )
    return kernel, stride, padding
