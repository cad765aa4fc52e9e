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

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils._pytree import tree_map

from ._probe import ModuleCall, forward_once
from .budget import ChannelGroup, CostTerm

__all__ = [
    "CallSite",
    "CostModel",
    "GroupUnits",
    "OpaqueCall",
    "build_cost_model",
    "capture_opaque_calls",
    "map_calls",
    "opaque_layers",
    "remeasure_sites",
]

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
    """A host group seen as units: unit ``u`` is root channels ``u + k * size``, k < ch_groups.

    ``alias[u]`` (where given) is the unit that stands for ``u``: the host removes the
    units of one alias set together (see :func:`cpmc_plugin._groups.hidden_coupling`),
    so the planner ranks and counts each set as its representative, ``alias[u] == u``.
    """

    group: tp.Group
    ch_groups: int
    size: int
    alias: torch.Tensor | None = None

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
                    round_to=math.lcm(round_to, _heads_step(u)),
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
) -> CostModel:
    """The planner's model for ``metric`` ("macs" or "params") at the current shapes.

    ``layer_costs`` are per-sample counts of ``tp.utils.count_ops_and_params``, where a
    module's count includes its children's. ``opaque_calls`` (from
    :func:`capture_opaque_calls`) are the inputs of the layers to measure.
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
            if module in inside or module not in by_module:
                continue  # measured with its layer, or not modelled (in the rest)
            cost = float(layer_costs.get(module) or 0.0)
            for term in _mac_terms(graph, module, by_module[module], cost, model, sources):
                model.terms.append(term)
                modeled += term.cost
    rest = total_cost - modeled
    if rest > 0:
        model.terms.append(CostTerm(rest, ()))
    return model


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


def _subtree_cost(layer: nn.Module, layer_costs: dict[nn.Module, float], metric: str) -> float:
    if metric == "params":
        return float(sum(p.numel() for p in layer.parameters()))
    return float(layer_costs.get(layer) or 0.0)


@dataclass
class OpaqueCall:
    """The inputs of one call of a layer whose cost is measured."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


_KNOWN_LEAVES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.PReLU,
    nn.Embedding,
)


def opaque_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Layers of the graph whose MACs and parameters are measured, not scaled by rule.

    A layer with a customized pruner (unless it is a plain conv, linear or norm layer
    without children, which the rules know), or a layer with sub-modules that the
    graph does not trace (``nn.MultiheadAttention`` holds ``out_proj``).
    """
    found = []
    for module in graph.module2node:
        if not isinstance(module, nn.Module):
            continue
        children = [m for m in module.modules() if m is not module]
        customized = type(module) in graph.CUSTOMIZED_PRUNERS or module in graph.CUSTOMIZED_PRUNERS
        if not children and (not customized or isinstance(module, _KNOWN_LEAVES)):
            continue
        if any(m in graph.module2node for m in children):
            continue  # its parts are modelled one by one
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        found.append(module)
    return found


def capture_opaque_calls(
    model: nn.Module, example_inputs: Any, layers: Sequence[nn.Module]
) -> dict[nn.Module, list[OpaqueCall]]:
    """The inputs of every call of ``layers`` in one eval-mode forward of ``model``."""
    calls: dict[nn.Module, list[OpaqueCall]] = {layer: [] for layer in layers}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
        calls[module].append(OpaqueCall(tree_map(detach, args), tree_map(detach, kwargs)))

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        forward_once(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: found for layer, found in calls.items() if found}


class _Bound(nn.Module):
    """Calls ``inner`` with fixed keyword arguments (the host's counter passes positional)."""

    def __init__(self, inner: nn.Module, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.inner = inner
        self.kwargs = kwargs

    def forward(self, *args: Any) -> Any:
        return self.inner(*args, **self.kwargs)


def _shrink(value: Any, size: int, kept: int, dim: int | None) -> Any:
    """``value`` with its tensors cut from ``size`` to ``kept`` along ``dim`` (where it fits)."""

    def cut(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or dim is None or t.dim() <= dim:
            return t
        return t.narrow(dim, 0, kept) if t.shape[dim] == size else t

    return tree_map(cut, value)


def _channel_dims(calls: Sequence[OpaqueCall], size: int) -> list[int]:
    """Dimensions of the layer's input tensors that have ``size`` entries (channels first)."""
    dims: list[int] = []
    for call in calls:
        for t in [*call.args, *call.kwargs.values()]:
            if isinstance(t, torch.Tensor):
                dims += [d for d in range(1, t.dim()) if t.shape[d] == size]
                dims += [t.dim() - 1] if t.dim() >= 1 and t.shape[-1] == size else []
    ordered = sorted(set(dims), key=lambda d: (d != 1, -d))
    return ordered


def _measure(
    layer: nn.Module,
    pruner: Any,
    calls: Sequence[OpaqueCall],
    removed_out: int,
    removed_in: int,
    metric: str,
) -> float:
    """The host's count of ``layer`` after its pruner removed channels from a copy of it.

    The copy holds its tensors on the meta device (shapes only) where the layer can run
    there, and real copies otherwise.
    """
    errors: list[BaseException] = []
    for meta in (True, False):
        try:
            return _measure_on(layer, pruner, calls, removed_out, removed_in, metric, meta)
        except Exception as error:  # noqa: BLE001 - e.g. an op without a meta kernel
            errors.append(error)
    raise ValueError(
        f"cannot run a pruned copy of {type(layer).__name__} to count it: {errors[-1]}"
    )


def _measure_on(
    layer: nn.Module,
    pruner: Any,
    calls: Sequence[OpaqueCall],
    removed_out: int,
    removed_in: int,
    metric: str,
    meta: bool,
) -> float:
    memo: dict[int, Any] = {}
    if meta:
        for p in layer.parameters():
            memo[id(p)] = nn.Parameter(p.detach().to("meta"), p.requires_grad)
        for b in layer.buffers():
            memo[id(b)] = b.detach().to("meta")
    twin = copy.deepcopy(layer, memo)
    size_in = pruner.get_in_channels(layer)
    if removed_out:
        pruner.prune_out_channels(twin, list(range(removed_out)))
    if removed_in:
        pruner.prune_in_channels(twin, list(range(removed_in)))
    if metric == "params":
        return float(sum(p.numel() for p in twin.parameters()))
    kept_in = pruner.get_in_channels(twin)
    move = lambda t: t.to("meta") if meta and isinstance(t, torch.Tensor) else t  # noqa: E731
    candidates: list[int | None] = [None]
    if size_in is not None and kept_in is not None and kept_in != size_in:
        candidates = list(_channel_dims(calls, int(size_in)))
    for dim in candidates:  # the first cut the copy accepts is the channel dimension
        total = 0.0
        try:
            for call in calls:
                args = tree_map(move, _shrink(call.args, size_in, kept_in, dim))
                kwargs = tree_map(move, _shrink(call.kwargs, size_in, kept_in, dim))
                bound = _Bound(twin, kwargs)
                _, _, layer_macs, _ = tp.utils.count_ops_and_params(bound, args, layer_wise=True)
                total += float(layer_macs.get(twin) or 0.0)
        except Exception:  # noqa: BLE001 - this cut does not fit the copy: try the next
            continue
        return total
    raise ValueError(f"no cut of the inputs fits a pruned {type(layer).__name__}")


def _measured_terms(
    graph: tp.DependencyGraph,
    layer: nn.Module,
    calls: Sequence[OpaqueCall],
    cost: float,
    metric: str,
    model: CostModel,
) -> list[CostTerm]:
    """Cost terms of ``layer`` fitted through counts of pruned copies (empty: not measurable).

    The count is fitted as ``a + b k + c k^2`` in the kept fraction ``k`` of the layer's
    output channels, or, when its input channels are pruned apart from its outputs, as
    the full quadratic in both kept fractions. The fit is scaled to ``cost``, the count
    of the layer in the whole model.
    """
    pruner = graph.get_pruner_of_module(layer)
    size_out = pruner.get_out_channels(layer)
    size_in = pruner.get_in_channels(layer)
    out_dim = model.dim((id(layer), "out"), size_out)
    owned_dims = {d for owned in model.owned for d in owned}
    step_out = _removal_step(model, out_dim)
    if isinstance(layer, nn.MultiheadAttention):  # widths that keep the heads whole
        step_out = math.lcm(step_out, int(layer.num_heads))
    in_dim = None
    if (
        size_in is not None
        and pruner.prune_in_channels != pruner.prune_out_channels
        and model._dims.get((id(layer), "in")) in owned_dims
    ):
        in_dim = model._dims[(id(layer), "in")]
    if out_dim not in owned_dims and in_dim is None:
        return [CostTerm(cost, ())]  # no group prunes it: its cost stays
    outs = _widths(size_out, step_out) if out_dim in owned_dims else [size_out]
    full_in = int(size_in) if size_in is not None else 1
    points: list[tuple[int, int]] = [(n, full_in) for n in outs]
    ins: list[int] = [full_in]
    if in_dim is not None:
        ins = _widths(full_in, _removal_step(model, in_dim))
        points += [(size_out, n) for n in ins[1:]]
    cross = len(outs) > 1 and len(ins) > 1
    if cross:
        points.append((outs[1], ins[1]))
    try:
        counts = [
            _measure(layer, pruner, calls, size_out - o, full_in - i, metric) for o, i in points
        ]
    except ValueError:
        return []  # left to the rule-based model (and the pruner's check of the result)
    if counts[0] <= 0:
        return []
    ko = torch.tensor([o / size_out for o, _ in points], dtype=torch.float64)
    ki = torch.tensor([i / full_in for _, i in points], dtype=torch.float64)
    basis: list[tuple[torch.Tensor, tuple[int, ...]]] = [(torch.ones_like(ko), ())]
    if len(outs) > 1:
        basis.append((ko, (out_dim,)))
    if len(outs) > 2:
        basis.append((ko * ko, (out_dim, out_dim)))
    if in_dim is not None and len(ins) > 1:
        basis.append((ki, (in_dim,)))
    if in_dim is not None and len(ins) > 2:
        basis.append((ki * ki, (in_dim, in_dim)))
    if in_dim is not None and cross:
        basis.append((ko * ki, (out_dim, in_dim)))
    matrix = torch.stack([column for column, _ in basis], 1)
    values = torch.tensor(counts, dtype=torch.float64)[:, None]
    solution = torch.linalg.lstsq(matrix, values).solution[:, 0]
    scale = cost / counts[0]
    return [
        CostTerm(float(c) * scale, dims)
        for c, (_, dims) in zip(solution, basis, strict=True)
        if abs(float(c)) > 1e-9 * counts[0]
    ]


def _removal_step(model: CostModel, dim: int) -> int:
    """How many indices of ``dim`` one unit of the group that owns it removes."""
    for owned in model.owned:
        counts = owned.get(dim)
        if counts is not None and int(counts.max()) > 0:
            return int(counts.max())
    return 1


def _widths(size: int, step: int) -> list[int]:
    """Up to three widths a layer of ``size`` channels can be pruned to, full width first."""
    widths = [size]
    for fraction in (0.5, 0.25):
        kept = size - step * int((size * (1 - fraction)) // step)
        if 0 < kept < size and kept not in widths:
            widths.append(kept)
    return widths


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
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        valid = (roots < len(lookup)) & (roots >= 0)
        where = lookup[roots[valid]]
        where = where[where >= 0] % unit.size
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
        isinstance(module, (*_CONV_LINEAR, nn.Embedding))
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


def _param_terms(graph: tp.DependencyGraph, module: nn.Module, model: CostModel) -> list[CostTerm]:
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
        if isinstance(module, _CONV_LINEAR) and name == "weight" and in_dim >= 0:
            scale: tuple[int, ...] = (out_dim,) if _is_depthwise(module) else (out_dim, in_dim)
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
