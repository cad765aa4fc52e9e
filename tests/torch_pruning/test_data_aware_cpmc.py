"""Data-aware CPMC: activation-weighted weight dependency and the Taylor term.

Known answers are computed by hand in the tests from the batch itself; the options
work inside CPMCPruner (and inside torch-pruning's MetaPruner on every test
architecture: test_metapruner.py); bad options get a clear error.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from cpmc_plugin import CPMCImportance, CPMCPruner
from tests.archs import ARCHS, build, classifier_of
from tests.helpers import assert_unchanged, budget_tolerance, model_state


def _minmax(values: torch.Tensor) -> torch.Tensor:
    return (values - values.min()) / (values.max() - values.min())


def _tiny() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25], [2.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    return net, x, y


def _hidden_group(net: nn.Sequential, x: torch.Tensor) -> tp.Group:
    graph = tp.DependencyGraph().build_dependency(net, x)
    channels = list(range(net[0].out_features))
    return graph.get_pruning_group(net[0], tp.prune_linear_out_channels, channels)


def _by_hand(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """E, the activation-weighted E and the Taylor term of the 3 hidden channels (p=1)."""
    w0, b0, w2 = net[0].weight, net[0].bias, net[2].weight
    hidden = x @ w0.T + b0  # what Linear 0 writes
    read = hidden.relu()  # what Linear 2 reads
    rms_out = hidden.square().mean(0).sqrt()
    rms_in = read.square().mean(0).sqrt()
    out_norm = w0.abs().sum(1) + b0.abs()
    in_norm = w2.abs().sum(0)
    loss = F.cross_entropy(net(x), y)
    g0, gb0, g2 = torch.autograd.grad(loss, [w0, b0, w2])
    taylor = (w0 * g0).abs().sum(1) + (b0 * gb0).abs() + (w2 * g2).abs().sum(0)
    return {
        "plain": (out_norm + in_norm).detach(),
        "data": (out_norm * rms_out + in_norm * rms_in).detach(),
        "taylor": taylor.detach(),
    }


def test_activation_weighted_value_and_taylor_term_by_hand() -> None:
    net, x, y = _tiny()
    hand = _by_hand(net, x, y)
    group = _hidden_group(net, x)
    imp = CPMCImportance(x, alpha=0.0, beta=0.0, data=[(x, y)], gamma=0.7)
    expected = _minmax(hand["data"]) + 0.7 * _minmax(hand["taylor"])
    torch.testing.assert_close(imp(group), expected.float(), rtol=1e-5, atol=1e-6)


def test_taylor_term_on_the_plain_weight_value_by_hand() -> None:
    net, x, y = _tiny()
    hand = _by_hand(net, x, y)
    group = _hidden_group(net, x)
    imp = CPMCImportance(
        x, alpha=0.0, beta=0.0, data=[(x, y)], gamma=2.0, activation_weighted=False
    )
    expected = _minmax(hand["plain"]) + 2.0 * _minmax(hand["taylor"])
    torch.testing.assert_close(imp(group), expected.float(), rtol=1e-5, atol=1e-6)


def test_activation_weighting_alone_needs_no_targets() -> None:
    net, x, y = _tiny()
    hand = _by_hand(net, x, y)
    group = _hidden_group(net, x)
    imp = CPMCImportance(x, alpha=0.0, beta=0.0, data=[x])  # inputs only: no Taylor term
    torch.testing.assert_close(imp(group), _minmax(hand["data"]).float(), rtol=1e-5, atol=1e-6)


def test_combined_score_adds_the_cost_terms_by_hand() -> None:
    """I = E_hat + gamma T_hat + alpha (1 - P/P_max) + beta (1 - F/F_max); one group, so
    P = P_max and F = F_max and the cost terms add 0."""
    net, x, y = _tiny()
    hand = _by_hand(net, x, y)
    imp = CPMCImportance(x, alpha=0.3, beta=0.2, data=[(x, y)], gamma=0.5)
    expected = _minmax(hand["data"]) + 0.5 * _minmax(hand["taylor"])
    torch.testing.assert_close(imp(_hidden_group(net, x)), expected.float(), rtol=1e-5, atol=1e-6)


def test_measuring_leaves_the_model_its_grads_and_its_mode() -> None:
    net, x, y = _tiny()
    group = _hidden_group(net, x)  # (building the host's graph leaves eval mode)
    net.train()
    net[2].weight.requires_grad_(False)  # a frozen layer stays frozen
    marker = torch.full_like(net[0].weight, 3.0)
    net[0].weight.grad = marker
    before = model_state(net)
    imp = CPMCImportance(x, data=[(x, y)], gamma=1.0)
    imp(group)
    assert_unchanged(net, before)
    assert net[0].weight.grad is marker and net[0].bias.grad is None
    assert net.training and not net[2].weight.requires_grad


def test_the_batches_are_kept_and_measured_again_after_a_prune() -> None:
    net, x, y = _tiny()
    stream = iter([(x, y), (x, y), (x, y)])  # a one-shot iterator: kept, not consumed twice
    imp = CPMCImportance(x, alpha=0.0, beta=0.0, data=stream, data_batches=2, gamma=1.0)
    assert len(imp.data) == 2
    group = _hidden_group(net, x)
    first = imp(group)
    graph = tp.DependencyGraph().build_dependency(net, x)
    graph.get_pruning_group(net[0], tp.prune_linear_out_channels, [int(first.argmin())]).prune()
    again = imp(_hidden_group(net, x))  # the shapes changed: measured on the pruned model
    assert again.shape == (2,)


def test_cpmc_pruner_meets_the_budget_with_the_data_aware_options() -> None:
    arch = ARCHS[1]
    model = build(arch)
    x = arch.example()
    torch.manual_seed(2)
    data = [(torch.randn_like(x), torch.randint(0, 10, (len(x),))) for _ in range(2)]
    importance = CPMCImportance(x, data=data, gamma=0.5)
    pruner = CPMCPruner(
        model, x, importance, flops_reduction=0.4, iterative_steps=2,
        ignored_layers=[classifier_of(model)],
    )  # fmt: skip
    pruner.prune()
    reached = pruner.report().macs_reduction
    assert abs(reached - 0.4) <= budget_tolerance(pruner) + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"gamma": 1.0}, ValueError, r"gamma=1.0 weighs the Taylor term.*pass data="),
        ({"gamma": -1.0, "data": [1]}, ValueError, r"gamma must be a finite number >= 0"),
        ({"data": torch.ones(2)}, TypeError, r"data must be an iterable of \(inputs, targets\)"),
        ({"data": 3}, TypeError, r"data must be an iterable.*got int"),
        ({"data": []}, ValueError, r"data gave no batch"),
        ({"data": [1], "data_batches": 0}, ValueError, r"data_batches must be"),
        ({"data": [1], "activation_weighted": "yes"}, TypeError, r"activation_weighted"),
        ({"data": [1], "activation_weighted": False}, ValueError, r"nothing uses it"),
        ({"loss_fn": F.cross_entropy}, ValueError, r"loss_fn scores the Taylor term"),
        ({"data": [1], "loss_fn": 3}, TypeError, r"loss_fn must be"),
    ],
)
def test_bad_data_aware_options(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        CPMCImportance(**kwargs)


def test_a_batch_without_targets_is_refused_for_the_taylor_term() -> None:
    net, x, _ = _tiny()
    group = _hidden_group(net, x)
    imp = CPMCImportance(x, data=[x], gamma=1.0)
    before = model_state(net)
    with pytest.raises(ValueError, match=r"Taylor term needs \(inputs, targets\) batches"):
        imp(group)
    assert_unchanged(net, before)
