"""A planned step, :class:`Plan`: what :meth:`~cpmc_plugin.CPMCPruner.plan` returns and
:func:`~cpmc_plugin.torch_pruning.oneshot.plan_budget` (the NNI pruner's planner) too."""

from __future__ import annotations

from dataclasses import dataclass

from ..graph.removal import Removal

__all__ = ["Plan"]


@dataclass(frozen=True)
class Plan:
    """One planned step: what goes, and the cost the planner's model says it leaves.

    Attributes:
        removals: one :class:`~cpmc_plugin.torch_pruning.graph.removal.Removal` per pruned
            group: its root module, the host's pruning function, the sorted root
            channel indices and their positions in the group's root order.
        metric: ``"macs"`` or ``"params"``.
        target_cost: the cost the plan aimed at (the step's target or its correction).
        cost: the cost the planner's model predicts after the removals.
        base_cost: the cost the planner's model gives the model as it is (nothing removed).
        granularity: the cost of the last ranked unit the plan stopped at.
    """

    removals: tuple[Removal, ...]
    metric: str
    target_cost: float
    cost: float
    base_cost: float
    granularity: float
