"""The planning target of each step, and the quantiles of isomorphic groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp

from ..cost.types import GroupUnits

__all__ = ["isomorphic_quantiles", "next_planning_target"]


def next_planning_target(
    tried: list[tuple[float, float]], target: float, initial: float
) -> float | None:
    """The next planning target, from the (planning target, measured) pairs so far.

    The measured cost grows with the planning target. Scale the planned removal by
    how much of it the last plan achieved (a secant through the origin of removal);
    when both sides of the target have been seen, stay inside that bracket (bisect
    if the secant leaves it). ``None`` when no new planning target is left to try.
    """
    planning, measured = tried[-1]
    wanted = initial - target
    planned = initial - planning
    achieved = initial - measured
    guess = initial - planned * wanted / achieved if achieved > 0 else initial - 2 * planned
    low = max((p for p, m in tried if m < target), default=None)  # removed too much
    high = min((p for p, m in tried if m > target), default=None)  # removed too little
    if low is not None and high is not None and not min(low, high) < guess < max(low, high):
        guess = (low + high) / 2
    guess = min(max(guess, 0.0), initial)
    if any(abs(guess - p) <= 1e-9 * max(initial, 1.0) for p, _ in tried):
        return None
    return guess


def _isomorphic_key(graph: tp.DependencyGraph, group: tp.Group) -> tuple[Any, ...]:
    """The structure of a group, as the host's isomorphic pruning compares it."""
    return tuple(
        (
            type(item.dep.source.module).__name__,
            type(item.dep.target.module).__name__,
            graph.is_out_channel_pruning_fn(item.dep.handler),
        )
        for item in group
    )


def isomorphic_quantiles(
    graph: tp.DependencyGraph, units: Sequence[GroupUnits], scores: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Isomorphic pruning under a budget: rank channels only against the channels of
    groups with the same structure. Each score becomes its rank quantile within its
    scope, so a global threshold removes the same fraction of every scope."""
    scopes: dict[tuple[Any, ...], list[int]] = {}
    for i, unit in enumerate(units):
        scopes.setdefault(_isomorphic_key(graph, unit.group), []).append(i)
    out = list(scores)
    for members in scopes.values():
        joined = torch.cat([scores[i] for i in members])
        rank = torch.empty(len(joined))
        rank[torch.argsort(joined, stable=True)] = torch.arange(1, len(joined) + 1).float()
        quantiles = (rank / len(joined)).split([len(scores[i]) for i in members])
        for i, q in zip(members, quantiles, strict=True):
            out[i] = q
    return out
