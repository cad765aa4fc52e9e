"""CPMCPruner is all or nothing: each step is met, corrected, or refused with the model
restored (issue 11, items 2, 3, 5, 11, 12 and 14)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import CPMCPruner
from cpmc_plugin.core.atomic import ModelSnapshot
from cpmc_plugin.torch_pruning.cost.meter import Probe
from cpmc_plugin.torch_pruning.planning.correction import next_planning_target

from .helpers import assert_state_unchanged, snapshot


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def attributes(model: nn.Module) -> dict[str, dict[str, object]]:
    plain = (int, float, bool, str, tuple, type(None))
    return {
        name: {k: v for k, v in vars(m).items() if isinstance(v, plain)}
        for name, m in model.named_modules()
    }


def assert_untouched(model: nn.Module, state: dict, shape: dict, attrs: dict) -> None:
    assert_state_unchanged(model, state)
    assert shapes(model) == shape
    assert attributes(model) == attrs


def record(model: nn.Module) -> tuple[dict, dict, dict]:
    return snapshot(model), shapes(model), attributes(model)


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


# ---------------------------------------------------------------- snapshot
def test_snapshot_restores_the_same_objects() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    weight, mean = net[0].weight, net[1].running_mean
    state, shape, attrs = record(net)
    snap = ModelSnapshot(net)
    net[0].weight = nn.Parameter(torch.zeros(2, 3, 3, 3))
    net[0].out_channels = 2
    net[1].running_mean = torch.zeros(2)
    net.add_module("extra", nn.ReLU())
    snap.restore()
    assert net[0].weight is weight and net[1].running_mean is mean
    assert len(net) == 2
    assert_untouched(net, state, shape, attrs)


def test_snapshot_refuses_an_in_place_change_it_cannot_undo() -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    snap = ModelSnapshot(net)
    with torch.no_grad():
        net[0].bias.add_(1.0)
    with pytest.raises(RuntimeError, match="changed in place"):
        snap.restore()
    cloned = nn.Sequential(nn.Linear(2, 2))
    before = snapshot(cloned)
    snap = ModelSnapshot(cloned, clone=True)
    with torch.no_grad():
        cloned[0].bias.add_(1.0)
    snap.restore()
    assert_state_unchanged(cloned, before)


# ---------------------------------------------------------------- item 2
def test_a_prune_that_breaks_the_forward_is_refused_and_undone() -> None:
    torch.manual_seed(0)
    net = WidthConstant()
    x = torch.randn(1, 3, 8, 8)
    state, shape, attrs = record(net)
    pruner = CPMCPruner(net, x, flops_reduction=0.4, ignored_layers=[net.head])
    with pytest.raises(ValueError, match=r"refused the step.*model itself.*ignored_layers"):
        pruner.step()
    assert_untouched(net, state, shape, attrs)
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
    state, shape, attrs = record(net)
    pruner = CPMCPruner(net, x, flops_reduction=0.4, ignored_layers=[net.head])
    pruned: list[object] = []
    with pytest.raises(ValueError, match="refused the step"):
        for group in pruner.step(interactive=True):
            pruned.append(group)
            group.prune()
    assert pruned == []  # the plan was tried first: the caller pruned nothing
    assert_untouched(net, state, shape, attrs)
    assert pruner.current_step == 0


def test_interactive_output_shape_refusal_comes_first_and_names_every_output() -> None:
    from .test_host_cases import ThreeWaySplit

    torch.manual_seed(0)
    net = ThreeWaySplit()
    x = torch.randn(1, 16, 7, 7)
    state, shape, attrs = record(net)
    pruner = CPMCPruner(net, x, flops_reduction=0.75)
    groups = pruner.step(interactive=True)
    assert groups is not None
    with pytest.raises(ValueError, match=r"output 0 .*output 1 .*output 2 .*ignored_layers"):
        next(groups)
    assert_untouched(net, state, shape, attrs)
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


# ---------------------------------------------------------------- item 12
def test_a_prune_that_changes_the_output_shape_is_refused() -> None:
    import torch_pruning as tp

    torch.manual_seed(0)
    net = conv_classifier()
    with torch.no_grad():
        net[4].weight.mul_(0.01)  # the logits' channels rank lowest of all
    x = torch.randn(1, 3, 8, 8)
    state, shape, attrs = record(net)
    l1 = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    pruner = CPMCPruner(net, x, l1, flops_reduction=0.5)
    match = r"channels of '4' \(Conv2d\) would change the shape of the model's output"
    with pytest.raises(ValueError, match=match + r".*ignored_layers"):
        pruner.step()
    assert_untouched(net, state, shape, attrs)
    CPMCPruner(net, x, flops_reduction=0.5, ignored_layers=[net[4]]).step()
    assert net(x).shape == (1, 10)


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
    state, shape, attrs = record(net)
    with pytest.raises(ValueError, match=r"'classifier\.1' \(Conv2d\) would change the shape"):
        CPMCPruner(net, x, flops_reduction=0.3).step()
    assert_untouched(net, state, shape, attrs)


# ---------------------------------------------------------------- item 3
class BN1dHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x)).mean((2, 3))
        return self.out(F.relu(self.bn(self.fc(x))))


def test_train_mode_model_batch_one_is_probed_in_eval_mode() -> None:
    torch.manual_seed(0)
    net = BN1dHead().train()
    x = torch.randn(1, 3, 8, 8)
    stats = (net.bn.running_mean.clone(), net.bn.num_batches_tracked.clone())
    pruner = CPMCPruner(net, x, flops_reduction=0.3, ignored_layers=[net.out])
    pruner.step()
    assert net.training and all(m.training for m in net.modules())
    assert net.bn.num_batches_tracked == stats[1]
    assert torch.equal(net.bn.running_mean, stats[0][: len(net.bn.running_mean)]) or (
        len(net.bn.running_mean) < 16
    )
    assert abs(pruner.report().macs_reduction - 0.3) <= pruner.tolerance / max(
        pruner.report().macs_before, 1
    )


# ---------------------------------------------------------------- item 5
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


# ---------------------------------------------------------------- item 11
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
    tolerance = pruner.tolerance / report.macs_before
    assert abs(report.macs_reduction - 0.5) <= tolerance + 1e-9


def test_a_budget_that_cannot_be_counted_right_is_refused_unchanged(monkeypatch) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    x = torch.randn(1, 3, 12, 12)
    pruner = CPMCPruner(net, x, flops_reduction=0.5, ignored_layers=[net[2]])
    frozen = pruner.initial_counts
    monkeypatch.setattr(Probe, "counts", lambda self: frozen)  # the count never moves
    state, shape, attrs = record(net)
    with pytest.raises(ValueError, match=r"cannot meet flops_reduction=0.5.*unchanged"):
        pruner.step()
    assert_untouched(net, state, shape, attrs)
    assert pruner.current_step == 0


# ---------------------------------------------------------------- item 14
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


def test_regularize_matches_the_host_call() -> None:
    net = two_branch()
    x = torch.randn(2, 3, 8, 8)
    pruner = CPMCPruner(net, x, flops_reduction=0.3, ignored_layers=[net.fc])
    before = snapshot(net)
    loss = net(x).sum()
    loss.backward()
    assert pruner.regularize(net) is None
    assert pruner.regularize(net, loss) is None
    pruner.update_regularizer()
    assert_state_unchanged(net, before)


def test_refused_options_say_why() -> None:
    net = two_branch()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TypeError, match=r"pruning_ratio \(the budget .* replaces it\)"):
        CPMCPruner(net, x, pruning_ratio=0.5)


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
        tolerance = pruner.tolerance / base
        assert abs((1 - macs / base) - 0.75 * step / 5) <= tolerance + 1e-9
    assert net.training and net(x).shape == (1, 8, 32, 32)
    assert net.conv2.in_channels == net.conv1.out_channels < 16
