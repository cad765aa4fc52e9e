"""The host-free budget planner: plan_removal, its floors, rounding and cost terms."""

from __future__ import annotations

import pytest
import torch

from cpmc_plugin.core.budget import ChannelGroup, CostTerm, UnreachableBudgetError, plan_removal


def two_layers(scores_a: list[float], scores_b: list[float]) -> dict:
    """Layer A (4 ch) feeds layer B (2 ch) which feeds a fixed head.

    cost: A = 8 * kept_a, B = 4 * kept_a * kept_b (bilinear), head = 6 * kept_b, rest 10.
    """
    a = ChannelGroup(
        torch.tensor(scores_a), removable=3, owned={0: torch.ones(4, dtype=torch.long)}
    )
    b = ChannelGroup(
        torch.tensor(scores_b), removable=1, owned={1: torch.ones(2, dtype=torch.long)}
    )
    terms = [CostTerm(32.0, (0,)), CostTerm(32.0, (0, 1)), CostTerm(12.0, (1,)), CostTerm(10.0)]
    return {"groups": [a, b], "dim_sizes": [4, 2], "terms": terms}


def test_plan_removes_globally_lowest_until_target() -> None:
    # ranking: a1 (0.1), b0 (0.2), a3 (0.3), a0 (0.5), b1 (0.6), a2 (0.9)
    setup = two_layers([0.5, 0.1, 0.9, 0.3], [0.2, 0.6])
    assert plan_removal(**setup, target_cost=86.0).cost == 86.0
    # a1 out: 24 + 24 + 12 + 10 = 70
    plan = plan_removal(**setup, target_cost=70.0)
    assert [r.tolist() for r in plan.removed] == [[1], []] and plan.cost == 70.0
    # + b0: 24 + 12 + 6 + 10 = 52
    plan = plan_removal(**setup, target_cost=52.0)
    assert [r.tolist() for r in plan.removed] == [[1], [0]] and plan.cost == 52.0
    # + a3: 16 + 8 + 6 + 10 = 40; b1 is at the floor (removable=1) and is skipped later
    plan = plan_removal(**setup, target_cost=41.0)
    assert [r.tolist() for r in plan.removed] == [[1, 3], [0]] and plan.cost == 40.0


def test_plan_stops_at_the_closer_side_of_the_target() -> None:
    setup = two_layers([0.5, 0.1, 0.9, 0.3], [0.2, 0.6])
    plan = plan_removal(**setup, target_cost=68.0)  # 70 is 2 away, 52 is 16 away
    assert plan.cost == 70.0 and plan.granularity == 18.0


def test_unreachable_target_reports_the_best_cost() -> None:
    setup = two_layers([0.5, 0.1, 0.9, 0.3], [0.2, 0.6])
    # floor: a keeps 1, b keeps 1 -> 8 + 4 + 6 + 10 = 28
    with pytest.raises(UnreachableBudgetError, match="leaves at least 28") as info:
        plan_removal(**setup, target_cost=27.0)
    assert info.value.best_cost == 28.0


def test_round_to_keeps_multiples_of_units() -> None:
    group = ChannelGroup(
        torch.arange(8.0), removable=6, owned={0: torch.ones(8, dtype=torch.long)}, round_to=4
    )
    plan = plan_removal([group], dim_sizes=[8], terms=[CostTerm(8.0, (0,))], target_cost=6.0)
    assert len(plan.removed[0]) == 4  # 2 would leave 6 kept: rounded down to 4


def test_cost_term_with_three_dims_is_refused() -> None:
    with pytest.raises(ValueError, match="at most two dimensions"):
        CostTerm(1.0, (0, 1, 2))


def test_lowest_cost_is_the_cost_at_every_floor() -> None:
    setup = two_layers([0.5, 0.1, 0.9, 0.3], [0.2, 0.6])
    from cpmc_plugin.core.budget import lowest_cost

    assert lowest_cost(**setup) == 28.0  # a keeps 1 of 4, b keeps 1 of 2: 8 + 4 + 6 + 10
