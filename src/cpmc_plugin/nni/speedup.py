"""Shrink a model physically from NNI masks, through torch-pruning (works on current torch).

The smaller model computes what the masked model computes. A channel whose filters
are masked out still emits a constant in the masked model (its bias, or its norm
layer's shift, through the activations), and the next layers read it. When the
masks also zero the norm layer's weight and bias (as :class:`~cpmc_plugin.nni.CPMCPruner`'s
masks do) that constant is 0 and the channel simply goes. Otherwise the constant is
folded into the biases of the layers that read it where that is exact (a Linear, a
conv without zero padding; :mod:`cpmc_plugin.torch_pruning.graph.fold`), and the channel
stays, masked, where it is not (a zero-padded conv), with a warning naming the layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from ..core.atomic import prune_atomically
from ..core.layers import ROOT_TYPES
from ..core.probe import forward_once
from ..core.torch_private import ConvNd
from ..torch_pruning.graph.build import build_graph
from ..torch_pruning.graph.concat import repair_concat_mappings
from ..torch_pruning.graph.fold import Fold, apply_fold, layer_inputs, plan_folds, readers
from ..torch_pruning.graph.indexing import item_positions, root_lookup
from ..torch_pruning.graph.removal import (
    Removal,
    RemovalFailed,
    align_to_blocks,
    blocks_line_up,
    channel_blocks,
    prune_in_order,
)
from ..torch_pruning.host import DependencyGraph, Group

__all__ = ["speedup"]

#: how far the smaller model's outputs may be from the masked model's (relative to their size)
TOLERANCE = 1e-4
_HINT = (
    "Exclude the layer whose output channels the failing operation reads (one of those "
    "above; e.g. a channel count hard-coded in a view of the forward) from config_list "
    "(exclude_op_names), or leave its channels unmasked, then compute the masks again"
)


def _out_dim(module: nn.Module) -> int:
    transposed = isinstance(module, ConvNd) and module.transposed
    return 1 if transposed else 0


def _checked(model: nn.Module, masks: Any) -> dict[nn.Module, dict[str, torch.Tensor]]:
    if not isinstance(masks, Mapping):
        raise TypeError(
            "masks must be a non-empty {module_name: {target_name: mask}} dict, "
            f"got {type(masks).__name__}"
        )
    if not masks:
        raise ValueError("masks must be a non-empty {module_name: {target_name: mask}} dict")
    modules = dict(model.named_modules())
    checked: dict[nn.Module, dict[str, torch.Tensor]] = {}
    for name, targets in masks.items():
        module = modules.get(name)
        if module is None:
            raise ValueError(f"masks name a module the model does not have: {name!r}")
        if not isinstance(targets, Mapping):
            raise TypeError(
                f"masks[{name!r}] must be a {{target_name: mask}} dict, "
                f"got {type(targets).__name__}"
            )
        checked[module] = {}
        for target, mask in targets.items():
            if mask is None:
                continue
            tensor = getattr(module, target, None)
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"masks name {name}.{target}, which is not a tensor of the model")
            if not isinstance(mask, torch.Tensor):
                raise TypeError(
                    f"the mask of {name}.{target} must be a tensor, got {type(mask).__name__}"
                )
            if mask.shape != tensor.shape:
                shape = tuple(mask.shape)
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


def _masked_out(
    graph: DependencyGraph, group: Group, dropped: dict[nn.Module, set[int]]
) -> torch.Tensor:
    """Per root channel: every conv/linear layer producing it has its filter masked out."""
    root = group[0]
    removable = torch.ones(len(root.idxs), dtype=torch.bool)
    lookup = root_lookup(group)
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or not isinstance(module, ROOT_TYPES):
            continue
        if not graph.is_out_channel_pruning_fn(item.dep.handler):
            continue
        gone = dropped.get(module, set())
        where = item_positions(lookup, item)
        kept = torch.tensor([int(i) not in gone for i in item.idxs], dtype=torch.bool)
        removable[where[kept & (where >= 0)]] = False
    return removable


@dataclass
class _Plan:
    removals: list[Removal] = field(default_factory=list)
    folds: list[Fold] = field(default_factory=list)
    kept_for_constants: dict[str, int] = field(default_factory=dict)
    blockers: set[str] = field(default_factory=set)
    kept_for_blocks: dict[str, int] = field(default_factory=dict)


def _plan(
    model: nn.Module,
    graph: DependencyGraph,
    checked: dict[nn.Module, dict[str, torch.Tensor]],
    example_inputs: Any,
) -> _Plan:
    """What to remove and fold, on the masked model (nothing is changed here)."""
    names = {m: n for n, m in model.named_modules()}
    dropped = {m: _dropped_channels(m, t) for m, t in checked.items()}
    plan = _Plan()
    candidates: list[tuple[Group, torch.Tensor, int]] = []
    for group in graph.get_all_groups(root_module_types=ROOT_TYPES):
        removable = _masked_out(graph, group, dropped)
        if not bool(removable.any()):
            continue
        name = names.get(group[0].dep.target.module, "?")
        blocks = channel_blocks(graph, group)
        if not blocks_line_up(group, blocks):
            plan.kept_for_blocks[name] = int(removable.sum())
            continue
        candidates.append((group, removable, blocks))
    consumers = {item.dep.target.module for group, _, _ in candidates for item in readers(group)}
    inputs = layer_inputs(model, consumers, example_inputs)
    for group, removable, blocks in candidates:
        root = group[0]
        name = names.get(root.dep.target.module, "?")
        folds = plan_folds(group, removable, inputs)
        unfoldable = int((removable & ~folds.foldable).sum())
        if unfoldable:
            plan.kept_for_constants[name] = unfoldable
            plan.blockers.update(names.get(m, "?") for ms in folds.blockers.values() for m in ms)
        candidate = removable & folds.foldable
        in_every_block = candidate.view(blocks, -1).all(0).repeat(blocks)
        misaligned = int(candidate.sum()) - int(in_every_block.sum())
        if misaligned:
            plan.kept_for_blocks[name] = misaligned
        chosen = align_to_blocks(candidate, blocks)  # and one position stays in every block
        if not bool(chosen.any()):
            continue
        positions = tuple(torch.nonzero(chosen).flatten().tolist())
        idxs = tuple(root.idxs[k] for k in positions)
        plan.removals.append(
            Removal(root.dep.target.module, root.dep.handler, idxs, positions, name=name)
        )
        plan.folds.extend(fold for at, fold in folds.folds if bool(chosen[at]))
    return plan


def _outputs(model: nn.Module, example_inputs: Any) -> list[torch.Tensor]:
    leaves = tree_flatten(forward_once(model, example_inputs))[0]
    return [t.detach().clone() for t in leaves if isinstance(t, torch.Tensor)]


def _largest_difference(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    worst = 0.0
    for a, b in zip(before, after, strict=True):
        if a.is_floating_point() and a.numel():
            scale = max(1.0, float(a.abs().max()))
            worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def _warn_kept(plan: _Plan) -> None:
    if plan.kept_for_constants:
        count = sum(plan.kept_for_constants.values())
        where = ", ".join(f"{n} ({k})" for n, k in plan.kept_for_constants.items())
        readers_ = ", ".join(sorted(plan.blockers))
        warnings.warn(
            f"speedup kept {count} masked channels of {where}: in the masked model they emit "
            f"a constant (a bias or the norm layer's shift) that {readers_} "
            "read, and no bias there reproduces it (a zero-padded conv sees it only inside the "
            "border). They stay, masked, so the smaller model still computes what the masked "
            "model computes. To remove them, mask the weight and bias of the norm layer after "
            "each masked filter too (cpmc_plugin.nni.CPMCPruner's masks do)",
            stacklevel=4,  # past speedup and torch.no_grad's wrapper, to the caller
        )
    if plan.kept_for_blocks:
        count = sum(plan.kept_for_blocks.values())
        where = ", ".join(f"{n} ({k})" for n, k in plan.kept_for_blocks.items())
        warnings.warn(
            f"speedup kept {count} masked channels of {where}: a grouped conv reads or writes "
            "them, and torch-pruning can only remove the same positions from each of its "
            "groups. Mask the same positions in every conv group to remove them (NNI: "
            "internal_metric_block; cpmc_plugin.nni.CPMCPruner does this by itself)",
            stacklevel=4,
        )


@torch.no_grad()
def speedup(
    model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]], example_inputs: Any
) -> nn.Module:
    """Remove the output channels that ``masks`` zero out, in place; return ``model``.

    ``masks`` is NNI's ``{module_name: {target_name: mask}}`` (as ``pruner.compress()``
    returns; call ``pruner.unwrap_model()`` first). Every mask is applied to its tensor,
    then a channel whose filter is masked out entirely goes, through torch-pruning's
    dependency graph, together with everything tied to it (the norm layer after it,
    the next layers' inputs). The result computes what the masked model computes:

    - a channel that a residual add or concatenation ties to a layer whose mask keeps
      it stays, with its masked weights at zero;
    - the constant a removed channel emits in the masked model (its bias, or its norm
      layer's shift, unless the masks zero them too) is folded into the biases of the
      layers that read it; where no bias can reproduce it (a zero-padded conv) the
      channel stays, masked, and a warning names the layers;
    - a grouped conv loses the same positions from each of its groups; masked channels
      that break that pattern stay (warned).

    The smaller model's outputs on ``example_inputs`` are compared with the masked
    model's; a warning says by how much they differ if they do (e.g. a GroupNorm over
    the removed channels). All or nothing: if torch-pruning fails, or the smaller
    model no longer runs on ``example_inputs`` (a channel count hard-coded in the
    forward), or its output shapes change, the model is put back exactly as it was,
    unmasked, and a ``ValueError`` names the layer.

    Raises:
        TypeError: ``masks`` (or one of its entries) is not a dict, or a mask not a tensor.
        ValueError: masks that name unknown modules or tensors, do not fit their
            tensor's shape, are not 0/1, a model still wrapped by NNI, or a smaller
            model that would not run. Nothing is changed then.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 4, 3))
        >>> mask = torch.ones(8, 3, 3, 3); mask[:3] = 0   # the bias stays: folded into net[2]
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
    state: dict[str, Any] = {}

    def shrink() -> int:
        for module, targets in checked.items():
            for target, mask in targets.items():
                getattr(module, target).mul_(mask.to(getattr(module, target).dtype))
        state["masked"] = _outputs(model, example_inputs)
        graph = build_graph(model, example_inputs)
        repair_concat_mappings(graph)
        plan = _plan(model, graph, checked, example_inputs)
        state["plan"] = plan
        for fold in plan.folds:
            apply_fold(fold)
        try:  # one group at a time, so that index mappings through concatenations stay current
            return prune_in_order(graph, plan.removals, strict=True)
        except RemovalFailed as failure:
            name = failure.removal.name
            raise ValueError(
                f"speedup was undone and the model left as it was: {failure}. Exclude {name} "
                "from config_list (exclude_op_names) or leave its channels unmasked"
            ) from failure

    prune_atomically(model, example_inputs, shrink, who="speedup", hint=_HINT, clone=True)
    plan = state["plan"]
    _warn_kept(plan)
    difference = _largest_difference(state["masked"], _outputs(model, example_inputs))
    if difference > TOLERANCE:
        warnings.warn(
            f"speedup: the smaller model's outputs differ from the masked model's by up to "
            f"{difference:.3g} (relative to the outputs' size) on example_inputs. Some "
            "operation reads the removed channels in a way the dependency graph does not "
            "follow (e.g. a GroupNorm or LayerNorm over them, or a mean over channels)",
            stacklevel=3,
        )
    return model
