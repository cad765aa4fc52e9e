"""Attention heads as units of a budget, read from torch-pruning's groups.

A host group that holds the out-channels of layers listed in ``num_heads`` (the
query, key and value projections, or one packed ``qkv`` projection) is an attention
group. With ``prune_num_heads=True`` and ``prune_head_dims=False`` each head is one
unit: the ``head_dim`` channels it owns in every projection and in the output
projection go together, so RoPE and the head width stay intact.

Grouped-query attention (fewer key/value heads than query heads) keeps every
key/value head: query heads go, the same number from each key/value group, so that
``repeat_kv`` still gives every query head its own key and value. The host's graph
reaches the key/value projections from the query group through a many-to-one mapping;
their items are left out when the group is pruned (:attr:`HeadLayout.kept`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

__all__ = [
    "HeadLayout",
    "class_members",
    "head_layout",
    "is_attention",
    "uniform_members",
]


@dataclass(frozen=True)
class HeadLayout:
    """How the root positions of one attention group fall into heads.

    Attributes:
        unit_of: the head of each root position of the group.
        heads: query heads in the group now.
        head_dim: channels per head.
        classes: key/value heads (query heads ``c * heads // classes`` onwards read
            key/value head ``c``); 1 without grouped-query attention.
        queries: the projections whose heads go (their out-channels).
        kept: key/value projections whose items are left out when the group is pruned.
    """

    unit_of: torch.Tensor
    heads: int
    head_dim: int
    classes: int
    queries: tuple[nn.Module, ...]
    kept: tuple[nn.Module, ...]


def _outgoing(
    graph: tp.DependencyGraph, group: tp.Group, num_heads: Mapping[nn.Module, int]
) -> list[nn.Module]:
    found: list[nn.Module] = []
    for item in group:
        module = item.dep.target.module
        if (
            isinstance(module, nn.Linear)
            and module in num_heads
            and graph.is_out_channel_pruning_fn(item.dep.handler)
            and module not in found
        ):
            found.append(module)
    return found


def is_attention(
    graph: tp.DependencyGraph, group: tp.Group, num_heads: Mapping[nn.Module, int]
) -> bool:
    """Whether the group prunes the out-channels of a projection listed in ``num_heads``."""
    return bool(_outgoing(graph, group, num_heads))


def head_layout(
    graph: tp.DependencyGraph, group: tp.Group, num_heads: Mapping[nn.Module, int]
) -> HeadLayout | None:
    """The heads of ``group``, or ``None`` if it is not an attention group of linear
    projections whose root is one of them (``nn.MultiheadAttention`` packs its heads
    into the model's hidden width: it keeps its heads and its head dims shrink)."""
    projections = _outgoing(graph, group, num_heads)
    if not projections:
        return None
    root = group[0].dep.target.module
    if root not in projections or not graph.is_out_channel_pruning_fn(group[0].dep.handler):
        return None
    most = max(num_heads[m] for m in projections)
    queries = tuple(m for m in projections if num_heads[m] == most)
    kept = tuple(m for m in projections if num_heads[m] < most)
    consumers = [
        item.dep.target.module
        for item in group
        if isinstance(item.dep.target.module, nn.Linear)
        and graph.is_in_channel_pruning_fn(item.dep.handler)
    ]
    if not consumers:  # e.g. a key/value projection of grouped-query attention alone
        return None
    width = root.out_features
    if consumers[0].in_features * 3 == width:
        width = consumers[0].in_features  # a packed qkv projection: (3, heads, head_dim)
    if most < 1 or width % most:
        return None
    head_dim = width // most
    classes = num_heads[kept[0]] if kept else 1
    if most % classes or any(num_heads[m] != classes for m in kept):
        return None
    roots = torch.as_tensor(group[0].idxs, dtype=torch.long)
    return HeadLayout(
        unit_of=(roots % width) // head_dim,
        heads=most,
        head_dim=head_dim,
        classes=classes,
        queries=queries,
        kept=kept,
    )


def class_members(layout: HeadLayout, index: int) -> list[tuple[int, torch.Tensor]]:
    """The tie members of one grouped-query attention group: one per key/value head."""
    per = layout.heads // layout.classes
    return [(index, torch.arange(c * per, (c + 1) * per)) for c in range(layout.classes)]


def uniform_members(
    roots: Sequence[Sequence[nn.Module]], groups: Sequence[tp.Group], graph: tp.DependencyGraph
) -> list[list[int]]:
    """For each list of ``roots``, the indices of the groups holding one of its layers'
    out-channels (those groups must keep equal widths)."""
    found = []
    for layers in roots:
        wanted = set(layers)
        found.append(
            [
                i
                for i, group in enumerate(groups)
                if any(
                    item.dep.target.module in wanted
                    and graph.is_out_channel_pruning_fn(item.dep.handler)
                    for item in group
                )
            ]
        )
    return found
