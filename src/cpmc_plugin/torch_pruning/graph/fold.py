"""Fold what a constant channel adds into the biases of the layers that read it.

A channel whose producer is masked out (or whose BatchNorm scale is zero) no longer
depends on the input: it holds one value ``c`` everywhere, its norm layer's shift
through the activations after it. Removing the channel would drop what ``c`` adds
to the layers that read it. For a Linear, and for a conv without zero padding, that
is one number per output, ``c`` times the sum of the weights that read the channel,
which a bias takes exactly. A zero-padded conv sees ``c`` only inside the border
(its output near the border differs), so no bias reproduces it: such a channel can
only stay. BN-FISTA's removal and the NNI ``speedup`` share this module.

The constant is read from a forward pass on example inputs: for every layer that
reads the channel (and does not also produce it), the channel's input column must
hold a single value over the batch and all positions.

Example:
    >>> import torch, torch.nn as nn
    >>> fc = nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[2.0, 3.0]])); _ = fc.bias.zero_()
    >>> apply_fold(Fold(fc, index=1, value=0.5))   # input 1 always holds 0.5
    >>> fc.bias.item()                             # 3.0 * 0.5
    1.5
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.probe import forward_once
from ...core.torch_private import ConvNd
from .group_stats import is_out_item
from .indexing import item_positions, root_lookup

__all__ = [
    "Fold",
    "FoldPlan",
    "apply_fold",
    "can_fold",
    "constant",
    "layer_inputs",
    "plan_folds",
    "readers",
]


@dataclass(frozen=True)
class Fold:
    """Add ``value`` times input column ``index`` of ``layer``'s weight to its bias."""

    layer: nn.Module
    index: int
    value: float


@dataclass
class FoldPlan:
    """Which of a group's chosen root channels can go, and what their removal needs.

    ``folds`` pairs each fold with the root position of its channel; ``blockers``
    names, per root position that cannot go, the layers that read a constant from it
    that no bias reproduces (or whose input is not constant).
    """

    foldable: torch.Tensor
    folds: list[tuple[int, Fold]] = field(default_factory=list)
    blockers: dict[int, list[nn.Module]] = field(default_factory=dict)


def readers(group: tp.Group) -> list[tp.Dependency]:
    """The group's in-channel items on layers that only read the channel (not produce it)."""
    producers = {item.dep.target.module for item in group if is_out_item(group, item.dep.handler)}
    return [
        item
        for item in group
        if not is_out_item(group, item.dep.handler) and item.dep.target.module not in producers
    ]


def layer_inputs(
    model: nn.Module, layers: set[nn.Module], example_inputs: Any
) -> dict[nn.Module, torch.Tensor | None]:
    """The input of every layer on ``example_inputs`` (``None`` for a layer called twice)."""
    seen: dict[nn.Module, list[torch.Tensor]] = {layer: [] for layer in layers}

    def record(layer: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen[layer].append(args[0].detach())

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        forward_once(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: (found[0] if len(found) == 1 else None) for layer, found in seen.items()}


def constant(layer: nn.Module, inputs: torch.Tensor | None, index: int) -> float | None:
    """The value input channel ``index`` of ``layer`` holds everywhere, if it is constant."""
    if inputs is None:
        return None
    column = inputs[..., index] if isinstance(layer, nn.Linear) else inputs[:, index]
    first = column.flatten()[0]
    return float(first) if bool((column == first).all()) else None


def can_fold(layer: nn.Module) -> bool:
    """A constant input channel adds a constant per output: a Linear, an unpadded conv."""
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer, ConvNd) and not layer.transposed:
        padding = layer.padding
        return padding == "valid" or (not isinstance(padding, str) and not any(padding))
    return False


def plan_folds(
    group: tp.Group, chosen: torch.Tensor, inputs: dict[nn.Module, torch.Tensor | None]
) -> FoldPlan:
    """Which ``chosen`` root channels of ``group`` can go exactly, and the folds they need.

    ``inputs`` holds the input of every reader of the group (see :func:`layer_inputs`).
    A channel whose constant is 0 needs nothing; a non-zero constant needs a fold into
    every reader, which only a Linear or an unpadded conv can take.
    """
    lookup = root_lookup(group)
    plan = FoldPlan(foldable=chosen.clone())
    for item in readers(group):
        layer = item.dep.target.module
        where = item_positions(lookup, item).tolist()
        for idx, at in zip(item.idxs, where, strict=True):
            if at < 0 or not bool(chosen[at]):
                continue
            value = constant(layer, inputs.get(layer), int(idx))
            if value is None or (value != 0 and not can_fold(layer)):
                plan.foldable[at] = False
                blocked = plan.blockers.setdefault(at, [])
                if layer not in blocked:
                    blocked.append(layer)
            elif value != 0:
                plan.folds.append((at, Fold(layer, int(idx), value)))
    return plan


@torch.no_grad()
def apply_fold(fold: Fold) -> None:
    """``bias += value * (what input column index adds to every output)``.

    A bias is created (zeros) when the layer has none.
    """
    layer = fold.layer
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    if isinstance(layer, nn.Linear):
        added = weight[:, fold.index] * fold.value
    else:
        assert isinstance(layer, ConvNd)
        per_group_in, per_group_out = weight.shape[1], weight.shape[0] // layer.groups
        g, local = divmod(fold.index, per_group_in)
        added = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        rows = slice(g * per_group_out, (g + 1) * per_group_out)
        added[rows] = weight[rows, local].flatten(1).sum(1) * fold.value
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(added))
    layer.bias.add_(added)
