"""calibrate_importance, CPMCPruner(calibration_data=...), cpmc-auto, and combine="per-cost".

The known-answer net: a 1x1 conv with four filters (weights 0.1, 1, 2, 3), global
average pooling and a kept classifier that reads only channel 0 (weight 20). The label
is 1 for a positive image, 0 for a negative one, and the unpruned net gets every image
right. Removing one filter removes a quarter of the MACs. Scored by its own filter
weights only (``weight_dependency=False``), channel 0 is the weakest and goes: the net
then always says 0 (50 % correct). With weight dependency, channel 0 also owns the
classifier column of 20 and channel 1 goes instead: still 100 %. So the proxy must pick
the weight-dependency candidate, whatever its place in the grid.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from cpmc_plugin import CPMCImportance, CPMCPruner, calibrate_importance
from cpmc_plugin.core.cpmc import combine_criteria, normalize
from cpmc_plugin.core.presets import DEFAULT_ALPHA, DEFAULT_BETA, get_preset, list_presets
from cpmc_plugin.core.proxy import proxy_score, split_batches
from cpmc_plugin.criteria import make_importance, needs_calibration
from cpmc_plugin.models import resnet20
from cpmc_plugin.torch_pruning.calibration.grid import DEFAULT_CANDIDATES
from cpmc_plugin.torch_pruning.calibration.report import CalibrationReport
from cpmc_plugin.torch_pruning.importance import RankingScope
from cpmc_plugin.torch_pruning.oneshot import prune_to_budget
from tests.helpers import assert_unchanged, model_state

WITHOUT_DEPENDENCY = {"alpha": 0, "beta": 0, "weight_dependency": False}
WITH_DEPENDENCY = {"alpha": 0, "beta": 0, "weight_dependency": True}


def known_net(norm: bool = False) -> nn.Sequential:
    conv = nn.Conv2d(1, 4, 1, bias=False)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.1, 1.0, 2.0, 3.0]).view(4, 1, 1, 1))
        head.weight.zero_()
        head.weight[1, 0] = 20.0
        head.bias.copy_(torch.tensor([1.0, 0.0]))
    layers: list[nn.Module] = [conv]
    if norm:
        layers.append(nn.BatchNorm2d(4, affine=False))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head]
    return nn.Sequential(*layers).eval()


def known_data(batches: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    images = signs.view(4, 1, 1, 1).expand(4, 1, 3, 3).contiguous()
    labels = (signs > 0).long()
    return [(images.clone(), labels.clone()) for _ in range(batches)]


X = torch.randn(1, 1, 3, 3)


# ------------------------------------------------------------------ known answers
def test_the_known_net_is_right_before_pruning() -> None:
    split = split_batches(known_data(), batches=4, needs_recalibration=False)
    assert proxy_score(known_net(), split.held_out).accuracy == 1.0


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_the_proxy_picks_the_candidate_that_keeps_the_useful_channel(order) -> None:
    grid = [(WITHOUT_DEPENDENCY, WITH_DEPENDENCY)[i] for i in order]
    net = known_net()
    imp = calibrate_importance(
        net, X, known_data(), flops_reduction=0.25, ignored_layers=[net[-1]], candidates=grid
    )
    report = imp.calibration
    scores = {c.options["weight_dependency"]: c for c in report.candidates}
    assert scores[False].accuracy == 0.5  # channel 0 removed: always class 0
    assert scores[True].accuracy == 1.0  # channel 1 removed: the classifier never read it
    assert imp.weight_dependency is True
    assert report.best.options == WITH_DEPENDENCY
    assert report.chosen == order.index(1)
    # each plan removes exactly one of the four filters, a quarter of the parameters it owns
    assert {c.params_removed for c in report.candidates} == {1 + 2}  # filter + head column


def test_identical_plans_are_evaluated_once() -> None:
    net = known_net()
    grid = [WITH_DEPENDENCY, {**WITH_DEPENDENCY, "normalizer": "max"}, WITHOUT_DEPENDENCY]
    report = calibrate_importance(
        net, X, known_data(), flops_reduction=0.25, ignored_layers=[net[-1]], candidates=grid
    ).calibration
    # max-min and max normalization order one group's channels alike: the same plan
    assert report.candidates[1].same_plan_as == 0
    assert report.candidates[1].accuracy == report.candidates[0].accuracy
    assert report.candidates[2].same_plan_as is None


def test_the_model_is_untouched_with_batchnorm_statistics() -> None:
    net = known_net(norm=True)
    net.train()
    with torch.no_grad():
        net(known_data()[0][0] * 3)  # running statistics unlike the calibration data's
    net.eval()
    before = model_state(net)
    tensors = [id(t) for t in [*net.parameters(), *net.buffers()]]
    calibrate_importance(net, X, known_data(), flops_reduction=0.25, ignored_layers=[net[-1]])
    assert_unchanged(net, before)
    assert [id(t) for t in [*net.parameters(), *net.buffers()]] == tensors
    assert net[0].out_channels == 4 and not net.training


def test_resnet_calibration_leaves_the_model_and_mode_as_they_were() -> None:
    torch.manual_seed(0)
    net = resnet20(num_classes=3).train()
    x = torch.randn(1, 3, 16, 16)
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))) for _ in range(4)]
    before = model_state(net)
    imp = calibrate_importance(
        net, x, data, ignored_layers=[net.classifier], candidates=DEFAULT_CANDIDATES[:3]
    )
    assert_unchanged(net, before)
    assert net.training
    assert imp.calibration.recalibration_samples == 16
    assert imp.calibration.held_out_samples == 16


def test_pruner_with_calibration_data_prunes_with_the_winner_and_records_one_step() -> None:
    net = known_net()
    pruner = CPMCPruner(
        net,
        X,
        CPMCImportance(X, weight_dependency=False),
        flops_reduction=0.25,
        ignored_layers=[net[-1]],
        calibration_data=known_data(),
    )
    assert isinstance(pruner.calibration, CalibrationReport)
    # the base importance's weight_dependency=False is kept: every candidate removes
    # channel 0, so the chosen one is the first of the grid
    assert pruner.calibration.chosen == 0
    assert pruner.pruning_history() == []  # the candidates' trial prunes left no trace
    pruner.step()
    assert net[0].out_channels == 3
    assert len(pruner.pruning_history()) == 1


def test_cpmc_auto_prunes_the_known_net_without_losing_accuracy() -> None:
    net = known_net()
    assert needs_calibration("cpmc-auto") and not needs_calibration("cpmc")
    pruner = prune_to_budget(
        net,
        X,
        make_importance("cpmc-auto", X),
        flops_reduction=0.25,
        ignored_layers=[net[-1]],
        calibration_data=known_data(),
    )
    assert pruner.calibration is not None
    split = split_batches(known_data(), batches=4, needs_recalibration=False)
    assert proxy_score(net, split.held_out).accuracy == 1.0
    assert net[0].weight.flatten().tolist()[0] == pytest.approx(0.1)  # channel 0 kept


def test_report_table_lists_every_candidate_best_first() -> None:
    net = known_net()
    report = calibrate_importance(
        net,
        X,
        known_data(),
        flops_reduction=0.25,
        ignored_layers=[net[-1]],
        candidates=[WITHOUT_DEPENDENCY, WITH_DEPENDENCY],
    ).calibration
    lines = report.table().splitlines()
    assert "2 candidates" in lines[0] and "held-out" in lines[0]
    assert "(chosen)" in lines[4] and "weight_dependency=True" in lines[4]
    assert "100.00 %" in lines[4] and "50.00 %" in lines[5]
    assert report.as_dict()["chosen_options"] == WITH_DEPENDENCY


def logit_margin_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy of the class-1 margin against float targets (no accuracy)."""
    return F.binary_cross_entropy_with_logits(outputs[:, 1] - outputs[:, 0], targets)


def float_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images, labels.float()) for images, labels in known_data()]


# Keeping channel 0, the margin is +1 on a positive image and -1 on a negative one: the
# loss is log(1 + e^-1) for each. Without it, the margin is -1 everywhere: a positive
# image costs log(1 + e^1), a negative one log(1 + e^-1).
KEPT_LOSS = math.log1p(math.exp(-1))
LOST_LOSS = (math.log1p(math.exp(1)) + math.log1p(math.exp(-1))) / 2


def test_a_custom_loss_scores_the_candidates_when_there_is_no_accuracy() -> None:
    net = known_net()
    imp = calibrate_importance(
        net,
        X,
        float_data(),
        flops_reduction=0.25,
        ignored_layers=[net[-1]],
        candidates=[WITHOUT_DEPENDENCY, WITH_DEPENDENCY],
        loss_fn=logit_margin_loss,
    )
    report = imp.calibration
    assert [c.accuracy for c in report.candidates] == [None, None]  # float targets
    assert report.candidates[0].loss == pytest.approx(LOST_LOSS)
    assert report.candidates[1].loss == pytest.approx(KEPT_LOSS)
    assert report.chosen == 1 and imp.weight_dependency is True
    assert report.options["loss"] == "logit_margin_loss"


def test_pruner_calibration_loss_fn_scores_the_candidates() -> None:
    net = known_net()
    pruner = CPMCPruner(
        net,
        X,
        flops_reduction=0.25,
        ignored_layers=[net[-1]],
        calibration_data=float_data(),
        calibration_loss_fn=logit_margin_loss,
    )
    report = pruner.calibration
    assert report is not None and report.options["loss"] == "logit_margin_loss"
    assert report.best.loss == pytest.approx(KEPT_LOSS)  # channel 0 kept
    pruner.step()
    assert net[0].out_channels == 3
    assert net[0].weight.flatten().tolist()[0] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"calibration_data": known_data(), "calibration_loss_fn": "mse"},
            TypeError,
            "calibration_loss_fn must be callable as loss_fn\\(outputs, targets\\), got str",
        ),
        (
            {"calibration_loss_fn": logit_margin_loss},
            ValueError,
            "calibration_loss_fn scores calibration candidates: give calibration_data too",
        ),
    ],
)
def test_bad_calibration_loss_fn_is_refused(kwargs, error, match) -> None:
    net = known_net()
    before = model_state(net)
    with pytest.raises(error, match=match):
        CPMCPruner(net, X, flops_reduction=0.25, ignored_layers=[net[-1]], **kwargs)
    assert_unchanged(net, before)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batches": 1}, ValueError, "batches must be"),
        ({"batches": 2.0}, TypeError, "batches"),
        ({"candidates": "alpha"}, TypeError, "sequence of option dicts"),
        ({"candidates": [{"gamma": 1}]}, ValueError, "candidate 0 sets gamma"),
        ({"candidates": [3]}, TypeError, "candidate 0 must be a dict"),
        ({"candidates": []}, ValueError, "candidates is empty"),
        ({"candidates": [{"alpha": -1}]}, ValueError, "candidate 0 .*alpha"),
        ({"candidates": [{"combine": "per-cost", "beta": 1}]}, ValueError, "per-cost"),
        ({"loss_fn": "mse"}, TypeError, "loss_fn"),
    ],
)
def test_bad_options_are_refused(kwargs, error, match) -> None:
    net = known_net()
    before = model_state(net)
    with pytest.raises(error, match=match):
        calibrate_importance(
            net, X, known_data(), flops_reduction=0.25, ignored_layers=[net[-1]], **kwargs
        )
    assert_unchanged(net, before)


def test_bad_data_is_refused() -> None:
    net = known_net(norm=True)
    with pytest.raises(TypeError, match="must yield \\(inputs, targets\\) batches, got Tensor"):
        calibrate_importance(net, X, [torch.randn(2, 1, 3, 3)], ignored_layers=[net[-1]])
    with pytest.raises(ValueError, match="gave 1 batch"):
        calibrate_importance(net, X, known_data(1), ignored_layers=[net[-1]])


def test_calibration_data_needs_a_cpmc_importance() -> None:
    net = known_net()
    with pytest.raises(TypeError, match="calibration_data chooses CPMCImportance's options"):
        CPMCPruner(
            net,
            X,
            tp.importance.GroupMagnitudeImportance(p=1),
            ignored_layers=[net[-1]],
            calibration_data=known_data(),
        )


# ------------------------------------------------------------------ the default grid
@pytest.mark.parametrize("preset", list_presets())
def test_the_default_grid_holds_every_preset_with_the_papers_normalizer(preset) -> None:
    p = get_preset(preset)
    assert {"alpha": p.alpha, "beta": p.beta} in DEFAULT_CANDIDATES


def test_the_default_grid_is_41_additive_candidates_and_holds_the_default() -> None:
    # 4 x 4 max-min pairs, 4 x 4 mean pairs, 3 x 3 squared mean pairs; per-cost is out
    # because no calibration of the Fashion-MNIST benchmark chose it
    assert len(DEFAULT_CANDIDATES) == 16 + 16 + 9 == 41
    assert {"alpha": DEFAULT_ALPHA, "beta": DEFAULT_BETA} in DEFAULT_CANDIDATES
    assert all(c.get("combine", "additive") == "additive" for c in DEFAULT_CANDIDATES)
    assert len({tuple(sorted(c.items())) for c in DEFAULT_CANDIDATES}) == 41


# ------------------------------------------------------------------ per-cost and mean
def test_per_cost_divides_the_weight_value_by_the_budgeted_cost() -> None:
    value = torch.tensor([0.2, 0.6, 0.0])
    params = torch.tensor([4.0, 2.0, 2.0])
    macs = torch.tensor([10.0, 40.0, 0.0])
    kw = {"params_max": 4.0, "macs_max": 40.0, "alpha": 0, "beta": 0, "combine": "per-cost"}
    by_macs = combine_criteria(value, params, macs, **kw)
    torch.testing.assert_close(by_macs, torch.tensor([0.2 / 0.25, 0.6 / 1.0, 0.0]))
    by_params = combine_criteria(value, params, macs, **kw, cost="params")
    torch.testing.assert_close(by_params, torch.tensor([0.2 / 1.0, 0.6 / 0.5, 0.0]))


def test_mean_normalizer_divides_by_the_mean() -> None:
    torch.testing.assert_close(
        normalize(torch.tensor([1.0, 3.0]), "mean"), torch.tensor([0.5, 1.5])
    )
    assert normalize(torch.zeros(3), "mean").tolist() == [0.0, 0.0, 0.0]


def test_per_cost_importance_follows_the_pruners_budget() -> None:
    imp = CPMCImportance(X, combine="per-cost")
    assert (imp.alpha, imp.beta, imp.budget_cost) == (0.0, 0.0, "macs")
    net = known_net()
    graph = tp.DependencyGraph().build_dependency(net, X)
    groups = tuple(graph.get_all_groups(ignored_layers=[net[-1]], root_module_types=[nn.Conv2d]))
    imp.set_scope(graph, RankingScope(groups, metric="params"))
    assert imp.budget_cost == "params"
    assert CPMCImportance(X, combine="per-cost", cost="macs").budget_cost == "macs"
    assert "combine='per-cost'" in repr(imp)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"combine": "product"}, ValueError, "combine"),
        ({"combine": "per-cost", "alpha": 0.1}, ValueError, "leave alpha and beta at 0"),
        ({"cost": "latency"}, ValueError, "cost"),
        ({"combine": 1}, TypeError, "combine"),
    ],
)
def test_bad_combine_options_are_refused(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        CPMCImportance(X, **kwargs)


def test_per_cost_scores_by_hand() -> None:
    """Two convs whose filters weigh the same (|W| sums to 1 per filter): per MAC, the
    second conv's channels (36 weights x 36 positions) are worth 1/36 of the first's
    (1 weight x 36 positions), so they score 1 against 36 and go first."""
    first = nn.Conv2d(1, 4, 1, bias=False)
    second = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    head = nn.Conv2d(4, 2, 1)
    net = nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), head)
    with torch.no_grad():
        first.weight.fill_(1.0)
        second.weight.fill_(1.0 / 36)
    x = torch.randn(1, 1, 6, 6)
    imp = CPMCImportance(x, combine="per-cost", normalizer=None, weight_dependency=False)
    graph = tp.DependencyGraph().build_dependency(net, x)
    groups = tuple(graph.get_all_groups(ignored_layers=[head], root_module_types=[nn.Conv2d]))
    imp.set_scope(graph, RankingScope(groups, metric="macs"))
    scores = {group[0].dep.target.module: imp(group) for group in groups}
    torch.testing.assert_close(scores[first], torch.full((4,), 36.0))
    torch.testing.assert_close(scores[second], torch.full((4,), 1.0))
