"""``CPMCPruner``: torch-pruning's pruner with an exact FLOPs or parameter budget."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils._pytree import tree_map
from tqdm.auto import tqdm

from ._cost_model import GroupUnits, build_cost_model, map_calls
from ._probe import positions_by_module, record_calls
from .budget import UnreachableBudgetError, lowest_cost, plan_removal
from .importance import CPMCImportance, _shape_signature
from .report import LayerChannels, PruneReport

__all__ = ["CPMCPruner"]

#: host options that keep their meaning under a budget; the others are refused
HOST_OPTIONS = frozenset(
    {
        "customized_pruners",
        "unwrapped_parameters",
        "root_module_types",
        "forward_fn",
        "output_transform",
        "in_channel_groups",
        "out_channel_groups",
    }
)
TOLERANCE = 0.005  # 0.5 percentage points


@dataclass(frozen=True)
class _Counts:
    macs: float
    params: float
    layer_macs: dict[nn.Module, float]
    layer_params: dict[nn.Module, float]


def _meta_twin(model: nn.Module, example_inputs: Any) -> tuple[nn.Module, Any]:
    """A copy of ``model`` and its inputs on the meta device: shapes only, no data copied."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        twin = tensor.detach().to("meta")
        if isinstance(tensor, nn.Parameter):
            twin = nn.Parameter(twin, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = twin
    inputs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, example_inputs)
    return copy.deepcopy(model, memo), inputs


def _count(model: nn.Module, example_inputs: Any) -> _Counts:
    """``tp.utils.count_ops_and_params`` of ``model``, layer by layer.

    The host counter deep-copies the model and runs it; running it on a meta-device
    twin gives the same counts without copying weights or computing anything.
    Models that cannot run on the meta device are counted as they are.
    """
    try:
        twin, inputs = _meta_twin(model, example_inputs)
        macs, params, twin_macs, twin_params = tp.utils.count_ops_and_params(
            twin, inputs, layer_wise=True
        )
        pairs = list(zip(model.modules(), twin.modules(), strict=True))
        layer_macs = {m: twin_macs.get(t) for m, t in pairs}
        layer_params = {m: twin_params.get(t) for m, t in pairs}
    except Exception:
        macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
            model, example_inputs, layer_wise=True
        )
    # per-layer MACs are summed over the batch while the total is per sample
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    batch_total = sum(float(layer_macs.get(m) or 0.0) for m in leaves)
    scale = float(macs) / batch_total if batch_total > 0 else 1.0
    per_sample = {m: float(v or 0.0) * scale for m, v in layer_macs.items()}
    return _Counts(float(macs), float(params), per_sample, dict(layer_params))


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, 1), got {value!r}")
    if not math.isfinite(value) or not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1) (a fraction to remove), got {value}")
    return float(value)


def _resolve_budget(flops: Any, params: Any) -> tuple[str, float]:
    if flops is not None and params is not None:
        raise ValueError(
            "give exactly one of flops_reduction and params_reduction, not both "
            f"(got flops_reduction={flops}, params_reduction={params})"
        )
    if params is not None:
        return "params", _fraction("params_reduction", params)
    return "macs", _fraction("flops_reduction", 0.5 if flops is None else flops)


def _check_finite(model: nn.Module) -> None:
    # a NaN or Inf makes the sum non-finite; only then look element by element
    bad = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_floating_point()
        and not torch.isfinite(tensor.detach().sum())
        and not torch.isfinite(tensor).all()
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"the model has non-finite (NaN or Inf) values in {shown}")


class CPMCPruner(tp.pruner.BasePruner):
    """Rank all channels of the model globally and prune to an exact FLOPs or parameter budget.

    ``step()``, ``step(interactive=True)`` and ``pruning_history()`` behave as in
    torch-pruning. After the last of ``iterative_steps`` even steps the MACs (or
    parameters) counted by ``tp.utils.count_ops_and_params`` are reduced by the target
    within 0.5 percentage points (or within one channel's cost on tiny models).
    ``max_pruning_ratio`` is a hard cap per layer, relative to its initial channels,
    and no layer is ever emptied. Any torch-pruning importance can be plugged in;
    the default is :class:`~cpmc_plugin.CPMCImportance`.

    Args:
        model: the network to prune in place.
        example_inputs: inputs for tracing and for counting MACs.
        importance: a ``tp.importance.Importance`` (default: CPMC).
        flops_reduction: fraction of MACs to remove, in (0, 1). Default 0.5.
        params_reduction: fraction of parameters to remove instead, in (0, 1).
        iterative_steps: reach the budget in this many even steps.
        ignored_layers: layers whose output channels are never pruned (e.g. the classifier).
        max_pruning_ratio: at most this fraction of any layer's channels goes, in (0, 1].
        round_to: keep channel counts multiples of this.
        finetune_fn: called as ``finetune_fn(model, step)`` after every non-interactive
            ``step()``: global greedy iterative pruning (prune a little, fine-tune, repeat).
        **host_options: passed to torch-pruning (``customized_pruners``,
            ``unwrapped_parameters``, ``root_module_types``, ``forward_fn``,
            ``output_transform``, ``in_channel_groups``, ``out_channel_groups``).

    Raises:
        ValueError: bad options, a budget the cap makes unreachable, non-finite
            weights, or example inputs the model cannot run. Nothing is changed then.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(16, 16, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(16, 4, 3))
        >>> pruner = CPMCPruner(net, torch.randn(1, 3, 32, 32), flops_reduction=0.5,
        ...                     ignored_layers=[net[4]])
        >>> pruner.step()
        >>> round(pruner.report().macs_reduction, 2) >= 0.5
        True
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Any = None,
        *,
        flops_reduction: float | None = None,
        params_reduction: float | None = None,
        iterative_steps: int = 1,
        ignored_layers: Sequence[nn.Module] | None = None,
        max_pruning_ratio: float = 0.9,
        round_to: int | None = None,
        finetune_fn: Callable[[nn.Module, int], Any] | None = None,
        **host_options: Any,
    ) -> None:
        unknown = sorted(set(host_options) - HOST_OPTIONS)
        if unknown:
            raise TypeError(
                f"CPMCPruner does not take {', '.join(unknown)}; the budget replaces "
                "pruning ratios. Host options it passes on: " + ", ".join(sorted(HOST_OPTIONS))
            )
        self.metric, self.reduction = _resolve_budget(flops_reduction, params_reduction)
        if isinstance(iterative_steps, bool) or not isinstance(iterative_steps, int):
            raise TypeError(f"iterative_steps must be an int >= 1, got {iterative_steps!r}")
        if iterative_steps < 1:
            raise ValueError(f"iterative_steps must be an int >= 1, got {iterative_steps}")
        if isinstance(max_pruning_ratio, bool) or not isinstance(max_pruning_ratio, (int, float)):
            raise TypeError(
                f"max_pruning_ratio must be a number in (0, 1], got {max_pruning_ratio!r}"
            )
        if not 0 < max_pruning_ratio <= 1:
            raise ValueError(f"max_pruning_ratio must be in (0, 1], got {max_pruning_ratio}")
        if round_to is not None and (
            isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1
        ):
            raise ValueError(f"round_to must be None or an int >= 1, got {round_to!r}")
        if finetune_fn is not None and not callable(finetune_fn):
            raise TypeError(
                f"finetune_fn must be callable as finetune_fn(model, step), got {finetune_fn!r}"
            )
        if importance is None:
            importance = CPMCImportance(example_inputs)
        if not callable(importance):
            raise TypeError(
                f"importance must be a torch-pruning Importance, got {type(importance).__name__}"
            )
        _check_finite(model)

        was_training = model.training
        try:
            with record_calls(model) as calls:
                super().__init__(
                    model,
                    example_inputs,
                    importance=importance,
                    global_pruning=True,
                    max_pruning_ratio=max_pruning_ratio,
                    iterative_steps=iterative_steps,
                    ignored_layers=list(ignored_layers) if ignored_layers is not None else None,
                    round_to=round_to,
                    **host_options,
                )
            initial = _count(model, example_inputs)
        except Exception as error:
            raise ValueError(
                f"example_inputs cannot run through the model: {type(error).__name__}: {error}"
            ) from error
        finally:
            model.train(was_training)

        self.example_inputs = example_inputs
        self.finetune_fn = finetune_fn
        self._units_cache: tuple[Any, list[GroupUnits]] | None = None
        self._granularity = 0.0
        self._model_cache: tuple[Any, Any] | None = None
        self._sites = map_calls(self.DG, calls)
        self._positions = positions_by_module(calls)
        self._initial = initial
        self._latest: _Counts | None = initial  # None: pruned since the last count
        self._pruned_step = 0
        self._initial_layers = [
            (name, type(m).__name__, self.DG.get_out_channels(m))
            for name, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m in self.DG.module2node
        ]
        if isinstance(importance, CPMCImportance):
            importance._ignored = self.ignored_layers
        self._check_reachable()

    # ------------------------------------------------------------------ stepping
    def step(self, interactive: bool = False) -> Generator[tp.Group, None, None] | None:
        """Prune one of the ``iterative_steps`` (then call ``finetune_fn``, if given).

        With ``interactive=True`` the groups are yielded for the caller to prune, as in
        torch-pruning, and ``finetune_fn`` is left to the caller.
        """
        if interactive:
            return super().step(interactive=True)
        before = self.current_step
        super().step()
        pruned = before < self.current_step <= self.iterative_steps
        if self.finetune_fn is not None and pruned:
            self.finetune_fn(self.model, self.current_step)
        return None

    def prune(self, progress: bool = False) -> PruneReport:
        """Run the remaining steps (each followed by ``finetune_fn``) and report.

        Global greedy iterative pruning: every step removes the globally least
        important channels worth ``reduction / iterative_steps`` of the budget,
        measured on the model as the previous fine-tune left it.
        """
        remaining = range(self.current_step, self.iterative_steps)
        for _ in tqdm(remaining, desc="pruning", unit="step", disable=not progress):
            self.step()
        return self.report()

    # ------------------------------------------------------------------ budget
    def target_cost(self, step: int | None = None) -> float:
        """MACs (or parameters) the model should have after ``step`` (default: the last)."""
        step = self.iterative_steps if step is None else step
        initial = self._initial.macs if self.metric == "macs" else self._initial.params
        return initial * (1.0 - self.reduction * step / self.iterative_steps)

    def _units(self) -> list[GroupUnits]:
        signature = _shape_signature(self.model)
        if self._units_cache is not None and self._units_cache[0] == signature:
            return self._units_cache[1]
        units = []
        for group in self.DG.get_all_groups(
            ignored_layers=self.ignored_layers, root_module_types=self.root_module_types
        ):
            n = len(group[0].idxs)
            ch_groups = self._get_channel_groups(group)
            if ch_groups < 1 or n % ch_groups:
                ch_groups = 1
            units.append(GroupUnits(group=group, ch_groups=ch_groups, size=n // ch_groups))
        self._units_cache = (signature, units)
        return units

    def _max_ratio(self, module: nn.Module) -> float:
        """The most of ``module``'s initial channels that may go (one cap for all here)."""
        return float(self.max_pruning_ratio)

    def _floor(self, unit: GroupUnits) -> int:
        module = unit.group[0].dep.target.module
        initial = self.layer_init_out_ch.get(module) or len(unit.group[0].idxs)
        cap = self._max_ratio(module)
        floor = max(1, math.ceil(initial / unit.ch_groups * (1 - cap) - 1e-9))
        if self.round_to:
            floor = math.ceil(floor / self.round_to) * self.round_to
        return min(floor, unit.size)

    @property
    def _current(self) -> _Counts:
        """Counts of the model as it is now (counted again only after a step)."""
        if self._latest is None:
            self._latest = _count(self.model, self.example_inputs)
            self._warn_if_off_target(self._latest)
        return self._latest

    def _cost_model(self, units: list[GroupUnits]) -> Any:
        key = (_shape_signature(self.model), tuple(id(u.group) for u in units))
        if self._model_cache is not None and self._model_cache[0] == key:
            return self._model_cache[1]
        counts = self._current
        layer = counts.layer_macs if self.metric == "macs" else counts.layer_params
        total = counts.macs if self.metric == "macs" else counts.params
        model = build_cost_model(self.DG, units, self._sites, layer, total, self.metric)
        self._model_cache = (key, model)
        return model

    def _check_reachable(self) -> None:
        units = self._units()
        model = self._cost_model(units)
        scores = [torch.zeros(u.size) for u in units]
        groups = model.channel_groups(
            units, scores, [self._floor(u) for u in units], self._rounding
        )
        best = lowest_cost(groups, dim_sizes=model.dim_sizes, terms=model.terms)
        if best > self.target_cost():
            raise self._unreachable(best)

    @property
    def _rounding(self) -> int:
        return int(self.round_to) if self.round_to else 1

    def _unreachable(self, best_cost: float) -> ValueError:
        initial = self._initial.macs if self.metric == "macs" else self._initial.params
        best = 1.0 - best_cost / initial
        name = "flops_reduction" if self.metric == "macs" else "params_reduction"
        return ValueError(
            f"{name}={self.reduction} cannot be met under max_pruning_ratio="
            f"{self.max_pruning_ratio}: at most {100 * best:.2f} % is reachable "
            "(raise max_pruning_ratio, remove ignored layers, or lower the budget)"
        )

    # ------------------------------------------------------------------ scoring
    def _score(self, units: list[GroupUnits]) -> tuple[list[GroupUnits], list[torch.Tensor]]:
        if isinstance(self.importance, CPMCImportance):
            self.importance.prepare(self.DG, [u.group for u in units], self._positions, keep=True)
        kept, scores = [], []
        for unit in units:
            imp = self.estimate_importance(unit.group)
            if imp is None:
                continue
            imp = torch.as_tensor(imp).detach().float().cpu().flatten()
            if len(imp) != unit.size * unit.ch_groups:
                raise ValueError(
                    f"the importance returned {len(imp)} scores for a group of "
                    f"{unit.size * unit.ch_groups} channels"
                )
            if not torch.isfinite(imp).all():
                raise ValueError(
                    "the importance gave non-finite scores for the group of "
                    f"{self.DG._module2name.get(unit.group[0].dep.target.module, '?')}"
                )
            kept.append(unit)
            scores.append(imp.view(unit.ch_groups, unit.size).mean(0))
        return kept, scores

    # ------------------------------------------------------------------ pruning
    @torch.no_grad()
    def _prune(self) -> Generator[tp.Group, None, None]:
        if self.current_step > self.iterative_steps:
            warnings.warn(
                f"CPMCPruner: all {self.iterative_steps} steps are done; step() prunes nothing",
                stacklevel=3,
            )
            return
        try:
            plan = self._plan(self.current_step)
        except Exception:
            self.current_step -= 1  # nothing was pruned: the step did not happen
            raise
        for module, fn, idxs in plan:
            # groups are made one at a time, after the previous ones were pruned, so that
            # index mappings through concatenations are current (as torch-pruning does)
            group = self.DG.get_pruning_group(module, fn, idxs)
            if not self.DG.check_pruning_group(group):
                raise RuntimeError(f"internal error: the plan would empty a layer ({group})")
            yield group
            self._latest = None  # counted when next needed: report() or the next step
            self._pruned_step = self.current_step

    def _plan(self, step: int) -> list[tuple[nn.Module, Any, list[int]]]:
        units, scores = self._score(self._units())
        model = self._cost_model(units)
        floors = [self._floor(u) for u in units]
        groups = model.channel_groups(units, scores, floors, self._rounding)
        try:
            plan = plan_removal(
                groups,
                dim_sizes=model.dim_sizes,
                terms=model.terms,
                target_cost=self.target_cost(step),
            )
        except UnreachableBudgetError as error:
            raise self._unreachable(error.best_cost) from None
        self._granularity = plan.granularity
        actions = []
        for unit, removed, floor in zip(units, plan.removed, floors, strict=True):
            if len(removed) == 0:
                continue
            if unit.size - len(removed) < floor:
                raise RuntimeError("internal error: the plan breaks a per-layer floor")
            offsets = torch.arange(unit.ch_groups) * unit.size
            positions = (removed[:, None] + offsets[None, :]).flatten()
            roots = torch.as_tensor(unit.group[0].root_idxs)[positions]
            root = unit.group[0].dep
            actions.append((root.target.module, root.handler, sorted(roots.tolist())))
        return actions

    def _warn_if_off_target(self, counts: _Counts) -> None:
        initial = self._initial.macs if self.metric == "macs" else self._initial.params
        now = counts.macs if self.metric == "macs" else counts.params
        target = self.target_cost(self._pruned_step)
        if abs(now - target) > max(TOLERANCE * initial, self._granularity):
            warnings.warn(
                f"CPMCPruner: step {self._pruned_step} left {now:.6g} {self.metric} against "
                f"a target of {target:.6g} ({100 * abs(now - target) / initial:.2f} pp off); "
                "were all groups of step(interactive=True) pruned? Otherwise a layer type "
                "whose cost the planner cannot scale may be involved",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ report
    def report(self) -> PruneReport:
        """Parameters, MACs and channels per layer, before pruning and now."""
        modules = dict(self.model.named_modules())
        layers = []
        for name, kind, before in self._initial_layers:
            module = modules.get(name)
            after = self.DG.get_out_channels(module) if module is not None else 0
            layers.append(LayerChannels(name=name, kind=kind, before=int(before), after=int(after)))
        return PruneReport(
            params_before=int(self._initial.params),
            params_after=int(self._current.params),
            macs_before=int(self._initial.macs),
            macs_after=int(self._current.macs),
            layers=tuple(layers),
        )
