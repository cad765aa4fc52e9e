"""Remove chosen channels of dependency groups through torch-pruning: plan, validate, apply.

The sparse-training regularizers decide per root channel of each group whether it
may go (its weights are exactly zero); this module turns those decisions into
torch-pruning removals, checks every one against the unchanged graph first, and
only then prunes. Every group keeps at least one channel. :func:`prune_atomically`
runs such a removal all or nothing: if the smaller model no longer runs on the
example inputs, the model is put back exactly as it was and a ``ValueError`` says why.

Grouped convolutions constrain which channels can go together. torch-pruning
removes the input channels of a conv with ``groups=G`` by keeping the same local
positions in each of its ``G`` groups, so a removal must take the same positions
from every block (:func:`channel_blocks`, :func:`blocks_line_up`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.layers import is_depthwise
from ...core.proximal import group_norms
from ...core.torch_private import ConvNd
from ..host import graph_of
from .weight_groups import WeightGroups

__all__ = [
    "Removal",
    "RemovalFailed",
    "align_to_blocks",
    "apply_removals",
    "blocks_line_up",
    "channel_blocks",
    "groups_in_order",
    "removal_of",
    "prune_in_order",
    "remove_small_groups",
    "validated",
]


@dataclass(frozen=True)
class Removal:
    """Channels ``idxs`` of ``module``'s dimension that ``handler`` prunes (a group's root)."""

    module: nn.Module
    handler: Any
    idxs: tuple[int, ...]
    positions: tuple[int, ...]  # the same channels as positions in the group's root order
    name: str = ""  # the module's name in the graph, for messages ("" when unknown)
    #: layers the group reaches but leaves as they are: grouped-query attention's key/value
    #: projections (several query heads read them), and a layer whose weight is tied to
    #: another layer's (an LM head tied to its embeddings), which is re-tied afterwards
    kept: tuple[nn.Module, ...] = ()


def removal_of(group: tp.Group, remove: torch.Tensor, priority: torch.Tensor) -> Removal | None:
    """The removal of the root channels where ``remove`` is true; the channel of highest
    ``priority`` stays when all of them are chosen. ``None`` when nothing goes."""
    chosen = torch.nonzero(remove).flatten()
    if len(chosen) and len(chosen) == len(remove):
        chosen = chosen[chosen != int(priority.argmax())]  # never empty a layer
    if not len(chosen):
        return None
    root = group[0]
    positions = tuple(int(i) for i in chosen)
    return Removal(
        root.dep.target.module, root.dep.handler, tuple(root.idxs[i] for i in positions), positions
    )


def _splits_conv_groups(group: tp.Group) -> bool:
    """Whether the group touches a grouped (not depthwise) conv: removing arbitrary channels
    there would leave channel counts that its ``groups`` no longer divides."""
    for item in group:
        layer = item.dep.target.module
        if isinstance(layer, ConvNd) and layer.groups > 1:
            depthwise = layer.groups == layer.in_channels == layer.out_channels
            if not depthwise:
                return True
    return False


def validated(graph: tp.DependencyGraph, removals: Sequence[Removal]) -> list[Removal]:
    """The removals torch-pruning accepts on the graph as it is now (nothing is changed).

    Channels read or written by a grouped, non-depthwise conv are never removed here.
    """
    accepted = []
    for r in removals:
        group = graph.get_pruning_group(r.module, r.handler, list(r.idxs))
        if graph.check_pruning_group(group) and not _splits_conv_groups(group):
            accepted.append(r)
    return accepted


class RemovalFailed(ValueError):
    """torch-pruning refused or failed one removal of :func:`prune_in_order` (``strict``).

    The removals before it are pruned already: callers run the whole removal under
    :func:`~cpmc_plugin.core.atomic.prune_atomically` (or a snapshot) and restore.
    """

    def __init__(self, removal: Removal, error: BaseException | None) -> None:
        what = "it would empty a layer" if error is None else f"{type(error).__name__}: {error}"
        name = removal.name or type(removal.module).__name__
        super().__init__(
            f"torch-pruning failed to remove {len(removal.idxs)} channels of {name}: {what}"
        )
        self.removal = removal
        self.error = error


def groups_in_order(
    graph: tp.DependencyGraph,
    removals: Sequence[Removal],
    check: Callable[[Removal, tp.Group], None] | None = None,
) -> Iterator[tuple[Removal, tp.Group]]:
    """Each removal with its host group, built only when the previous one was handled.

    Groups are made one at a time, after the previous ones were pruned, so that index
    mappings through concatenations are current (as torch-pruning does). ``check`` is
    called on every group before it is yielded (it raises to refuse one).
    """
    for r in removals:
        group = graph.get_pruning_group(r.module, r.handler, list(r.idxs))
        if r.kept:
            _leave_out(group, r.kept)
        if check is not None:
            check(r, group)
        yield r, group


def _leave_out(group: tp.Group, kept: Sequence[nn.Module]) -> None:
    """Drop the group's items of ``kept``, so that pruning the group leaves those layers as
    they are. (The host's own pruner empties such items for grouped-query attention, but
    its pruning functions still copy a layer's whole weight for an empty index list: for
    an LM head tied to a large vocabulary that copy was a quarter of a 0.5B model.)"""
    items = group.items
    items[:] = [item for item in items if item.dep.target.module not in kept]


def prune_in_order(
    graph: tp.DependencyGraph, removals: Sequence[Removal], *, strict: bool = False
) -> int:
    """Prune the removals one group at a time (:func:`groups_in_order`); returns how many
    channels went.

    A group torch-pruning refuses (it would empty a layer) is skipped, or with
    ``strict=True`` raises :class:`RemovalFailed`, as does any error of the host's
    ``prune()`` then.
    """
    removed = 0
    for r, group in groups_in_order(graph, removals):
        if not graph.check_pruning_group(group):
            if strict:
                raise RemovalFailed(r, None)
            continue
        if strict:
            try:
                group.prune()
            except Exception as error:
                raise RemovalFailed(r, error) from error
        else:
            group.prune()
        removed += len(r.idxs)
    return removed


def apply_removals(graph: tp.DependencyGraph, removals: Sequence[Removal]) -> int:
    """Prune every removal the host accepts, in order; returns the number of channels
    removed (:func:`prune_in_order`)."""
    return prune_in_order(graph, removals)


def remove_small_groups(
    graph: tp.DependencyGraph,
    groups: Sequence[tp.Group],
    *,
    kinds: tuple[str, ...],
    limit: float,
) -> int:
    """Remove the channels whose weights of ``kinds`` have norm at most ``limit``.

    Groups without any supported weight tensor are left alone (nothing tells whether
    they are zero). Returns the number of channels removed.
    """
    plan = []
    for group in groups:
        built = WeightGroups.from_groups(graph, [group], kinds=kinds)
        if not built.entries:
            continue
        norms = group_norms(built.sq_norms())
        removal = removal_of(group, norms <= limit, norms)
        if removal is not None:
            plan.append(removal)
    return apply_removals(graph, validated(graph, plan))


# ---------------------------------------------------------------------- grouped convs
def channel_blocks(graph: tp.DependencyGraph, group: tp.Group) -> int:
    """Into how many equal, contiguous blocks the group's root channels fall.

    Every layer of the group whose pruner reports channel groups (a grouped conv, a
    GroupNorm) contributes its number of groups, as torch-pruning's own pruners detect
    them; depthwise convs are skipped, as there. The blocks are the least common
    multiple (torch-pruning takes the largest, which is the same for the usual powers
    of two). A removal takes the same positions from every block.
    """
    blocks = 1
    for item in group:
        layer = item.dep.target.module
        if not isinstance(layer, nn.Module) or is_depthwise(layer):
            continue
        pruner = graph.get_pruner_of_module(layer)
        if pruner is None:
            continue
        if graph.is_out_channel_pruning_fn(item.dep.handler):
            count = pruner.get_out_channel_groups(layer)
        else:
            count = pruner.get_in_channel_groups(layer)
        if isinstance(count, int) and count > 1:
            blocks = math.lcm(blocks, count)
    return blocks


def blocks_line_up(group: tp.Group, blocks: int) -> bool:
    """Whether taking one position from every block removes, in each grouped conv of the
    group, the same local channels from each of its conv groups (what torch-pruning needs).

    True for the usual layouts (a conv feeding a grouped conv, a grouped conv's own
    outputs); false where, e.g., a concatenation places a grouped conv's groups across
    the root's blocks.
    """
    n = len(group[0].root_idxs)
    if blocks <= 1:
        return True
    if n % blocks:
        return False
    size = n // blocks
    position = {int(r): i for i, r in enumerate(group[0].root_idxs)}
    for item in group:
        layer = item.dep.target.module
        if not isinstance(layer, ConvNd) or layer.groups == 1:
            continue
        if is_depthwise(layer):
            continue
        out = bool(graph_of(group).is_out_channel_pruning_fn(item.dep.handler))
        per_group = (layer.out_channels if out else layer.in_channels) // layer.groups
        at = {
            position[int(r)]: int(i)
            for i, r in zip(item.idxs, item.root_idxs, strict=True)
            if int(r) in position
        }
        for j in range(size):
            taken = [at[b * size + j] for b in range(blocks) if b * size + j in at]
            if not taken:
                continue
            locals_by_group: dict[int, list[int]] = {g: [] for g in range(layer.groups)}
            for idx in taken:
                locals_by_group[idx // per_group].append(idx % per_group)
            first = sorted(locals_by_group[0])
            if any(sorted(v) != first for v in locals_by_group.values()):
                return False
    return True


def align_to_blocks(remove: torch.Tensor, blocks: int) -> torch.Tensor:
    """The root channels of ``remove`` whose position is chosen in every block; one
    position stays in every block when all would go (a layer is never emptied)."""
    if len(remove) % blocks:
        return torch.zeros_like(remove)
    per_position = remove.view(blocks, -1).all(0)
    if bool(per_position.all()):
        per_position[0] = False
    return per_position.repeat(blocks)
