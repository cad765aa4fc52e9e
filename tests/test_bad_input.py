"""Every bad input raises a clear error and leaves the model exactly as it was."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCImportance, CPMCPruner
from tests.archs import ARCHS, build, classifier_of
from tests.helpers import ModelState, assert_unchanged, model_state

ARCH = ARCHS[1]


def assert_untouched(model: nn.Module, before: ModelState, training: bool) -> None:
    assert_unchanged(model, before)
    assert model.training is training


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"normalizer": "zscore"},
            ValueError,
            r"normalizer must be one of 'max-min', 'l2', 'max', 'mean', None, got 'zscore'",
        ),
        ({"normalizer": 2}, TypeError, r"normalizer must be one of 'max-min'.*, got 2"),
        ({"alpha": -0.1}, ValueError, r"alpha must be a finite number >= 0, got -0.1"),
        ({"beta": -1}, ValueError, r"beta must be a finite number >= 0, got -1"),
        ({"beta": float("nan")}, ValueError, r"beta must be a finite number >= 0"),
        ({"alpha": "0.1"}, TypeError, r"alpha must be a finite number >= 0, got '0.1'"),
        ({"p": 0}, ValueError, r"p must be a finite number > 0"),
        ({"weight_dependency": "yes"}, TypeError, r"weight_dependency must be True or False"),
    ],
)
def test_bad_importance_options(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        CPMCImportance(**kwargs)


def test_unknown_preset() -> None:
    with pytest.raises(
        ValueError, match=r"unknown preset 'mobilenet'; known presets: vgg, resnet, densenet"
    ):
        CPMCImportance.preset("mobilenet")


def test_preset_values_and_overrides() -> None:
    imp = CPMCImportance.preset("resnet", normalizer="l2")
    from cpmc_plugin import get_preset

    assert (imp.alpha, imp.beta) == (get_preset("resnet").alpha, get_preset("resnet").beta)
    assert imp.normalizer == "l2"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"flops_reduction": 0.0}, ValueError, r"flops_reduction must be in \(0, 1\).*got 0.0"),
        ({"flops_reduction": 1.0}, ValueError, r"flops_reduction must be in \(0, 1\)"),
        ({"flops_reduction": -0.2}, ValueError, r"flops_reduction must be in \(0, 1\)"),
        ({"flops_reduction": float("nan")}, ValueError, r"flops_reduction must be in \(0, 1\)"),
        ({"params_reduction": 1.5}, ValueError, r"params_reduction must be in \(0, 1\)"),
        (
            {"flops_reduction": "half"},
            TypeError,
            r"flops_reduction must be in \(0, 1\), got 'half'",
        ),
        (
            {"flops_reduction": 0.5, "params_reduction": 0.5},
            ValueError,
            r"exactly one of flops_reduction and params_reduction",
        ),
        ({"iterative_steps": 0}, ValueError, r"iterative_steps must be an integer >= 1, got 0"),
        ({"iterative_steps": 2.5}, TypeError, r"iterative_steps must be an integer >= 1"),
        ({"max_pruning_ratio": 0.0}, ValueError, r"max_pruning_ratio must be in \(0, 1\]"),
        ({"max_pruning_ratio": 1.2}, ValueError, r"max_pruning_ratio must be in \(0, 1\]"),
        ({"round_to": 0}, ValueError, r"round_to must be None or an integer >= 1, got 0"),
        ({"round_to": "2"}, TypeError, r"round_to must be None or an integer >= 1, got '2'"),
        ({"finetune_fn": 3}, TypeError, r"finetune_fn must be callable as finetune_fn\(model"),
        ({"pruning_ratio": 0.5}, TypeError, r"does not take pruning_ratio"),
        ({"global_pruning": False}, TypeError, r"does not take global_pruning"),
        ({"importance": "l1"}, TypeError, r"importance must be a torch-pruning Importance"),
        (
            {"flops_reduction": 0.9, "max_pruning_ratio": 0.5},
            ValueError,
            r"flops_reduction=0.9 cannot be met under max_pruning_ratio=0.5: at most .* reachable",
        ),
        (
            {"params_reduction": 0.999},
            ValueError,
            r"params_reduction=0.999 cannot be met under max_pruning_ratio=0.9",
        ),
    ],
)
def test_bad_pruner_options_leave_the_model(
    kwargs: dict[str, Any], error: type, message: str
) -> None:
    model = build(ARCH).train()
    before = model_state(model)
    with pytest.raises(error, match=message):
        CPMCPruner(model, ARCH.example(), ignored_layers=[classifier_of(model)], **kwargs)
    assert_untouched(model, before, training=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(bad: float) -> None:
    model = build(ARCH)
    with torch.no_grad():
        model.blocks[2].body[0][0].weight[0, 0, 0, 0] = bad
    before = model_state(model)
    with pytest.raises(ValueError, match=r"non-finite \(NaN or Inf\) values in blocks.2.body.0.0"):
        CPMCPruner(model, ARCH.example(), ignored_layers=[classifier_of(model)])
    assert_untouched(model, before, training=False)


def test_non_finite_weights_refused_by_the_importance_in_metapruner() -> None:
    model = build(ARCH)
    x = ARCH.example()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=CPMCImportance(x),
        global_pruning=True,
        pruning_ratio=0.5,
        ignored_layers=[classifier_of(model)],
    )
    with torch.no_grad():
        model.stem[0].weight[0, 0, 0, 0] = float("nan")
    before = model_state(model)
    with pytest.raises(ValueError, match=r"non-finite \(NaN or Inf\) weights in the group of stem"):
        pruner.step()
    assert_untouched(model, before, training=False)


@pytest.mark.parametrize(
    "inputs",
    [torch.randn(2, 5, 32, 32), torch.randn(3, 32), "not a tensor"],
    ids=["wrong-channels", "wrong-rank", "string"],
)
def test_inputs_the_model_cannot_run(inputs: Any) -> None:
    model = build(ARCH).train()
    before = model_state(model)
    with pytest.raises(ValueError, match="example_inputs cannot run through the model"):
        CPMCPruner(model, inputs, ignored_layers=[classifier_of(model)])
    assert_untouched(model, before, training=True)


def test_importance_without_inputs_needs_beta_zero() -> None:
    model = build(ARCH)
    x = ARCH.example()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model.stem[0], tp.prune_conv_out_channels, idxs=[0, 1])
    with pytest.raises(ValueError, match="needs example_inputs .* or set beta=0"):
        CPMCImportance(beta=0.5)(group)
    assert torch.isfinite(CPMCImportance(beta=0.0, alpha=0.5)(group)).all()


def test_importance_inputs_that_do_not_run() -> None:
    model = build(ARCH)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=ARCH.example())
    group = graph.get_pruning_group(model.stem[0], tp.prune_conv_out_channels, idxs=[0, 1])
    with pytest.raises(ValueError, match="example_inputs cannot run through the model"):
        CPMCImportance(torch.randn(1, 7, 32, 32))(group)


def test_unreachable_step_leaves_the_model_and_the_step_count() -> None:
    """A budget reachable at init but not after the user pruned by hand: refused, untouched."""
    model = build(ARCH)
    x = ARCH.example()
    pruner = CPMCPruner(
        model, x, flops_reduction=0.5, max_pruning_ratio=0.6, ignored_layers=[classifier_of(model)]
    )
    real = pruner.target_cost  # pretend the budget asks for 10x fewer MACs
    pruner.target_cost = lambda step=None: 0.1 * real(step)  # type: ignore[method-assign]
    before = model_state(model)
    with pytest.raises(ValueError, match="cannot be met under max_pruning_ratio=0.6"):
        pruner.step()
    assert_untouched(model, before, training=False)
    assert pruner.current_step == 0
