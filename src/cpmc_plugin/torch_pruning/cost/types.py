"""The cost model's types: the planner's units of a host group, recorded calls, and the
model of one state (dimensions, ownership, cost terms). A leaf: the other cost modules
import it, it imports none of them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.budget import ChannelGroup, CostTerm
from ..graph.heads import HeadLayout

__all__ = ["CallSite", "CostModel", "GroupUnits"]


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

    ``dim_index`` maps ``(id(layer), "in" | "out")`` to its dimension in ``dim_sizes``;
    ``out_layers`` maps each output dimension of a conv or linear layer that a group
    owns to its layer, so that a layer owning only some of a group's units (a concat
    segment, a branch gated with others) keeps its own floor.
    """

    dim_sizes: list[int] = field(default_factory=list)
    terms: list[CostTerm] = field(default_factory=list)
    owned: list[dict[int, torch.Tensor]] = field(default_factory=list)
    out_layers: dict[int, nn.Module] = field(default_factory=dict)
    dim_index: dict[tuple[int, str], int] = field(default_factory=dict)

    def dim(self, key: tuple[int, str], size: int) -> int:
        if key not in self.dim_index:
            self.dim_index[key] = len(self.dim_sizes)
            self.dim_sizes.append(max(int(size), 1))
        return self.dim_index[key]

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
