"""Root index -> position: where a root channel of a group sits in the group's root item.

Every item of a torch-pruning group carries ``root_idxs``, the channels of the
group's root layer that its own ``idxs`` go with. Per-channel values of a group are
indexed by *position* in ``group[0].root_idxs`` (which, for a group of chosen
channels, is not the root index itself). :func:`root_lookup` builds that map once
per group, :func:`positions_in` reads it for any item, ``-1`` marking root indices
the group does not own.

Example:
    >>> import torch
    >>> import torch.nn as nn
    >>> import torch_pruning as tp
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 1))
    >>> graph = tp.DependencyGraph().build_dependency(net, torch.randn(1, 1, 2, 2))
    >>> group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, [3, 1])
    >>> root_lookup(group)
    tensor([-1,  1, -1,  0])
    >>> positions_in(root_lookup(group), [1, 3, 2, 7, -1])
    tensor([ 1,  0, -1, -1, -1])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..host import Group

__all__ = ["item_positions", "positions_in", "root_lookup"]


def root_lookup(group: Group) -> torch.Tensor:
    """``lookup[r]`` = position of root index ``r`` in ``group[0].root_idxs``, else ``-1``.

    The tensor is ``max(root_idxs) + 1`` long (empty for an empty root). A root
    index listed twice maps to its last position, as ``{r: p for p, r in
    enumerate(root_idxs)}`` does.
    """
    roots = torch.as_tensor(group[0].root_idxs, dtype=torch.long).reshape(-1)
    size = int(roots.max()) + 1 if len(roots) else 0
    lookup = torch.full((size,), -1, dtype=torch.long)
    return lookup.scatter_reduce_(0, roots, torch.arange(len(roots)), reduce="amax")


def positions_in(lookup: torch.Tensor, idxs: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The position of each root index in ``idxs`` (``-1`` where ``lookup`` has none).

    ``idxs`` is typically an item's ``root_idxs``; indices below 0 or past the end
    of ``lookup`` are outside the group, like those ``lookup`` marks ``-1``.
    """
    # numpy: a group's items are many short lists, where torch's per-call cost dominates
    roots = np.asarray(idxs, dtype=np.int64).reshape(-1)
    table = lookup.numpy()
    inside = (roots >= 0) & (roots < len(table))
    where = np.full(roots.shape, -1, dtype=np.int64)
    where[inside] = table[roots[inside]]
    return torch.from_numpy(where)


def item_positions(lookup: torch.Tensor, item: Any) -> torch.Tensor:
    """:func:`positions_in` for a group item: one position per index in ``item.idxs``.

    torch-pruning leaves ``root_idxs`` as ``None`` on items it reaches through a
    many-to-one mapping (grouped-query attention's key/value heads, which several query
    heads read): no root channel owns them, so their positions are ``-1``.
    """
    roots = item.root_idxs
    if roots is None:
        return torch.full((len(item.idxs),), -1, dtype=torch.long)
    if None in roots:
        roots = [-1 if r is None else r for r in roots]
    return positions_in(lookup, roots)
