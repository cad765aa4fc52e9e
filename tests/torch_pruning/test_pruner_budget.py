"""CPMCPruner meets FLOPs and parameter budgets on every architecture family."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCImportance, CPMCPruner
from tests.archs import ARCHS, Arch, build, classifier_of
from tests.helpers import budget_tolerance

TOL = 0.005


def conv_linear_channels(model: nn.Module) -> dict[str, int]:
    return {
        name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


def check_budget(pruner: CPMCPruner, target: float, metric: str) -> None:
    report = pruner.report()
    macs, params = tp.utils.count_ops_and_params(pruner.model, pruner.example_inputs)
    assert report.macs_after == int(macs) and report.params_after == int(params)
    achieved = report.macs_reduction if metric == "macs" else report.params_reduction
    assert pruner.metric == metric  # the budget_tolerance below is in this metric
    # within 0.5 pp, or within one channel's cost where a single channel costs more
    assert abs(achieved - target) <= budget_tolerance(pruner) + 1e-9, (
        achieved,
        target,
        budget_tolerance(pruner),
    )


def check_cap(before: dict[str, int], after: dict[str, int], ratio: float) -> None:
    for name, n in before.items():
        assert after[name] >= 1, name
        assert after[name] >= math.ceil(n * (1 - ratio) - 1e-9), (name, n, after[name])


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
@pytest.mark.parametrize(
    ("metric", "target"), [("macs", 0.3), ("macs", 0.5), ("macs", 0.7), ("params", 0.5)]
)
def test_budget_met(arch: Arch, metric: str, target: float) -> None:
    model = build(arch)
    x = arch.example()
    out_shape = model(x).shape
    before = conv_linear_channels(model)
    budget = {"flops_reduction": target} if metric == "macs" else {"params_reduction": target}
    pruner = CPMCPruner(model, x, ignored_layers=[classifier_of(model)], **budget)
    pruner.step()
    check_budget(pruner, target, metric)
    assert model(x).shape == out_shape
    check_cap(before, conv_linear_channels(model), 0.9)
    assert pruner.report().channels_after < pruner.report().channels_before


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_hard_per_layer_cap(arch: Arch) -> None:
    model = build(arch)
    x = arch.example()
    before = conv_linear_channels(model)
    pruner = CPMCPruner(
        model, x, flops_reduction=0.6, max_pruning_ratio=0.7, ignored_layers=[classifier_of(model)]
    )
    pruner.step()
    check_cap(before, conv_linear_channels(model), 0.7)
    check_budget(pruner, 0.6, "macs")


@pytest.mark.parametrize("arch", [ARCHS[1], ARCHS[3]], ids=lambda a: a.name)
def test_iterative_steps_are_even(arch: Arch) -> None:
    model = build(arch)
    x = arch.example()
    pruner = CPMCPruner(
        model, x, flops_reduction=0.6, iterative_steps=3, ignored_layers=[classifier_of(model)]
    )
    reached = []
    for step in range(1, 4):
        pruner.step()
        reached.append(pruner.report().macs_reduction)
        tolerance = budget_tolerance(pruner)
        assert abs(reached[-1] - 0.2 * step) <= tolerance + 1e-9
    assert reached == sorted(reached)
    with pytest.warns(UserWarning, match="all 3 steps are done"):
        pruner.step()
    assert pruner.report().macs_reduction == reached[-1]


@pytest.mark.parametrize(
    "importance",
    [
        tp.importance.GroupMagnitudeImportance(p=1),
        tp.importance.GroupMagnitudeImportance(p=2),
        tp.importance.BNScaleImportance(),
        tp.importance.LAMPImportance(),
        tp.importance.RandomImportance(),
        CPMCImportance(alpha=0.0, beta=0.0, weight_dependency=False),
    ],
    ids=["l1", "l2", "bn-scale", "lamp", "random", "cpmc-a"],
)
def test_any_host_importance_gets_a_budget(importance: object) -> None:
    arch = ARCHS[1]
    model = build(arch)
    x = arch.example()
    pruner = CPMCPruner(
        model, x, importance, flops_reduction=0.5, ignored_layers=[classifier_of(model)]
    )
    pruner.step()
    check_budget(pruner, 0.5, "macs")


def test_round_to_keeps_multiples() -> None:
    arch = ARCHS[0]
    model = build(arch)
    x = arch.example()
    pruner = CPMCPruner(
        model, x, flops_reduction=0.5, round_to=8, ignored_layers=[classifier_of(model)]
    )
    pruner.step()
    for name, n in conv_linear_channels(model).items():
        if name != "classifier":
            assert n % 8 == 0, (name, n)


def test_interactive_step_and_history() -> None:
    arch = ARCHS[1]
    model = build(arch)
    twin = copy.deepcopy(model)
    x = arch.example()
    pruner = CPMCPruner(model, x, flops_reduction=0.5, ignored_layers=[classifier_of(model)])
    groups = list(pruner.step(interactive=True))
    assert groups, "the plan removes something"
    with pytest.warns(UserWarning, match="pp off"):  # groups listed but never pruned
        pruner.report()
    # groups are made lazily: prune each before asking for the next
    pruner2 = CPMCPruner(twin, x, flops_reduction=0.5, ignored_layers=[classifier_of(twin)])
    for group in pruner2.step(interactive=True):
        group.prune()
    assert len(pruner2.pruning_history()) == len(groups)
    check_budget(pruner2, 0.5, "macs")


def test_flatten_into_linear_counts_every_position() -> None:
    """VGG's hidden Linear reads 16 inputs per conv channel; the plan must know."""
    arch = ARCHS[0]
    model = build(arch)
    x = arch.example()
    pruner = CPMCPruner(model, x, params_reduction=0.3, ignored_layers=[classifier_of(model)])
    pruner.step()
    assert model.hidden.in_features == 16 * model.features[4][0].out_channels
    check_budget(pruner, 0.3, "params")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnet50",
        "mobilenet_v2",
        "densenet121",
        "vgg11_bn",
        "resnext50_32x4d",
        "efficientnet_b0",
    ],
)
def test_torchvision_models_within_half_a_point(name: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    head = model.fc if hasattr(model, "fc") else model.classifier
    head = head[-1] if isinstance(head, nn.Sequential) else head
    pruner = CPMCPruner(model, x, flops_reduction=0.5, ignored_layers=[head])
    pruner.step()
    achieved = pruner.report().macs_reduction
    assert abs(achieved - 0.5) <= TOL, achieved
    assert model(x).shape == (1, 10)
