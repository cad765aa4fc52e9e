"""The planner's ties (grouped-query attention, uniform layers) and pins, by hand."""

from __future__ import annotations

import pytest
import torch

from cpmc_plugin.core.budget import ChannelGroup, CostTerm, plan_removal
from cpmc_plugin.core.pinning import pin_removal
from cpmc_plugin.core.ties import tie_groups


def _group(scores: list[float], dim: int, removable: int | None = None) -> ChannelGroup:
    n = len(scores)
    return ChannelGroup(
        torch.tensor(scores),
        removable=n - 1 if removable is None else removable,
        owned={dim: torch.ones(n, dtype=torch.long)},
    )


def test_a_tie_removes_the_same_count_from_each_member_weakest_first() -> None:
    # two key/value groups of one query group: heads 0-2 and 3-5
    heads = _group([0.5, 0.1, 0.9, 0.3, 0.8, 0.2], dim=0, removable=4)
    tied = tie_groups([heads], [[(0, torch.arange(3)), (0, torch.arange(3, 6))]])
    (group,) = tied.groups
    # rank 0: heads 1 and 5 (0.1, 0.2), rank 1: heads 0 and 3 (0.5, 0.3), rank 2: 2 and 4
    torch.testing.assert_close(group.scores, torch.tensor([0.15, 0.4, 0.85]))
    assert group.owned[0].tolist() == [2, 2, 2]
    assert group.removable == 2  # 4 of 6 heads may go: 2 per key/value group
    plan = plan_removal(tied.groups, dim_sizes=[6], terms=[CostTerm(6.0, (0,))], target_cost=4.0)
    assert [r.tolist() for r in tied.expand(plan.removed)] == [[1, 5]]


def test_untied_groups_pass_through_in_order() -> None:
    a, b, c = _group([0.1, 0.2], 0), _group([0.3, 0.4], 1), _group([0.5, 0.6], 2)
    tied = tie_groups([a, b, c], [[(0, torch.arange(2)), (2, torch.arange(2))]])
    assert tied.groups[0] is b and tied.free == [1]
    removed = tied.expand([torch.tensor([1]), torch.tensor([0])])
    assert [r.tolist() for r in removed] == [[0], [1], [0]]


@pytest.mark.parametrize(
    ("ties", "match"),
    [
        ([[(0, torch.arange(2)), (1, torch.arange(3))]], "different sizes"),
        ([[(0, torch.arange(2)), (1, torch.arange(2))], [(0, torch.arange(2))]], "two ties"),
        ([[(0, torch.arange(1)), (1, torch.arange(1))]], "only partly tied"),
    ],
)
def test_bad_ties(ties: list, match: str) -> None:
    groups = [_group([0.1, 0.2], 0), _group([0.3, 0.4, 0.5], 1)]
    with pytest.raises(ValueError, match=match):
        tie_groups(groups, ties)


def test_a_pin_that_empties_a_dimension_is_refused() -> None:
    group = _group([0.1, 0.2], 0)
    with pytest.raises(ValueError, match="empties dimension 0"):
        pin_removal([group], [2], [CostTerm(1.0, (0,))], {0: torch.tensor([0, 1])})


def test_a_pinned_removal_costs_what_removing_it_would() -> None:
    a, b = _group([0.9, 0.8, 0.7, 0.6], 0), _group([0.5, 0.4, 0.3, 0.2], 1)
    terms = [CostTerm(12.0, (0, 1)), CostTerm(4.0, ())]
    groups, sizes, rescaled = pin_removal([a, b], [4, 4], terms, {0: torch.tensor([0])})
    assert sizes == [3, 4] and groups[0].removable == 0
    # kept 3 of 4 inputs: 12 * 3/4 = 9 at full outputs; the constant term is untouched
    assert [t.cost for t in rescaled] == [9.0, 4.0]
