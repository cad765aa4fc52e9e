"""ModelSnapshot puts back the very objects a change replaced, and refuses what it cannot undo."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cpmc_plugin.core.atomic import ModelSnapshot
from tests.helpers import assert_unchanged, model_state


def test_snapshot_restores_the_same_objects() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    weight, mean = net[0].weight, net[1].running_mean
    before = model_state(net)
    snap = ModelSnapshot(net)
    net[0].weight = nn.Parameter(torch.zeros(2, 3, 3, 3))
    net[0].out_channels = 2
    net[1].running_mean = torch.zeros(2)
    net.add_module("extra", nn.ReLU())
    snap.restore()
    assert net[0].weight is weight and net[1].running_mean is mean
    assert len(net) == 2
    assert_unchanged(net, before)


def test_snapshot_refuses_an_in_place_change_it_cannot_undo() -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    snap = ModelSnapshot(net)
    with torch.no_grad():
        net[0].bias.add_(1.0)
    with pytest.raises(RuntimeError, match="changed in place"):
        snap.restore()
    cloned = nn.Sequential(nn.Linear(2, 2))
    before = model_state(cloned)
    snap = ModelSnapshot(cloned, clone=True)
    with torch.no_grad():
        cloned[0].bias.add_(1.0)
    snap.restore()
    assert_unchanged(cloned, before)
