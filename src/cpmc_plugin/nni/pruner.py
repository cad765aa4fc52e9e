"""``CPMCPruner`` for NNI 3.0: CPMC scores, NNI's ``config_list`` and mask format."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from nni.compression.base.compressor import Pruner

from ..core.budget import remove_lowest
from ..core.layers import ROOT_TYPES
from ..core.validate import fraction
from ..torch_pruning.cost.attention import attention_modules
from ..torch_pruning.graph.build import build_graph
from ..torch_pruning.graph.concat import repair_concat_mappings
from ..torch_pruning.graph.indexing import item_positions, positions_in, root_lookup
from ..torch_pruning.host import Group
from ..torch_pruning.importance import CPMCImportance, RankingScope
from ..torch_pruning.oneshot import plan_budget
from ._units import (
    Setting,
    bounds,
    build_units,
    check_selection,
    norms_in_groups,
    pool_count,
    pools,
    refuse_non_root,
)
from .config import check_config_list

__all__ = ["CPMCPruner"]

Masks = dict[str, dict[str, torch.Tensor]]
GLOBAL_KEY, DEPENDENCY_KEY = "global_group_id", "dependency_group_id"


class CPMCPruner(Pruner):
    """CPMC channel pruning as an NNI 3.0 pruner.

    Scores come from :class:`cpmc_plugin.CPMCImportance` (the same code as the
    torch-pruning path) over the groups of torch-pruning's dependency graph, so
    channels a residual add or concatenation ties together get identical masks and
    the model can be physically shrunk with :func:`cpmc_plugin.nni.speedup`.
    ``alpha``, ``beta``, ``p``, ``normalizer``, ``weight_dependency`` and ``combine``
    are :class:`~cpmc_plugin.CPMCImportance`'s options, with its defaults, and so are
    the data-aware ones (``data``, ``data_batches``, ``gamma``, ``activation_weighted``,
    ``loss_fn``: docs/methods.md, "Data-aware CPMC").

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
        alpha: float | None = None,
        beta: float | None = None,
        p: float = 1,
        normalizer: str | None = "max-min",
        weight_dependency: bool = True,
        combine: str = "additive",
        flops_reduction: float | None = None,
        evaluator: Any = None,
        existed_wrappers: Any = None,
        data: Iterable[Any] | None = None,
        data_batches: int = 8,
        gamma: float = 0.0,
        activation_weighted: bool = True,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    ) -> None:
        # the criterion's options, checked (and their defaults resolved) by CPMC's importance
        self.importance = CPMCImportance(
            example_inputs,
            alpha=alpha,
            beta=beta,
            p=p,
            normalizer=normalizer,
            weight_dependency=weight_dependency,
            combine=combine,
            data=data,
            data_batches=data_batches,
            gamma=gamma,
            activation_weighted=activation_weighted,
            loss_fn=loss_fn,
        )
        self.flops_reduction = (
            None if flops_reduction is None else fraction("flops_reduction", flops_reduction)
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
        attention = attention_modules(model, example_inputs)
        if attention:
            shown = ", ".join(attention[:3]) + (" and more" if len(attention) > 3 else "")
            raise ValueError(
                f"the NNI pruner covers CNNs, and this model computes attention ({shown}): "
                "NNI 3.0's masks and speedup do not follow attention heads. Prune it with "
                "cpmc_plugin.CPMCPruner(model, x, flops_reduction=..., "
                "**cpmc_plugin.head_options(model)) instead"
            )
        self.example_inputs = example_inputs
        check_selection(model, config_list)
        graph = build_graph(model, example_inputs)
        repair_concat_mappings(graph)
        #: the norm layers whose weight and bias the masks cover (NNI wraps them too)
        self.norm_layers = norms_in_groups(model, graph)
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
                self._units = build_units(self.bound_model, self._selected, graph, self._setting)
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
            refuse_non_root(name, module)
            if "weight" not in self._target_spaces[name]:
                raise ValueError(f"config_list must target the weight of {name}")
            selected[name] = module
        if not selected:
            raise ValueError("config_list selects no layer of the model")
        return selected

    def _setting(self, name: str) -> Setting:
        space = self._target_spaces[name]["weight"]
        return {
            "sparse_ratio": space.sparse_ratio,
            "max_ratio": space.max_sparse_ratio,
            "min_ratio": space.min_sparse_ratio,
            "global_id": space.global_group_id,
            "dependency_id": space.dependency_group_id,
            "block": space.internal_metric_block,
        }

    def _check_reachable(self) -> None:
        for members in pools(self._units).values():
            count = pool_count(self._units, members)
            low = sum(bounds(self._units[i])[0] * self._units[i].blocks for i in members)
            high = sum(bounds(self._units[i])[1] * self._units[i].blocks for i in members)
            layers = ", ".join(n for i in members for n in self._units[i].producers)
            if low > count:
                raise ValueError(
                    f"sparse_ratio cannot be met for {layers}: min_sparse_ratio alone removes "
                    f"{low} channels, more than the {count} asked for"
                )
            if count > high:
                raise ValueError(
                    f"sparse_ratio cannot be met for {layers}: max_sparse_ratio (and keeping "
                    f"one channel per layer) allow {high} of the {count} channels asked for"
                )

    # ------------------------------------------------------------------ NNI hooks
    def _collect_data(self) -> dict[str, dict[str, torch.Tensor]]:
        """CPMC scores per unit, on the unwrapped model's current weights."""
        with self._unwrapped(), torch.no_grad():
            groups = tuple(g for unit in self._units for g in unit.groups)
            self.importance.set_scope(self._graph, RankingScope(groups))
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
            for members in pools(self._units).values():
                units = [self._units[i] for i in members]
                limits = [bounds(u) for u in units]
                per_position = [
                    unit_scores[str(i)].view(u.blocks, -1).mean(0)
                    for i, u in zip(members, units, strict=True)
                ]
                picked = remove_lowest(
                    per_position,
                    pool_count(self._units, members),
                    [b[0] for b in limits],
                    [b[1] for b in limits],
                    weights=[u.blocks for u in units],  # a position is one channel per block
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
            plan = plan_budget(
                self.bound_model,
                self.example_inputs,
                importance=self.importance,
                flops_reduction=self.flops_reduction,
                ignored_layers=ignored,
                max_pruning_ratio=1.0,
                pruning_ratio_dict=caps,  # NNI's per-layer max_sparse_ratio
                out_channel_groups={m: b for m, b in blocks.items() if b > 1},
            )
        unit_of = {id(self._selected[n]): i for i, u in enumerate(self._units) for n in u.producers}
        removed: dict[int, torch.Tensor] = {}
        for removal in plan.removals:  # root indices, read as positions of NNI's own group
            i = unit_of[id(removal.module)]
            where = positions_in(root_lookup(self._units[i].groups[0]), removal.idxs)
            removed[i] = torch.sort(where).values
        return removed

    def _producer_items(
        self, group: Group, layers: dict[str, nn.Module] | None = None
    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(layer name, its channel indices, positions in the group)`` of the group's
        out-channel items on ``layers`` (default: the selected producers)."""
        chosen = self._selected if layers is None else layers
        names = {id(m): n for n, m in chosen.items()}
        lookup = root_lookup(group)
        for item in group:
            module = item.dep.target.module
            if id(module) in names and self._graph.is_out_channel_pruning_fn(item.dep.handler):
                where = item_positions(lookup, item)
                inside = where >= 0
                if bool(inside.any()):
                    idxs = torch.as_tensor(item.idxs, dtype=torch.long).reshape(-1)
                    yield names[id(module)], idxs[inside], where[inside]

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
