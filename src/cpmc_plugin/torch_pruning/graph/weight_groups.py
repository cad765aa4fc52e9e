"""Out-in channel groups of a torch-pruning dependency graph, as index maps over weights.

Each root channel of each group gets a *slot*. Every weight tensor the groups
touch is viewed as cells ``[d0, d1]`` (its first two dimensions; kernels summed
into a cell) and each cell is mapped to the slot of its output channel (rows of
the producing conv/linear, biases, norm scale and shift) and to the slot of its
input channel (the consuming layers' slices). A weight of layer ``l+1`` thus
belongs to the group of its out-channel and to the group of its in-channel:
OICSR's out-in groups overlap, and coupled channels (residual adds,
concatenations, flatten into a Linear) share one slot.

All per-step work is a handful of tensor ops per weight tensor: no Python loop
over channels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from ...core.layers import AFFINE_TYPES
from ...core.torch_private import ConvNd
from ..host import module_name
from .group_stats import is_out_item
from .indexing import item_positions, root_lookup

__all__ = ["WeightGroups"]

_Kind = str  # "out" or "in"


@dataclass
class _Part:
    """Cells of one tensor that belong to groups through one kind of channel."""

    sel: torch.Tensor  # flat cell indices, each at most once
    dst: torch.Tensor  # the slot of each selected cell


@dataclass
class _Entry:
    module: nn.Module
    name: str
    tensor: torch.Tensor  # the parameter object the maps were built for
    cells: tuple[int, int]
    parts: list[_Part] = field(default_factory=list)

    def current(self) -> torch.Tensor:
        return getattr(self.module, self.name)

    def cell_view(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(self.cells[0], self.cells[1], -1)

    def on(self, device: torch.device) -> list[_Part]:
        if self.parts and self.parts[0].sel.device != device:
            self.parts = [_Part(p.sel.to(device), p.dst.to(device)) for p in self.parts]
        return self.parts


def _cells(tensor: torch.Tensor) -> tuple[int, int]:
    d0 = tensor.shape[0] if tensor.dim() else 1
    d1 = tensor.shape[1] if tensor.dim() > 1 else 1
    return int(d0), int(d1)


def _channel_of_cell(
    layer: nn.Module, tensor: torch.Tensor, kind: _Kind
) -> tuple[torch.Tensor, int] | None:
    """``(channel index of every cell [d0, d1], number of channels)`` for one kind."""
    d0, d1 = _cells(tensor)
    rows = torch.arange(d0)[:, None].expand(d0, d1)
    cols = torch.arange(d1)[None, :].expand(d0, d1)
    if tensor.dim() <= 1:  # bias, norm scale/shift: one cell per output channel
        return (rows, d0) if kind == "out" else None
    if isinstance(layer, ConvNd):
        if layer.transposed:  # [in, out/groups, k...]
            if layer.groups != 1:
                return None
            return (cols, d1) if kind == "out" else (rows, d0)
        if kind == "out":
            return rows, d0
        per_group_out = d0 // layer.groups
        return (rows // per_group_out) * d1 + cols, d1 * layer.groups
    if isinstance(layer, nn.Linear):
        return (rows, d0) if kind == "out" else (cols, d1)
    return None


def _tensors(layer: nn.Module, kind: _Kind) -> list[str] | None:
    """Names of the parameters of ``layer`` a channel of this kind owns (None: unsupported)."""
    own = [n for n in ("weight", "bias") if isinstance(getattr(layer, n, None), nn.Parameter)]
    if isinstance(layer, (ConvNd, nn.Linear)):
        return own if kind == "out" else ["weight"]
    if isinstance(layer, AFFINE_TYPES) and kind == "out":
        if isinstance(layer, nn.PReLU) and layer.weight.numel() == 1:
            return []
        return own
    return [] if not own else None


@dataclass
class WeightGroups:
    """Index maps from weight cells to group slots, and the squared group norms."""

    entries: list[_Entry]
    num_groups: int
    sizes: torch.Tensor  # weights per group
    channels: list[tuple[str, int]]  # (root layer name, root channel) of every slot
    unsupported: tuple[str, ...]
    starts: tuple[int, ...] = ()  # first slot of every dependency group

    @classmethod
    def from_groups(
        cls,
        graph: tp.DependencyGraph,
        groups: Iterable[tp.Group],
        kinds: tuple[_Kind, ...] = ("out", "in"),
    ) -> WeightGroups:
        """Slots for the root channels of ``groups``; ``kinds=("out",)`` keeps only the
        weights that produce a channel (filters, biases, norm scale/shift), so that
        every weight belongs to at most one group."""
        # per (tensor, kind): channel -> slot, filled group by group
        slots: dict[tuple[int, _Kind], torch.Tensor] = {}
        owners: dict[int, tuple[nn.Module, str, torch.Tensor]] = {}
        channels: list[tuple[str, int]] = []
        unsupported: set[str] = set()
        starts: list[int] = []
        offset = 0
        for group in groups:
            roots = torch.as_tensor(group[0].root_idxs, dtype=torch.long)
            if len(roots) == 0:
                continue
            starts.append(offset)
            lookup = root_lookup(group)
            for item in group:
                layer = item.dep.target.module
                if not isinstance(layer, nn.Module) or not item.idxs:
                    continue
                kind: _Kind = "out" if is_out_item(group, item.dep.handler) else "in"
                if kind not in kinds:
                    continue
                names = _tensors(layer, kind)
                if names is None:
                    unsupported.add(type(layer).__name__)
                    continue
                where = item_positions(lookup, item)
                idxs = torch.as_tensor(item.idxs, dtype=torch.long)[where >= 0]
                where = where[where >= 0] + offset  # roots outside this group: not its channels
                for name in names:
                    tensor = getattr(layer, name)
                    mapping = _channel_of_cell(layer, tensor, kind)
                    if mapping is None:
                        unsupported.add(type(layer).__name__)
                        continue
                    key = (id(tensor), kind)
                    if key not in slots:
                        slots[key] = torch.full((mapping[1],), -1, dtype=torch.long)
                        owners[id(tensor)] = (layer, name, tensor)
                    slots[key][idxs] = where
            name = module_name(graph, group[0].dep.target.module, "?")
            channels.extend((name, int(r)) for r in roots)
            offset += len(roots)

        entries: list[_Entry] = []
        sizes = torch.zeros(offset, dtype=torch.float64)
        for tensor_id, (layer, name, tensor) in owners.items():
            entry = _Entry(layer, name, tensor, _cells(tensor))
            cell_slots = {}
            for kind in ("out", "in"):
                channel_slots = slots.get((tensor_id, kind))
                if channel_slots is None:
                    continue
                mapping = _channel_of_cell(layer, tensor, kind)
                assert mapping is not None
                cell_slots[kind] = channel_slots[mapping[0]].flatten()
            if "out" in cell_slots and "in" in cell_slots:
                # a depthwise conv's cell is its own in- and out-channel: count it once
                same = cell_slots["in"] == cell_slots["out"]
                cell_slots["in"] = torch.where(same, -1, cell_slots["in"])
            per_cell = tensor.numel() // max(entry.cells[0] * entry.cells[1], 1)
            for flat in cell_slots.values():
                sel = torch.nonzero(flat >= 0).flatten()
                if len(sel):
                    entry.parts.append(_Part(sel, flat[sel]))
                    sizes.index_add_(
                        0, flat[sel], torch.full((len(sel),), float(per_cell)).double()
                    )
            if entry.parts:
                entries.append(entry)
        return cls(entries, offset, sizes, channels, tuple(sorted(unsupported)), tuple(starts))

    # ------------------------------------------------------------------ queries
    def is_stale(self) -> bool:
        """True when a tensor was replaced or reshaped (the model was pruned since)."""
        return any(
            e.current() is not e.tensor or e.current().shape != e.tensor.shape for e in self.entries
        )

    def segments(self) -> list[slice]:
        """The slots of every dependency group (one layer, or coupled layers)."""
        bounds = [*self.starts, self.num_groups]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]

    def device(self) -> torch.device:
        return self.entries[0].tensor.device

    def sq_norms(self, values: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``||W_g||_2^2`` per slot; differentiable when grad mode is on.

        ``values`` (one tensor per entry, shaped like its weight) replaces the weights.
        """
        tensors = values if values is not None else [e.tensor for e in self.entries]
        total = torch.zeros(self.num_groups, device=self.device(), dtype=torch.float32)
        for entry, tensor in zip(self.entries, tensors, strict=True):
            cell_sq = entry.cell_view(tensor).float().pow(2).sum(-1).flatten()
            for part in entry.on(tensor.device):
                total = total.index_add(0, part.dst, cell_sq[part.sel])
        return total

    def add_to_grad(self, coefficients: torch.Tensor) -> None:
        """``grad += c_g * W`` for every weight of every group ``g`` it belongs to."""
        for entry in self.entries:
            tensor = entry.tensor
            if not tensor.requires_grad:
                continue
            step = self._times(entry, tensor, coefficients, 0.0, additive=True)
            if tensor.grad is None:
                tensor.grad = step.to(tensor.dtype).clone()
            else:
                tensor.grad.add_(step.to(tensor.grad.dtype))

    def scaled(self, values: Sequence[torch.Tensor], factors: torch.Tensor) -> list[torch.Tensor]:
        """Each value times the factors of the groups its cell belongs to (1 outside groups)."""
        return [
            self._times(entry, value, factors, 1.0, additive=False)
            for entry, value in zip(self.entries, values, strict=True)
        ]

    def scale(self, factors: torch.Tensor) -> None:
        """Multiply every weight by the factors of the groups it belongs to, in place."""
        for entry in self.entries:
            tensor = entry.tensor
            tensor.data.copy_(self._times(entry, tensor.data, factors, 1.0, additive=False))

    @staticmethod
    def _times(
        entry: _Entry, value: torch.Tensor, per_slot: torch.Tensor, start: float, *, additive: bool
    ) -> torch.Tensor:
        """``value`` times a per-cell factor: the sum (or product) of its groups' ``per_slot``."""
        per_cell = torch.full(
            (entry.cells[0] * entry.cells[1],), start, device=value.device, dtype=per_slot.dtype
        )
        for part in entry.on(value.device):
            if additive:
                per_cell.index_add_(0, part.sel, per_slot[part.dst])
            else:
                per_cell[part.sel] *= per_slot[part.dst]
        scaled = entry.cell_view(value) * per_cell.view(*entry.cells, 1).to(value.dtype)
        return scaled.reshape(value.shape)
