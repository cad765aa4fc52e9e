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

__all__ = ["Removal", "apply_removals", "plan_removal", "validated"]


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


def validated(graph: tp.DependencyGraph, removals: Sequence[Removal]) -> list[Removal]:
    """The removals torch-pruning accepts on the graph as it is now (nothing is changed)."""
    return [
        r
        for r in removals
        if graph.check_pruning_group(graph.get_pruning_group(r.module, r.handler, list(r.idxs)))
    ]


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
