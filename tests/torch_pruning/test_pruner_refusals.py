"""CPMCPruner refuses a step it cannot make safely and leaves the model as it was: a prune
that breaks the forward, one that changes the output's shape, a graph the host cannot trace."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import CPMCPruner
from tests.helpers import assert_unchanged, model_state


class WidthConstant(nn.Module):
    """Like torchvision's ViT: a shape constant kept in an attribute no graph can see."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 8
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(F.relu(self.stem(x)))
        x = x.reshape(x.shape[0], self.width, x.shape[2] * x.shape[3]).mean(-1)
        return self.head(x)


def conv_classifier() -> nn.Sequential:
    """SqueezeNet-like: the classifier is a conv whose outputs are the logits."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 10, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


# --------------------------------------- a prune that breaks the forward
def test_a_prune_that_breaks_the_forward_is_refused_and_undone() -> None:
    torch.manual_seed(0)
    net = WidthConstant()
    x = torch.randn(1, 3, 8, 8)
    before = model_state(net)
    pruner = CPMCPruner(net, x, flops_reduction=0.4, ignored_layers=[net.head])
    with pytest.raises(ValueError, match=r"refused the step.*model itself.*ignored_layers"):
        pruner.step()
    assert_unchanged(net, before)
    assert pruner.current_step == 0
    assert net(x).shape == (1, 4)
    # what the error suggests works: the layers that feed the reshape stay whole
    fixed = CPMCPruner(net, x, flops_reduction=0.2, ignored_layers=[net.head, net.mix])
    fixed.step()
    assert net.stem.out_channels < 8 and net(x).shape == (1, 4)


def test_interactive_step_refuses_before_the_first_group() -> None:
    torch.manual_seed(0)
    net = WidthConstant()
    x = torch.randn(1, 3, 8, 8)
    before = model_state(net)
    pruner = CPMCPruner(net, x, flops_reduction=0.4, ignored_layers=[net.head])
    pruned: list[object] = []
    with pytest.raises(ValueError, match="refused the step"):
        for group in pruner.step(interactive=True):
            pruned.append(group)
            group.prune()
    assert pruned == []  # the plan was tried first: the caller pruned nothing
    assert_unchanged(net, before)
    assert pruner.current_step == 0


@pytest.mark.slow
def test_torchvision_vit_without_head_options_follows_its_hidden_dim() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    pruner = CPMCPruner(vit, x, flops_reduction=0.4, ignored_layers=[vit.heads.head])
    pruner.step()  # once refused: the pruned ViT read its stale hidden_dim
    assert vit.hidden_dim == vit.conv_proj.out_channels < 32
    attention = vit.encoder.layers[0].self_attention
    assert attention.embed_dim % attention.num_heads == 0
    assert vit(x).shape == (1, 1000)


# ------------------------------- a prune that changes the output's shape
def test_a_prune_that_changes_the_output_shape_is_refused() -> None:
    import torch_pruning as tp

    torch.manual_seed(0)
    net = conv_classifier()
    with torch.no_grad():
        net[4].weight.mul_(0.01)  # the logits' channels rank lowest of all
    x = torch.randn(1, 3, 8, 8)
    before = model_state(net)
    l1 = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    pruner = CPMCPruner(net, x, l1, flops_reduction=0.5)
    match = r"channels of '4' \(Conv2d\) would change the shape of the model's output"
    with pytest.raises(ValueError, match=match + r".*ignored_layers"):
        pruner.step()
    assert_unchanged(net, before)
    CPMCPruner(net, x, flops_reduction=0.5, ignored_layers=[net[4]]).step()
    assert net(x).shape == (1, 10)


def test_interactive_output_shape_refusal_comes_first_and_names_every_output() -> None:
    from tests.torch_pruning.test_host_test_equivalents import ThreeWaySplit

    torch.manual_seed(0)
    net = ThreeWaySplit()
    x = torch.randn(1, 16, 7, 7)
    before = model_state(net)
    pruner = CPMCPruner(net, x, flops_reduction=0.75)
    groups = pruner.step(interactive=True)
    assert groups is not None
    with pytest.raises(ValueError, match=r"output 0 .*output 1 .*output 2 .*ignored_layers"):
        next(groups)
    assert_unchanged(net, before)
    assert pruner.current_step == 0


def test_an_output_shape_change_is_caught_after_the_forward() -> None:
    from cpmc_plugin.core.atomic import RunFailure, check_still_runs, signature

    net = conv_classifier()
    x = torch.randn(1, 3, 8, 8)
    before = signature(net, x)
    net[4] = nn.Conv2d(16, 7, 1)  # what a prune the graph cannot see would leave
    with pytest.raises(
        RunFailure, match=r"output 0 from \(1, 10\) to \(1, 7\) \(made by '4' \(Conv2d\)\)"
    ):
        check_still_runs(net, x, before)


@pytest.mark.slow
def test_squeezenet_classifier_conv_must_be_ignored() -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=100).eval()
    x = torch.randn(1, 3, 64, 64)
    before = model_state(net)
    with pytest.raises(ValueError, match=r"'classifier\.1' \(Conv2d\) would change the shape"):
        CPMCPruner(net, x, flops_reduction=0.3).step()
    assert_unchanged(net, before)


# ----------------------------------------- a graph the host cannot trace
def test_a_graph_the_host_cannot_trace_is_named_as_such(monkeypatch) -> None:
    import torch_pruning as tp

    def update_reshape_index_mapping(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", update_reshape_index_mapping)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"model runs on example_inputs, but torch-pruning") as e:
        CPMCPruner(net, torch.randn(1, 3, 2, 2), flops_reduction=0.3, ignored_layers=[net[2]])
    message = str(e.value)
    assert "cannot run through" not in message
    assert "ZeroDivisionError: integer division or modulo by zero" in message
    assert "customized_pruners" in message and "ignored_layers" in message


@pytest.mark.slow
def test_shufflenet_error_quotes_the_host() -> None:
    import torchvision

    net = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    match = r"trace it: ZeroDivisionError.* in torch_pruning's update_reshape_index_mapping"
    with pytest.raises(ValueError, match=match):
        CPMCPruner(net, torch.randn(1, 3, 64, 64), flops_reduction=0.3, ignored_layers=[net.fc])


def test_inputs_that_do_not_fit_still_say_so() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="example_inputs cannot run through the model"):
        CPMCPruner(net, torch.randn(1, 3, 5, 5), flops_reduction=0.3)
