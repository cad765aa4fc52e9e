"""CPMCImportance inside torch-pruning's MetaPruner: global and local ranking, rescaled maxima."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCImportance
from tests.archs import ARCHS, Arch, build, classifier_of


def _plain(x: torch.Tensor) -> CPMCImportance:
    return CPMCImportance(example_inputs=x)


def _data_aware(x: torch.Tensor) -> CPMCImportance:
    torch.manual_seed(1)
    data = [(torch.randn_like(x), torch.randint(0, 10, (len(x),))) for _ in range(2)]
    return CPMCImportance(x, data=data, gamma=1.0)


@pytest.mark.parametrize("importance", [_plain, _data_aware], ids=["plain", "data-aware"])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_metapruner_global(arch: Arch, importance: Callable[[torch.Tensor], Any]) -> None:
    model = build(arch)
    x = arch.example()
    params_before = tp.utils.count_ops_and_params(model, x)[1]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=importance(x),
        global_pruning=True,
        pruning_ratio=0.5,
        ignored_layers=[classifier_of(model)],
    )
    pruner.step()
    assert model(x).shape == (2, 10)
    assert tp.utils.count_ops_and_params(model, x)[1] < params_before


def test_metapruner_local_prunes_each_layer_by_the_ratio() -> None:
    arch = ARCHS[0]
    model = build(arch)
    x = arch.example()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=CPMCImportance(example_inputs=x),
        global_pruning=False,
        pruning_ratio=0.5,
        ignored_layers=[classifier_of(model)],
    )
    pruner.step()
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [16, 16, 32, 32]
    assert model.hidden.out_features == 32


def test_global_scores_are_comparable_across_groups() -> None:
    """Scores live on one scale: max-min keeps E_hat in [0, 1], costs add at most alpha+beta."""
    arch = ARCHS[1]
    model = build(arch)
    x = arch.example()
    imp = CPMCImportance(x, alpha=0.5, beta=0.25)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)):
        score = imp(group)
        assert score.min() >= 0 and score.max() <= 1 + 0.5 + 0.25 + 1e-6


def test_importance_refreshes_maxima_when_shapes_change() -> None:
    """In iterative MetaPruner runs the global maxima follow the pruned model."""
    arch = ARCHS[0]
    model = build(arch)
    x = arch.example()
    imp = CPMCImportance(example_inputs=x)
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=imp,
        global_pruning=True,
        pruning_ratio=0.5,
        iterative_steps=2,
        ignored_layers=[classifier_of(model)],
    )
    pruner.step()
    first = imp._context
    assert first is not None
    after_first = tuple(tuple(p.shape) for p in model.parameters())
    assert first.signature != after_first  # step 1 scored the unpruned model
    pruner.step()  # step 2 scores the model as step 1 left it
    second = imp._context
    assert second is not None and second is not first
    assert second.signature == after_first
    assert second.params_max < first.params_max and second.macs_max < first.macs_max
