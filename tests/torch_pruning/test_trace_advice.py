"""A trace that fails gets the advice of its cause, and the causes users hit first
(``torch.no_grad()``, a frozen model) do not fail at all."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCPruner
from cpmc_plugin.models import create_model
from cpmc_plugin.torch_pruning.graph.build import describe_host_failure

__all__: list[str] = []


class Scale(nn.Module):
    """A per-channel scale the host has no pruner for."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class BrokenScalePruner(tp.pruner.BasePruningFunc):
    """A customized pruner with a bug: it reads an attribute ``Scale`` does not have."""

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.channels)

    get_in_channels = get_out_channels


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), Scale(8), nn.ReLU(), nn.Conv2d(8, 4, 3))


def test_an_error_in_a_customized_pruner_names_the_pruner() -> None:
    net, x = _net(), torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError) as refused:
        CPMCPruner(net, x, flops_reduction=0.3, ignored_layers=[net[3]],
                   customized_pruners={Scale: BrokenScalePruner()})  # fmt: skip
    message = str(refused.value)
    assert f"customized pruner {__name__}.BrokenScalePruner raised AttributeError" in message
    assert "test_trace_advice.py:" in message and "get_out_channels()" in message
    assert "not a limit of the host" in message
    assert "channel shuffle" not in message  # the host-limitation advice is not this one


def test_a_frozen_model_under_no_grad_prunes_to_the_budget() -> None:
    torch.manual_seed(0)
    net, x = create_model("resnet20", num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    net.requires_grad_(False)  # as an inference script leaves it
    with torch.no_grad():
        pruner = CPMCPruner(net, x, flops_reduction=0.3, ignored_layers=[net.classifier])
        pruner.step()
    assert abs(pruner.report().macs_reduction - 0.3) <= 0.005
    assert net(x).shape == (1, 10)


def _raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as caught:
        return caught


def test_autograd_switched_off_gets_its_own_advice() -> None:
    error = _raised(AssertionError("Dependency graph relies on autograd for tracing."))
    message = describe_host_failure(error)
    assert "switched off around the call" in message and "outside such a block" in message
    assert "customized_pruners" not in message


def test_a_host_limitation_keeps_the_host_advice() -> None:
    message = describe_host_failure(_raised(IndexError("list index out of range")))
    assert message.startswith("the model runs on example_inputs, but torch-pruning's")
    assert "IndexError: list index out of range" in message
    assert "customized_pruners={ModuleType: pruner}" in message and "ignored_layers" in message
