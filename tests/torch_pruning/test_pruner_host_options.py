"""torch-pruning's pruner options under CPMCPruner: pruning_ratio_dict, isomorphic,
regularize, ConvTranspose layers, and the options it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import CPMCPruner
from tests.helpers import assert_unchanged, budget_tolerance, model_state


def two_branch() -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a1, self.a2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
            self.b1, self.b2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
            self.fc = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.a2(F.relu(self.a1(x))).mean((2, 3))
            b = self.b2(F.relu(self.b1(x))).mean((2, 3))
            return self.fc(torch.cat([a, b], 1))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.b1.weight.mul_(10.0)  # every b1 channel outranks every a1 channel in a global ranking
    return net


# ---------------------------------------------------- pruning_ratio_dict
def test_pruning_ratio_dict_caps_a_layer() -> None:
    net = two_branch()
    x = torch.randn(1, 3, 8, 8)
    pruner = CPMCPruner(
        net, x, params_reduction=0.3, ignored_layers=[net.fc, net.a2, net.b2],
        pruning_ratio_dict={net.a1: 0.25},
    )  # fmt: skip
    pruner.step()
    assert net.a1.out_channels >= 12  # at most a quarter of 16 went
    assert net.b1.out_channels < 16  # the budget took the rest from b1


def test_pruning_ratio_dict_bad_values() -> None:
    net = two_branch()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"pruning_ratio_dict\[Conv2d\] must be in \[0, 1\]"):
        CPMCPruner(net, x, pruning_ratio_dict={net.a1: 1.5})
    with pytest.raises(TypeError, match="pruning_ratio_dict must be a dict"):
        CPMCPruner(net, x, pruning_ratio_dict=[net.a1])
    with pytest.raises(TypeError, match="keys must be modules"):
        CPMCPruner(net, x, pruning_ratio_dict={"a1": 0.5})


# ------------------------------------------------------------ isomorphic
def _scope_fractions(net: nn.Module) -> tuple[float, float]:
    first = (32 - net.a1.out_channels - net.b1.out_channels) / 32  # conv -> conv groups
    second = (16 - net.a2.out_channels - net.b2.out_channels) / 16  # conv -> concat -> fc
    return first, second


def test_isomorphic_ranks_within_isomorphic_groups() -> None:
    import torch_pruning as tp

    x = torch.randn(1, 3, 8, 8)

    def pruned(**options: object) -> nn.Module:
        net = two_branch()
        with torch.no_grad():
            net.fc.weight.mul_(100.0)  # the concat -> fc groups outweigh the others by far
        l1 = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
        CPMCPruner(net, x, l1, params_reduction=0.3, ignored_layers=[net.fc], **options).step()
        return net

    first, second = _scope_fractions(pruned())
    assert second == 0 and first > 0.3  # a global ranking leaves the fc-side groups alone
    first, second = _scope_fractions(pruned(isomorphic=True))
    assert second > 0 and abs(first - second) <= 1 / 16  # every scope gives up the same share
    with pytest.raises(TypeError, match="isomorphic must be True or False, got 'yes'"):
        CPMCPruner(two_branch(), x, isomorphic="yes")


class TransposeNet(nn.Module):
    """A decoder-style net: a ConvTranspose2d between two convs (torch-pruning's own case)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.ConvTranspose2d(16, 64, 2, stride=2), nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.conv3(F.relu(self.bn2(self.conv2(x))))


@pytest.mark.parametrize("isomorphic", [False, True])
def test_conv_transpose_meets_each_iterative_budget(isomorphic: bool) -> None:
    import torch_pruning as tp

    torch.manual_seed(0)
    net = TransposeNet().train()
    x = torch.randn(1, 3, 16, 16)
    base = tp.utils.count_ops_and_params(net, x)[0]
    pruner = CPMCPruner(
        net, x, flops_reduction=0.75, iterative_steps=5, ignored_layers=[net.conv3],
        isomorphic=isomorphic,
    )  # fmt: skip
    for step in range(1, 6):
        for group in pruner.step(interactive=True):
            group.prune()
        macs = tp.utils.count_ops_and_params(net, x)[0]
        tolerance = budget_tolerance(pruner)
        assert abs((1 - macs / base) - 0.75 * step / 5) <= tolerance + 1e-9
    assert net.training and net(x).shape == (1, 8, 32, 32)
    assert net.conv2.in_channels == net.conv1.out_channels < 16


# ---------------------------------------- regularize and refused options
def test_regularize_matches_the_host_call() -> None:
    net = two_branch()
    x = torch.randn(2, 3, 8, 8)
    pruner = CPMCPruner(net, x, flops_reduction=0.3, ignored_layers=[net.fc])
    before = model_state(net)
    loss = net(x).sum()
    loss.backward()
    assert pruner.regularize(net) is None
    assert pruner.regularize(net, loss) is None
    pruner.update_regularizer()
    assert_unchanged(net, before)


def test_refused_options_say_why() -> None:
    net = two_branch()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TypeError, match=r"pruning_ratio \(the budget .* replaces it\)"):
        CPMCPruner(net, x, pruning_ratio=0.5)
