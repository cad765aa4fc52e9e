"""A step whose count misses its plan is corrected against the count, or refused unchanged."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn

from cpmc_plugin import CPMCPruner
from cpmc_plugin.torch_pruning.cost.meter import Probe
from cpmc_plugin.torch_pruning.planning.correction import next_planning_target
from tests.helpers import assert_unchanged, budget_tolerance, model_state


def test_next_planning_target_by_hand() -> None:
    # initial 100, target 50: the plan aimed at 50 but measured 70 (removed 30 of 50 wanted)
    # -> plan removal 50 * 50/30 = 83.33, i.e. aim at 16.67
    assert next_planning_target([(50.0, 70.0)], 50.0, 100.0) == pytest.approx(100 - 250 / 3)
    # both sides seen: the secant through the origin leaves the bracket (30, 50): bisect
    tried = [(50.0, 70.0), (30.0, 40.0)]
    # secant from the last: planned 70, achieved 60, wanted 50 -> 58.33 removal, aim 41.67
    assert next_planning_target(tried, 50.0, 100.0) == pytest.approx(100 - 70 * 50 / 60)
    tried = [(50.0, 70.0), (45.0, 40.0)]  # secant: aim 100 - 55*50/60 = 54.17 > 50: bisect
    assert next_planning_target(tried, 50.0, 100.0) == pytest.approx(47.5)
    # nothing removed: double the planned removal
    assert next_planning_target([(80.0, 100.0)], 50.0, 100.0) == pytest.approx(60.0)
    # removing everything was tried already (the guess clamps to 0 again): give up
    assert next_planning_target([(0.0, 60.0)], 50.0, 100.0) is None


def _skewed(real, factor: float):
    def build(*args, **kwargs):
        model = real(*args, **kwargs)  # the meter's (cached): skewed in a copy
        terms = [type(t)(t.cost * (factor if t.dims else 1.0), t.dims) for t in model.terms]
        return dataclasses.replace(model, terms=terms)

    return build


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_wrong_cost_model_is_corrected_against_the_count(monkeypatch, factor) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
    )  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    pruner = CPMCPruner(net, x, flops_reduction=0.5, ignored_layers=[net[7]])
    pruner.planner.cost_model = _skewed(pruner.planner.cost_model, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # met: no off-target warning
        pruner.step()
        report = pruner.report()
    tolerance = budget_tolerance(pruner)
    assert abs(report.macs_reduction - 0.5) <= tolerance + 1e-9


def test_a_budget_that_cannot_be_counted_right_is_refused_unchanged(monkeypatch) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    x = torch.randn(1, 3, 12, 12)
    pruner = CPMCPruner(net, x, flops_reduction=0.5, ignored_layers=[net[2]])
    frozen = pruner.initial_counts
    monkeypatch.setattr(Probe, "counts", lambda self: frozen)  # the count never moves
    before = model_state(net)
    with pytest.raises(ValueError, match=r"cannot meet flops_reduction=0.5.*unchanged"):
        pruner.step()
    assert_unchanged(net, before)
    assert pruner.current_step == 0
