"""How each layer's MACs and parameters scale with its kept channels (the cost model's
terms for conv, linear, norm and parameter-free layers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.budget import CostTerm
from ...core.layers import ROOT_TYPES, is_depthwise
from ..graph.indexing import item_positions, root_lookup
from .types import CallSite, CostModel, GroupUnits

__all__ = ["Sources", "mac_terms", "ownership", "param_terms", "subtree_cost"]


def subtree_cost(layer: nn.Module, layer_costs: dict[nn.Module, float], metric: str) -> float:
    if metric == "params":
        return float(sum(p.numel() for p in layer.parameters()))
    return float(layer_costs.get(layer) or 0.0)


def ownership(
    graph: tp.DependencyGraph, unit: GroupUnits, model: CostModel
) -> dict[int, torch.Tensor]:
    group = unit.group
    lookup = root_lookup(group)
    owned: dict[int, torch.Tensor] = {}
    for item in group:
        module = item.dep.target.module
        if not item.idxs:
            continue
        if isinstance(module, nn.Parameter):  # an unwrapped parameter (a class token)
            outgoing, size = True, graph.get_out_channels(module)
        elif isinstance(module, nn.Module):
            pruner = graph.get_pruner_of_module(module)
            if pruner is None:
                continue
            outgoing = graph.is_out_channel_pruning_fn(item.dep.handler)
            size = pruner.get_out_channels(module) if outgoing else pruner.get_in_channels(module)
        else:
            continue
        if size is None:
            continue
        where = item_positions(lookup, item)
        where = unit.unit_index(where[where >= 0])
        counts = torch.bincount(where, minlength=unit.size)
        if unit.alias is not None:  # a set's indices all leave with its representative
            counts = torch.zeros_like(counts).index_add_(0, unit.alias, counts)
        dim = model.dim((id(module), "out" if outgoing else "in"), size)
        owned[dim] = owned[dim] + counts if dim in owned else counts
        if outgoing and _produces_channels(module):
            model.out_layers[dim] = module
    return owned


def _produces_channels(module: Any) -> bool:
    """A conv or linear layer whose outputs are not its inputs (not depthwise).

    Only such layers need a floor of their own: a norm layer or a depthwise conv
    over a concatenation keeps channels as long as the layers it reads from do.
    """
    return (
        isinstance(module, (*ROOT_TYPES, nn.Embedding))
        and tp.ops.module2type(module) != tp.ops.OPTYPE.DEPTHWISE_CONV
    )


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


def param_terms(graph: tp.DependencyGraph, module: nn.Module, model: CostModel) -> list[CostTerm]:
    own = list(module.named_parameters(recurse=False))
    unwrapped = [p for _, p in own if p in graph.module2node]  # pruned along one dimension
    terms = [
        CostTerm(float(p.numel()), (model.dim((id(p), "out"), graph.get_out_channels(p)),))
        for p in unwrapped
        if graph.get_out_channels(p)
    ]
    own = [(name, p) for name, p in own if not any(p is u for u in unwrapped)]
    dims = _module_dims(graph, module, model)
    if dims is None or not own:
        return terms
    out_dim, in_dim = dims
    for name, param in own:
        if isinstance(module, ROOT_TYPES) and name == "weight" and in_dim >= 0:
            scale: tuple[int, ...] = (out_dim,) if is_depthwise(module) else (out_dim, in_dim)
        else:
            scale = (out_dim,)
        terms.append(CostTerm(float(param.numel()), scale))
    return terms


def _weight_macs(module: nn.Module, sites: Sequence[CallSite]) -> float:
    """Per-sample MACs of a conv or linear layer's weight (the counter's formula).

    The rest of its count is the bias: ``out`` per output position for a conv, but
    ``out`` once per call for a Linear layer (the counter does not multiply a Linear
    bias by the positions or the batch).
    """
    positions = float(sum(s.positions for s in sites))
    if isinstance(module, nn.Linear):
        return positions * float(module.in_features * module.out_features)
    # a conv: kernel x in x out / groups per output position (transposed: the same)
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return positions * float(weight.numel())


def mac_terms(
    graph: tp.DependencyGraph,
    module: nn.Module,
    sites: Sequence[CallSite],
    cost: float,
    model: CostModel,
    sources: Sources,
) -> list[CostTerm]:
    dims = _module_dims(graph, module, model)
    if dims is not None:
        out_dim, in_dim = dims
        if isinstance(module, ROOT_TYPES) and in_dim >= 0 and not is_depthwise(module):
            bias = 0.0
            if getattr(module, "bias", None) is not None:
                bias = max(0.0, cost - _weight_macs(module, sites))
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


class Sources:
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
