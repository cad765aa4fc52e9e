"""Channel couplings torch-pruning's graph misses: misaligned grouped convolutions and
hidden couplings found by probing."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.torch_private import ConvNd
from .group_stats import is_out_item
from .indexing import item_positions, root_lookup

__all__ = ["hidden_coupling", "misaligned_grouped_conv"]


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
    if len(group[0].root_idxs) == 0 or size < 1:
        return None
    lookup = root_lookup(group)
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, ConvNd) or module.groups == 1:
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
        idxs = torch.as_tensor(item.idxs, dtype=torch.long)
        where = item_positions(lookup, item)
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
