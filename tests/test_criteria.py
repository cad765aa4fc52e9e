"""Criteria by name: every one ranks channels for CPMCPruner's exact FLOPs budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp

from cpmc_plugin import CPMCImportance, CPMCPruner, OICSRImportance
from cpmc_plugin.criteria import (
    CRITERIA,
    DATA_AWARE_GAMMA,
    make_importance,
    needs_calibration,
    needs_data,
    needs_gradients,
)
from tests.archs import ARCHS, build, classifier_of


def test_names_map_to_the_host_and_cpmc_importances() -> None:
    assert CRITERIA[:5] == ("cpmc", "cpmc-a", "cpmc-data", "cpmc-auto", "oicsr")
    assert type(make_importance("cpmc-auto")) is CPMCImportance  # the calibration's base
    assert isinstance(make_importance("CPMC"), CPMCImportance)
    assert make_importance("cpmc-a").weight_dependency is False
    assert isinstance(make_importance("oicsr"), OICSRImportance)
    assert make_importance("l1").p == 1 and make_importance("l2").p == 2
    assert isinstance(make_importance("lamp"), tp.importance.LAMPImportance)
    assert isinstance(make_importance("bn-scale"), tp.importance.BNScaleImportance)
    assert isinstance(make_importance("random"), tp.importance.RandomImportance)
    preset = make_importance("cpmc", family="densenet", alpha=0.3)
    assert (preset.alpha, preset.beta) == (0.3, 0.5)  # explicit alpha over the preset's


@pytest.mark.parametrize("name", CRITERIA)
def test_every_criterion_meets_the_budget(name: str) -> None:
    net = build(ARCHS[0])
    x = torch.randn(2, 3, 32, 32)
    if needs_gradients(name):
        F.cross_entropy(net(x), torch.tensor([0, 1])).backward()
    pruner = CPMCPruner(
        net,
        x[:1],
        importance=make_importance(
            name, x[:1], data=[(x, torch.tensor([0, 1]))] if needs_data(name) else None
        ),
        flops_reduction=0.5,
        ignored_layers=[classifier_of(net)],
        calibration_data=[(x, torch.tensor([0, 1]))] * 4 if needs_calibration(name) else None,
    )
    pruner.step()
    assert abs(pruner.report().macs_reduction - 0.5) < 0.02
    assert (pruner.calibration is not None) == needs_calibration(name)


def test_bad_names_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown criterion 'l3'; known criteria: cpmc, cpmc-a"):
        make_importance("l3")
    with pytest.raises(ValueError, match=r"criterion 'l1' takes no options"):
        make_importance("l1", alpha=0.1)
    with pytest.raises(ValueError, match=r"unknown preset .transformer.; known presets"):
        make_importance("cpmc", family="transformer")
    with pytest.raises(ValueError, match=r"criterion 'cpmc-data' measures the model on data"):
        make_importance("cpmc-data")
    with pytest.raises(ValueError, match=r"criterion 'l1' takes no data \(only 'cpmc-data' do\)"):
        make_importance("l1", data=[1])


def test_the_data_aware_criterion_is_the_fixed_setting_it_names() -> None:
    x = torch.randn(1, 3, 8, 8)
    importance = make_importance("cpmc-data", x, data=[(x, torch.tensor([0]))], alpha=0.2)
    assert isinstance(importance, CPMCImportance)
    assert importance.gamma == DATA_AWARE_GAMMA and importance.activation_weighted
    assert importance.alpha == 0.2 and importance.data is not None and len(importance.data) == 1
    preset = make_importance("cpmc-data", x, family="vgg", data=[(x, torch.tensor([0]))])
    assert (preset.alpha, preset.beta) == (0.1, 0.25)
