"""Units removed before the ranking starts (plain tensor math).

A planner's cost terms scale with the kept fraction of their dimensions. Removing
``r`` of a dimension's ``n`` indices up front is the same as a dimension of ``n - r``
indices whose terms cost ``(n - r) / n`` of what they did: :func:`pin_removal` rewrites
the model that way, and the pinned group can remove nothing more. The planner then
meets its target with the other groups around the pinned removal.

Example:
    >>> import torch
    >>> from cpmc_plugin.core.budget import ChannelGroup, CostTerm, plan_removal
    >>> one = torch.ones(4, dtype=torch.long)
    >>> a = ChannelGroup(torch.tensor([0.9, 0.8, 0.7, 0.6]), removable=3, owned={0: one})
    >>> b = ChannelGroup(torch.tensor([0.1, 0.2, 0.3, 0.4]), removable=3, owned={1: one})
    >>> groups, sizes, terms = pin_removal([a, b], [4, 4], [CostTerm(8.0, (0,)),
    ...                                    CostTerm(8.0, (1,))], {0: torch.tensor([3, 2])})
    >>> sizes, [t.cost for t in terms]
    ([2, 4], [4.0, 8.0])
    >>> plan_removal(groups, dim_sizes=sizes, terms=terms, target_cost=10.0).removed[1].tolist()
    [0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from .budget import (
    BudgetPlan,
    ChannelGroup,
    CostEvaluator,
    CostTerm,
    UnreachableBudgetError,
    plan_removal,
)

__all__ = ["pin_removal", "refine_plan"]


def pin_removal(
    groups: Sequence[ChannelGroup],
    dim_sizes: Sequence[int],
    terms: Sequence[CostTerm],
    pins: Mapping[int, torch.Tensor],
) -> tuple[list[ChannelGroup], list[int], list[CostTerm]]:
    """The planner's inputs with ``pins[i]`` (units of group ``i``) already removed.

    Pinned groups can remove nothing more; add their pins to the plan's removals.

    Raises:
        ValueError: a pin that would empty a dimension.
    """
    removed = [0] * len(dim_sizes)
    out = list(groups)
    for index, units in pins.items():
        group = groups[index]
        for dim, counts in group.owned.items():
            removed[dim] += int(counts[units].sum())
        out[index] = replace(group, removable=0, protected=None)
    sizes = []
    for dim, (size, gone) in enumerate(zip(dim_sizes, removed, strict=True)):
        if gone >= size:
            raise ValueError(f"a pinned removal empties dimension {dim}")
        sizes.append(size - gone)
    scale = [s / d for s, d in zip(sizes, dim_sizes, strict=True)]
    rescaled = []
    for term in terms:
        cost = term.cost
        for dim in term.dims:
            cost *= scale[dim]
        rescaled.append(CostTerm(cost, term.dims))
    return out, sizes, rescaled


def refine_plan(
    groups: Sequence[ChannelGroup],
    dim_sizes: Sequence[int],
    terms: Sequence[CostTerm],
    target_cost: float,
    plan: BudgetPlan,
    tolerance: float,
) -> tuple[list[torch.Tensor], float]:
    """The plan's removals and cost, or closer ones when a coarse group makes it miss.

    A prefix of one global ranking stops on whichever unit crosses the target; when that
    unit is a coarse one (a hidden channel tied across every layer, a head) the plan can
    land far from the target while fine units (MLP channels) could have met it. Each of
    the (at most three) coarsest groups that removed something is pinned at its planned
    count, then at one step fewer, and the rest is planned again around it: the first
    removals within ``tolerance`` of the target win (the ranking's own count is tried
    first), else those that land closest.

    Example:
        >>> coarse = ChannelGroup(torch.tensor([0.1, 0.2]), removable=2,
        ...                       owned={0: torch.tensor([5, 5])})
        >>> fine = ChannelGroup(torch.linspace(0.15, 0.9, 10), removable=9,
        ...                     owned={1: torch.ones(10, dtype=torch.long)})
        >>> model = dict(dim_sizes=[10, 10], terms=[CostTerm(50.0, (0,)), CostTerm(50.0, (1,))])
        >>> plan = plan_removal([coarse, fine], target_cost=80.0, **model)
        >>> [len(r) for r in plan.removed], plan.cost  # one coarse unit: 5 below the target
        ([1, 0], 75.0)
        >>> removed, cost = refine_plan([coarse, fine], model["dim_sizes"], model["terms"],
        ...                             80.0, plan, tolerance=1.0)
        >>> [len(r) for r in removed], cost  # four fine units instead
        ([0, 4], 80.0)
    """
    if abs(plan.cost - target_cost) <= tolerance:
        return plan.removed, plan.cost
    evaluator = CostEvaluator(groups, dim_sizes, terms)
    counts = [len(r) for r in plan.removed]
    steps = []
    for i, (group, m) in enumerate(zip(groups, counts, strict=True)):
        if m == 0:
            continue
        fewer = list(counts)
        fewer[i] = max(m - max(group.round_to, 1), 0)
        steps.append((evaluator.cost(fewer) - plan.cost, i, fewer[i]))
    best, best_cost = plan.removed, plan.cost
    for delta, i, fewer_count in sorted(steps, reverse=True)[:3]:
        if delta <= tolerance:
            break
        for keep in (counts[i], fewer_count):  # the ranking's own count first
            pins = {i: evaluator.order[i][:keep]}
            pinned, sizes, rescaled = pin_removal(groups, dim_sizes, terms, pins)
            try:
                again = plan_removal(
                    pinned, dim_sizes=sizes, terms=rescaled, target_cost=target_cost
                )
            except UnreachableBudgetError:
                continue
            removed = list(again.removed)
            removed[i] = pins[i].clone()
            cost = evaluator.cost([len(r) for r in removed])
            if abs(cost - target_cost) <= tolerance:
                return removed, cost  # close enough, and as near the ranking as it gets
            if abs(cost - target_cost) < abs(best_cost - target_cost):
                best, best_cost = removed, cost
    return best, best_cost
