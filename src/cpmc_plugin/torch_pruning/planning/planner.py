"""The budget planner: which channels a step removes, on the model as it is now.

:class:`Planner` reads the host's groups as units (whole heads, channel groups, alias
sets), gives each its floor (``max_pruning_ratio``, ``pruning_ratio_dict``,
``head_pruning_ratio``, ``round_to``), ties the groups that must shrink together
(grouped-query attention, ``uniform_layers``), pins the hidden width to a multiple of
the heads kept, scores the units with the importance, and plans the removals against
the cost model (:mod:`cpmc_plugin.core.budget`, :mod:`cpmc_plugin.core.pinning`). It
prunes nothing: :class:`~cpmc_plugin.CPMCPruner` applies, checks and corrects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.atomic import shape_signature
from ...core.budget import UnreachableBudgetError, lowest_cost, plan_removal
from ...core.pinning import pin_removal, refine_plan
from ...core.ties import TiedGroups, tie_groups
from ..cost.types import CallSite, CostModel, GroupUnits
from ..graph.concat import repair_concat_mappings
from ..graph.coupling import hidden_coupling, misaligned_grouped_conv
from ..graph.heads import class_members, head_layout, is_attention, uniform_members
from ..graph.removal import Removal
from ..host import graph_of, module_name
from ..importance import RankingScope
from ..options import HeadOptions
from .correction import isomorphic_quantiles
from .groups import planner_groups
from .plan import Plan

__all__ = ["TOLERANCE", "HostPruner", "Planner", "hidden_pin"]

TOLERANCE = 0.005  # 0.5 percentage points of the initial cost


class HostPruner(Protocol):
    """What the planner reads of the pruner it plans for: torch-pruning's public
    ``BasePruner`` attributes, and the budget."""

    DG: tp.DependencyGraph
    model: nn.Module
    ignored_layers: list[nn.Module]
    root_module_types: Any
    num_heads: dict[nn.Module, int]
    init_num_heads: dict[nn.Module, int]
    layer_init_out_ch: dict[nn.Module, int]
    max_pruning_ratio: float
    round_to: int | None
    metric: str
    reduction: float


def hidden_pin(
    units: list[GroupUnits], groups: list[Any], removed: list[torch.Tensor]
) -> tuple[int, torch.Tensor] | None:
    """The hidden channels to pin so that the hidden width is a multiple of the heads the
    plan keeps, or ``None`` when it already is one (Hugging Face configs require
    ``hidden_size % num_attention_heads == 0`` when they are loaded).

    The hidden group is the one that holds the query projections' in-channels; its
    weakest channels are pinned (see :mod:`cpmc_plugin.core.pinning`), the kept width
    rounded up, so that the finer units (MLP channels, heads) meet the budget around it.
    """
    heads = [(u, r) for u, r in zip(units, removed, strict=True) if u.heads is not None]
    if not heads:
        return None
    queries = {m for u, _ in heads for m in u.heads.queries}  # type: ignore[union-attr]
    kept_heads = min(u.size - len(r) for u, r in heads)
    for i, (unit, gone) in enumerate(zip(units, removed, strict=True)):
        graph = graph_of(unit.group)
        if unit.heads is not None or not any(
            item.dep.target.module in queries
            and not graph.is_out_channel_pruning_fn(item.dep.handler)
            for item in unit.group
        ):
            continue
        step = kept_heads // math.gcd(kept_heads, unit.ch_groups)  # in units of the group
        kept = unit.size - len(gone)
        if kept % step == 0:
            return None
        # kept rounded up: the other units make up the rest of the budget (rounding down
        # could only overshoot it)
        kept = min(unit.size, -(-kept // step) * step)
        return i, groups[i].candidates[: unit.size - kept]
    return None


class Planner:
    """Plans the removals of a step for ``host`` (see the module docstring).

    Args:
        host: the pruner (its graph, groups, caps and budget).
        heads: the validated head options.
        caps: ``pruning_ratio_dict`` per layer.
        sites: the recorded calls of the model, tied to graph nodes.
        positions: each module's output positions per sample (for CPMC's FLOPs cost).
        host_groups: the groups the host read while it was constructed (reused once).
        channel_groups_of: the host's channel groups of a group.
        cost_model: builds the cost model of the model as it is now for ``units``.
        initial_cost: the model's MACs (or parameters) before pruning.
        tied_pairs: ``(owner, follower)`` layers sharing one weight.
        isomorphic: rank channels only against groups of the same structure.
    """

    def __init__(
        self,
        host: HostPruner,
        *,
        heads: HeadOptions,
        caps: Mapping[nn.Module, float],
        sites: Sequence[CallSite],
        positions: Mapping[nn.Module, int] | None,
        host_groups: list[tp.Group] | None,
        channel_groups_of: Callable[[tp.Group], int],
        cost_model: Callable[[list[GroupUnits]], CostModel],
        initial_cost: float,
        tied_pairs: Sequence[tuple[nn.Module, nn.Module]] = (),
        isomorphic: bool = False,
    ) -> None:
        self.host = host
        self.graph = host.DG
        self.heads = heads
        self.caps = dict(caps)
        self.sites = list(sites)
        self.positions = None if positions is None else dict(positions)
        self.channel_groups_of = channel_groups_of
        self.cost_model = cost_model
        self.initial_cost = float(initial_cost)
        self.tied_pairs = list(tied_pairs)
        self.isomorphic = isomorphic
        self.initial_shapes = shape_signature(host.model)  # the shapes the host's groups saw
        #: the cost of the last unit the latest plan stopped at
        self.granularity = 0.0
        #: groups left whole because the host cannot prune them, for the error messages
        self.unprunable: list[str] = []
        self._host_groups = host_groups
        self._cache: tuple[Any, list[GroupUnits]] | None = None

    def reset(self) -> None:
        """Read the groups from the graph again when next needed (not those the host
        read while it was constructed, nor the cached units)."""
        self._host_groups, self._cache = None, None

    @property
    def rounding(self) -> int:
        """Kept channels are multiples of this (``round_to``, else 1)."""
        return int(self.host.round_to) if self.host.round_to else 1

    # ------------------------------------------------------------------ units
    def units(self) -> list[GroupUnits]:
        """The host's groups as the planner's units, for the model's current shapes."""
        signature = shape_signature(self.host.model)
        if self._cache is not None and self._cache[0] == signature:
            return self._cache[1]
        repaired = repair_concat_mappings(self.graph)  # before groups are read: see its docstring
        groups = self._host_groups  # those the host read while constructing, if still valid
        self._host_groups = None
        if groups is None or repaired or signature != self.initial_shapes:
            groups = list(
                self.graph.get_all_groups(
                    ignored_layers=self.host.ignored_layers,
                    root_module_types=self.host.root_module_types,
                )
            )
        calls: dict[nn.Module, int] = {}
        for site in self.sites:
            calls[site.module] = calls.get(site.module, 0) + 1
        reused = {m for m, n in calls.items() if n > 1}
        units = []
        self.unprunable = []
        for group in groups:
            n = len(group[0].idxs)
            if self.heads.num_heads and is_attention(self.graph, group, self.host.num_heads):
                layout = head_layout(self.graph, group, self.host.num_heads)
                if self.heads.prune_num_heads:  # whole heads, or the group stays whole
                    if layout is not None:
                        units.append(GroupUnits(group, layout.head_dim, layout.heads, heads=layout))
                    continue
                if not self.heads.prune_head_dims or layout is None:
                    continue
            ch_groups = self.channel_groups_of(group)
            if ch_groups < 1 or n % ch_groups:
                ch_groups = 1
            conv = misaligned_grouped_conv(group, ch_groups, n // ch_groups)
            if conv is not None:  # the host cannot prune this group without breaking `conv`
                name = module_name(self.graph, group[0].dep.target.module, "?")
                self.unprunable.append(
                    f"{name} (its channels reach the grouped conv "
                    f"{module_name(self.graph, conv, '?')} out of its groups' order)"
                )
                continue
            size = n // ch_groups
            labels = hidden_coupling(self.graph, group, reused)
            alias = None
            if labels is not None:  # root channels the host removes together: one unit each
                alias = torch.arange(size)
                for p, q in enumerate((labels % size).tolist()):
                    a, b = int(alias[p % size]), int(alias[q])
                    alias[alias == max(a, b)] = min(a, b)
            units.append(GroupUnits(group=group, ch_groups=ch_groups, size=size, alias=alias))
        self._cache = (signature, units)
        return units

    def max_ratio(self, module: nn.Module) -> float:
        """The most of ``module``'s initial channels that may go: its ``pruning_ratio_dict``
        entry, else ``max_pruning_ratio``."""
        return self.caps.get(module, float(self.host.max_pruning_ratio))

    def floor(self, unit: GroupUnits | nn.Module) -> int:
        """The fewest units a group keeps, or the fewest channels a layer keeps."""
        if isinstance(unit, nn.Module):
            initial = (
                self.host.layer_init_out_ch.get(unit) or self.graph.get_out_channels(unit) or 1
            )
            return max(1, math.ceil(initial * (1 - self.max_ratio(unit)) - 1e-9))
        module = unit.group[0].dep.target.module
        if unit.heads is not None:  # in heads, capped by head_pruning_ratio
            initial_heads = self.host.init_num_heads.get(module, unit.size)
            cap = self.max_ratio(module) if self.heads.cap is None else self.heads.cap
            return min(max(1, math.ceil(initial_heads * (1 - cap) - 1e-9)), unit.size)
        initial = self.host.layer_init_out_ch.get(module) or len(unit.group[0].idxs)
        cap = self.max_ratio(module)
        floor = max(1, math.ceil(initial / unit.ch_groups * (1 - cap) - 1e-9))
        if self.host.round_to:
            floor = math.ceil(floor / self.host.round_to) * self.host.round_to
        return min(floor, unit.size)

    # ------------------------------------------------------------------ ties, scores
    def tied(self, units: list[GroupUnits], groups: list[Any]) -> TiedGroups:
        """The planner's groups with grouped-query attention's key/value groups and
        ``uniform_layers`` tied (see :mod:`cpmc_plugin.core.ties`)."""
        members: list[list[tuple[int, torch.Tensor]]] = []
        for i, unit in enumerate(units):
            if unit.heads is not None and unit.heads.classes > 1:
                members.append(class_members(unit.heads, i))
            else:
                members.append([(i, torch.arange(unit.size))])
        ties = [m for m in members if len(m) > 1]
        if self.heads.uniform:
            merged: list[list[tuple[int, torch.Tensor]]] = []
            taken: set[int] = set()
            for indices in uniform_members(
                self.heads.uniform, [u.group for u in units], self.graph
            ):
                indices = [i for i in indices if i not in taken]
                taken.update(indices)
                if len(indices) > 1:
                    merged.append([m for i in indices for m in members[i]])
            ties = [m for m in ties if m[0][0] not in taken] + merged
        return tie_groups(groups, ties)

    def score(
        self,
        units: list[GroupUnits],
        importance: Any,
        estimate: Callable[[tp.Group], Any] | None = None,
    ) -> tuple[list[GroupUnits], list[torch.Tensor]]:
        """The units ``importance`` scores (it may skip a group) and their unit scores.

        An importance with ``set_scope(graph, scope)`` (CPMC's) is told the units first;
        ``estimate(group)`` (default: ``importance(group)``) gives each group's scores.
        """
        estimate = importance if estimate is None else estimate
        set_scope = getattr(importance, "set_scope", None)
        if callable(set_scope):  # CPMC, or any importance that opts in
            scope = RankingScope(
                tuple(u.group for u in units),
                self.positions,
                tuple(self.host.ignored_layers),
                metric=self.host.metric,
            )
            set_scope(self.graph, scope)
        kept, scores = [], []
        for unit in units:
            imp = estimate(unit.group)
            if imp is None:
                continue
            imp = torch.as_tensor(imp).detach().float().cpu().flatten()
            if len(imp) != unit.channels:
                raise ValueError(
                    f"the importance returned {len(imp)} scores for a group of "
                    f"{unit.channels} channels"
                )
            if not torch.isfinite(imp).all():
                raise ValueError(
                    "the importance gave non-finite scores for the group of "
                    f"{module_name(self.graph, unit.group[0].dep.target.module, '?')}"
                )
            kept.append(unit)
            scores.append(unit.unit_scores(imp))
        if self.isomorphic:
            scores = isomorphic_quantiles(self.graph, kept, scores)
        return kept, scores

    # ------------------------------------------------------------------ planning
    def check_reachable(self, target_cost: float) -> None:
        """Refuse (:class:`~cpmc_plugin.UnreachableBudgetError`) a target below the lowest
        cost the floors allow, naming the groups the host cannot prune."""
        units = self.units()
        model = self.cost_model(units)
        scores = [torch.zeros(u.size) for u in units]
        floors = [self.floor(u) for u in units]
        groups = planner_groups(model, units, scores, floors, self.rounding, self.floor)
        groups = self.tied(units, groups).groups
        best = lowest_cost(groups, dim_sizes=model.dim_sizes, terms=model.terms)
        if best > target_cost:
            error = self.unreachable(best)
            if self.unprunable:
                shown = "; ".join(self.unprunable[:3])
                more = len(self.unprunable) - 3
                shown += f"; and {more} more" if more > 0 else ""
                error = UnreachableBudgetError(
                    f"{error}. Left whole because torch-pruning cannot prune them: {shown}",
                    best,
                )
            raise error

    def unreachable(self, best_cost: float) -> UnreachableBudgetError:
        """The refusal of a budget whose lowest reachable cost is ``best_cost``."""
        initial = self.initial_cost
        best = 1.0 - best_cost / initial
        name = "flops_reduction" if self.host.metric == "macs" else "params_reduction"
        return UnreachableBudgetError(
            f"{name}={self.host.reduction} cannot be met under max_pruning_ratio="
            f"{self.host.max_pruning_ratio}: at most {100 * best:.2f} % is reachable "
            "(raise max_pruning_ratio, remove ignored layers, or lower the budget)",
            best_cost,
        )

    def kept_layers(self, unit: GroupUnits) -> tuple[nn.Module, ...]:
        """Layers of ``unit``'s group that its prune leaves alone: grouped-query attention's
        key/value projections, and layers whose weight follows a tied one."""
        kept = unit.heads.kept if unit.heads is not None else ()
        inside = {item.dep.target.module for item in unit.group}
        followers = tuple(f for o, f in self.tied_pairs if f in inside and o in inside)
        return tuple(kept) + followers

    def plan(
        self,
        target: float,
        importance: Any,
        estimate: Callable[[tp.Group], Any] | None = None,
    ) -> Plan:
        """The removals that bring the model as it is now to ``target`` (MACs or
        parameters), ranked by ``importance`` (see :meth:`score`). Nothing is pruned.

        Raises:
            UnreachableBudgetError: the caps leave ``target`` out of reach.
        """
        units, scores = self.score(self.units(), importance, estimate)
        model = self.cost_model(units)
        floors = [self.floor(u) for u in units]
        groups = planner_groups(model, units, scores, floors, self.rounding, self.floor)
        pins: dict[int, torch.Tensor] = {}
        for _ in range(4):  # re-planned while the hidden width is no multiple of the heads
            pinned, sizes, terms = pin_removal(groups, model.dim_sizes, model.terms, pins)
            tied = self.tied(units, pinned)
            try:
                budget = plan_removal(tied.groups, dim_sizes=sizes, terms=terms, target_cost=target)
            except UnreachableBudgetError as error:
                raise self.unreachable(error.best_cost) from None
            removed, cost = budget.removed, budget.cost
            if self.heads.num_heads:  # heads and tied widths are coarse units: meet the
                # budget around them with the fine ones (see refine_plan)
                initial = self.initial_cost
                removed, cost = refine_plan(
                    tied.groups, sizes, terms, target, budget, tolerance=0.8 * TOLERANCE * initial
                )
            removed_units = tied.expand(removed)
            for index, units_gone in pins.items():
                removed_units[index] = torch.sort(units_gone).values
            pin = hidden_pin(units, groups, removed_units) if self.heads.hidden_divisible else None
            if pin is None:
                break
            pins = dict([pin])
        self.granularity = budget.granularity
        removals = []
        for unit, gone, floor in zip(units, removed_units, floors, strict=True):
            if len(gone) == 0:
                continue
            if unit.size - len(gone) < floor:
                raise RuntimeError("internal error: the plan breaks a per-layer floor")
            # with the units the host removes with them
            positions = unit.positions(unit.members(gone))
            roots = torch.as_tensor(unit.group[0].root_idxs)[positions]
            pairs = sorted(zip(roots.tolist(), positions.tolist(), strict=True))
            root = unit.group[0].dep
            removals.append(
                Removal(
                    root.target.module,
                    root.handler,
                    tuple(int(r) for r, _ in pairs),
                    tuple(int(p) for _, p in pairs),
                    module_name(self.graph, root.target.module, ""),
                    self.kept_layers(unit),
                )
            )
        return Plan(
            removals=tuple(removals),
            metric=self.host.metric,
            target_cost=float(target),
            cost=float(cost),
            base_cost=float(budget.base_cost),
            granularity=float(budget.granularity),
        )
