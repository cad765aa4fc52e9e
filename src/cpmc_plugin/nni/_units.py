"""The NNI pruner's units: the channels it masks together, their bounds and ranking pools.

A unit is a torch-pruning group over the selected conv/linear layers (or several
groups that NNI's ``dependency_group_id`` ties together). Its per-layer NNI settings
are merged here (the strictest bound wins), and the checks that refuse a
``config_list`` CPMC cannot honour live here too.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from nni.compression.base.config import select_modules_by_config

from ..core.layers import NORM_TYPES, ROOT_TYPES
from ..core.torch_private import NormBase
from ..torch_pruning.graph.removal import blocks_line_up, channel_blocks
from ..torch_pruning.host import DependencyGraph, Group

__all__ = [
    "Setting",
    "Unit",
    "blocks_fit",
    "bounds",
    "build_units",
    "check_selection",
    "norms_in_groups",
    "pool_count",
    "pools",
    "refuse_non_root",
]

#: one selected layer's NNI settings: sparse_ratio, max_ratio, min_ratio, global_id,
#: dependency_id, block (``None`` where the config leaves a key out)
Setting = dict[str, Any]


@dataclass
class Unit:
    """Channels pruned together: a torch-pruning group, or several tied by a dependency id."""

    groups: list[Group]
    producers: list[str]  # selected conv/linear layers whose output channels these are
    size: int
    sparse_ratio: float
    max_ratio: float
    min_ratio: float
    global_id: Any
    blocks: int = 1  # equal blocks of channels that lose the same positions (grouped convs)

    @property
    def positions(self) -> int:
        """Channels per block: what the scores rank and the bounds count."""
        return self.size // self.blocks


def refuse_non_root(name: str, module: nn.Module) -> None:
    """Raise ``ValueError`` unless ``module`` is a layer whose output channels CPMC masks."""
    if not isinstance(module, ROOT_TYPES):
        raise ValueError(
            f"config_list selects {name} ({type(module).__name__}); CPMCPruner masks "
            "output channels of Conv and Linear layers only"
        )


def check_selection(model: nn.Module, config_list: list[dict[str, Any]]) -> None:
    """Refuse a config that selects layers CPMC cannot mask (before NNI wraps anything)."""
    for config in config_list:
        try:
            modules = select_modules_by_config(model, config)[0]
        except Exception as error:
            raise ValueError(f"NNI rejected config_list: {error}") from error
        for name, module in modules.items():
            refuse_non_root(name, module)


def norms_in_groups(model: nn.Module, graph: DependencyGraph) -> dict[str, nn.Module]:
    """The affine per-channel norm layers whose channels some conv/linear group owns."""
    found: set[nn.Module] = set()
    for group in graph.get_all_groups(root_module_types=ROOT_TYPES):
        for item in group:
            module = item.dep.target.module
            norm = isinstance(module, NormBase) and isinstance(module, NORM_TYPES)
            if norm and module.affine and graph.is_out_channel_pruning_fn(item.dep.handler):
                found.add(module)
    return {name: module for name, module in model.named_modules() if module in found}


def _one_of(layers: list[str], values: list[Any], key: str) -> Any:
    distinct = set(values)
    if len(distinct) > 1:
        raise ValueError(
            f"coupled layers {', '.join(layers)} (their channels are tied, e.g. by a residual "
            f"add) have different {key} values {sorted(map(str, distinct))}; give them one"
        )
    return values[0] if values else None


def _merge(into: Unit, unit: Unit, dependency: Any) -> None:
    if unit.size != into.size:
        raise ValueError(
            f"layers with dependency_group_id {dependency!r} must have the same number of "
            f"output channels: {', '.join(into.producers)} have {into.size}, "
            f"{', '.join(unit.producers)} have {unit.size}"
        )
    into.groups.extend(unit.groups)
    into.producers.extend(unit.producers)
    into.blocks = math.lcm(into.blocks, unit.blocks)
    into.sparse_ratio = min(into.sparse_ratio, unit.sparse_ratio)
    into.max_ratio = min(into.max_ratio, unit.max_ratio)
    into.min_ratio = max(into.min_ratio, unit.min_ratio)
    into.global_id = _one_of(into.producers, [into.global_id, unit.global_id], "global_group_id")


def blocks_fit(unit: Unit) -> bool:
    """Whether the unit's channels split into its blocks the way its grouped convs need;
    a unit whose channels cannot (a concatenation across a grouped conv's groups) is
    left whole, with a warning."""
    names = ", ".join(unit.producers)
    if unit.size % unit.blocks:
        raise ValueError(
            f"{names}: {unit.size} output channels do not split into {unit.blocks} equal "
            "blocks (internal_metric_block, or the groups of a grouped conv they feed)"
        )
    if all(blocks_line_up(group, unit.blocks) for group in unit.groups):
        return True
    warnings.warn(
        f"CPMCPruner leaves {names} whole: a grouped conv reads their channels in an order "
        "that does not split into its groups, so no removal keeps the conv's groups intact",
        stacklevel=4,  # past build_units and CPMCPruner.__init__, to the caller
    )
    return False


def build_units(
    model: nn.Module,
    selected: dict[str, nn.Module],
    graph: DependencyGraph,
    setting: Callable[[str], Setting],
) -> list[Unit]:
    """One unit per conv/linear group that a selected layer produces, dependency ids merged.

    Only the selected layers count: the others are ignored layers of the graph, so a
    channel tied to one of them is never masked. Call it straight from
    ``CPMCPruner.__init__``: :func:`blocks_fit`'s warning counts the frames.
    """
    names = {id(m): n for n, m in selected.items()}
    ignored = [m for m in model.modules() if isinstance(m, ROOT_TYPES) and id(m) not in names]
    by_dependency: dict[Any, Unit] = {}
    units: list[Unit] = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
        producers = [
            names[id(item.dep.target.module)]
            for item in group
            if graph.is_out_channel_pruning_fn(item.dep.handler)
            and id(item.dep.target.module) in names
        ]
        settings = [setting(n) for n in producers]
        blocks = channel_blocks(graph, group)
        for s in settings:
            blocks = math.lcm(blocks, s["block"] or 1)
        unit = Unit(
            groups=[group],
            producers=producers,
            size=len(group[0].idxs),
            sparse_ratio=min(s["sparse_ratio"] or 0.0 for s in settings),
            max_ratio=min(1.0 if s["max_ratio"] is None else s["max_ratio"] for s in settings),
            min_ratio=max(s["min_ratio"] or 0.0 for s in settings),
            global_id=_one_of(producers, [s["global_id"] for s in settings], "global_group_id"),
            blocks=blocks,
        )
        dependencies = [s["dependency_id"] for s in settings]
        dependency = _one_of(producers, dependencies, "dependency_group_id")
        if dependency is None:
            units.append(unit)
        elif dependency not in by_dependency:
            by_dependency[dependency] = unit
            units.append(unit)
        else:
            _merge(by_dependency[dependency], unit, dependency)
    fitting = []
    for unit in units:  # a plain loop: the warning's stacklevel counts these frames
        if blocks_fit(unit):
            fitting.append(unit)
    return fitting


def bounds(unit: Unit) -> tuple[int, int]:
    """How many positions (channels per block) the unit loses at least and at most."""
    n = unit.positions
    top = min(math.floor(unit.max_ratio * n + 1e-9), n - 1)
    return min(math.ceil(unit.min_ratio * n - 1e-9), top), top


def pools(units: Sequence[Unit]) -> dict[Any, list[int]]:
    """The indices of the units ranked together: one pool per ``global_group_id``, else per unit."""
    found: dict[Any, list[int]] = defaultdict(list)
    for i, unit in enumerate(units):
        key = ("global", unit.global_id) if unit.global_id is not None else ("layer", i)
        found[key].append(i)
    return found


def pool_count(units: Sequence[Unit], members: list[int]) -> int:
    """How many channels the pool ``members`` loses: its one ``sparse_ratio`` of its channels."""
    ratios = {units[i].sparse_ratio for i in members}
    if len(ratios) > 1:
        layers = ", ".join(n for i in members for n in units[i].producers)
        raise ValueError(
            f"layers sharing a global_group_id need one sparse_ratio; {layers} have "
            f"{sorted(ratios)}"
        )
    total = sum(units[i].size for i in members)
    return math.floor(ratios.pop() * total + 1e-9)
