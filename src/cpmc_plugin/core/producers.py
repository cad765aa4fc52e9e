"""Which layers make each output of a model: the ones to keep whole for its shape to stay.

A refusal that says "the output would change shape" is only useful if it names every
output that would, and for each the layer a user puts in ``ignored_layers``: the
convolution or Linear layer whose output channels the output carries, not the
BatchNorm or activation after it. :func:`output_producers` finds them by one forward
with autograd on, walking each output's graph back to the nearest such layers. It runs
only when a refusal is being written, so the forward's activations never outlive it.

Example:
    >>> import torch
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    >>> output_producers(net, torch.ones(1, 3, 2, 2)) == [[net[0]]]
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from .layers import ROOT_TYPES
from .probe import run_model

__all__ = ["output_paths", "output_producers", "output_tensors"]


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output, in order (a Hugging Face ``ModelOutput`` too)."""
    found: list[torch.Tensor] = []
    for leaf in tree_flatten(output)[0]:
        if isinstance(leaf, torch.Tensor):
            found.append(leaf)
        elif hasattr(leaf, "to_tuple"):  # Hugging Face ModelOutput
            found.extend(output_tensors(list(leaf.to_tuple())))
    return found


def output_paths(output: Any) -> list[str]:
    """Where each tensor of :func:`output_tensors` sits in ``output``, as Python would
    index it: ``"out"`` for a lone tensor, ``"out[1]"``, ``"out['seg']"``,
    ``"out.logits"`` (a Hugging Face ``ModelOutput``). Empty when the structure holds
    something this walk does not know (a registered pytree class), so that callers can
    fall back to positions.

    Example:
        >>> import torch
        >>> output_paths({"seg": torch.ones(1), "aux": [torch.ones(1), None]})
        ["out['seg']", "out['aux'][0]"]
    """
    paths: list[str] = []

    def walk(value: Any, path: str) -> bool:
        if isinstance(value, torch.Tensor):
            paths.append(path)
        elif hasattr(value, "to_tuple") and hasattr(value, "keys"):  # ModelOutput
            return all(walk(item, f"{path}.{key}") for key, item in value.items())
        elif isinstance(value, dict):
            return all(walk(item, f"{path}[{key!r}]") for key, item in value.items())
        elif isinstance(value, (tuple, list)):
            fields = getattr(value, "_fields", None)  # a namedtuple
            return all(
                walk(item, f"{path}.{fields[i]}" if fields else f"{path}[{i}]")
                for i, item in enumerate(value)
            )
        elif value is not None and tree_flatten(value)[0] != [value]:
            return False  # a container this walk does not know
        return True

    known = walk(output, "out")
    return paths if known and len(paths) == len(output_tensors(output)) else []


def output_producers(model: nn.Module, example_inputs: Any) -> list[list[nn.Module]]:
    """For each output tensor of ``model`` on ``example_inputs``, the nearest convolution
    or Linear layers it was computed from (through norms, activations, adds, ...).

    An output that no such layer feeds (or a model without trainable parameters, whose
    forward builds no autograd graph) gets an empty list. Eval mode; the mode and
    ``requires_grad`` of every parameter are left as they were.
    """
    makers: dict[Any, nn.Module] = {}  # autograd node of a layer's output -> the layer

    def remember(module: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            makers[out.grad_fn] = module

    layers = [m for m in model.modules() if isinstance(m, ROOT_TYPES)]
    handles = [m.register_forward_hook(remember) for m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            tensors = output_tensors(run_model(model, example_inputs))
            return [_nearest(t.grad_fn, makers) for t in tensors]
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def _nearest(node: Any, makers: dict[Any, nn.Module]) -> list[nn.Module]:
    """The layers of ``makers`` first reached walking back from ``node`` along each path."""
    found: dict[nn.Module, None] = {}
    seen: set[int] = set()
    todo = [node] if node is not None else []
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current in makers:
            found.setdefault(makers[current])
            continue
        todo.extend(n for n, _ in current.next_functions if n is not None)
    return list(found)
