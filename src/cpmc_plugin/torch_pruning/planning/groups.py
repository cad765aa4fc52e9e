"""The planner's groups: a cost model's units with their scores, floors and protected
units, as :mod:`cpmc_plugin.core.budget` ranks them (:func:`planner_groups`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ...core.budget import ChannelGroup
from ..cost.types import CostModel, GroupUnits

__all__ = ["planner_groups"]


def planner_groups(
    model: CostModel,
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
    for u, s, f, o in zip(units, scores, floors, model.owned, strict=True):
        if u.alias is not None:  # a set ranks by its mean score, as its representative
            sums = torch.zeros(u.size, dtype=torch.float64).index_add_(0, u.alias, s.double())
            sizes = torch.bincount(u.alias, minlength=u.size).clamp_min(1)
            s = (sums / sizes)[u.alias].to(s.dtype)
        protected = _protected(model, s, o, layer_floor) if layer_floor is not None else None
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
    model: CostModel,
    scores: torch.Tensor,
    owned: dict[int, torch.Tensor],
    layer_floor: Callable[[nn.Module], int],
) -> torch.Tensor | None:
    protected = torch.zeros(len(scores), dtype=torch.bool)
    descending = torch.argsort(-scores.double(), stable=True)
    for dim, counts in owned.items():
        module = model.out_layers.get(dim)
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
