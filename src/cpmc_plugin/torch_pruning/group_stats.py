"""Read a torch-pruning dependency group into per-channel weight values and costs.

A group's items whose pruning function removes *output* channels hold ``W_out``
(filter rows, biases, norm scale/shift); items removing *input* channels hold
``W_in`` (the slices of every consumer). Each item's indices map back to the
group's root channels through ``root_idxs``, so coupled channels (residual adds,
concatenations, flatten into a Linear) accumulate onto one root channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from ..core.cpmc import channel_norm
from ..core.layers import AFFINE_TYPES, ROOT_TYPES
from .indexing import positions_in, root_lookup

__all__ = ["GroupStats", "group_stats", "is_out_item"]


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
    elif isinstance(layer, AFFINE_TYPES):
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
    n = len(group[0].root_idxs)
    lookup = root_lookup(group)
    acc = {k: torch.zeros(n, dtype=torch.float64) for k in ("ov", "iv", "op", "ip", "om", "im")}
    producers = 0
    unsupported: list[str] = []
    for item in group:
        layer = item.dep.target.module
        if not isinstance(layer, nn.Module) or not item.idxs:
            continue
        where = positions_in(lookup, item.root_idxs)
        if (where < 0).any():
            continue  # index outside the root's channels (partial group): nothing to score
        idxs = torch.as_tensor(item.idxs, dtype=torch.long)
        outgoing = is_out_item(group, item.dep.handler)
        norms = _out_norms(layer, p) if outgoing else _in_norms(layer, p)
        if norms is None:
            if any(True for _ in layer.parameters(recurse=False)):
                unsupported.append(type(layer).__name__)
            continue
        if outgoing and isinstance(layer, ROOT_TYPES):
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
