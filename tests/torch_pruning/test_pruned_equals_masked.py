"""A model CPMCPruner pruned computes what the model with those channels masked computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from cpmc_plugin import CPMCPruner
from tests.archs import ARCHS, Arch, build, classifier_of


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
