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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.budget import ChannelGroup, CostTerm
from ...core.probe import ModuleCall
from ..graph.heads import HeadLayout
from .measured import OpaqueCall, _measured_terms
from .terms import _mac_terms, _ownership, _param_terms, _subtree_cost

__all__ = [
    "CallSite",
    "CostModel",
    "GroupUnits",
    "build_cost_model",
    "map_calls",
    "remeasure_sites",
]


@dataclass
class CallSite:
    """A recorded module call, tied to the graph node that produced its output."""

    module: nn.Module
    node: Any
    weight: int
    positions: int


@dataclass(frozen=True)
class GroupUnits:
    """A host group seen as units: unit ``u`` is root channels ``u + k * size``, k < ch_groups,
    or, for attention heads, the ``ch_groups`` channels of head ``u`` in every projection.

    ``alias[u]`` (where given) is the unit that stands for ``u``: the host removes the
    units of one alias set together (see
    :func:`cpmc_plugin.torch_pruning.graph.coupling.hidden_coupling`), so the planner ranks and
    counts each set as its representative, ``alias[u] == u``.
    """

    group: tp.Group
    ch_groups: int
    size: int
    alias: torch.Tensor | None = None
    #: attention heads as units (``unit_of`` then maps every root position to its head)
    heads: HeadLayout | None = None

    @property
    def channels(self) -> int:
        """Root positions of the group."""
        return len(self.heads.unit_of) if self.heads is not None else self.size * self.ch_groups

    def unit_index(self, positions: torch.Tensor) -> torch.Tensor:
        """The unit of each root position."""
        if self.heads is not None:
            return self.heads.unit_of[positions]
        return positions % self.size

    def positions(self, units: torch.Tensor) -> torch.Tensor:
        """The root positions of ``units``, sorted."""
        if self.heads is not None:
            return torch.nonzero(torch.isin(self.heads.unit_of, units)).flatten()
        offsets = torch.arange(self.ch_groups) * self.size
        return torch.sort((units[:, None] + offsets[None, :]).flatten()).values

    def unit_scores(self, channel_scores: torch.Tensor) -> torch.Tensor:
        """Each unit's mean channel score."""
        if self.heads is None:
            return channel_scores.view(self.ch_groups, self.size).mean(0)
        unit_of = self.heads.unit_of
        sums = torch.zeros(self.size, dtype=torch.float64).index_add_(
            0, unit_of, channel_scores.double()
        )
        counts = torch.bincount(unit_of, minlength=self.size).clamp_min(1)
        return (sums / counts).to(channel_scores.dtype)

    def members(self, units: torch.Tensor) -> torch.Tensor:
        """``units`` and every unit the host removes with them, sorted."""
        if self.alias is None:
            return torch.sort(units).values
        chosen = torch.isin(self.alias, self.alias[units])
        return torch.nonzero(chosen).flatten()


@dataclass
class CostModel:
    """Dimensions, ownership and cost terms of one model state.

    ``out_layers`` maps each output dimension of a conv or linear layer that a group
    owns to its layer, so that a layer owning only some of a group's units (a concat
    segment, a branch gated with others) keeps its own floor.
    """

    dim_sizes: list[int] = field(default_factory=list)
    terms: list[CostTerm] = field(default_factory=list)
    owned: list[dict[int, torch.Tensor]] = field(default_factory=list)
    out_layers: dict[int, nn.Module] = field(default_factory=dict)
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
        layer_floor: Callable[[nn.Module], int] | None = None,
    ) -> list[ChannelGroup]:
        """The planner's groups: ``floors`` caps each group, ``layer_floor`` each layer.

        ``layer_floor(module)`` is the fewest output channels ``module`` may keep. A
        layer whose channels are only part of a group (a segment of a concatenation,
        a branch gated together with others) keeps that many through protected units:
        its highest-scored ones.
        """
        groups = []
        for u, s, f, o in zip(units, scores, floors, self.owned, strict=True):
            if u.alias is not None:  # a set ranks by its mean score, as its representative
                sums = torch.zeros(u.size, dtype=torch.float64).index_add_(0, u.alias, s.double())
                sizes = torch.bincount(u.alias, minlength=u.size).clamp_min(1)
                s = (sums / sizes)[u.alias].to(s.dtype)
            protected = self._protected(s, o, layer_floor) if layer_floor is not None else None
            if u.alias is not None:
                stand_ins = u.alias != torch.arange(u.size)
                protected = stand_ins if protected is None else protected | stand_ins
            groups.append(
                ChannelGroup(
                    scores=s,
                    removable=max(u.size - f, 0),
                    owned=o,
                    round_to=_unit_rounding(u, round_to),
                    protected=protected,
                )
            )
        return groups

    def _protected(
        self,
        scores: torch.Tensor,
        owned: dict[int, torch.Tensor],
        layer_floor: Callable[[nn.Module], int],
    ) -> torch.Tensor | None:
        protected = torch.zeros(len(scores), dtype=torch.bool)
        descending = torch.argsort(-scores.double(), stable=True)
        for dim, counts in owned.items():
            module = self.out_layers.get(dim)
            if module is None:
                continue
            mine = int(counts.sum())
            # other groups may own (and remove) the rest: keep the floor from this one
            need = min(layer_floor(module), mine)
            need -= int(counts[protected].sum())
            if need <= 0:
                continue
            candidates = descending[(counts[descending] > 0) & ~protected[descending]]
            taken = torch.cumsum(counts[candidates], 0)
            last = int(torch.searchsorted(taken, torch.tensor([need]))[0])
            protected[candidates[: last + 1]] = True
        return protected if bool(protected.any()) else None


def _unit_rounding(unit: GroupUnits, round_to: int) -> int:
    """Kept units in multiples of this keep channel counts multiples of ``round_to``."""
    if unit.heads is not None:  # a head is head_dim channels
        return round_to // math.gcd(round_to, unit.heads.head_dim)
    return math.lcm(round_to, _heads_step(unit))


def _heads_step(unit: GroupUnits) -> int:
    """Units kept in multiples of this keep every ``nn.MultiheadAttention`` width whole.

    Its embedding width must stay a multiple of its heads (the host's pruner asserts
    it); a unit removes ``ch_groups`` channels (``ch_groups`` is the heads where the
    caller gave them as ``out_channel_groups``).
    """
    step = 1
    for item in unit.group:
        module = item.dep.target.module
        if isinstance(module, nn.MultiheadAttention):
            heads = int(module.num_heads)
            step = math.lcm(step, heads // math.gcd(heads, unit.ch_groups))
    return step


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
        model.owned.append(_ownership(graph, unit, model))
    measured: dict[nn.Module, list[CostTerm]] = {}
    inside: set[nn.Module] = set()  # sub-modules of a measured layer: counted with it
    for layer, calls in (opaque_calls or {}).items():
        subtree = set(layer.modules())
        cost = _subtree_cost(layer, layer_costs, metric)
        terms = _measured_terms(graph, layer, calls, cost, metric, model) if cost > 0 else []
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
            for term in _param_terms(graph, module, model):
                model.terms.append(term)
                modeled += term.cost
    else:
        sources = _Sources(graph, model)
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
            for term in _mac_terms(graph, module, by_module[module], cost, model, sources):
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
