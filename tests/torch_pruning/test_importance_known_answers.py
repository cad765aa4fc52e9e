"""CPMC scores on hand-set weights, recomputed by hand inside each test."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCImportance

# input 1x1x4x4; conv1 keeps 4x4 (HW=16); conv2 1x1 keeps 4x4; pooled to 1x1; fc on 2 features
HW = 16


class ThreeLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.fc(x)


def hand_set() -> ThreeLayer:
    net = ThreeLayer().eval()
    with torch.no_grad():
        # filter i of conv1 is 9 copies of w1[i]: ||row||_1 = 9 * |w1[i]|
        for i, value in enumerate([0.1, -0.2, 0.3]):
            net.conv1.weight[i].fill_(value)
        net.conv1.bias.copy_(torch.tensor([0.5, 0.0, -0.1]))
        net.bn1.weight.copy_(torch.tensor([1.0, 0.5, 2.0]))
        net.bn1.bias.copy_(torch.tensor([0.0, 0.1, -0.2]))
        net.conv2.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -0.5]]).view(2, 3, 1, 1))
        net.fc.weight.copy_(torch.tensor([[3.0, -1.0], [1.0, 2.0]]))
        net.fc.bias.copy_(torch.tensor([0.1, 0.2]))
    return net


def by_hand(weight_dependency: bool, p: int = 1) -> dict[str, torch.Tensor]:
    """E, P and F of both groups (conv1's 3 channels, conv2's 2 channels), by hand."""
    w1 = torch.tensor([0.1, 0.2, 0.3])
    e1_out = 9 * w1**p + torch.tensor([0.5, 0.0, 0.1]) ** p  # filter + bias
    e1_out += torch.tensor([1.0, 0.5, 2.0]) ** p + torch.tensor([0.0, 0.1, 0.2]) ** p  # BN
    e1_in = (
        torch.tensor([1.0 + 0.0, 2.0 + 1.0, 0.5 + 0.5]) if p == 1 else torch.tensor([1.0, 5.0, 0.5])
    )  # columns of conv2
    e2_out = (
        torch.tensor([1.0 + 2.0 + 0.5, 0.0 + 1.0 + 0.5]) if p == 1 else torch.tensor([5.25, 1.25])
    )
    e2_in = torch.tensor([3.0 + 1.0, 1.0 + 2.0]) if p == 1 else torch.tensor([10.0, 5.0])
    # parameters: conv1 row 9 + bias 1 + BN 2 = 12 out; conv2 column 2 in
    p1_out, p1_in = torch.full((3,), 12.0), torch.full((3,), 2.0)
    p2_out, p2_in = torch.full((2,), 3.0), torch.full((2,), 2.0)
    f1_out, f1_in = p1_out * HW, p1_in * HW  # conv2 output is 4x4 too
    f2_out, f2_in = p2_out * HW, p2_in * 1  # fc output has one position
    # the fc's own output group (2 channels, ignored in no pruner here) also counts
    # towards the maxima: P = 2 weights + 1 bias, F = 3 * 1
    if weight_dependency:
        return {
            "E1": e1_out + e1_in,
            "E2": e2_out + e2_in,
            "P1": p1_out + p1_in,
            "P2": p2_out + p2_in,
            "F1": f1_out + f1_in,
            "F2": f2_out + f2_in,
        }
    return {"E1": e1_out, "E2": e2_out, "P1": p1_out, "P2": p2_out, "F1": f1_out, "F2": f2_out}


def normalized(e: torch.Tensor, normalizer: str | None) -> torch.Tensor:
    if normalizer == "max-min":
        return (e - e.min()) / (e.max() - e.min())
    if normalizer == "l2":
        return e / e.square().sum().sqrt()
    if normalizer == "max":
        return e / e.max()
    return e


def scores(net: ThreeLayer, importance: CPMCImportance) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(1, 1, 4, 4)
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    g1 = graph.get_pruning_group(net.conv1, tp.prune_conv_out_channels, idxs=[0, 1, 2])
    g2 = graph.get_pruning_group(net.conv2, tp.prune_conv_out_channels, idxs=[0, 1])
    return importance(g1), importance(g2)


@pytest.mark.parametrize("normalizer", ["max-min", "l2", "max", None])
@pytest.mark.parametrize("weight_dependency", [True, False])
@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.0), (0.3, 0.0), (0.0, 0.7), (0.5, 2.0)])
def test_scores_equal_hand_computation(
    normalizer: str | None, weight_dependency: bool, alpha: float, beta: float
) -> None:
    net = hand_set()
    x = torch.randn(1, 1, 4, 4)
    imp = CPMCImportance(
        x, alpha=alpha, beta=beta, normalizer=normalizer, weight_dependency=weight_dependency
    )
    got1, got2 = scores(net, imp)

    h = by_hand(weight_dependency)
    fc_p, fc_f = 3.0, 3.0  # the classifier's output channels are prunable channels too
    p_max = max(h["P1"].max(), h["P2"].max(), torch.tensor(fc_p if weight_dependency else fc_p))
    f_max = max(h["F1"].max(), h["F2"].max(), torch.tensor(fc_f))
    want1 = (
        normalized(h["E1"], normalizer)
        + alpha * (1 - h["P1"] / p_max)
        + beta * (1 - h["F1"] / f_max)
    )
    want2 = (
        normalized(h["E2"], normalizer)
        + alpha * (1 - h["P2"] / p_max)
        + beta * (1 - h["F2"] / f_max)
    )
    torch.testing.assert_close(got1, want1.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got2, want2.float(), rtol=1e-5, atol=1e-6)


def test_p2_norm_uses_squares() -> None:
    net = hand_set()
    imp = CPMCImportance(alpha=0.0, beta=0.0, p=2, normalizer=None)
    got1, got2 = scores(net, imp)
    h = by_hand(True, p=2)
    torch.testing.assert_close(got1, h["E1"].float())
    torch.testing.assert_close(got2, h["E2"].float())


def test_weight_dependency_changes_the_ranking() -> None:
    """conv1's channels 0 and 1 own equal weights; channel 1 feeds a heavier conv2 column."""
    net = hand_set()
    with_dep, _ = scores(net, CPMCImportance(alpha=0, beta=0, normalizer=None))
    without, _ = scores(
        net, CPMCImportance(alpha=0, beta=0, normalizer=None, weight_dependency=False)
    )
    assert without[0] == pytest.approx(without[1])  # CPMC-A sees equal filters (2.4 each)
    assert with_dep[1] > with_dep[0] + 1.5  # CPMC sees conv2's heavier column (3 vs 1)


class Residual(nn.Module):
    """conv_a's output is added to conv_b's: their channels are tied."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(1, 2, 1, bias=False)
        self.conv_b = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_a(x)
        return self.fc((a + self.conv_b(a)).mean(dim=(2, 3)))


def test_residual_tied_channels_score_the_mean_of_their_layers() -> None:
    net = Residual().eval()
    with torch.no_grad():
        net.conv_a.weight.copy_(torch.tensor([1.0, -3.0]).view(2, 1, 1, 1))
        net.conv_b.weight.copy_(torch.tensor([[2.0, 0.5], [-1.0, 4.0]]).view(2, 2, 1, 1))
        net.fc.weight.copy_(torch.tensor([[0.25, -0.75]]))
    x = torch.randn(1, 1, 3, 3)
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    group = graph.get_pruning_group(net.conv_a, tp.prune_conv_out_channels, idxs=[0, 1])
    got = CPMCImportance(alpha=0, beta=0, normalizer=None)(group)
    # out: conv_a row + conv_b row; in: conv_b column + fc column; two producing layers
    e = torch.tensor(
        [1.0 + (2.0 + 0.5) + (2.0 + 1.0) + 0.25, 3.0 + (1.0 + 4.0) + (0.5 + 4.0) + 0.75]
    )
    torch.testing.assert_close(got, e / 2)


def test_equal_scores_in_a_group_stay_finite() -> None:
    net = hand_set()
    with torch.no_grad():
        net.conv1.weight.fill_(0.5)
        net.conv1.bias.fill_(0.0)
        net.bn1.weight.fill_(1.0)
        net.bn1.bias.fill_(0.0)
        net.conv2.weight.fill_(1.0)
    for normalizer in ("max-min", "l2", "max", None):
        got, _ = scores(net, CPMCImportance(torch.randn(1, 1, 4, 4), normalizer=normalizer))
        assert torch.isfinite(got).all()
        assert torch.allclose(got, got[0].expand_as(got))


def test_all_zero_group_stays_finite() -> None:
    net = hand_set()
    with torch.no_grad():
        for t in (net.conv1.weight, net.conv1.bias, net.bn1.weight, net.bn1.bias, net.conv2.weight):
            t.zero_()
    for normalizer in ("max-min", "l2", "max", None):
        got, _ = scores(net, CPMCImportance(torch.randn(1, 1, 4, 4), normalizer=normalizer))
        assert torch.isfinite(got).all()
