"""Read a torch-pruning dependency group into per-channel weight values and costs.

A group's items whose pruning function removes *output* channels hold ``W_out``
(filter rows, biases, norm scale/shift); items removing *input* channels hold
``W_in`` (the slices of every consumer). Each item's indices map back to the
group's root channels through ``root_idxs``, so coupled channels (residual adds,
concatenations, flatten into a Linear) accumulate onto one root channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from .functional import channel_norm

__all__ = [
    "GroupStats",
    "group_stats",
    "hidden_coupling",
    "is_out_item",
    "misaligned_grouped_conv",
    "repair_concat_mappings",
]

_AFFINE_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.PReLU,
)


@dataclass(frozen=True)
class GroupStats:
    """Per root channel of one group: ``||W||_p^p``, parameter and MAC counts.

    ``out_*`` sum over the items that own the channel (``W_out``), ``in_*`` over
    the items that consume it (``W_in``); ``producers`` counts the conv/linear
    layers that produce the channel (more than one when a residual add ties them).
    """

    out_value: torch.Tensor
    in_value: torch.Tensor
    out_params: torch.Tensor
    in_params: torch.Tensor
    out_macs: torch.Tensor
    in_macs: torch.Tensor
    producers: int
    unsupported: tuple[str, ...]


def is_out_item(group: tp.Group, handler: object) -> bool:
    dg = group._DG
    return bool(dg.is_out_channel_pruning_fn(handler))


def _out_norms(layer: nn.Module, p: float) -> list[tuple[torch.Tensor, int]] | None:
    """``(||row||_p^p per output channel, weights per row)`` for the producing parameters."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        weight = layer.weight
        if layer.transposed:  # [in, out/groups, k...]
            if layer.groups != 1:
                return None
            norms = [(channel_norm(weight, p, dim=1), int(weight[:, 0].numel()))]
        else:
            norms = [(channel_norm(weight, p, dim=0), int(weight[0].numel()))]
    elif isinstance(layer, nn.Linear):
        norms = [(channel_norm(layer.weight, p, dim=0), layer.in_features)]
    elif isinstance(layer, _AFFINE_TYPES):
        scale = getattr(layer, "weight", None)
        if not isinstance(scale, torch.Tensor):
            return []
        if isinstance(layer, nn.PReLU) and scale.numel() == 1:
            return []
        norms = [(channel_norm(scale.reshape(-1), p), 1)]
    else:
        return None
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        norms.append((channel_norm(bias.reshape(-1), p), 1))
    return norms


def _in_norms(layer: nn.Module, p: float) -> list[tuple[torch.Tensor, int]] | None:
    """``(||column||_p^p per input channel, weights per column)`` for a consuming layer."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        weight = layer.weight
        if layer.transposed:  # [in, out/groups, k...]: input channel c is row c
            return [(channel_norm(weight, p, dim=0), int(weight[0].numel()))]
        groups = layer.groups
        out_per_group = weight.shape[0] // groups
        # [groups, out/groups, in/groups, k]: input channel g * in/groups + j is column (g, j)
        grouped = weight.reshape(groups, out_per_group, weight.shape[1], -1)
        per_column = out_per_group * grouped.shape[-1]
        return [(channel_norm(grouped, p, dim=(0, 2)).reshape(-1), per_column)]
    if isinstance(layer, nn.Linear):
        return [(channel_norm(layer.weight, p, dim=1), layer.out_features)]
    return None


def group_stats(group: tp.Group, positions: Mapping[nn.Module, int] | None, p: float) -> GroupStats:
    """Weight values and costs of every root channel of ``group``.

    ``positions`` gives each layer's output positions per sample (H*W of a conv
    map); without it MACs are reported as zeros.
    """
    root_order = torch.as_tensor(group[0].root_idxs, dtype=torch.long)
    n = len(root_order)
    lookup = torch.full((int(root_order.max()) + 1 if n else 1,), -1, dtype=torch.long)
    lookup[root_order] = torch.arange(n)
    acc = {k: torch.zeros(n, dtype=torch.float64) for k in ("ov", "iv", "op", "ip", "om", "im")}
    producers = 0
    unsupported: list[str] = []
    for item in group:
        layer = item.dep.target.module
        if not isinstance(layer, nn.Module) or not item.idxs:
            continue
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        if (roots > len(lookup) - 1).any() or (lookup[roots] < 0).any():
            continue  # index outside the root's channels (partial group): nothing to score
        where = lookup[roots]
        idxs = torch.as_tensor(item.idxs, dtype=torch.long)
        outgoing = is_out_item(group, item.dep.handler)
        norms = _out_norms(layer, p) if outgoing else _in_norms(layer, p)
        if norms is None:
            if any(True for _ in layer.parameters(recurse=False)):
                unsupported.append(type(layer).__name__)
            continue
        if outgoing and isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
            producers += 1
        spots = float(positions.get(layer, 0)) if positions is not None else 0.0
        value_key, params_key, macs_key = ("ov", "op", "om") if outgoing else ("iv", "ip", "im")
        for per_channel, per_row in norms:
            acc[value_key].index_add_(0, where, per_channel[idxs].double())
            acc[params_key].index_add_(0, where, torch.full((len(where),), float(per_row)).double())
            acc[macs_key].index_add_(
                0, where, torch.full((len(where),), float(per_row) * spots, dtype=torch.float64)
            )
    return GroupStats(
        out_value=acc["ov"],
        in_value=acc["iv"],
        out_params=acc["op"],
        in_params=acc["ip"],
        out_macs=acc["om"],
        in_macs=acc["im"],
        producers=producers,
        unsupported=tuple(sorted(set(unsupported))),
    )


class _LiveConcatMapping:
    """Index mapping through segment ``index`` of a concatenation, at its current sizes.

    The offsets are read from the concat op's ``concat_sizes`` at every call, which
    torch-pruning's ``ConcatPruner`` keeps current as channels go, so the mapping stays
    right after earlier groups were pruned. ``reverse``: from the concat's output to
    the segment's input (keeps only the indices that fall in the segment).
    """

    def __init__(self, op: Any, index: int, reverse: bool) -> None:
        self.op = op
        self.index = index
        self.reverse = reverse

    def __call__(self, idxs: Sequence[Any]) -> list[Any]:
        sizes = self.op.concat_sizes
        start = int(sum(sizes[: self.index]))
        end = start + int(sizes[self.index])
        hybrid = tp._helpers._HybridIndex
        if self.reverse:
            return [hybrid(i.idx - start, i.root_idx) for i in idxs if start <= i.idx < end]
        return [hybrid(i.idx + start, i.root_idx) for i in idxs]


def _output_shape(node: Any) -> tuple[int, ...] | None:
    """The shape of the tensor a graph node produced, read from its autograd node."""
    metadata: Any = getattr(node.grad_fn, "_input_metadata", None)
    try:
        return tuple(int(n) for n in metadata[0].shape)
    except (TypeError, IndexError, AttributeError):
        return None


def repair_concat_mappings(graph: tp.DependencyGraph) -> int:
    """Map channel indices through the concatenations that torch-pruning leaves unmapped.

    The host maps indices through a ``torch.cat`` on dimension 1 only when the channels
    its consumer reads add up to the segments' sum. A concat that is pooled and then
    flattened into a Linear layer fails that check (the Linear reads ``channels * H * W``
    features), so the host leaves the identity mapping in place: channel ``i`` of *every*
    segment is then coupled with output channel ``i``, unrelated channels are pruned
    together, and the pruned model cannot run. Here every such concat whose output
    really has the segments' channels on dimension 1 (checked on the traced tensors)
    gets a mapping that follows the current segment sizes. Idempotent.

    Returns:
        The number of concatenations repaired by this call.
    """
    repaired = 0
    for node in graph.module2node.values():
        op = node.module
        if node.type != tp.ops.OPTYPE.CONCAT or op.offsets is not None:
            continue  # mapped by the host
        if getattr(op, "_cpmc_live_mapping", False) or not node.enable_index_mapping:
            continue
        shape, dim = _output_shape(node), getattr(node.grad_fn, "_saved_dim", None)
        if shape is None or len(shape) < 2 or not isinstance(dim, int) or dim % len(shape) != 1:
            continue
        sizes = op.concat_sizes
        if not sizes or len(sizes) != len(node.inputs) or any(s is None for s in sizes):
            continue
        if shape[1] != sum(sizes):
            continue  # concatenated along another dimension than the channels
        pairs = []
        for parent, size in zip(node.inputs, sizes, strict=True):
            parent_shape = _output_shape(parent)
            if parent_shape is not None and (len(parent_shape) < 2 or parent_shape[1] != size):
                break
            backward = [dep for dep in node.dependencies if dep.target == parent]
            forward = [dep for dep in parent.dependencies if dep.target == node]
            if len(backward) != 1 or len(forward) != 1:
                break  # a tensor concatenated twice: its segments cannot be told apart
            pairs.append((backward[0], forward[0]))
        if len(pairs) != len(sizes):
            continue
        for index, (backward, forward) in enumerate(pairs):
            backward.index_mapping[1] = _LiveConcatMapping(op, index, reverse=True)
            forward.index_mapping[1] = _LiveConcatMapping(op, index, reverse=False)
        op._cpmc_live_mapping = True
        repaired += 1
    return repaired


def misaligned_grouped_conv(group: tp.Group, ch_groups: int, size: int) -> nn.Module | None:
    """A grouped conv that ``group``'s units cannot prune, or None if there is none.

    torch-pruning removes a grouped conv's channels as if every conv group lost the
    same channels: it keeps the first ``kept / groups`` indices of the weight's
    per-group dimension. That is right only when the removed indices come in full
    residue classes modulo ``channels / groups`` (channel ``i`` goes with ``i + C/g``,
    ``i + 2C/g``, ...). Unit ``u`` of a group is root channels ``u + k * size``; where
    the conv reads a concatenation of several layers (or a tensor whose grouping the
    units do not follow), a unit's indices on the conv are not such classes, and
    pruning it would index out of the weight or silently move channels between conv
    groups. A depthwise conv (the host's depthwise pruner shrinks ``groups`` with the
    channels) is fine only while its input and output channels are equal.
    """
    root = torch.as_tensor(group[0].root_idxs, dtype=torch.long)
    if len(root) == 0 or size < 1:
        return None
    lookup = torch.full((int(root.max()) + 1,), -1, dtype=torch.long)
    lookup[root] = torch.arange(len(root))
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
            continue
        if not item.idxs:
            continue
        if tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV:
            if module.in_channels != module.out_channels:
                return module
            continue
        outgoing = is_out_item(group, item.dep.handler)
        channels = module.out_channels if outgoing else module.in_channels
        period = channels // module.groups
        roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
        idxs = torch.as_tensor(item.idxs, dtype=torch.long)
        inside = (roots >= 0) & (roots < len(lookup))
        where = torch.full_like(roots, -1)
        where[inside] = lookup[roots[inside]]
        if (where < 0).any():
            return module  # indices that no unit owns: the grouping cannot be followed
        unit = where % size
        for u in torch.unique(unit).tolist():
            mine = set(idxs[unit == u].tolist())
            if {(i + period) % channels for i in mine} != mine:
                return module
    return None


#: graph ops after which one channel can reach a layer through two index mappings
_REMAPPING_OPS = (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.UNBIND)
#: probes with random halves of the channels that check a guess of the coupled sets
_CHECKS = 6
#: the most single-channel probes spent on one group to find its coupled sets
MAX_COUPLING_PROBES = 64


def _union_find_labels(size: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    parent = list(range(size))

    def find(p: int) -> int:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for p, q in pairs:
        a, b = find(p), find(q)
        parent[max(a, b)] = min(a, b)
    return torch.tensor([find(p) for p in range(size)], dtype=torch.long)


def hidden_coupling(
    graph: tp.DependencyGraph, group: tp.Group, reused: set[nn.Module]
) -> torch.Tensor | None:
    """Which root channels of ``group`` torch-pruning removes together, if not one by one.

    A layer can read two slices of one tensor (``torch.split`` into a layer that is
    called on both pieces, or the two halves of a gated unit). Removing channel ``i``
    then makes the host remove channel ``j`` of the other slice too, but the group that
    ``get_all_groups`` returns merges that path away: it lists ``i`` and ``j`` as
    independent. Only groups that hold a split, slice or unbind op, or a layer in
    ``reused`` (called more than once), are checked.

    The sets are found with the host's own groups: probes that ask for a random half
    of the channels show whether the host adds channels that were not asked for. If
    it does, the partners of single channels are probed: a slice's channel ``i`` goes
    with ``i + d`` for the same offsets ``d`` all along the slice, so bisection finds
    where the offsets change with a few probes, and the sets this gives must explain
    every half.

    Returns:
        None when every root channel goes alone, else one label per root position
        (positions with the same label are removed together). Also None when the sets
        do not follow such slices (more than :data:`MAX_COUPLING_PROBES` single probes,
        or a guess a half contradicts): the planner then counts the channels one by one.
    """
    suspect = any(
        item.dep.target.type in _REMAPPING_OPS or item.dep.target.module in reused for item in group
    )
    if not suspect:
        return None
    root = group[0]
    module, handler = root.dep.target.module, root.dep.handler
    roots = [int(i) for i in root.idxs]
    size = len(roots)
    position = {r: p for p, r in enumerate(roots)}
    if size < 2:
        return None

    def partners(asked: list[int]) -> set[int]:
        probe = graph.get_pruning_group(module, handler, [roots[p] for p in asked])
        return {position[int(i)] for i in probe[0].idxs if int(i) in position}

    generator = torch.Generator().manual_seed(0)
    halves = []
    for _ in range(_CHECKS):
        keep = (torch.rand(size, generator=generator) < 0.5).tolist()
        half = [p for p in range(size) if keep[p]]
        if half:
            halves.append((set(half), partners(half)))
    if all(asked == found for asked, found in halves):
        return None
    patterns: dict[int, tuple[int, ...]] = {}  # probed position -> offsets of its partners

    def pattern(p: int) -> tuple[int, ...]:
        if p not in patterns:
            if len(patterns) >= MAX_COUPLING_PROBES:
                raise OverflowError
            patterns[p] = tuple(sorted(q - p for q in partners([p])))
        return patterns[p]

    spans: list[tuple[int, int]] = []  # [lo, hi] where every channel follows pattern(lo)

    def bisect(lo: int, hi: int) -> None:
        if pattern(lo) == pattern(hi) or hi - lo <= 1:
            spans.append((lo, hi))
            return
        mid = (lo + hi) // 2
        bisect(lo, mid)
        bisect(mid, hi)

    try:
        bisect(0, size - 1)
    except OverflowError:
        return None
    offsets: list[tuple[int, ...]] = [()] * size
    for lo, hi in spans:
        for p in range(lo, hi + 1):
            offsets[p] = pattern(lo)
        offsets[hi] = pattern(hi)  # probed: exact (where lo and hi differ)
    pairs = [(p, p + d) for p in range(size) for d in offsets[p] if 0 <= p + d < size]
    labels = _union_find_labels(size, pairs)
    for asked, found in halves:  # the guess must explain every probe of a half
        chosen = torch.isin(labels, labels[torch.tensor(sorted(asked))])
        if set(torch.nonzero(chosen).flatten().tolist()) != found:
            return None
    return None if bool((labels == torch.arange(size)).all()) else labels
