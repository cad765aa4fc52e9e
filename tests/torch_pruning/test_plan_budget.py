"""plan_budget and Plan: planning a budget changes nothing and is what step() applies."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from cpmc_plugin.core.budget import remove_lowest
from cpmc_plugin.torch_pruning import Plan, plan_budget
from cpmc_plugin.torch_pruning.graph.build import build_graph
from cpmc_plugin.torch_pruning.graph.removal import Removal, RemovalFailed, prune_in_order
from cpmc_plugin.torch_pruning.importance import CPMCImportance, RankingScope
from cpmc_plugin.torch_pruning.pruner import CPMCPruner
from tests.helpers import assert_unchanged, model_state


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 4, 3),
    )


X = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))


def test_plan_budget_changes_nothing() -> None:
    net = _net().train()
    before = model_state(net)
    plan = plan_budget(net, X, flops_reduction=0.4, ignored_layers=[net[5]])
    assert isinstance(plan, Plan) and plan.removals
    assert_unchanged(net, before)
    assert net.training  # the mode is restored too
    assert net[0].out_channels == 16 and net[3].out_channels == 16


def test_plan_budget_is_what_step_applies() -> None:
    net = _net()
    plan = plan_budget(net, X, flops_reduction=0.4, ignored_layers=[net[5]])
    twin = copy.deepcopy(net)
    pruner = CPMCPruner(twin, X, flops_reduction=0.4, ignored_layers=[twin[5]])
    pruner.step()
    applied = {(name, tuple(idxs)) for name, is_out, idxs in pruner.pruning_history() if is_out}
    assert {(r.name, r.idxs) for r in plan.removals} == applied
    names = dict(net.named_modules())
    for r in plan.removals:
        assert r.module is names[r.name]
        assert list(r.idxs) == sorted(r.idxs) and len(r.positions) == len(r.idxs)
        assert twin.get_submodule(r.name).out_channels == 16 - len(r.idxs)
    assert plan.metric == "macs" and plan.cost < plan.base_cost
    # the planner's own cost agrees with the target within one ranked unit
    assert abs(plan.cost - plan.target_cost) <= plan.granularity


def test_planning_twice_gives_the_same_plan() -> None:
    net = _net()
    first = plan_budget(net, X, params_reduction=0.3, ignored_layers=[net[5]])
    second = plan_budget(net, X, params_reduction=0.3, ignored_layers=[net[5]])
    assert first == second
    pruner = CPMCPruner(net, X, params_reduction=0.3, ignored_layers=[net[5]])
    assert pruner.plan() == pruner.plan(1) == first
    assert first.metric == "params"


def test_pruning_ratio_dict_caps_one_layer() -> None:
    net = _net()
    plan = plan_budget(
        net, X, flops_reduction=0.3, ignored_layers=[net[5]], pruning_ratio_dict={net[0]: 0.0}
    )
    assert [r.name for r in plan.removals] == ["3"]  # layer 0 keeps all its channels
    capped = plan_budget(
        net, X, flops_reduction=0.3, ignored_layers=[net[5]], pruning_ratio_dict={net[3]: 0.125}
    )
    assert all(len(r.idxs) <= 2 for r in capped.removals if r.name == "3")  # 12.5 % of 16


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"flops_reduction": 1.5}, ValueError, r"flops_reduction must be in \(0, 1\), got 1.5"),
        ({"flops_reduction": "half"}, TypeError, r"flops_reduction must be in \(0, 1\)"),
        ({"max_pruning_ratio": 0}, ValueError, r"max_pruning_ratio must be in \(0, 1\]"),
        ({"round_to": 2.0}, TypeError, r"round_to must be None or an integer >= 1, got 2.0"),
        ({"pruning_ratio": 0.5}, TypeError, r"does not take pruning_ratio"),
        ({"pruning_ratio_dict": [0.5]}, TypeError, r"pruning_ratio_dict must be a dict"),
        ({"flops_reduction": 0.99, "max_pruning_ratio": 0.5}, ValueError, r"cannot be met"),
    ],
)
def test_bad_inputs_raise_and_change_nothing(kwargs: dict, error: type, message: str) -> None:
    net = _net()
    before = model_state(net)
    with pytest.raises(error, match=message):
        plan_budget(net, X, ignored_layers=[net[5]], **kwargs)
    assert_unchanged(net, before)


def test_remove_lowest_with_weights_known_answer() -> None:
    a, b = torch.tensor([0.1, 0.9, 0.2]), torch.tensor([0.05, 0.3])
    # by hand: ascending candidates 0.05 (b, costs 4), 0.1 (a, 1), 0.2 (a, 1), 0.3 (b), 0.9
    # count 5: b0 (4), a0 (5): full; a2 would make 6 > 5
    assert [r.tolist() for r in remove_lowest([a, b], 5, [0, 0], [2, 1], weights=[1, 4])] == [
        [0],
        [0],
    ]
    # count 3: b0 does not fit (4 > 3), a0 and a2 do (2), b1 is capped by max_remove
    assert [r.tolist() for r in remove_lowest([a, b], 3, [0, 0], [2, 1], weights=[1, 4])] == [
        [0, 2],
        [],
    ]
    with pytest.raises(ValueError, match="the per-group minimums alone remove 5"):
        remove_lowest([a, b], 3, [1, 1], [2, 1], weights=[1, 4])


def test_remove_lowest_unit_weights_match_the_unweighted_rule() -> None:
    g = torch.Generator().manual_seed(3)
    scores = [torch.rand(6, generator=g), torch.rand(4, generator=g), torch.rand(5, generator=g)]
    low, high = [1, 0, 2], [4, 3, 5]
    for count in range(sum(low), sum(high) + 1):
        plain = remove_lowest(scores, count, low, high)
        weighted = remove_lowest(scores, count, low, high, weights=[1, 1, 1])
        assert [p.tolist() for p in plain] == [w.tolist() for w in weighted]


def test_set_scope_takes_only_a_ranking_scope() -> None:
    net = _net()
    graph = build_graph(net, X)
    groups = list(graph.get_all_groups(ignored_layers=[net[5]]))
    new = CPMCImportance(X)
    new.set_scope(graph, RankingScope(tuple(groups)))
    assert all(len(new(group)) == len(group[0].idxs) for group in groups)
    with pytest.raises(TypeError, match="scope must be a RankingScope, got list"):
        new.set_scope(graph, groups)  # type: ignore[arg-type]


def test_prune_in_order_skips_or_refuses_an_emptying_group() -> None:
    net = _net()
    graph = build_graph(net, X)
    root = graph.get_pruning_group(
        net[0], graph.get_pruner_of_module(net[0]).prune_out_channels, [0]
    )[0]
    everything = Removal(net[0], root.dep.handler, tuple(range(16)), tuple(range(16)), "0")
    before = model_state(net)
    assert prune_in_order(graph, [everything]) == 0
    with pytest.raises(RemovalFailed, match="failed to remove 16 channels of 0: it would empty"):
        prune_in_order(graph, [everything], strict=True)
    assert_unchanged(net, before)
    two = Removal(net[0], root.dep.handler, (1, 5), (1, 5), "0")
    assert prune_in_order(graph, [two], strict=True) == 2
    assert net[0].out_channels == 14 and net[1].num_features == 14
    assert net(X).shape == (1, 4, 18, 18)


@pytest.mark.parametrize("seed", range(6))
def test_the_hosts_groups_plan_as_groups_read_again(seed: int) -> None:
    """The pruner plans with the groups torch-pruning read while it was constructed;
    the plan equals the one made from groups the graph derives again."""
    from cpmc_plugin.torch_pruning.graph.build import remembering_groups
    from cpmc_plugin.torch_pruning.graph.concat import is_repaired
    from tests.random_cnns import random_cnn

    model, x = random_cnn(seed)
    with remembering_groups() as calls:
        pruner = CPMCPruner(model, x, flops_reduction=0.4, ignored_layers=[model.head])
    repaired = any(is_repaired(node.module) for node in pruner.DG.module2node.values())
    # then the groups are read again, with the repaired concatenation maps
    assert len(calls) == (2 if repaired else 1)  # else only the host's
    reused = pruner.plan()
    pruner.planner.reset()
    again = pruner.plan()
    assert reused.removals == again.removals
    assert reused.cost == again.cost
