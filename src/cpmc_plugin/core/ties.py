"""Channel groups that must keep the same number of units (plain tensor math).

Some models only stay valid when several sets of units shrink together:

- grouped-query attention, where every key/value head must keep as many query heads
  as the others (``repeat_kv`` repeats each one ``num_heads // num_kv_heads`` times);
- a Hugging Face model, whose config holds one ``num_attention_heads`` and one
  ``intermediate_size`` for all of its layers.

A *tie* lists such *members*: ``(group index, unit ids)``, all with the same number of
units. :func:`tie_groups` turns each tie into one :class:`~cpmc_plugin.core.budget.ChannelGroup`
whose unit ``j`` stands for the ``j``-th weakest unit of every member: it ranks by the
members' mean score at that rank, and owns what all of them own there. The budget
planner then needs no notion of ties; :meth:`TiedGroups.expand` maps its removals back.

Example:
    >>> import torch
    >>> from cpmc_plugin.core.budget import ChannelGroup
    >>> one = torch.ones(2, dtype=torch.long)
    >>> a = ChannelGroup(torch.tensor([0.9, 0.1]), removable=1, owned={0: one})
    >>> b = ChannelGroup(torch.tensor([0.2, 0.8]), removable=1, owned={1: one})
    >>> tied = tie_groups([a, b], [[(0, torch.arange(2)), (1, torch.arange(2))]])
    >>> tied.groups[0].scores.tolist(), sorted(tied.groups[0].owned)
    ([0.15000000596046448, 0.8500000238418579], [0, 1])
    >>> [r.tolist() for r in tied.expand([torch.tensor([0])])]
    [[1], [0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .budget import ChannelGroup

__all__ = ["Member", "TiedGroups", "tie_groups"]

#: ``(index of a group, ids of its units that belong to the tie)``
Member = tuple[int, torch.Tensor]


@dataclass(frozen=True)
class TiedGroups:
    """The planner's groups after tying, and how to map their removals back.

    ``groups`` lists the untied groups in their order, then one group per tie.
    """

    groups: list[ChannelGroup]
    n_groups: int
    free: list[int]  # original index of each untied group, in ``groups``' order
    ranked: list[list[tuple[int, torch.Tensor]]]  # per tie: (group, its unit ids by rank)

    def expand(self, removed: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Removed units of every original group, from removals of :attr:`groups`."""
        out = [torch.zeros(0, dtype=torch.long) for _ in range(self.n_groups)]
        for index, units in zip(self.free, removed, strict=False):
            out[index] = units
        for tie, units in zip(self.ranked, removed[len(self.free) :], strict=True):
            for index, by_rank in tie:
                out[index] = torch.sort(torch.cat([out[index], by_rank[units]])).values
        return out


def tie_groups(groups: Sequence[ChannelGroup], ties: Sequence[Sequence[Member]]) -> TiedGroups:
    """Replace each tie's members by one group ranked and counted rank by rank.

    A member keeps its floor: the tie may remove at most what its tightest member may,
    in proportion to its share of its group. Protected units and ``round_to`` of the
    members are not carried over (a tie's round_to is the largest of its members').

    Raises:
        ValueError: members of one tie with different numbers of units, or a group
            unit claimed by two ties.
    """
    claimed: dict[int, torch.Tensor] = {}
    ranked_ties: list[list[tuple[int, torch.Tensor]]] = []
    tied: list[ChannelGroup] = []
    for number, tie in enumerate(ties):
        sizes = {len(ids) for _, ids in tie}
        if len(sizes) != 1:
            raise ValueError(f"tie {number} has members of different sizes: {sorted(sizes)}")
        (size,) = sizes
        ranked, scores = [], []
        owned: dict[int, torch.Tensor] = {}
        removable, round_to = size, 1
        for index, ids in tie:
            group = groups[index]
            ids = torch.as_tensor(ids, dtype=torch.long)
            seen = claimed.setdefault(index, torch.zeros(len(group.scores), dtype=torch.bool))
            if bool(seen[ids].any()):
                raise ValueError(f"a unit of group {index} belongs to two ties")
            seen[ids] = True
            order = ids[torch.argsort(group.scores[ids], stable=True)]
            ranked.append((index, order))
            scores.append(group.scores[order].double())
            for dim, counts in group.owned.items():
                share = counts[order]
                owned[dim] = owned[dim] + share if dim in owned else share
            # the member's share of its group's floor: equal shares of a group keep it
            removable = min(removable, group.removable * size // len(group.scores))
            round_to = max(round_to, group.round_to)
        ranked_ties.append(ranked)
        tied.append(
            ChannelGroup(
                scores=torch.stack(scores).mean(0).to(groups[tie[0][0]].scores.dtype),
                removable=removable,
                owned=owned,
                round_to=round_to,
            )
        )
    free = [i for i in range(len(groups)) if i not in claimed]
    for index, seen in claimed.items():
        if not bool(seen.all()):
            raise ValueError(f"group {index} is only partly tied: tie all of its units or none")
    return TiedGroups(
        groups=[groups[i] for i in free] + tied,
        n_groups=len(groups),
        free=free,
        ranked=ranked_ties,
    )
