"""Build the budget planner's model of a network from torch-pruning's graph and counts.

Each layer's MACs and parameters come from ``tp.utils.count_ops_and_params``;
this module only says how each of those counts *scales* when channels go: a
conv or linear weight with kept outputs x kept inputs, a bias or norm layer
with kept outputs, a parameter-free layer (ReLU, pooling) with the kept
channels of the tensor it reads, found through the graph's autograd nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ._probe import ModuleCall
from .budget import ChannelGroup, CostTerm

__all__ = ["CallSite", "CostModel", "GroupUnits", "build_cost_model", "map_calls"]

_CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels
        and module.out_channels % module.in_channels == 0
    )


@dataclass
class CallSite:
    """A recorded module call, tied to the graph node that produced its output."""

    module: nn.Module
    node: Any
    weight: int
    positions: int


@dataclass(frozen=True)
class GroupUnits:
    """A host group seen as units: unit ``u`` is root channels ``u + k * size``, k < ch_groups."""

    group: tp.Group
    ch_groups: int
    size: int


@dataclass
class CostModel:
    """Dimensions, ownership and cost terms of one model state."""

    dim_sizes: list[int] = field(default_factory=list)
    terms: list[CostTerm] = field(default_factory=list)
    owned: list[dict[int, torch.Tensor]] = field(default_factory=list)
    _dims: dict[tuple[int, str], int] = field(default_factory=dict)

    def dim(self, key: tuple[int, str], size: int) -> int:
        if key not in self._dims:
            self._dims[key] = len(self.dim_sizes)
            self.dim_sizes.append(max(int(size), 1))
        return self._dims[key]

    def channel_groups(
        self,
        units: Sequence[GroupUnits],
        scores: Sequence[torch.Tensor],
        floors: Sequence[int],
        round_to: int,
    ) -> list[ChannelGroup]:
        return [
            ChannelGroup(scores=s, removable=max(u.size - f, 0), owned=o, round_to=round_to)
            for u, s, f, o in zip(units, scores, floors, self.owned, strict=True)
        ]


def map_calls(graph: tp.DependencyGraph, calls: Sequence[ModuleCall]) -> list[CallSite]:
    """Tie each recorded call to the graph node whose autograd function made its output."""
    by_grad_fn = {node.grad_fn: node for node in graph.module2node.values() if node.grad_fn}
    sites = []
    for call in calls:
        node = graph.module2node.get(call.module)
        if node is None and call.grad_fn is not None:
            node = by_grad_fn.get(call.grad_fn)
        sites.append(CallSite(call.module, node, call.weight, call.positions))
    return sites


class _Sources:
    """Which layer outputs make up the channels of a graph node (memoized)."""

    def __init__(self, graph: tp.DependencyGraph, model: CostModel) -> None:
        self.graph = graph
        self.model = model
        self.memo: dict[int, list[tuple[int, int]]] = {}

    def of(self, node: Any, depth: int = 0) -> list[tuple[int, int]]:
        key = id(node)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = []  # breaks cycles
        found: list[tuple[int, int]] = []
        module = node.module
        pruner = self.graph.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
        channels = pruner.get_out_channels(module) if pruner is not None else None
        if isinstance(module, nn.Module) and channels is not None:
            found = [(self.model.dim((id(module), "out"), channels), int(channels))]
        elif depth < 200 and node.type == tp.ops.OPTYPE.CONCAT:
            for parent in node.inputs:
                found.extend(self.of(parent, depth + 1))
        elif depth < 200 and node.type in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.RESHAPE):
            for parent in node.inputs:
                found = self.of(parent, depth + 1)
                if found:
                    break
        self.memo[key] = found
        return found


def build_cost_model(
    graph: tp.DependencyGraph,
    units: Sequence[GroupUnits],
    sites: Sequence[CallSite],
    layer_costs: dict[nn.Module, float],
    total_cost: float,
    metric: str,
) -> CostModel:
    """The planner's model for ``metric`` ("macs" or "params") at the current shapes."""
    model = CostModel()
    for unit in units:
        model.owned.append(_ownership(graph, unit, model))
    modeled = 0.0
    if metric == "params":
        for module in graph.model.modules():
            for term in _param_terms(graph, module, model):
                model.terms.append(term)
                modeled += term.cost
    else:
        sources = _Sources(graph, model)
        by_module: dict[nn.Module, list[CallSite]] = {}
        for site in sites:
            by_module.setdefault(site.module, []).append(site)
        for module, module_sites in by_module.items():
            cost = float(layer_costs.get(module) or 0.0)
            if cost <= 0:
                continue
            for term in _mac_terms(graph, module, module_sites, cost, model, sources):
                model.terms.append(term)
                modeled += term.cost
    rest = total_cost - modeled
    if rest > 0:
        model.terms.append(CostTerm(rest, ()))
    return model


def _ownership(
    graph: tp.DependencyGraph, unit: GroupUnits, model: CostModel
) -> dict[int, torch.Tensor]:
    group = unit.group
    root = torch.as_tensor(group[0].root_idxs, dtype=torch.long)
    lookup = torch.full((int(root.max()) + 1,), -1, dtype=torch.long)
    lookup[root] = torch.arange(len(root))
    owned: dict[int, torch.Tensor] = {}
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or not item.idxs:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        outgoing = graph.is_out_channel_pruning_fn(item.dep.handler)
        size = pruner.get_out_channels(module) if outgoing else pruner.get_in_channels(module)
        if size is None:
            continue
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        valid = (roots < len(lookup)) & (roots >= 0)
        where = lookup[roots[valid]]
        where = where[where >= 0] % unit.size
        counts = torch.bincount(where, minlength=unit.size)
        dim = model.dim((id(module), "out" if outgoing else "in"), size)
        owned[dim] = owned[dim] + counts if dim in owned else counts
    return owned


def _module_dims(
    graph: tp.DependencyGraph, module: nn.Module, model: CostModel
) -> tuple[int, int] | None:
    pruner = graph.get_pruner_of_module(module) if module in graph.module2node else None
    if pruner is None:
        return None
    out_ch, in_ch = pruner.get_out_channels(module), pruner.get_in_channels(module)
    if out_ch is None:
        return None
    out_dim = model.dim((id(module), "out"), out_ch)
    in_dim = model.dim((id(module), "in"), in_ch) if in_ch is not None else -1
    return out_dim, in_dim


def _param_terms(graph: tp.DependencyGraph, module: nn.Module, model: CostModel) -> list[CostTerm]:
    dims = _module_dims(graph, module, model)
    own = list(module.named_parameters(recurse=False))
    if dims is None or not own:
        return []
    out_dim, in_dim = dims
    terms = []
    for name, param in own:
        if isinstance(module, _CONV_LINEAR) and name == "weight" and in_dim >= 0:
            scale: tuple[int, ...] = (out_dim,) if _is_depthwise(module) else (out_dim, in_dim)
        else:
            scale = (out_dim,)
        terms.append(CostTerm(float(param.numel()), scale))
    return terms


def _mac_terms(
    graph: tp.DependencyGraph,
    module: nn.Module,
    sites: Sequence[CallSite],
    cost: float,
    model: CostModel,
    sources: _Sources,
) -> list[CostTerm]:
    dims = _module_dims(graph, module, model)
    if dims is not None:
        out_dim, in_dim = dims
        if isinstance(module, _CONV_LINEAR) and in_dim >= 0 and not _is_depthwise(module):
            bias = 0.0
            if getattr(module, "bias", None) is not None:
                out_ch = model.dim_sizes[out_dim]
                bias = min(cost, float(sum(s.positions for s in sites) * out_ch))
            return [CostTerm(cost - bias, (out_dim, in_dim)), CostTerm(bias, (out_dim,))]
        return [CostTerm(cost, (out_dim,))]
    # a parameter-free layer: its cost follows the channels of the tensor it produced
    # (a layer called several times, like a shared ReLU, splits its count by the elements
    # each call touches now: its positions times the channels its sources keep)
    shares = [(site, sources.of(site.node) if site.node is not None else []) for site in sites]
    weights = [
        float(site.positions * sum(size for _, size in found)) if found else float(site.weight)
        for site, found in shares
    ]
    total_weight = sum(weights) or 1.0
    terms = []
    for (_site, found), weight in zip(shares, weights, strict=True):
        part = cost * weight / total_weight if len(shares) > 1 else cost
        channels = float(sum(size for _, size in found))
        if not found or channels <= 0:
            terms.append(CostTerm(part, ()))
            continue
        terms.extend(CostTerm(part * size / channels, (dim,)) for dim, size in found)
    return terms
