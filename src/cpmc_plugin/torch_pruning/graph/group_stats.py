"""Read a torch-pruning dependency group into per-channel weight values and costs.

A group's items whose pruning function removes *output* channels hold ``W_out``
(filter rows, biases, norm scale/shift); items removing *input* channels hold
``W_in`` (the slices of every consumer). Each item's indices map back to the
group's root channels through ``root_idxs``, so coupled channels (residual adds,
concatenations, flatten into a Linear) accumulate onto one root channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.activity import ChannelActivity
from ...core.cpmc import channel_norm
from ...core.layers import AFFINE_TYPES, ROOT_TYPES
from ...core.torch_private import ConvNd
from ..host import graph_of
from .indexing import item_positions, root_lookup

__all__ = ["GroupStats", "group_stats", "is_out_item"]


@dataclass(frozen=True)
class GroupStats:
    """Per root channel of one group: ``||W||_p^p``, parameter and MAC counts.

    ``out_*`` sum over the items that own the channel (``W_out``), ``in_*`` over
    the items that consume it (``W_in``); ``producers`` counts the conv/linear
    layers that produce the channel (more than one when a residual add ties them).
    The data-aware fields are ``None`` unless :func:`group_stats` was given activity.
    """

    out_value: torch.Tensor
    in_value: torch.Tensor
    out_params: torch.Tensor
    in_params: torch.Tensor
    out_macs: torch.Tensor
    in_macs: torch.Tensor
    producers: int
    unsupported: tuple[str, ...]
    #: with data (see :func:`group_stats`): ``||W||_p^p * rms^p``, each weight's norm times
    #: the scale of the activation it acts on (the channel's output for ``W_out``, the
    #: input the consumer reads for ``W_in``)
    out_data: torch.Tensor | None = None
    in_data: torch.Tensor | None = None
    #: with gradients: ``sum |w * dL/dw|`` over the weights of the channel
    out_taylor: torch.Tensor | None = None
    in_taylor: torch.Tensor | None = None


#: what a norm is taken of: a parameter itself, or a tensor of its shape made from it
View = Callable[[torch.Tensor], torch.Tensor]


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def is_out_item(group: tp.Group, handler: object) -> bool:
    dg = graph_of(group)
    return bool(dg.is_out_channel_pruning_fn(handler))


def _out_norms(
    layer: nn.Module, p: float, view: View = _same
) -> list[tuple[torch.Tensor, int]] | None:
    """``(||row||_p^p per output channel, weights per row)`` for the producing parameters
    (of ``view(parameter)``: the parameter itself, or e.g. its weight x gradient)."""
    if isinstance(layer, ConvNd):
        weight = view(layer.weight)
        if layer.transposed:  # [in, out/groups, k...]
            if layer.groups != 1:
                return None
            norms = [(channel_norm(weight, p, dim=1), int(weight[:, 0].numel()))]
        else:
            norms = [(channel_norm(weight, p, dim=0), int(weight[0].numel()))]
    elif isinstance(layer, nn.Linear):
        norms = [(channel_norm(view(layer.weight), p, dim=0), layer.in_features)]
    elif isinstance(layer, nn.Embedding):  # output channel c is column c of the table
        norms = [(channel_norm(view(layer.weight), p, dim=1), layer.num_embeddings)]
    elif isinstance(layer, AFFINE_TYPES):
        scale = getattr(layer, "weight", None)
        if not isinstance(scale, torch.Tensor):
            return []
        if isinstance(layer, nn.PReLU) and scale.numel() == 1:
            return []
        norms = [(channel_norm(view(scale).reshape(-1), p), 1)]
    else:
        return None
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        norms.append((channel_norm(view(bias).reshape(-1), p), 1))
    return norms


def _in_norms(
    layer: nn.Module, p: float, view: View = _same
) -> list[tuple[torch.Tensor, int]] | None:
    """``(||column||_p^p per input channel, weights per column)`` for a consuming layer
    (of ``view(parameter)``, as for :func:`_out_norms`)."""
    if isinstance(layer, ConvNd):
        weight = view(layer.weight)
        if layer.transposed:  # [in, out/groups, k...]: input channel c is row c
            return [(channel_norm(weight, p, dim=0), int(weight[0].numel()))]
        groups = layer.groups
        out_per_group = weight.shape[0] // groups
        # [groups, out/groups, in/groups, k]: input channel g * in/groups + j is column (g, j)
        grouped = weight.reshape(groups, out_per_group, weight.shape[1], -1)
        per_column = out_per_group * grouped.shape[-1]
        return [(channel_norm(grouped, p, dim=(0, 2)).reshape(-1), per_column)]
    if isinstance(layer, nn.Linear):
        return [(channel_norm(view(layer.weight), p, dim=1), layer.out_features)]
    return None


def _attention_norms(
    layer: nn.MultiheadAttention, p: float, rows: bool, view: View = _same
) -> list[tuple[torch.Tensor, int]] | None:
    """``nn.MultiheadAttention`` over its embedding channels, as the host prunes it (rows
    and columns go together, whichever side the group reaches it from).

    Channel ``c`` owns row ``c`` of each of the q, k and v blocks of ``in_proj_weight`` and
    row ``c`` of ``out_proj``, with their biases (``rows``); it is consumed by column ``c``
    of both (not ``rows``).
    """
    if layer.in_proj_weight is None:  # separate q/k/v weights (kdim or vdim differ): not scored
        return None
    embed = layer.embed_dim
    packed, out = view(layer.in_proj_weight), view(layer.out_proj.weight)
    if not rows:
        return [
            (channel_norm(packed, p, dim=1), 3 * embed),
            (channel_norm(out, p, dim=1), embed),
        ]
    norms = [
        (channel_norm(packed.reshape(3, embed, -1), p, dim=1), 3 * packed.shape[1]),
        (channel_norm(out, p, dim=0), out.shape[1]),
    ]
    for bias in (layer.in_proj_bias, layer.out_proj.bias):
        if isinstance(bias, torch.Tensor):
            per_row = bias.numel() // embed
            norms.append((channel_norm(view(bias).reshape(-1, embed), p, dim=1), per_row))
    return norms


#: the norms of one side of an item: ``norms_of(p=..., view=...)`` (see :func:`_out_norms`)
NormsOf = Callable[..., list[tuple[torch.Tensor, int]] | None]


def _accumulate(
    acc: dict[str, torch.Tensor],
    layer: nn.Module,
    side: tuple[bool, NormsOf],
    where: torch.Tensor,
    idxs: torch.Tensor,
    positions: Mapping[nn.Module, int] | None,
    p: float,
    activity: ChannelActivity | None,
) -> bool:
    """Add one side of an item to ``acc``: its weight values and costs and, with
    ``activity``, its activation-weighted values and Taylor terms. ``False`` when the
    layer's weights cannot be scored on that side."""
    outgoing, norms_of = side
    norms = norms_of(p=p, view=_same)
    if norms is None:
        return False
    spots = float(positions.get(layer, 0)) if positions is not None else 0.0
    value_key, params_key, macs_key = ("ov", "op", "om") if outgoing else ("iv", "ip", "im")
    for per_channel, _ in norms:
        acc[value_key].index_add_(0, where, per_channel[idxs].double())
    # parameter and MAC counts are whole numbers: one sum per item is exact
    rows = float(sum(per_row for _, per_row in norms))
    if norms:
        acc[params_key].index_add_(0, where, torch.full((len(where),), rows, dtype=torch.float64))
        acc[macs_key].index_add_(
            0, where, torch.full((len(where),), rows * spots, dtype=torch.float64)
        )
    if activity is None:
        return True
    scale = activity.output_scale(layer, p) if outgoing else activity.input_scale(layer, p)
    for per_channel, _ in norms:
        weighted = per_channel[idxs].double()
        if scale is not None and len(scale) == len(per_channel):
            weighted = weighted * scale[idxs]
        acc["od" if outgoing else "id"].index_add_(0, where, weighted)
    if activity.gradients:
        grads = activity.gradients

        def taylor(tensor: torch.Tensor) -> torch.Tensor:
            grad = grads.get(tensor)
            return torch.zeros_like(tensor) if grad is None else tensor.detach() * grad

        for per_channel, _ in norms_of(p=1, view=taylor) or []:
            acc["ot" if outgoing else "it"].index_add_(0, where, per_channel[idxs].double())
    return True


def group_stats(
    group: tp.Group,
    positions: Mapping[nn.Module, int] | None,
    p: float,
    activity: ChannelActivity | None = None,
) -> GroupStats:
    """Weight values and costs of every root channel of ``group``.

    ``positions`` gives each layer's output positions per sample (H*W of a conv
    map); without it MACs are reported as zeros. With ``activity`` (what the model did
    on data) the activation-weighted values are filled in, and the Taylor terms when
    it holds gradients; a layer whose activations were not seen counts unweighted.
    """
    n = len(group[0].root_idxs)
    lookup = root_lookup(group)
    keys = ("ov", "iv", "op", "ip", "om", "im") + (("od", "id", "ot", "it") if activity else ())
    acc = {k: torch.zeros(n, dtype=torch.float64) for k in keys}
    producers = 0
    unsupported: list[str] = []
    seen: set[nn.Module] = set()
    for item in group:
        layer = item.dep.target.module
        if not isinstance(layer, nn.Module) or not item.idxs:
            continue
        where = item_positions(lookup, item)
        if (where < 0).any():
            continue  # index outside the root's channels (partial group): nothing to score
        idxs = torch.from_numpy(np.asarray(item.idxs, dtype=np.int64))
        outgoing = is_out_item(group, item.dep.handler)
        sides: list[tuple[bool, NormsOf]]
        if isinstance(layer, nn.MultiheadAttention):
            if layer in seen:
                continue  # the host prunes its rows and columns from either item
            seen.add(layer)
            sides = [(rows, partial(_attention_norms, layer, rows=rows)) for rows in (True, False)]
        else:
            sides = [(outgoing, partial(_out_norms if outgoing else _in_norms, layer))]
        for side in sides:
            if not _accumulate(acc, layer, side, where, idxs, positions, p, activity):
                if any(True for _ in layer.parameters(recurse=False)):
                    unsupported.append(type(layer).__name__)
                continue
            if side[0] and isinstance(layer, ROOT_TYPES):
                producers += 1
    return GroupStats(
        out_value=acc["ov"],
        in_value=acc["iv"],
        out_params=acc["op"],
        in_params=acc["ip"],
        out_macs=acc["om"],
        in_macs=acc["im"],
        producers=producers,
        unsupported=tuple(sorted(set(unsupported))),
        out_data=acc.get("od"),
        in_data=acc.get("id"),
        out_taylor=acc.get("ot") if activity is not None and activity.gradients else None,
        in_taylor=acc.get("it") if activity is not None and activity.gradients else None,
    )
