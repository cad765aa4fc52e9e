"""Global ranking against a cost budget (plain tensor math, no host import).

The model is described by *dimensions* (one per layer input or output, with a
size), *cost terms* (a cost that scales with the kept fraction of at most two
dimensions, e.g. a conv's MACs scale with kept outputs x kept inputs) and
*groups* of channels that are removed together, each with scores and, per
dimension it touches, how many indices of that dimension each channel owns.

:func:`plan_removal` removes the globally lowest-scored channels until the cost
falls to a target, respecting a per-group floor, and returns the plan without
touching any model.

Example:
    >>> import torch
    >>> # one layer with 4 outputs feeding one with 4 inputs; cost = 16 * kept_out/4
    >>> g = ChannelGroup(scores=torch.tensor([0.9, 0.1, 0.5, 0.3]), removable=3,
    ...                  owned={0: torch.ones(4, dtype=torch.long)})
    >>> plan = plan_removal([g], dim_sizes=[4], terms=[CostTerm(16.0, (0,))],
    ...                     target_cost=8.0)
    >>> plan.removed[0].tolist(), plan.cost
    ([1, 3], 8.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "BudgetPlan",
    "ChannelGroup",
    "CostEvaluator",
    "CostTerm",
    "UnreachableBudgetError",
    "lowest_cost",
    "plan_removal",
    "remove_lowest",
]


class UnreachableBudgetError(ValueError):
    """The target cost cannot be met without breaking a per-group floor."""

    def __init__(self, message: str, best_cost: float) -> None:
        super().__init__(message)
        self.best_cost = best_cost


@dataclass(frozen=True)
class CostTerm:
    """A cost that scales with the kept fraction of each dimension in ``dims``."""

    cost: float
    dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.dims) > 2:
            raise ValueError(f"a cost term scales with at most two dimensions, got {self.dims}")


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together, in units the ranking compares.

    Attributes:
        scores: importance of each unit (lower is removed first).
        removable: how many units may go at most (the per-group floor).
        owned: ``{dim_id: counts}``; ``counts[u]`` indices of ``dim_id`` leave with unit ``u``.
        round_to: the kept number of units is rounded down to a multiple of this.
        protected: optional boolean mask of units that are never removed (they keep a
            floor for a layer that owns only some of the group's units).
    """

    scores: torch.Tensor
    removable: int
    owned: Mapping[int, torch.Tensor] = field(default_factory=dict)
    round_to: int = 1
    protected: torch.Tensor | None = None

    @property
    def candidates(self) -> torch.Tensor:
        """Indices of the units that may be removed, lowest score first."""
        order = torch.argsort(self.scores, stable=True)
        if self.protected is not None:
            order = order[~self.protected[order]]
        return order

    @property
    def cap(self) -> int:
        """How many units may go: ``removable``, and never a protected one."""
        free = len(self.scores)
        if self.protected is not None:
            free -= int(self.protected.sum())
        return max(0, min(self.removable, free))


@dataclass(frozen=True)
class BudgetPlan:
    """The units to remove from each group and the cost the plan leaves.

    The plan stops where the cost is closest to the target: at the shortest ranking
    prefix that meets it, or one unit earlier when that lands closer (from above).
    """

    removed: list[torch.Tensor]
    cost: float
    base_cost: float
    granularity: float = 0.0  # cost of the last unit in the ranking the plan stops at


class CostEvaluator:
    """Cost of the plan that removes, from every group, its ``m`` lowest units."""

    def __init__(
        self, groups: Sequence[ChannelGroup], dim_sizes: Sequence[int], terms: Sequence[CostTerm]
    ) -> None:
        self.sizes = torch.tensor([float(s) for s in dim_sizes] + [1.0], dtype=torch.float64)
        n_dims = len(dim_sizes)
        self.costs = torch.tensor([t.cost for t in terms], dtype=torch.float64)
        pad = [(*t.dims, n_dims, n_dims)[:2] for t in terms]
        self.first = torch.tensor([d[0] for d in pad], dtype=torch.long)
        self.second = torch.tensor([d[1] for d in pad], dtype=torch.long)
        # per group: the removable units, ascending; per (group, owned dimension) one row of
        # cumulative owned counts, padded: counts are whole numbers, so the sums below are
        # exact in any order
        self.order = [g.candidates for g in groups]
        rows: list[tuple[int, int, torch.Tensor]] = []
        for index, (group, order) in enumerate(zip(groups, self.order, strict=True)):
            for dim, counts in group.owned.items():
                cum = torch.zeros(len(order) + 1, dtype=torch.float64)
                cum[1:] = torch.cumsum(counts[order].to(torch.float64), 0)
                rows.append((index, dim, cum))
        width = max((len(cum) for _, _, cum in rows), default=1)
        self.cumulative = torch.zeros(len(rows), width, dtype=torch.float64)
        for r, (_, _, cum) in enumerate(rows):
            self.cumulative[r, : len(cum)] = cum
        self.row_group = torch.tensor([g for g, _, _ in rows], dtype=torch.long)
        self.row_dim = torch.tensor([d for _, d, _ in rows], dtype=torch.long)
        self.rows = torch.arange(len(rows))

    def cost(self, counts: Sequence[int]) -> float:
        """The cost left when group ``i`` loses its ``counts[i]`` lowest units."""
        removed = torch.zeros_like(self.sizes)
        if len(self.rows):
            taken = torch.as_tensor(list(counts), dtype=torch.long)[self.row_group]
            removed.index_add_(0, self.row_dim, self.cumulative[self.rows, taken])
        kept = ((self.sizes - removed) / self.sizes).clamp_min(0.0)
        return float((self.costs * kept[self.first] * kept[self.second]).sum())


def _round_count(m: int, n: int, cap: int, round_to: int) -> int:
    m = min(m, cap)
    if round_to > 1 and m > 0:
        kept = n - m
        kept -= kept % round_to
        m = n - kept
        if m > cap:  # rounding down the kept count would break the floor: round up instead
            m -= round_to
        m = max(m, 0)
    return m


def lowest_cost(
    groups: Sequence[ChannelGroup], *, dim_sizes: Sequence[int], terms: Sequence[CostTerm]
) -> float:
    """The cost left when every group gives up all it may (its floor)."""
    evaluator = CostEvaluator(groups, dim_sizes, terms)
    counts = [_round_count(g.cap, len(g.scores), g.cap, g.round_to) for g in groups]
    return evaluator.cost(counts)


def plan_removal(
    groups: Sequence[ChannelGroup],
    *,
    dim_sizes: Sequence[int],
    terms: Sequence[CostTerm],
    target_cost: float,
) -> BudgetPlan:
    """Remove the globally lowest-scored units until the cost reaches ``target_cost``.

    Units are ranked across all groups by score (ties: earlier group, lower index
    first). The plan is the shortest prefix of that ranking whose cost meets the
    target, where a group that reached its floor (``removable``) keeps the rest of
    its units. Raises :class:`UnreachableBudgetError` (a ``ValueError``) when even
    the whole ranking leaves the cost above the target.
    """
    evaluator = CostEvaluator(groups, dim_sizes, terms)
    base = evaluator.cost([0] * len(groups))
    if not groups:
        if base > target_cost:
            raise UnreachableBudgetError("there is nothing to prune", base)
        return BudgetPlan(removed=[], cost=base, base_cost=base)
    # the ranking holds the units that may go (protected units never enter it)
    scores = torch.cat(
        [
            g.scores.detach().double().flatten()[o]
            for g, o in zip(groups, evaluator.order, strict=True)
        ]
    )
    owner = torch.cat([torch.full((len(o),), i) for i, o in enumerate(evaluator.order)])
    ranking = torch.argsort(scores, stable=True)
    # positions[i]: where the units of group i stand in the global ranking, ascending
    ranked_owner = owner[ranking]
    sizes = [(len(g.scores), g.cap, g.round_to) for g in groups]

    def counts_at(k: int) -> list[int]:
        """Units of each group among the ``k`` lowest of the ranking, rounded and capped."""
        taken = torch.bincount(ranked_owner[:k], minlength=len(groups)).tolist()
        return [_round_count(m, n, cap, r) for m, (n, cap, r) in zip(taken, sizes, strict=True)]

    total = len(ranking)
    best = counts_at(total)
    best_cost = evaluator.cost(best)
    if best_cost > target_cost:
        raise UnreachableBudgetError(
            f"the budget needs the cost at {target_cost:.6g} but the per-layer floor "
            f"leaves at least {best_cost:.6g} (of {base:.6g})",
            best_cost,
        )
    low, high = 0, total  # cost(high) <= target; find the smallest such k
    while low < high:
        mid = (low + high) // 2
        if evaluator.cost(counts_at(mid)) <= target_cost:
            high = mid
        else:
            low = mid + 1
    chosen = counts_at(high)
    cost = evaluator.cost(chosen)
    granularity = 0.0
    if high > 0:  # one unit fewer may land closer to the target (from above)
        fewer = counts_at(high - 1)
        fewer_cost = evaluator.cost(fewer)
        granularity = fewer_cost - cost
        if fewer_cost - target_cost < target_cost - cost:
            chosen, cost = fewer, fewer_cost
    removed = [order[:m].clone() for order, m in zip(evaluator.order, chosen, strict=True)]
    return BudgetPlan(removed=removed, cost=cost, base_cost=base, granularity=granularity)


def remove_lowest(
    scores: Sequence[torch.Tensor],
    count: int,
    min_remove: Sequence[int],
    max_remove: Sequence[int],
    weights: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Remove ``count`` channels, the lowest-scored across all groups, within per-group bounds.

    Group ``i`` loses at least ``min_remove[i]`` and at most ``max_remove[i]`` channels:
    its ``min_remove[i]`` lowest go first, then the globally lowest of the remaining
    candidates until ``count`` are gone. Returns the removed indices per group, sorted.

    With ``weights``, removing one index of group ``i`` costs ``weights[i]`` channels
    (e.g. one position of each of its blocks): the globally lowest candidates are taken,
    in order, while they still fit into ``count``, so at most ``count`` channels go.

    Raises:
        ValueError: without ``weights``, ``count`` outside
            ``[sum(min_remove), sum(max_remove)]``; with them, the minimums alone remove
            more than ``count``.

    Example:
        >>> a, b = torch.tensor([0.1, 0.9, 0.2]), torch.tensor([0.05, 0.3])
        >>> [r.tolist() for r in remove_lowest([a, b], 3, [0, 0], [2, 1])]
        [[0, 2], [0]]
        >>> [r.tolist() for r in remove_lowest([a, b], 5, [0, 0], [2, 1], weights=[1, 4])]
        [[0], [0]]
    """
    orders = [torch.argsort(s.double(), stable=True) for s in scores]
    if weights is not None:
        return _remove_weighted(scores, orders, count, min_remove, max_remove, weights)
    low, high = sum(min_remove), sum(max_remove)
    if not low <= count <= high:
        raise ValueError(
            f"cannot remove {count} channels: the per-layer bounds allow {low} to {high}"
        )
    taken = list(min_remove)
    candidates = [
        (s.double()[o[lo:hi]], torch.full((hi - lo,), i, dtype=torch.long))
        for i, (s, o, lo, hi) in enumerate(zip(scores, orders, min_remove, max_remove, strict=True))
    ]
    if candidates and count > low:
        values = torch.cat([c[0] for c in candidates])
        owners = torch.cat([c[1] for c in candidates])
        chosen = owners[torch.argsort(values, stable=True)[: count - low]]
        for i, n in enumerate(torch.bincount(chosen, minlength=len(scores)).tolist()):
            taken[i] += n  # each group's candidates are ascending, so its lowest go first
    return [torch.sort(o[:n]).values for o, n in zip(orders, taken, strict=True)]


def _remove_weighted(
    scores: Sequence[torch.Tensor],
    orders: Sequence[torch.Tensor],
    count: int,
    min_remove: Sequence[int],
    max_remove: Sequence[int],
    weights: Sequence[int],
) -> list[torch.Tensor]:
    """:func:`remove_lowest` where an index of group ``i`` costs ``weights[i]`` channels."""
    taken = list(min_remove)
    removed = sum(n * w for n, w in zip(taken, weights, strict=True))
    if removed > count:
        raise ValueError(
            f"cannot remove {count} channels: the per-group minimums alone remove {removed}"
        )
    values, owners = [], []
    for i, (s, o, lo, hi) in enumerate(zip(scores, orders, min_remove, max_remove, strict=True)):
        values.append(s.double()[o[lo:hi]])
        owners.append(torch.full((max(hi - lo, 0),), i, dtype=torch.long))
    if values:
        joined, owner = torch.cat(values), torch.cat(owners)
        for k in torch.argsort(joined, stable=True).tolist():
            if removed >= count:
                break
            i = int(owner[k])
            if removed + weights[i] <= count:  # each group's candidates ascend: lowest first
                taken[i] += 1
                removed += weights[i]
    return [torch.sort(o[:n]).values for o, n in zip(orders, taken, strict=True)]
