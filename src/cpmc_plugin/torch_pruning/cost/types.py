"""The cost model's types: the planner's units of a host group, recorded calls, and the
model of one state (dimensions, ownership, cost terms). A leaf: the other cost modules
import it, it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.budget import CostTerm
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
