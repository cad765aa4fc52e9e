"""CPMC inside torch-pruning's MetaPruner, pruned == masked equivalence, save and reload."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCImportance, CPMCPruner, load_pruned, save_pruned
from tests.archs import ARCHS, Arch, build, classifier_of


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_metapruner_global(arch: Arch) -> None:
    model = build(arch)
    x = arch.example()
    params_before = tp.utils.count_ops_and_params(model, x)[1]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=CPMCImportance(example_inputs=x),
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


def masked_copy_after_prune(model: nn.Module, pruner: CPMCPruner) -> nn.Module:
    """Run the pruner interactively and zero, in a copy, every out-channel it removes."""
    masked = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    modules = dict(masked.named_modules())
    # indices shift as earlier groups are pruned (concatenations): keep, per layer, the
    # original index of every channel still alive
    alive: dict[str, list[int]] = {}
    for group in pruner.step(interactive=True):
        for item in group:
            layer = item.dep.target.module
            if not isinstance(layer, nn.Module) or layer not in names:
                continue
            if not group._DG.is_out_channel_pruning_fn(item.dep.handler):
                continue
            name = names[layer]
            twin = modules[name]
            current = alive.setdefault(name, list(range(group._DG.get_out_channels(layer))))
            idxs = torch.as_tensor([current[i] for i in item.idxs])
            alive[name] = [c for i, c in enumerate(current) if i not in set(item.idxs)]
            with torch.no_grad():
                for param in (getattr(twin, "weight", None), getattr(twin, "bias", None)):
                    if isinstance(param, torch.Tensor):
                        param[idxs] = 0
        group.prune()
    return masked


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_pruned_model_equals_masked_model(arch: Arch) -> None:
    model = build(arch)
    x = arch.example()
    pruner = CPMCPruner(model, x, flops_reduction=0.5, ignored_layers=[classifier_of(model)])
    masked = masked_copy_after_prune(model, pruner)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), rtol=1e-4, atol=1e-5)
    assert pruner.report().macs_reduction > 0.4


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_save_and_reload_round_trip(arch: Arch, tmp_path: Path) -> None:
    model = build(arch)
    x = arch.example()
    pruner = CPMCPruner(
        model, x, flops_reduction=0.5, iterative_steps=2, ignored_layers=[classifier_of(model)]
    )
    pruner.step()
    pruner.step()
    path = tmp_path / "pruned.pt"
    save_pruned(model, path, pruner.pruning_history())
    fresh = build(arch, seed=1)
    reloaded = load_pruned(fresh, path, x)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), model(x))
    assert fresh.state_dict().keys() == build(arch).state_dict().keys()
    pristine = build(arch, seed=1).state_dict()
    assert all(torch.equal(v, pristine[k]) for k, v in fresh.state_dict().items())
    data = torch.load(path, weights_only=True)  # plain data: loads without pickled code
    assert data["format"].startswith("cpmc-plugin/")


def test_reload_into_another_architecture_is_refused(tmp_path: Path) -> None:
    model = build(ARCHS[1])
    x = ARCHS[1].example()
    pruner = CPMCPruner(model, x, flops_reduction=0.5, ignored_layers=[classifier_of(model)])
    pruner.step()
    path = tmp_path / "pruned.pt"
    save_pruned(model, path, pruner.pruning_history())
    other = build(ARCHS[0])
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="does not fit this architecture"):
        load_pruned(other, path, x)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_reload_of_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a cpmc-plugin pruned model"):
        load_pruned(build(ARCHS[0]), path, ARCHS[0].example())
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable pruned-model file"):
        load_pruned(build(ARCHS[0]), path, ARCHS[0].example())


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
