"""Shrink a model physically from NNI masks, through torch-pruning (works on current torch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from .._probe import build_graph
from ..importance import ROOT_TYPES

__all__ = ["speedup"]


def _out_dim(module: nn.Module) -> int:
    transposed = isinstance(module, nn.modules.conv._ConvNd) and module.transposed
    return 1 if transposed else 0


def _checked(model: nn.Module, masks: Any) -> dict[nn.Module, dict[str, torch.Tensor]]:
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty {module_name: {target_name: mask}} dict")
    modules = dict(model.named_modules())
    checked: dict[nn.Module, dict[str, torch.Tensor]] = {}
    for name, targets in masks.items():
        module = modules.get(name)
        if module is None:
            raise ValueError(f"masks name a module the model does not have: {name!r}")
        if not isinstance(targets, Mapping):
            raise ValueError(f"masks[{name!r}] must be a {{target_name: mask}} dict")
        checked[module] = {}
        for target, mask in targets.items():
            if mask is None:
                continue
            tensor = getattr(module, target, None)
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"masks name {name}.{target}, which is not a tensor of the model")
            if not isinstance(mask, torch.Tensor) or mask.shape != tensor.shape:
                shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)
                raise ValueError(
                    f"the mask of {name}.{target} does not fit: shape {shape}, "
                    f"the tensor has {tuple(tensor.shape)}"
                )
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"the mask of {name}.{target} must hold only 0 and 1")
            checked[module][target] = mask.to(tensor.device)
    return checked


def _dropped_channels(module: nn.Module, masks: dict[str, torch.Tensor]) -> set[int]:
    weight = masks.get("weight")
    if weight is None or not isinstance(module, ROOT_TYPES):
        return set()
    dim = _out_dim(module)
    alive = weight.transpose(0, dim).reshape(weight.shape[dim], -1).any(dim=1)
    return set(torch.nonzero(~alive).flatten().tolist())


@torch.no_grad()
def speedup(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]], example_inputs: Any):
    """Remove the output channels that ``masks`` zero out, in place; return ``model``.

    ``masks`` is NNI's ``{module_name: {target_name: mask}}`` (as ``pruner.compress()``
    returns; call ``pruner.unwrap_model()`` first). Every mask is applied to its tensor,
    then a channel whose filter is masked out entirely goes, through torch-pruning's
    dependency graph, together with everything tied to it (the norm layer after it,
    the next layers' inputs). A channel that a residual add or concatenation ties to
    a layer whose mask keeps it stays, with its masked weights at zero. The result
    computes what the masked model computes, except that a removed channel no longer
    passes on the constant its norm layer's shift would add.

    Raises:
        ValueError: masks that name unknown modules or tensors, do not fit their
            tensor's shape, are not 0/1, or a model still wrapped by NNI. Nothing is
            changed then.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 4, 3))
        >>> mask = torch.ones(8, 3, 3, 3); mask[:3] = 0
        >>> _ = speedup(net, {"0": {"weight": mask}}, torch.randn(1, 3, 8, 8))
        >>> net[0].out_channels, net[2].in_channels
        (5, 5)
    """
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "ModuleWrapper"]
    if wrapped:
        raise ValueError(
            f"the model is still wrapped by NNI ({wrapped[0]}); call pruner.unwrap_model() first"
        )
    checked = _checked(model, masks)
    graph = build_graph(model, example_inputs)
    dropped = {m: _dropped_channels(m, t) for m, t in checked.items()}
    plan = []
    for group in graph.get_all_groups(root_module_types=ROOT_TYPES):
        root = group[0]
        removable = torch.ones(len(root.idxs), dtype=torch.bool)
        position = {int(r): k for k, r in enumerate(root.root_idxs)}
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or not isinstance(module, ROOT_TYPES):
                continue
            if not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            gone = dropped.get(module, set())
            pairs = zip(item.root_idxs, item.idxs, strict=True)
            keep = [position[int(r)] for r, i in pairs if i not in gone]
            removable[keep] = False
        if bool(removable.all()):
            removable[0] = False  # a layer keeps one channel (its weights stay masked to zero)
        if bool(removable.any()):
            idxs = [root.idxs[k] for k in torch.nonzero(removable).flatten().tolist()]
            plan.append((root.dep.target.module, root.dep.handler, idxs))
    for module, targets in checked.items():
        for target, mask in targets.items():
            getattr(module, target).mul_(mask.to(getattr(module, target).dtype))
    for module, handler, idxs in plan:
        # one group at a time, so that index mappings through concatenations stay current
        graph.get_pruning_group(module, handler, idxs).prune()
    return model
