"""CPMC as a torch-pruning importance (works in ``tp.pruner.MetaPruner`` and ``CPMCPruner``)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ..core.activity import ChannelActivity, collect_activity
from ..core.atomic import shape_signature
from ..core.cpmc import (
    COMBINES,
    COSTS,
    combine_criteria,
    normalize,
    validate_criterion_options,
)
from ..core.layers import ROOT_TYPES
from ..core.presets import DEFAULT_ALPHA, DEFAULT_BETA, get_preset
from ..core.probe import probe_positions
from ..core.validate import flag, function, integer, one_of
from .calibration.report import CalibrationReport
from .graph.group_stats import GroupStats, group_stats
from .host import graph_of, module_name

__all__ = ["CPMCImportance", "RankingScope"]


@dataclass(frozen=True)
class RankingScope:
    """The channels one ranking compares: CPMC's P_max and F_max run over these groups.

    Attributes:
        groups: the groups that will be scored (the prunable scope).
        positions: feature-map size per module; ``None``: measured when ``beta > 0``.
        ignored_layers: left out when the scope is rebuilt lazily (a call on a group
            outside ``groups``, or after the model's shapes changed).
        metric: the budgeted cost, ``"macs"`` or ``"params"``: what a ``"per-cost"``
            importance divides by when its own ``cost`` is ``None``.
    """

    groups: tuple[tp.Group, ...]
    positions: Mapping[nn.Module, int] | None = None
    ignored_layers: tuple[nn.Module, ...] = ()
    metric: str | None = None


@dataclass
class _ModelContext:
    """What CPMC needs beyond one group: feature-map sizes and the global maxima."""

    graph_id: int
    signature: tuple[tuple[int, ...], ...]
    positions: dict[nn.Module, int] | None
    params_max: float
    macs_max: float


class CPMCImportance(tp.importance.Importance):
    """Channel importance of CPMC: weight value with weight dependency, parameters and FLOPs.

    For every channel of a group, ``E = (sum ||W_out||_p^p + sum ||W_in||_p^p) / k``
    over the layers that own and consume it (``k``: the layers a residual add ties
    together, so tied channels score the mean), normalized within the group, then
    ``I = E_hat + alpha * (1 - P/P_max) + beta * (1 - F/F_max)`` where P and F are
    the parameters and MACs removing the channel saves and the maxima run over all
    prunable channels of the model. Scores are comparable across layers, so the
    importance works with ``global_pruning=True``. With ``combine="per-cost"`` the
    score is ``E_hat / (C/C_max)`` instead, C being the budgeted cost (MACs, or
    parameters under a parameter budget): the weight value each channel gives per unit
    of what it costs. :func:`~cpmc_plugin.calibrate_importance` picks these options
    from data.

    Args:
        example_inputs: inputs to measure feature-map sizes (needed when ``beta > 0``
            unless :class:`~cpmc_plugin.CPMCPruner` supplies them).
        alpha: weight of the parameter criterion (>= 0). Default: 0.1 with
            ``combine="additive"``, 0 with ``"per-cost"`` (which takes no cost weights).
        beta: weight of the FLOPs criterion (>= 0). Default: 0.5, or 0 with ``"per-cost"``.
        p: norm degree of the weight value (1: L1, as in the paper).
        normalizer: ``"max-min"`` (paper), ``"l2"``, ``"max"`` or ``None``.
        weight_dependency: ``False`` scores out-channel weights and costs only (CPMC-A).
        combine: ``"additive"`` (eq. 7) or ``"per-cost"`` (weight value per unit of cost).
        cost: what ``"per-cost"`` divides by: ``"macs"``, ``"params"``, or ``None`` to
            follow the budget of :class:`~cpmc_plugin.CPMCPruner` (MACs elsewhere).
        data: calibration batches, ``(inputs, targets)`` (or inputs alone without the
            Taylor term), e.g. a training ``DataLoader``: data-aware CPMC. The first
            ``data_batches`` are kept and measured with hooks in one pass, on the model
            itself, again whenever its shapes changed (after each prune). With
            ``activation_weighted`` the weight value is measured in function space:
            ``E = sum ||W_out||_p^p rms(out)^p + sum ||W_in||_p^p rms(in)^p``, each weight
            times the scale of the activation it acts on (the channel's output, and the
            input each consumer reads, after BatchNorm and the nonlinearity).
        data_batches: how many batches of ``data`` to keep (>= 1).
        gamma: weight of the first-order loss term (>= 0; needs ``data`` with targets):
            ``T = sum |w * dL/dw|`` over the channel's weights, normalized per layer as E
            is: ``I = E_hat + gamma * T_hat + alpha * (1 - P/P_max) + beta * (1 - F/F_max)``.
        activation_weighted: ``False`` keeps the data-blind E (then ``data`` serves the
            Taylor term only).
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss for the Taylor term (default:
            cross entropy over the logits, ``outputs.logits`` for Hugging Face models).

    Example:
        >>> import torch, torch_pruning as tp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 4, 3))
        >>> x = torch.randn(1, 3, 16, 16)
        >>> pruner = tp.pruner.MetaPruner(net, x, importance=CPMCImportance(example_inputs=x),
        ...                               global_pruning=True, pruning_ratio=0.5,
        ...                               ignored_layers=[net[2]])
        >>> pruner.step()
        >>> net[0].out_channels
        4
    """

    def __init__(
        self,
        example_inputs: Any = None,
        *,
        alpha: float | None = None,
        beta: float | None = None,
        p: float = 1,
        normalizer: str | None = "max-min",
        weight_dependency: bool = True,
        combine: str = "additive",
        cost: str | None = None,
        data: Iterable[Any] | None = None,
        data_batches: int = 8,
        gamma: float = 0.0,
        activation_weighted: bool = True,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    ) -> None:
        one_of("combine", combine, COMBINES)
        additive = combine == "additive"
        alpha = (DEFAULT_ALPHA if additive else 0.0) if alpha is None else alpha
        beta = (DEFAULT_BETA if additive else 0.0) if beta is None else beta
        validate_criterion_options(
            alpha=alpha, beta=beta, p=p, normalizer=normalizer, combine=combine, gamma=gamma
        )
        batches = _data_batches(data, data_batches, gamma, activation_weighted, loss_fn)
        if cost is not None:
            one_of("cost", cost, COSTS)
        flag("weight_dependency", weight_dependency)
        self.example_inputs = example_inputs
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.p = p
        self.normalizer = normalizer
        self.weight_dependency = weight_dependency
        self.combine = combine
        self.cost = cost
        self.gamma = float(gamma)
        self.activation_weighted = activation_weighted
        self.loss_fn = loss_fn
        self.data_batches = data_batches
        #: the calibration batches the data-aware terms are measured on (``None``: none)
        self.data = batches
        self._activity: tuple[Any, ChannelActivity] | None = None  # (shapes, activity)
        self._scope_metric: str | None = None  # the budget set_scope named
        self._context: _ModelContext | None = None
        self._scope_ignored: tuple[nn.Module, ...] = ()  # set only by set_scope
        self._warned: set[str] = set()
        self._kept_stats: dict[int, GroupStats] = {}
        # (group id, positions id) -> statistics, shared by importances that differ only
        # in how they combine them (calibration scores the channels once)
        self._shared_stats: dict[tuple[Any, ...], GroupStats] | None = None
        #: the report of the calibration that chose these options (``None`` if none did)
        self.calibration: CalibrationReport | None = None

    def share_statistics(self, cache: dict[tuple[Any, ...], GroupStats]) -> None:
        """Read channel statistics from ``cache`` and store new ones in it.

        Importances that differ only in how they combine the same statistics (the
        candidates of a calibration) then compute them once. Give every one the same
        ``cache`` (an empty dict at first) and keep the model unchanged while it is used.
        """
        if not isinstance(cache, dict):
            raise TypeError(f"cache must be a dict, got {type(cache).__name__}")
        self._shared_stats = cache

    @classmethod
    def preset(cls, family: str, example_inputs: Any = None, **overrides: Any) -> CPMCImportance:
        """CPMC with the alpha/beta measured for ``family``: "vgg", "resnet" or "densenet"."""
        chosen = get_preset(family)
        options: dict[str, Any] = {"alpha": chosen.alpha, "beta": chosen.beta, **overrides}
        return cls(example_inputs, **options)

    def __repr__(self) -> str:
        extra = f", combine={self.combine!r}" if self.combine != "additive" else ""
        extra += f", cost={self.cost!r}" if self.cost is not None else ""
        if self.data is not None:
            extra += f", data={len(self.data)} batches, gamma={self.gamma}"
            extra += "" if self.activation_weighted else ", activation_weighted=False"
        return (
            f"CPMCImportance(alpha={self.alpha}, beta={self.beta}, p={self.p}, "
            f"normalizer={self.normalizer!r}, weight_dependency={self.weight_dependency}"
            f"{extra})"
        )

    def options(self) -> dict[str, Any]:
        """The options that define the ranking (``CPMCImportance(x, **imp.options())``)."""
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "p": self.p,
            "normalizer": self.normalizer,
            "weight_dependency": self.weight_dependency,
            "combine": self.combine,
            "cost": self.cost,
            "data": self.data,
            "data_batches": self.data_batches,
            "gamma": self.gamma,
            "activation_weighted": self.activation_weighted,
            "loss_fn": self.loss_fn,
        }

    @property
    def budget_cost(self) -> str:
        """What a ``"per-cost"`` score divides by: ``cost``, else the pruner's budget."""
        return self.cost or self._scope_metric or "macs"

    # ------------------------------------------------------------------ context
    def set_scope(self, graph: tp.DependencyGraph, scope: RankingScope) -> None:
        """Rank the next calls against ``scope``.

        The maxima P_max and F_max run over its groups, and each of its groups is scored
        once from the statistics computed here. A call on another group, or after the
        model's shapes changed, rebuilds the scope from every conv/linear group of the
        graph outside ``scope.ignored_layers``. :class:`~cpmc_plugin.CPMCPruner` calls
        this before every ranking with the groups it ranks and the feature-map sizes it
        measured; without a call, the scope is every conv/linear group of the graph.

        Raises:
            TypeError: ``scope`` is not a :class:`RankingScope`.
        """
        if not isinstance(scope, RankingScope):
            raise TypeError(f"scope must be a RankingScope, got {type(scope).__name__}")
        self._scope_ignored = tuple(scope.ignored_layers)
        if scope.metric is not None:
            one_of("scope.metric", scope.metric, COSTS)
        self._scope_metric = scope.metric
        positions = None if scope.positions is None else dict(scope.positions)
        self._prepare(graph, scope.groups, positions, keep=True)

    def _prepare(
        self,
        graph: tp.DependencyGraph,
        groups: Iterable[tp.Group],
        positions: dict[nn.Module, int] | None,
        keep: bool,
    ) -> None:
        """The maxima over ``groups``; with ``keep``, their statistics for one scoring."""
        if positions is None and self._needs_positions():
            positions = self._measure(graph.model)
        self._observe(graph)
        params_max = macs_max = 0.0
        self._kept_stats = {}
        for group in groups:
            stats = self._stats(group, positions)
            if keep:
                self._kept_stats[id(group)] = stats
            params, macs = self._costs(stats)
            if len(params):
                params_max = max(params_max, float(params.max()))
                macs_max = max(macs_max, float(macs.max()))
        self._context = _ModelContext(
            graph_id=id(graph),
            signature=shape_signature(graph.model),
            positions=positions,
            params_max=params_max,
            macs_max=macs_max,
        )

    def _observe(self, graph: tp.DependencyGraph) -> None:
        """Measure the data-aware terms on the model as it is now (again after a prune)."""
        if self.data is None:
            return
        shapes = shape_signature(graph.model)
        if self._activity is not None and self._activity[0] == shapes:
            return
        modules = [m for m in graph.module2node if isinstance(m, nn.Module)]
        activity = collect_activity(
            graph.model,
            self.data,
            modules=modules,
            batches=len(self.data),
            gradients=self.gamma > 0,
            loss_fn=self.loss_fn,
        )
        self._activity = (shapes, activity)

    def _stats(self, group: tp.Group, positions: dict[nn.Module, int] | None) -> GroupStats:
        activity = self._activity[1] if self._activity is not None else None
        shared = self._shared_stats
        if shared is None:
            return group_stats(group, positions, self.p, activity)
        where = None if positions is None else tuple((id(m), n) for m, n in positions.items())
        key = (id(group), self.p, where, id(activity))
        if key not in shared:
            shared[key] = group_stats(group, positions, self.p, activity)
        return shared[key]

    def _needs_positions(self) -> bool:
        return self.beta > 0 or (self.combine == "per-cost" and self.budget_cost == "macs")

    def _measure(self, model: nn.Module) -> dict[nn.Module, int]:
        if self.example_inputs is None:
            raise ValueError(
                "CPMCImportance needs example_inputs to measure feature-map sizes for the "
                "FLOPs criterion (beta > 0): pass example_inputs=... or set beta=0"
            )
        return probe_positions(model, self.example_inputs)

    def _ensure_context(self, graph: tp.DependencyGraph) -> _ModelContext:
        context = self._context
        if (
            context is None
            or context.graph_id != id(graph)
            or context.signature != shape_signature(graph.model)
        ):
            scope = graph.get_all_groups(
                ignored_layers=list(self._scope_ignored), root_module_types=ROOT_TYPES
            )
            self._prepare(graph, scope, None, False)
            context = self._context
            assert context is not None
        return context

    # ------------------------------------------------------------------ scoring
    def _costs(self, stats: GroupStats) -> tuple[torch.Tensor, torch.Tensor]:
        if self.weight_dependency:
            return stats.out_params + stats.in_params, stats.out_macs + stats.in_macs
        return stats.out_params, stats.out_macs

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        graph = graph_of(group)
        kept = self._kept_stats.pop(id(group), None)  # prepared for this very group just now
        context = self._context if kept is not None else None
        if context is None:
            context = self._ensure_context(graph)
        stats = kept or self._stats(group, context.positions)
        for name in stats.unsupported:
            if name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"CPMCImportance: weights of {name} layers are not scored (unsupported "
                    "layer type); their channels are still ranked by the other layers",
                    stacklevel=2,
                )
        value = self._sides(stats.out_value, stats.in_value, stats.producers)
        if self.activation_weighted and stats.out_data is not None and stats.in_data is not None:
            value = self._sides(stats.out_data, stats.in_data, stats.producers)
        taylor = None
        if self.gamma and stats.out_taylor is not None and stats.in_taylor is not None:
            taylor = self._sides(stats.out_taylor, stats.in_taylor, stats.producers)
        for found in (value, taylor):
            if found is not None and not torch.isfinite(found).all():
                measured = " (or activations or gradients measured on data)" if self.data else ""
                raise ValueError(
                    f"non-finite (NaN or Inf) weights in the group of {_layer_names(graph, group)}"
                    f"{measured}; fix the weights before pruning"
                )
        params, macs = self._costs(stats)
        score = combine_criteria(
            normalize(value, self.normalizer),
            params,
            macs,
            params_max=context.params_max,
            macs_max=context.macs_max,
            alpha=self.alpha,
            beta=self.beta,
            combine=self.combine,
            cost=self.budget_cost,
            taylor=None if taylor is None else normalize(taylor, self.normalizer),
            gamma=self.gamma,
        )
        return score.float()

    def _sides(self, out: torch.Tensor, into: torch.Tensor, producers: int) -> torch.Tensor:
        """The out-channel part (and, with weight dependency, the in-channel part) of a
        value, averaged over the layers a residual add ties together."""
        return (out + into if self.weight_dependency else out) / max(producers, 1)


def _layer_names(graph: tp.DependencyGraph, group: Sequence[Any]) -> str:
    names = []
    for item in group:
        module = item.dep.target.module
        name = module_name(graph, module, "")
        if name and name not in names:
            names.append(name)
    return ", ".join(names) or "<unnamed>"


def _data_batches(
    data: Iterable[Any] | None,
    count: Any,
    gamma: float,
    activation_weighted: Any,
    loss_fn: Any,
) -> list[Any] | None:
    """The first ``count`` batches of ``data``, kept: every measurement (again after each
    prune) sees the same batches. Refuses data-aware options that cannot take effect."""
    integer("data_batches", count, minimum=1)
    flag("activation_weighted", activation_weighted)
    if loss_fn is not None:
        function("loss_fn", loss_fn, call="loss_fn(outputs, targets)")
    if data is None:
        if gamma:
            raise ValueError(
                f"gamma={gamma} weighs the Taylor term, which is measured on data: pass "
                "data=... (calibration batches), or gamma=0"
            )
        if loss_fn is not None:
            raise ValueError("loss_fn scores the Taylor term on data: pass data=... too")
        return None
    if isinstance(data, (str, bytes, torch.Tensor)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be an iterable of (inputs, targets) batches (e.g. a DataLoader), "
            f"got {type(data).__name__}"
        )
    if not activation_weighted and not gamma:
        raise ValueError(
            "data is given but nothing uses it: keep activation_weighted=True, or set "
            "gamma > 0 for the Taylor term"
        )
    batches = list(itertools.islice(data, count))
    if not batches:
        raise ValueError("data gave no batch: pass at least one (inputs, targets) batch")
    return batches
