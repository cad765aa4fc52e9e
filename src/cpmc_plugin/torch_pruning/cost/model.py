"""Build the budget planner's model of a network from torch-pruning's graph and counts.

Each layer's MACs and parameters come from ``tp.utils.count_ops_and_params``;
this module only says how each of those counts *scales* when channels go: a
conv or linear weight with kept outputs x kept inputs, a bias or norm layer
with kept outputs, a parameter-free layer (ReLU, pooling) with the kept
channels of the tensor it reads, found through the graph's autograd nodes.

A layer whose cost those rules cannot scale (one with a customized pruner, or one
holding sub-layers the graph does not trace, like ``nn.MultiheadAttention`` and its
``out_proj``) is *measured*: a shape-only copy of it is pruned with its own pruner at
a few widths and counted by the host's counter, and a quadratic in the kept fraction
is fitted through the counts (exact for every layer whose cost is at most quadratic
in its width, which covers linear, convolution and attention layers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch_pruning as tp

from ...core.budget import CostTerm
from ...core.probe import ModuleCall
from .measured import OpaqueCall, measured_terms
from .terms import Sources, mac_terms, ownership, param_terms, subtree_cost
from .types import CallSite, CostModel, GroupUnits

__all__ = [
    "build_cost_model",
    "map_calls",
    "remeasure_sites",
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


def remeasure_sites(sites: Sequence[CallSite], calls: Sequence[ModuleCall]) -> list[CallSite]:
    """``sites`` with the sizes of ``calls``, a forward made the way the model is called.

    The host's tracer first tries ``model(*example_inputs)``: on a batch of one that
    model may run on the unbatched sample (a token model reads ``[L, F]`` as a batch of
    ``L``), so the sizes recorded while tracing can be per token, not per sample. The
    graph nodes stay those of the trace; the k-th call of a module takes the sizes of
    its k-th call in ``calls``. Modules called a different number of times keep theirs.
    """
    by_module: dict[nn.Module, list[ModuleCall]] = {}
    for call in calls:
        by_module.setdefault(call.module, []).append(call)
    counts: dict[nn.Module, int] = {}
    for site in sites:
        counts[site.module] = counts.get(site.module, 0) + 1
    seen: dict[nn.Module, int] = {}
    fixed = []
    for site in sites:
        mine = by_module.get(site.module, [])
        k = seen.get(site.module, 0)
        seen[site.module] = k + 1
        if len(mine) == counts[site.module]:
            site = CallSite(site.module, site.node, mine[k].weight, mine[k].positions)
        fixed.append(site)
    return fixed


def build_cost_model(
    graph: tp.DependencyGraph,
    units: Sequence[GroupUnits],
    sites: Sequence[CallSite],
    layer_costs: dict[nn.Module, float],
    total_cost: float,
    metric: str,
    opaque_calls: dict[nn.Module, list[OpaqueCall]] | None = None,
    attention: dict[nn.Module, float] | None = None,
) -> CostModel:
    """The planner's model for ``metric`` ("macs" or "params") at the current shapes.

    ``layer_costs`` are per-sample counts of ``tp.utils.count_ops_and_params``, where a
    module's count includes its children's. ``opaque_calls`` (recorded by
    ``_measured.opaque_call_hooks``) are the inputs of the layers to measure.
    ``attention`` holds each module's own attention matmuls (QKᵀ and AV, per sample): they
    scale with the kept outputs of the module's query projection.
    """
    model = CostModel()
    for unit in units:
        model.owned.append(ownership(graph, unit, model))
    measured: dict[nn.Module, list[CostTerm]] = {}
    inside: set[nn.Module] = set()  # sub-modules of a measured layer: counted with it
    for layer, calls in (opaque_calls or {}).items():
        subtree = set(layer.modules())
        cost = subtree_cost(layer, layer_costs, metric)
        terms = measured_terms(graph, layer, calls, cost, metric, model) if cost > 0 else []
        if terms:
            measured[layer] = terms
            inside |= subtree
    modeled = 0.0
    for terms in measured.values():
        model.terms.extend(terms)
        modeled += sum(t.cost for t in terms)
    if metric == "params":
        for module in graph.model.modules():
            if module in inside:
                continue
            for term in param_terms(graph, module, model):
                model.terms.append(term)
                modeled += term.cost
    else:
        sources = Sources(graph, model)
        by_module: dict[nn.Module, list[CallSite]] = {}
        for site in sites:
            by_module.setdefault(site.module, []).append(site)
        for module in _cost_atoms(graph.model, layer_costs):
            if module in inside:
                continue  # measured with its layer
            if module not in by_module:  # a module the host counts with its own rule
                found = _timm_attention_terms(module, by_module, layer_costs, model)
                model.terms.extend(found)
                modeled += sum(t.cost for t in found)
                continue  # else not modelled (in the rest)
            cost = float(layer_costs.get(module) or 0.0)
            for term in mac_terms(graph, module, by_module[module], cost, model, sources):
                model.terms.append(term)
                modeled += term.cost
    if metric == "macs":
        for module, cost in (attention or {}).items():
            query = _query_projection(graph, module)
            dims: tuple[int, ...] = ()
            if query is not None:
                dims = (model.dim((id(query), "out"), query.out_features),)
            model.terms.append(CostTerm(float(cost), dims))
            modeled += float(cost)
    rest = total_cost - modeled
    if rest > 0:
        model.terms.append(CostTerm(rest, ()))
    return model


def _timm_attention_terms(
    module: nn.Module,
    by_module: dict[nn.Module, list[CallSite]],
    layer_costs: dict[nn.Module, float],
    model: CostModel,
) -> list[CostTerm]:
    """The host's own count of a timm ``Attention`` (packed ``qkv``, ``proj``), as terms.

    torch-pruning counts it by one rule (``timm_multihead_attention_counter_hook``), not
    as its layers: with ``q = qkv.out_features / 3`` and ``L`` tokens, ``3 L D q`` for the
    projections (``D`` its inputs), ``L q`` for the scaling and ``3 L q`` for the bias,
    ``2 L^2 q + heads L^2`` for QKᵀ, softmax and AV, and ``L q (q + 1)`` for ``proj``. Those
    scale with ``qkv``'s kept inputs and outputs; when they do not add up to the count,
    nothing is returned (the count stays in the planner's constant rest).
    """
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    heads = getattr(module, "num_heads", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        return []
    sites = by_module.get(qkv)
    if not isinstance(heads, int) or not sites:
        return []
    tokens = float(sites[0].positions)
    width, q = float(qkv.in_features), qkv.out_features / 3.0
    projections = 3 * tokens * width * q
    linear = tokens * q + (3 * tokens * q if qkv.bias is not None else 0.0)
    linear += 2 * tokens * tokens * q + heads * tokens * tokens + tokens * q
    square = tokens * q * q
    if abs(projections + linear + square - float(layer_costs.get(module) or 0.0)) > 1e-6 * (
        projections + linear + square
    ):
        return []
    into = model.dim((id(qkv), "in"), qkv.in_features)
    out = model.dim((id(qkv), "out"), qkv.out_features)
    return [
        CostTerm(projections, (into, out)),
        CostTerm(linear, (out,)),
        CostTerm(square, (out, out)),
    ]


def _query_projection(graph: tp.DependencyGraph, module: nn.Module) -> nn.Linear | None:
    """The first traced linear layer inside an attention module: its query projection
    (``q_proj``, ``query``, or a packed ``qkv``), whose heads QKᵀ and AV scale with."""
    for sub in module.modules():
        if sub is not module and isinstance(sub, nn.Linear) and sub in graph.module2node:
            return sub
    return None


def _cost_atoms(root: nn.Module, layer_costs: dict[nn.Module, float]) -> list[nn.Module]:
    """The modules the host's counter counts by themselves: a count, no child with one.

    The counter counts a module it knows (a conv, ``nn.MultiheadAttention``, ...) with
    its own formula and every other module as the sum of its children, so these
    modules' counts add up to the total without overlap.
    """
    return [
        m
        for m in root.modules()
        if float(layer_costs.get(m) or 0.0) > 0
        and not any(float(layer_costs.get(c) or 0.0) > 0 for c in m.children())
    ]
