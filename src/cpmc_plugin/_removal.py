"""Remove chosen channels of dependency groups through torch-pruning: plan, validate, apply.

The sparse-training regularizers decide per root channel of each group whether it
may go (its weights are exactly zero); this module turns those decisions into
torch-pruning removals, checks every one against the unchanged graph first, and
only then prunes. Every group keeps at least one channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ._weight_groups import WeightGroups
from .proximal import group_norms

__all__ = ["Removal", "apply_removals", "plan_removal", "remove_small_groups", "validated"]


@dataclass(frozen=True)
class Removal:
    """Channels ``idxs`` of ``module``'s dimension that ``handler`` prunes (a group's root)."""

    module: nn.Module
    handler: Any
    idxs: tuple[int, ...]
    positions: tuple[int, ...]  # the same channels as positions in the group's root order


def plan_removal(group: tp.Group, remove: torch.Tensor, priority: torch.Tensor) -> Removal | None:
    """The removal of the root channels where ``remove`` is true; the channel of highest
    ``priority`` stays when all of them are chosen. ``None`` when nothing goes."""
    chosen = torch.nonzero(remove).flatten()
    if len(chosen) and len(chosen) == len(remove):
        chosen = chosen[chosen != int(priority.argmax())]  # never empty a layer
    if not len(chosen):
        return None
    root = group[0]
    positions = tuple(int(i) for i in chosen)
    return Removal(
        root.dep.target.module, root.dep.handler, tuple(root.idxs[i] for i in positions), positions
    )


def _splits_conv_groups(group: tp.Group) -> bool:
    """Whether the group touches a grouped (not depthwise) conv: removing arbitrary channels
    there would leave channel counts that its ``groups`` no longer divides."""
    for item in group:
        layer = item.dep.target.module
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1:
            depthwise = layer.groups == layer.in_channels == layer.out_channels
            if not depthwise:
                return True
    return False


def validated(graph: tp.DependencyGraph, removals: Sequence[Removal]) -> list[Removal]:
    """The removals torch-pruning accepts on the graph as it is now (nothing is changed).

    Channels read or written by a grouped, non-depthwise conv are never removed here.
    """
    accepted = []
    for r in removals:
        group = graph.get_pruning_group(r.module, r.handler, list(r.idxs))
        if graph.check_pruning_group(group) and not _splits_conv_groups(group):
            accepted.append(r)
    return accepted


def apply_removals(graph: tp.DependencyGraph, removals: Sequence[Removal]) -> int:
    """Prune every removal (one group at a time, so that index maps through concatenations
    stay current); returns the number of channels removed."""
    removed = 0
    for r in removals:
        group = graph.get_pruning_group(r.module, r.handler, list(r.idxs))
        if graph.check_pruning_group(group):
            group.prune()
            removed += len(r.idxs)
    return removed


def remove_small_groups(
    graph: tp.DependencyGraph,
    groups: Sequence[tp.Group],
    *,
    kinds: tuple[str, ...],
    limit: float,
) -> int:
    """Remove the channels whose weights of ``kinds`` have norm at most ``limit``.

    Groups without any supported weight tensor are left alone (nothing tells whether
    they are zero). Returns the number of channels removed.
    """
    plan = []
    for group in groups:
        built = WeightGroups.from_groups(graph, [group], kinds=kinds)
        if not built.entries:
            continue
        norms = group_norms(built.sq_norms())
        removal = plan_removal(group, norms <= limit, norms)
        if removal is not None:
            plan.append(removal)
    return apply_removals(graph, validated(graph, plan))
