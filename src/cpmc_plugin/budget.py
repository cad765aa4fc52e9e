"""Moved to :mod:`cpmc_plugin.core.budget`; this path stays for existing imports."""

from .core.budget import (
    BudgetPlan,
    ChannelGroup,
    CostTerm,
    UnreachableBudgetError,
    lowest_cost,
    plan_removal,
    remove_lowest,
)

__all__ = [
    "BudgetPlan",
    "ChannelGroup",
    "CostTerm",
    "UnreachableBudgetError",
    "lowest_cost",
    "plan_removal",
    "remove_lowest",
]
