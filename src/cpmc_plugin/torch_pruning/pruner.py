"""``CPMCPruner``: torch-pruning's pruner with an exact FLOPs or parameter budget.

The pruner runs the loop: it traces the model (with the host), steps (plan, apply,
check, count, correct against the count, or restore and refuse), yields groups
interactively and reports. What a step removes is the planner's
(:mod:`cpmc_plugin.torch_pruning.planning.planner`); counts and the cost model are the
meter's (:mod:`cpmc_plugin.torch_pruning.cost.meter`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from ..core.budget import UnreachableBudgetError
from ..core.layers import ROOT_TYPES
from ..core.probe import positions_by_module
from ..core.report import LayerChannels, PruneReport
from .applying import Applier
from .calibration.report import CalibrationReport
from .calibration.search import calibrate
from .cost.counting import Counts
from .cost.meter import Meter
from .cost.model import map_calls
from .options import read_options
from .planning.correction import next_planning_target
from .planning.plan import Plan
from .planning.planner import TOLERANCE, Planner
from .refusals import (
    Budget,
    missed_budget,
    off_target,
)
from .trace import tied_weights, trace_with_host

__all__ = ["CPMCPruner"]


#: how often a step re-plans against the measured count before it refuses
MAX_CORRECTIONS = 8


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
        output_layers: the layers that produce the model's output, never pruned either:
            added to ``ignored_layers``. :func:`~cpmc_plugin.head_options` names them
            here, so that ``ignored_layers=`` can be given beside ``**head_options(model)``.
        max_pruning_ratio: at most this fraction of any layer's channels goes, in (0, 1].
        round_to: keep channel counts multiples of this.
        finetune_fn: called as ``finetune_fn(model, step)`` after every non-interactive
            ``step()``: global greedy iterative pruning (prune a little, fine-tune, repeat).
        calibration_data: ``(inputs, targets)`` batches: choose CPMC's options for this
            budget from data (``cpmc-auto``, as :func:`~cpmc_plugin.calibrate_importance`);
            the winner becomes the importance and :attr:`calibration` its report.
        calibration_batches, calibration_loss_fn, calibration_finetune_steps,
            calibration_progress: ``calibrate_importance``'s ``batches``, ``loss_fn``,
            ``finetune_steps`` and ``progress``.
        num_heads: ``{projection: heads}`` of each attention layer, as for the host: heads
            become units of the budget (:func:`~cpmc_plugin.head_options` returns it).
        prune_num_heads: a head goes whole (the default with ``num_heads``); under
            grouped-query attention every key/value head keeps the same query heads.
        prune_head_dims: shrink every head instead (``nn.MultiheadAttention`` needs it).
        head_pruning_ratio: at most this fraction of a layer's heads goes (0: none).
        uniform_layers: lists of layers whose groups keep one width (one config).
        hidden_divisible_by_heads: keep the hidden width a multiple of the heads kept.
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

        CPMC's options chosen from data at the budget (``cpmc-auto``):

        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                           torch.nn.Linear(8, 2))
        >>> data = [(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1]))] * 2
        >>> pruner = CPMCPruner(net, torch.randn(1, 3, 16, 16), flops_reduction=0.3,
        ...                     ignored_layers=[net[4]], calibration_data=data)
        >>> len(pruner.calibration.candidates), type(pruner.importance).__name__
        (41, 'CPMCImportance')
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
        output_layers: Sequence[nn.Module] | None = None,
        max_pruning_ratio: float = 0.9,
        round_to: int | None = None,
        finetune_fn: Callable[[nn.Module, int], Any] | None = None,
        calibration_data: Iterable[Any] | None = None,
        calibration_batches: int = 8,
        calibration_loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        calibration_finetune_steps: int = 0,
        calibration_progress: bool = False,
        num_heads: Mapping[nn.Module, int] | None = None,
        prune_num_heads: bool | None = None,
        prune_head_dims: bool = False,
        head_pruning_ratio: float | None = None,
        uniform_layers: Sequence[Sequence[nn.Module]] | None = None,
        hidden_divisible_by_heads: bool = False,
        **host_options: Any,
    ) -> None:
        options = read_options(
            model,
            example_inputs,
            importance,
            flops_reduction=flops_reduction,
            params_reduction=params_reduction,
            iterative_steps=iterative_steps,
            ignored_layers=ignored_layers,
            output_layers=output_layers,
            max_pruning_ratio=max_pruning_ratio,
            round_to=round_to,
            finetune_fn=finetune_fn,
            calibration_data=calibration_data,
            calibration_batches=calibration_batches,
            calibration_loss_fn=calibration_loss_fn,
            calibration_finetune_steps=calibration_finetune_steps,
            calibration_progress=calibration_progress,
            heads=(
                num_heads,
                prune_num_heads,
                prune_head_dims,
                head_pruning_ratio,
                uniform_layers,
                hidden_divisible_by_heads,
            ),
            host_options=host_options,
        )
        self.metric, self.reduction = options.metric, options.reduction
        heads = options.heads

        def init_host() -> CPMCPruner:  # the host's own construction: it traces the model
            super(CPMCPruner, self).__init__(
                model,
                example_inputs,
                importance=options.importance,
                global_pruning=True,
                max_pruning_ratio=max_pruning_ratio,
                iterative_steps=iterative_steps,
                ignored_layers=options.ignored_layers,
                round_to=round_to,
                num_heads=dict(heads.num_heads),
                prune_num_heads=heads.prune_num_heads,
                prune_head_dims=heads.prune_head_dims,
                **options.host_options,
            )
            return self

        traced = trace_with_host(
            model, example_inputs, init_host, through_forward_fn="forward_fn" in host_options
        )
        self._signature, probe = traced.signature, traced.probe
        initial = probe.counts()
        self.example_inputs = example_inputs
        self.finetune_fn = finetune_fn
        self._tied_pairs = tied_weights(model, self.DG)
        self._granularity = 0.0  # the cost of the last unit the applied plan stopped at
        self._pruned_step = 0
        sites = map_calls(self.DG, traced.calls)
        # attention written as functions was seen in the first forward, or never will be:
        # later forwards skip recording it (it costs every op a Python call)
        self._meter = Meter(
            self.DG,
            example_inputs,
            metric=self.metric,
            sites=sites,
            initial=initial,
            probe=probe,
            attention=bool(initial.attention),
            on_count=self._warn_if_off_target,
        )
        self._applier = Applier(
            self,
            self.DG,
            example_inputs,
            self._signature,
            self._meter,
            tied_pairs=self._tied_pairs,
            head_dims={  # channels per head in each projection (3 x head_dim if packed)
                m: m.out_features // n
                for m, n in heads.num_heads.items()
                if isinstance(m, nn.Linear)
            },
        )
        #: the budget planner (units, floors, ties, scores, plans) of this pruner
        self.planner = Planner(
            self,
            heads=heads,
            caps=options.caps,
            sites=sites,
            positions=positions_by_module(probe.calls),  # the trace may see unbatched calls
            host_groups=traced.host_groups,
            channel_groups_of=self._get_channel_groups,
            cost_model=self._meter.cost_model,
            initial_cost=self._meter.cost(initial),
            tied_pairs=self._tied_pairs,
            isomorphic=options.isomorphic,
        )
        self._initial_layers = [
            (name, type(m).__name__, self.DG.get_out_channels(m))
            for name, m in model.named_modules()
            if isinstance(m, ROOT_TYPES) and m in self.DG.module2node
        ]
        self.planner.check_reachable(self.target_cost())
        #: the report of ``calibration_data``'s calibration (``None`` without it)
        self.calibration: CalibrationReport | None = None
        if calibration_data is not None:
            self.importance = calibrate(
                self,
                calibration_data,
                batches=calibration_batches,
                loss_fn=calibration_loss_fn,
                finetune_steps=calibration_finetune_steps,
                progress=calibration_progress,
            )
            self.calibration = self.importance.calibration

    # ------------------------------------------------------------------ stepping
    def step(self, interactive: bool = False) -> Generator[tp.Group, None, None] | None:
        """Prune one of the ``iterative_steps`` (then call ``finetune_fn``, if given).

        The step is all or nothing: the whole plan is made first, then applied, then
        the model is run on ``example_inputs`` and counted. If the count is off the
        target by more than the tolerance, the plan is corrected against the measured
        count; if the model no longer runs, changes its output shapes, or the budget
        cannot be met, the model is restored exactly and a ``ValueError`` says why.

        With ``interactive=True`` the groups are yielded for the caller to prune, as in
        torch-pruning, and ``finetune_fn`` is left to the caller. Once every group was
        yielded the model is checked the same way (the count only warns then, since
        the caller may skip groups).
        """
        if interactive:
            return super().step(interactive=True)
        if self.current_step >= self.iterative_steps:
            self.current_step += 1
            self._warn_done()
            return None
        self.current_step += 1
        try:
            self._apply_step(self.current_step)
        except BaseException:
            self.current_step -= 1  # the model was restored: the step did not happen
            raise
        if self.finetune_fn is not None:
            self.finetune_fn(self.model, self.current_step)
        return None

    def regularize(self, model: nn.Module | None = None, loss: Any = None, **_: Any) -> None:
        """Nothing to do: CPMC ranks trained weights and adds no sparsity penalty.

        Accepts the host's call (``pruner.regularize(model)`` after ``loss.backward()``,
        as for ``GroupNormPruner``) so that training loops written for the host run
        unchanged. For sparse training before pruning use
        :func:`~cpmc_plugin.make_regularizer` (OICSR, BN-FISTA, SSR).
        """
        return None

    def update_regularizer(self) -> None:
        """Nothing to do (see :meth:`regularize`)."""
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
        initial = self._meter.cost(self._meter.initial)
        return initial * (1.0 - self.reduction * step / self.iterative_steps)

    @property
    def tolerance(self) -> float:
        """How far (in MACs or parameters) a step may land from its target: 0.5 % of the
        initial cost, or the cost of the last unit the applied plan stopped at."""
        return max(TOLERANCE * self._meter.cost(self._meter.initial), self._granularity)

    @property
    def initial_counts(self) -> Counts:
        """MACs (per sample) and parameters before pruning, with each layer's share."""
        return self._meter.initial

    def counts(self) -> Counts:
        """MACs (per sample) and parameters of the model now, as torch-pruning counts them."""
        return self._meter.current()

    def plan(self, step: int | None = None, *, importance: Any = None) -> Plan:
        """Plan step ``step`` (default: the next one) on the model as it is now.

        Nothing is pruned: the :class:`~cpmc_plugin.torch_pruning.planning.plan.Plan` lists
        the removals ``step()`` would apply first (before any correction against the
        measured count) and the cost the planner predicts for them. ``importance``
        ranks the channels instead of the pruner's own (e.g. a calibration candidate).

        Raises:
            UnreachableBudgetError: the caps leave the step's target out of reach.
        """
        step = self.current_step + 1 if step is None else step
        return self._plan_for(self.target_cost(step), importance)

    @contextlib.contextmanager
    def trial(self, plan: Plan, *, train: bool = False) -> Iterator[nn.Module]:
        """Apply ``plan`` for the block and put everything back after it.

        The model is yielded pruned; on leaving the block (normally or by an error) its
        modules, tensors, BatchNorm statistics and the graph are restored exactly (the
        same objects, the same values), and so are the pruner's counts. ``train=True``
        also copies the parameters' values first, for a block that trains them. A plan
        whose groups reach the model's output raises ``ValueError`` (restored too).
        """
        before = self._meter.latest
        snapshot = self._applier.snapshot(clone=train, clone_buffers=True)
        try:
            with torch.no_grad():
                self._applier.apply(plan)
            yield self.model
        finally:
            snapshot.restore()
            self._meter.latest = before

    def _plan_for(self, target: float, importance: Any = None) -> Plan:
        if importance is None:
            return self.planner.plan(target, self.importance, self.estimate_importance)
        return self.planner.plan(target, importance, importance)

    # ------------------------------------------------------------------ pruning
    def _warn_done(self) -> None:
        warnings.warn(
            f"CPMCPruner: all {self.iterative_steps} steps are done; step() prunes nothing",
            stacklevel=4,
        )

    @torch.no_grad()
    def _apply_step(self, step: int) -> None:
        """Plan, apply, check and count step ``step``; re-plan against the measured count
        while it is off target; restore the model and raise on any failure."""
        meter = self._meter
        snapshot = self._applier.snapshot()
        before = meter.current()
        target = self.target_cost(step)
        tried: list[tuple[float, float]] = []  # (planning target, measured cost)
        planning = target
        try:
            for _ in range(MAX_CORRECTIONS + 1):
                try:
                    plan = self._plan_for(planning)
                except UnreachableBudgetError as error:
                    if not tried or planning >= error.best_cost:
                        raise
                    planning = error.best_cost  # as low as the model says the floor allows
                    continue
                self._granularity = plan.granularity
                self._applier.apply(plan)
                with meter.probing() as probe:  # the check's forward also counts
                    self._applier.check_runs()
                meter.measured(probe)
                now = meter.cost(probe.counts())
                if abs(now - target) <= self.tolerance:
                    self._pruned_step = step
                    return
                tried.append((planning, now))
                snapshot.restore()
                meter.latest = before
                following = next_planning_target(tried, target, meter.cost(before))
                if following is None:
                    break
                planning = following
            initial = meter.cost(meter.initial)
            budget = Budget(self.metric, self.reduction, initial, target, self.tolerance)
            raise missed_budget(self.model, budget, tried)
        except BaseException:
            snapshot.restore()
            meter.latest = before
            raise

    @torch.no_grad()
    def _prune(self) -> Generator[tp.Group, None, None]:
        """Interactive steps: yield the plan's groups; check the model after the last one.

        The whole plan is tried first (applied, run, checked, undone), so a plan the
        model cannot take is refused before the caller prunes its first group."""
        if self.current_step > self.iterative_steps:
            self._warn_done()
            return
        snapshot = self._applier.snapshot()
        before = self._meter.latest
        try:
            plan = self.plan(self.current_step)
            self._granularity = plan.granularity
            try:
                self._applier.apply(plan)
                self._applier.check_runs()
            finally:
                snapshot.restore()
                self._meter.latest = before
        except Exception:
            self.current_step -= 1  # nothing was pruned: the step did not happen
            raise
        try:
            for group in self._applier.groups(plan):
                yield group
                self._meter.changed()  # counted when next needed: report() or the next step
                self._pruned_step = self.current_step
            self._applier.shapes_changed()
            self._applier.check_runs()
        except GeneratorExit:
            raise  # the caller stopped early: what it pruned stays pruned
        except BaseException:
            snapshot.restore()
            self._meter.latest = before
            self.current_step -= 1
            raise

    def _warn_if_off_target(self, counts: Counts) -> None:
        meter = self._meter
        target = self.target_cost(self._pruned_step)
        if abs(meter.cost(counts) - target) > self.tolerance:
            budget = Budget(
                self.metric, self.reduction, meter.cost(meter.initial), target, self.tolerance
            )
            warnings.warn(off_target(budget, meter.cost(counts), self._pruned_step), stacklevel=3)

    # ------------------------------------------------------------------ report
    def report(self) -> PruneReport:
        """Parameters, MACs and channels per layer, before pruning and now."""
        modules = dict(self.model.named_modules())
        layers = []
        for name, kind, before in self._initial_layers:
            module = modules.get(name)
            after = self.DG.get_out_channels(module) if module is not None else 0
            layers.append(LayerChannels(name=name, kind=kind, before=int(before), after=int(after)))
        initial, now = self._meter.initial, self._meter.current()
        return PruneReport(
            params_before=int(initial.params),
            params_after=int(now.params),
            macs_before=int(initial.macs),
            macs_after=int(now.macs),
            layers=tuple(layers),
        )
