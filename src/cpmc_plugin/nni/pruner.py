"""``CPMCPruner`` for NNI 3.0: CPMC scores, NNI's ``config_list`` and mask format."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from nni.compression.base.compressor import Pruner
from nni.compression.base.config import select_modules_by_config

from ..core.cpmc import validate_criterion_options
from ..core.presets import DEFAULT_ALPHA, DEFAULT_BETA
from ..torch_pruning.graph import build_graph, repair_concat_mappings
from ..torch_pruning.host import DependencyGraph, Group
from ..torch_pruning.importance import ROOT_TYPES, CPMCImportance
from ..torch_pruning.pruner import CPMCPruner as _TorchCPMCPruner
from ..torch_pruning.pruner import _fraction
from ..torch_pruning.removal import blocks_line_up, channel_blocks
from .config import check_config_list

__all__ = ["CPMCPruner"]

Masks = dict[str, dict[str, torch.Tensor]]
GLOBAL_KEY, DEPENDENCY_KEY = "global_group_id", "dependency_group_id"
#: per-channel norm layers whose affine the masks cover (their output is 0 where masked)
NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


@dataclass
class _Unit:
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


class CPMCPruner(Pruner):
    """CPMC channel pruning as an NNI 3.0 pruner.

    Scores come from :class:`cpmc_plugin.CPMCImportance` (the same code as the
    torch-pruning path) over the groups of torch-pruning's dependency graph, so
    channels a residual add or concatenation ties together get identical masks and
    the model can be physically shrunk with :func:`cpmc_plugin.nni.speedup`.

    ``config_list`` takes NNI's keys: ``op_types``/``op_names``/``op_names_re`` with
    ``exclude_op_names``/``exclude_op_types``, ``sparse_ratio`` (share of each layer's
    output channels to mask), ``max_sparse_ratio``/``min_sparse_ratio`` (per-layer
    bounds, honoured in global mode too), ``global_group_id`` (rank all channels of
    the layers sharing the id together, CPMC's global ranking) and
    ``dependency_group_id`` (layers sharing the id get one mask from their mean score).
    With ``flops_reduction`` the budget is a share of the model's MACs instead of
    ``sparse_ratio``: channels are ranked over all selected layers and removed until
    the MACs counted by ``tp.utils.count_ops_and_params`` fall by that share
    (``max_sparse_ratio`` still caps each layer). A channel tied to a layer the
    config does not select is never masked. ``granularity`` may be ``'out_channel'``
    (what CPMC masks) or ``'default'``; ``internal_metric_block=k`` splits a layer's
    output channels into ``k`` equal blocks that are scored together (mean over the
    blocks) and lose the same positions, as a grouped conv needs. Grouped convs are
    detected by themselves (the channels they read or write lose the same positions
    in every conv group).

    The masks also cover the weight and bias of every BatchNorm (or affine
    InstanceNorm) at a masked channel (:attr:`norm_layers`; NNI wraps those layers
    too), so a masked channel outputs exactly 0 instead of its norm's shift, and the
    masked model is the model :func:`~cpmc_plugin.nni.speedup` makes physically smaller.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 4, 3))
        >>> config = [{"op_names": ["0", "2"], "sparse_ratio": 0.5, "global_group_id": 1}]
        >>> pruner = CPMCPruner(net, config, example_inputs=torch.randn(1, 3, 16, 16))
        >>> _, masks = pruner.compress()
        >>> kept = {n: int(m["weight"].flatten(1).any(1).sum()) for n, m in masks.items()}
        >>> sum(kept.values())  # half of the 16 filters, ranked across both layers
        8
    """

    def __init__(
        self,
        model: nn.Module,
        config_list: list[dict[str, Any]],
        *,
        example_inputs: Any,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        p: float = 1,
        normalizer: str | None = "max-min",
        weight_dependency: bool = True,
        flops_reduction: float | None = None,
        evaluator: Any = None,
        existed_wrappers: Any = None,
    ) -> None:
        validate_criterion_options(alpha=alpha, beta=beta, p=p, normalizer=normalizer)
        self.flops_reduction = (
            None if flops_reduction is None else _fraction("flops_reduction", flops_reduction)
        )
        check_config_list(config_list, budget_given=self.flops_reduction is not None)
        known = {name for name, _ in model.named_modules()}
        for config in config_list:
            missing = [n for n in config.get("op_names", []) if n not in known]
            if missing:
                raise ValueError(
                    f"config_list selects no layer named {', '.join(missing)}: the model has "
                    "no such module (names as in model.named_modules())"
                )
        if example_inputs is None:
            raise ValueError("example_inputs is required: CPMC traces the model with it")
        self.example_inputs = example_inputs
        self.importance = CPMCImportance(
            example_inputs,
            alpha=alpha,
            beta=beta,
            p=p,
            normalizer=normalizer,
            weight_dependency=weight_dependency,
        )
        _check_selection(model, config_list)
        graph = build_graph(model, example_inputs)
        repair_concat_mappings(graph)
        #: the norm layers whose weight and bias the masks cover (NNI wraps them too)
        self.norm_layers = _norms_in_groups(model, graph)
        internal = (
            [{"op_names": list(self.norm_layers), "target_names": ["weight", "bias"]}]
            if self.norm_layers
            else []
        )
        try:
            super().__init__(model, [*config_list, *internal], evaluator, existed_wrappers)
        except Exception as error:  # NNI validates before it wraps anything
            raise ValueError(f"NNI rejected config_list: {error}") from error
        try:
            with self._unwrapped():
                self._selected = self._selected_layers()
                self._graph = graph
                self._units = self._build_units()
                if self.flops_reduction is None:
                    self._check_reachable()
        except Exception:
            self.unwrap_model()  # leave the model exactly as it was given
            raise

    # ------------------------------------------------------------------ setup
    @contextmanager
    def _unwrapped(self) -> Iterator[None]:
        wrapped = self._is_wrapped
        if wrapped:
            self.unwrap_model()
        try:
            yield
        finally:
            if wrapped:
                self.wrap_model()

    def _selected_layers(self) -> dict[str, nn.Module]:
        selected: dict[str, nn.Module] = {}
        for name in self._target_spaces:
            if name in self.norm_layers:
                continue
            module: nn.Module = self.bound_model.get_submodule(name)
            if not isinstance(module, ROOT_TYPES):
                raise ValueError(
                    f"config_list selects {name} ({type(module).__name__}); CPMCPruner masks "
                    "output channels of Conv and Linear layers only"
                )
            if "weight" not in self._target_spaces[name]:
                raise ValueError(f"config_list must target the weight of {name}")
            selected[name] = module
        if not selected:
            raise ValueError("config_list selects no layer of the model")
        return selected

    def _setting(self, name: str) -> dict[str, Any]:
        space = self._target_spaces[name]["weight"]
        return {
            "sparse_ratio": space.sparse_ratio,
            "max_ratio": space.max_sparse_ratio,
            "min_ratio": space.min_sparse_ratio,
            "global_id": space.global_group_id,
            "dependency_id": space.dependency_group_id,
            "block": space.internal_metric_block,
        }

    def _blocks_fit(self, unit: _Unit) -> bool:
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
            stacklevel=4,  # past _build_units and __init__, to the caller
        )
        return False

    def _build_units(self) -> list[_Unit]:
        names = {id(m): n for n, m in self._selected.items()}
        ignored = [
            m
            for m in self.bound_model.modules()
            if isinstance(m, ROOT_TYPES) and id(m) not in names
        ]
        by_dependency: dict[Any, _Unit] = {}
        units: list[_Unit] = []
        for group in self._graph.get_all_groups(
            ignored_layers=ignored, root_module_types=ROOT_TYPES
        ):
            producers = [
                names[id(item.dep.target.module)]
                for item in group
                if self._graph.is_out_channel_pruning_fn(item.dep.handler)
                and id(item.dep.target.module) in names
            ]
            settings = [self._setting(n) for n in producers]
            blocks = channel_blocks(self._graph, group)
            for setting in settings:
                blocks = math.lcm(blocks, setting["block"] or 1)
            unit = _Unit(
                groups=[group],
                producers=producers,
                size=len(group[0].idxs),
                sparse_ratio=min(s["sparse_ratio"] or 0.0 for s in settings),
                max_ratio=min(1.0 if s["max_ratio"] is None else s["max_ratio"] for s in settings),
                min_ratio=max(s["min_ratio"] or 0.0 for s in settings),
                global_id=_one_of(producers, [s["global_id"] for s in settings], "global_group_id"),
                blocks=blocks,
            )
            dependency = _one_of(
                producers, [s["dependency_id"] for s in settings], "dependency_group_id"
            )
            if dependency is None:
                units.append(unit)
            elif dependency not in by_dependency:
                by_dependency[dependency] = unit
                units.append(unit)
            else:
                _merge(by_dependency[dependency], unit, dependency)
        fitting = []
        for unit in units:  # a plain loop: the warning's stacklevel counts these frames
            if self._blocks_fit(unit):
                fitting.append(unit)
        return fitting

    def _bounds(self, unit: _Unit) -> tuple[int, int]:
        """How many positions (channels per block) the unit loses at least and at most."""
        n = unit.positions
        top = min(math.floor(unit.max_ratio * n + 1e-9), n - 1)
        return min(math.ceil(unit.min_ratio * n - 1e-9), top), top

    def _pools(self) -> dict[Any, list[int]]:
        pools: dict[Any, list[int]] = defaultdict(list)
        for i, unit in enumerate(self._units):
            key = ("global", unit.global_id) if unit.global_id is not None else ("layer", i)
            pools[key].append(i)
        return pools

    def _pool_count(self, members: list[int]) -> int:
        ratios = {self._units[i].sparse_ratio for i in members}
        if len(ratios) > 1:
            layers = ", ".join(n for i in members for n in self._units[i].producers)
            raise ValueError(
                f"layers sharing a global_group_id need one sparse_ratio; {layers} have "
                f"{sorted(ratios)}"
            )
        total = sum(self._units[i].size for i in members)
        return math.floor(ratios.pop() * total + 1e-9)

    def _check_reachable(self) -> None:
        for members in self._pools().values():
            count = self._pool_count(members)
            high = sum(self._bounds(self._units[i])[1] * self._units[i].blocks for i in members)
            if count > high:
                layers = ", ".join(n for i in members for n in self._units[i].producers)
                raise ValueError(
                    f"sparse_ratio cannot be met for {layers}: max_sparse_ratio (and keeping "
                    f"one channel per layer) allow {high} of the {count} channels asked for"
                )

    # ------------------------------------------------------------------ NNI hooks
    def _collect_data(self) -> dict[str, dict[str, torch.Tensor]]:
        """CPMC scores per unit, on the unwrapped model's current weights."""
        with self._unwrapped(), torch.no_grad():
            groups = [g for unit in self._units for g in unit.groups]
            self.importance.prepare(self._graph, groups, keep=True)
            scores = {}
            for i, unit in enumerate(self._units):
                scores[str(i)] = torch.stack([self.importance(g) for g in unit.groups]).mean(0)
        return {"units": scores}

    def _calculate_metrics(self, data: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
        """The score of every output channel of every selected layer (NNI's metric format)."""
        metrics: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        for i, unit in enumerate(self._units):
            score = data["units"][str(i)]
            for group in unit.groups:
                for name, idxs, roots in self._producer_items(group):
                    weight = self._selected[name].weight
                    assert isinstance(weight, torch.Tensor)
                    out = torch.zeros(weight.shape[0])
                    out[idxs] = score[roots]
                    metrics[name]["weight"] = out
        return {"channel_scores": metrics, "unit_scores": data["units"]}

    def _generate_sparsity(self, metrics: dict[str, Any]) -> Masks:
        if self.flops_reduction is not None:
            removed = self._plan_flops()
        else:
            unit_scores = metrics["unit_scores"]
            removed = {}
            for members in self._pools().values():
                units = [self._units[i] for i in members]
                bounds = [self._bounds(u) for u in units]
                per_position = [
                    unit_scores[str(i)].view(u.blocks, -1).mean(0)
                    for i, u in zip(members, units, strict=True)
                ]
                picked = _remove_lowest_positions(
                    per_position,
                    [u.blocks for u in units],
                    self._pool_count(members),
                    [b[0] for b in bounds],
                    [b[1] for b in bounds],
                )
                for i, unit, positions in zip(members, units, picked, strict=True):
                    offsets = torch.arange(unit.blocks) * unit.positions
                    removed[i] = (positions[None, :] + offsets[:, None]).flatten().sort().values
        return self._masks(removed)

    def _plan_flops(self) -> dict[int, torch.Tensor]:
        """Positions to remove per unit so that the model's MACs fall by ``flops_reduction``."""
        assert self.flops_reduction is not None
        with self._unwrapped():
            caps: dict[nn.Module, float] = {
                self._selected[n]: u.max_ratio for u in self._units for n in u.producers
            }
            bound: nn.Module = self.bound_model
            ignored = [m for m in bound.modules() if isinstance(m, ROOT_TYPES) and m not in caps]
            blocks = {self._selected[n]: u.blocks for u in self._units for n in u.producers}
            planner = _TorchCPMCPruner(
                self.bound_model,
                self.example_inputs,
                importance=self.importance,
                flops_reduction=self.flops_reduction,
                ignored_layers=ignored,
                max_pruning_ratio=1.0,
                pruning_ratio_dict=caps,  # NNI's per-layer max_sparse_ratio
                out_channel_groups={m: b for m, b in blocks.items() if b > 1},
            )
            actions = planner._plan(1)
        unit_of = {id(self._selected[n]): i for i, u in enumerate(self._units) for n in u.producers}
        removed: dict[int, torch.Tensor] = {}
        for module, _, idxs in actions:
            i = unit_of[id(module)]
            root = self._units[i].groups[0][0]
            position = {int(r): k for k, r in enumerate(root.root_idxs)}
            removed[i] = torch.tensor(sorted(position[r] for r in idxs))
        return removed

    def _producer_items(
        self, group: Group, layers: dict[str, nn.Module] | None = None
    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(layer name, its channel indices, positions in the group)`` of the group's
        out-channel items on ``layers`` (default: the selected producers)."""
        chosen = self._selected if layers is None else layers
        names = {id(m): n for n, m in chosen.items()}
        position = {int(r): k for k, r in enumerate(group[0].root_idxs)}
        for item in group:
            module = item.dep.target.module
            if id(module) in names and self._graph.is_out_channel_pruning_fn(item.dep.handler):
                pairs = [
                    (int(i), position[int(r)])
                    for i, r in zip(item.idxs, item.root_idxs, strict=True)
                    if int(r) in position
                ]
                if pairs:
                    idxs, roots = zip(*pairs, strict=True)
                    yield names[id(module)], torch.tensor(idxs), torch.tensor(roots)

    def _masks(self, removed: dict[int, torch.Tensor]) -> Masks:
        masks: Masks = {}
        for name, targets in self._target_spaces.items():
            masks[name] = {
                t: torch.ones_like(space.target)
                for t, space in targets.items()
                if isinstance(space.target, torch.Tensor)
            }
        for i, positions in removed.items():
            drop = torch.zeros(self._units[i].size, dtype=torch.bool)
            drop[positions] = True
            for group in self._units[i].groups:
                items = [
                    *self._producer_items(group),
                    *self._producer_items(group, self.norm_layers),
                ]
                for name, idxs, roots in items:
                    channels = idxs[drop[roots]]
                    for mask in masks[name].values():
                        mask[channels] = 0  # weight rows (dim 0), biases, norm scale and shift
        return masks

    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        if max_steps is not None or max_epochs is not None:
            raise ValueError("CPMCPruner prunes a trained model once; it takes no training steps")
        self.update_masks(self.generate_masks())

    def _fuse_preprocess(self, evaluator: Any) -> None:
        raise ValueError("CPMCPruner cannot be fused with other compressors")

    def _fuse_postprocess(self, evaluator: Any) -> None:
        raise ValueError("CPMCPruner cannot be fused with other compressors")

    def compress(
        self, max_steps: int | None = None, max_epochs: int | None = None
    ) -> tuple[nn.Module, Masks]:
        """Compute the masks and apply them through NNI's wrappers: ``(model, masks)``."""
        model, masks = super().compress(max_steps, max_epochs)
        return model, masks


def _one_of(layers: list[str], values: list[Any], key: str) -> Any:
    distinct = set(values)
    if len(distinct) > 1:
        raise ValueError(
            f"coupled layers {', '.join(layers)} (their channels are tied, e.g. by a residual "
            f"add) have different {key} values {sorted(map(str, distinct))}; give them one"
        )
    return values[0] if values else None


def _merge(into: _Unit, unit: _Unit, dependency: Any) -> None:
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


def _remove_lowest_positions(
    scores: Sequence[torch.Tensor],
    weights: Sequence[int],
    count: int,
    min_remove: Sequence[int],
    max_remove: Sequence[int],
) -> list[torch.Tensor]:
    """Remove positions, the lowest-scored across units, worth at most ``count`` channels.

    A position of unit ``i`` removes ``weights[i]`` channels (one from each of its
    blocks). Unit ``i`` loses at least ``min_remove[i]`` and at most ``max_remove[i]``
    positions: its lowest go first, then the globally lowest of the remaining candidates
    while they fit into ``count``. With every weight 1 this is
    :func:`cpmc_plugin.core.budget.remove_lowest`. Returns the removed positions per unit, sorted.

    Example:
        >>> a, b = torch.tensor([0.1, 0.9, 0.2]), torch.tensor([0.05, 0.3])
        >>> [r.tolist() for r in _remove_lowest_positions([a, b], [1, 4], 5, [0, 0], [2, 1])]
        [[0], [0]]
    """
    orders = [torch.argsort(s.double(), stable=True) for s in scores]
    taken = list(min_remove)
    removed = sum(n * w for n, w in zip(taken, weights, strict=True))
    if removed > count:
        raise ValueError(
            f"cannot remove {count} channels: min_sparse_ratio alone removes {removed}"
        )
    values, owners = [], []
    for i, (s, o, lo, hi) in enumerate(zip(scores, orders, min_remove, max_remove, strict=True)):
        values.append(s.double()[o[lo:hi]])
        owners.append(torch.full((max(hi - lo, 0),), i, dtype=torch.long))
    if values:
        joined, owner = torch.cat(values), torch.cat(owners)
        for k in torch.argsort(joined, stable=True).tolist():
            if removed >= count:
                break
            i = int(owner[k])
            if removed + weights[i] <= count:  # each unit's candidates ascend: its lowest go first
                taken[i] += 1
                removed += weights[i]
    return [torch.sort(o[:n]).values for o, n in zip(orders, taken, strict=True)]


def _check_selection(model: nn.Module, config_list: list[dict[str, Any]]) -> None:
    """Refuse a config that selects layers CPMC cannot mask (before NNI wraps anything)."""
    for config in config_list:
        try:
            modules = select_modules_by_config(model, config)[0]
        except Exception as error:
            raise ValueError(f"NNI rejected config_list: {error}") from error
        for name, module in modules.items():
            if not isinstance(module, ROOT_TYPES):
                raise ValueError(
                    f"config_list selects {name} ({type(module).__name__}); CPMCPruner masks "
                    "output channels of Conv and Linear layers only"
                )


def _norms_in_groups(model: nn.Module, graph: DependencyGraph) -> dict[str, nn.Module]:
    """The affine per-channel norm layers whose channels some conv/linear group owns."""
    found: set[nn.Module] = set()
    for group in graph.get_all_groups(root_module_types=ROOT_TYPES):
        for item in group:
            module = item.dep.target.module
            norm = isinstance(module, nn.modules.batchnorm._NormBase) and isinstance(
                module, NORM_TYPES
            )
            if norm and module.affine and graph.is_out_channel_pruning_fn(item.dep.handler):
                found.add(module)
    return {name: module for name, module in model.named_modules() if module in found}
