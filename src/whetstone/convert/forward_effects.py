"""What a traced forward leaves behind: statements of a module's own ``forward`` that torch.fx ran once,
while tracing, and that a ``GraphModule`` never runs again (a print, a file or a log written, state kept on
the module). :func:`~whetstone.convert.spikify.spikify` names them when it returns a traced model."""

from __future__ import annotations

import ast
import functools
import inspect
import os
import textwrap

import torch
from torch import nn

__all__ = ["dropped_statements"]

#: Calls whose whole point is an effect outside the tensors.
_CALLS = {"print", "open", "input", "exec", "eval", "breakpoint"}
#: Modules and loggers whose functions act on the world.
_OBJECTS = {"logging", "logger", "log", "warnings", "os", "sys", "shutil", "subprocess", "pickle", "json", "time"}
#: Methods that change a container kept on the module (``self.seen.append(x)``).
_MUTATORS = {"append", "extend", "add", "update", "insert", "pop", "clear", "setdefault", "write"}


def dropped_statements(model: nn.Module, traced: torch.fx.GraphModule) -> list[str]:
    """Each statement with an effect outside the tensors in the forwards that ``traced`` inlined (every module
    of ``model`` whose own code was traced through, rather than called as one leaf), as ``path (file:line:
    `code`)``."""
    leaves = {node.target for node in traced.graph.nodes if node.op == "call_module"}
    found = []
    for path, module in model.named_modules():
        inside_leaf = any(path == leaf or path.startswith(f"{leaf}.") for leaf in leaves)
        forward = type(module).forward
        if inside_leaf or (getattr(forward, "__module__", "") or "").startswith("torch."):
            continue
        for line, code in _effects(forward):
            found.append(f"{path or type(model).__name__} ({line}: `{code}`)")
    return found


def _effects(forward) -> list[tuple[str, str]]:
    """(``file:line``, the line's code) of each statement of ``forward`` with an effect outside the tensors."""
    path, found = _scan(forward)
    shown = os.path.relpath(path) if os.path.abspath(path).startswith(os.getcwd() + os.sep) else path
    return [(f"{shown}:{line}", code) for line, code in found]


@functools.lru_cache(maxsize=1024)
def _scan(forward) -> tuple[str, tuple[tuple[int, str], ...]]:
    """The source file of ``forward`` and (line number, code) of each statement with an effect, read and parsed
    once per function: a model's hundred blocks share one forward, and spikify is called many times a run."""
    try:
        lines, first = inspect.getsourcelines(forward)
        path = inspect.getsourcefile(forward) or "?"
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):  # no source to read (built at run time, compiled): nothing to say
        return "?", ()
    hits = sorted({node.lineno for node in ast.walk(tree) if _has_effect(node)})
    return path, tuple((first + n - 1, lines[n - 1].strip()) for n in hits)


def _has_effect(node: ast.AST) -> bool:
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return True
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):  # state kept on the module: self.x = ...
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(_on_self(target) for target in targets)
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in _CALLS
    if isinstance(func, ast.Attribute):
        return (isinstance(func.value, ast.Name) and func.value.id in _OBJECTS) or (
            func.attr in _MUTATORS and _on_self(func.value)
        )
    return False


def _on_self(node: ast.AST) -> bool:
    """Whether ``node`` is an attribute (or item) of ``self``: ``self.x``, ``self.x.y``, ``self.x[i]``."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
        if isinstance(node, ast.Name) and node.id == "self":
            return True
    return False
