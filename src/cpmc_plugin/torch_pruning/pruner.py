"""``CPMCPruner``: torch-pruning's pruner with an exact FLOPs or parameter budget."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from ..attention.eager import eager_attention
from ..attention.shapes import sync_shape_attributes
from ..core.atomic import (
    RunFailure,
    RunSignature,
    check_still_runs,
    recording_signature,
    shape_signature,
    signature,
)
from ..core.budget import UnreachableBudgetError, lowest_cost, plan_removal
from ..core.layers import ROOT_TYPES
from ..core.pinning import pin_removal, refine_plan
from ..core.probe import forward_once, positions_by_module, record_calls
from ..core.report import LayerChannels, PruneReport
from ..core.ties import TiedGroups, tie_groups
from ..core.validate import flag, fraction, function, integer, layers_of, optional_integer
from .calibration.search import CalibrationReport, calibrate_pruner
from .cost.counting import HostTally, _count, _Counts, host_counter
from .cost.measured import opaque_call_hooks, opaque_layers
from .cost.model import build_cost_model, map_calls, remeasure_sites
from .cost.types import GroupUnits
from .graph.build import (
    describe_host_failure,
    remembering_groups,
    shapes_only_autograd,
)
from .graph.concat import repair_concat_mappings
from .graph.coupling import hidden_coupling, misaligned_grouped_conv
from .graph.heads import class_members, head_layout, is_attention, uniform_members
from .graph.negative_concat import fixed_graphs
from .graph.removal import Removal, groups_in_order
from .graph.snapshot import prune_snapshot
from .host import graph_of, module_name
from .importance import CPMCImportance, RankingScope
from .options import (
    _MODELLED,
    HOST_OPTIONS,
    _check_finite,
    _head_options,
    _layer_caps,
    _resolve_budget,
    _why_refused,
)
from .planning.correction import _isomorphic_quantiles, _next_planning_target
from .planning.plan import Plan
from .refusals import output_refusal, reaching_output, run_refusal

__all__ = ["CPMCPruner"]


TOLERANCE = 0.005  # 0.5 percentage points


#: how often a step re-plans against the measured count before it refuses
MAX_CORRECTIONS = 8


@dataclass
class _Probe:
    """What one forward of the model recorded (see ``CPMCPruner._probing``)."""

    calls: list[Any]
    opaque: dict[nn.Module, list[Any]]
    tally: HostTally
    shapes: tuple[tuple[int, ...], ...] = ()

    def counts(self) -> _Counts:
        return self.tally.counts()


def _tied_weights(model: nn.Module, graph: tp.DependencyGraph) -> list[tuple[nn.Module, nn.Module]]:
    """``(owner, follower)`` for layers sharing one ``weight`` (tied embeddings): pruning
    leaves the follower out and ties it to the owner's pruned weight again, so that the
    pruned model keeps one tensor (and one copy in memory while it is pruned)."""
    owners: dict[int, nn.Module] = {}
    pairs = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or module not in graph.module2node:
            continue
        owner = owners.setdefault(id(weight), module)
        if owner is not module:
            pairs.append((owner, module))
    return pairs


def _hidden_pin(
    units: list[GroupUnits], groups: list[Any], removed: list[torch.Tensor]
) -> tuple[int, torch.Tensor] | None:
    """The hidden channels to pin so that the hidden width is a multiple of the heads the
    plan keeps, or ``None`` when it already is one (Hugging Face configs require
    ``hidden_size % num_attention_heads == 0`` when they are loaded).

    The hidden group is the one that holds the query projections' in-channels; its
    weakest channels are pinned (see :mod:`cpmc_plugin.core.pinning`), the kept width
    rounded up, so that the finer units (MLP channels, heads) meet the budget around it.
    """
    heads = [(u, r) for u, r in zip(units, removed, strict=True) if u.heads is not None]
    if not heads:
        return None
    queries = {m for u, _ in heads for m in u.heads.queries}  # type: ignore[union-attr]
    kept_heads = min(u.size - len(r) for u, r in heads)
    for i, (unit, gone) in enumerate(zip(units, removed, strict=True)):
        graph = graph_of(unit.group)
        if unit.heads is not None or not any(
            item.dep.target.module in queries
            and not graph.is_out_channel_pruning_fn(item.dep.handler)
            for item in unit.group
        ):
            continue
        step = kept_heads // math.gcd(kept_heads, unit.ch_groups)  # in units of the group
        kept = unit.size - len(gone)
        if kept % step == 0:
            return None
        # kept rounded up: the other units make up the rest of the budget (rounding down
        # could only overshoot it)
        kept = min(unit.size, -(-kept // step) * step)
        return i, groups[i].candidates[: unit.size - kept]
    return None


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
        calibration_data: ``(inputs, targets)`` batches (e.g. a training ``DataLoader``):
            choose CPMC's options for this budget from data, as
            :func:`~cpmc_plugin.calibrate_importance` does (``cpmc-auto``). The winner
            becomes the importance and :attr:`calibration` its report. The importance
            must then be ``None`` or a ``CPMCImportance`` (its ``p`` and
            ``weight_dependency`` are kept).
        calibration_batches: how many batches of ``calibration_data`` to use (>= 2):
            half re-measure BatchNorm statistics, half score each candidate.
        calibration_loss_fn: ``loss_fn(outputs, targets)`` -> mean loss that scores the
            candidates (default: cross entropy over class logits), e.g. a language
            model's next-token loss; as ``calibrate_importance(loss_fn=...)``.
        calibration_finetune_steps: fine-tune the calibration's best 8 plans for this
            many SGD steps and pick by the held-out loss after them, as
            ``calibrate_importance(finetune_steps=...)`` (0: no fine-tune).
        calibration_progress: show a progress bar (tqdm) over the calibration's candidates.
        num_heads: ``{projection: heads}`` for the query, key and value projections (or
            one packed ``qkv`` projection) of each attention layer, as for the host; then
            heads are units of the budget. :func:`~cpmc_plugin.head_options` returns it.
        prune_num_heads: a head goes whole (its channels in every projection and the
            output projection's inputs): the default when ``num_heads`` is given. Under
            grouped-query attention every key/value head stays and each loses the same
            number of query heads.
        prune_head_dims: shrink every head by the same channels instead (``nn.MultiheadAttention``
            needs it: its heads live in the hidden width). Not with ``prune_num_heads``.
        head_pruning_ratio: at most this fraction of any layer's heads goes (default:
            ``max_pruning_ratio``); 0 keeps every head.
        uniform_layers: lists of layers whose groups must keep the same width (e.g. every
            layer's query projection, every MLP's first layer): one Hugging Face config
            describes them all.
        hidden_divisible_by_heads: keep the hidden width a multiple of the query heads
            kept (Hugging Face configs check it when loaded).
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
        unknown = sorted(set(host_options) - HOST_OPTIONS)
        if unknown:
            raise TypeError(
                f"CPMCPruner does not take {', '.join(unknown)}: "
                + _why_refused(unknown)
                + ". Host options it passes on: "
                + ", ".join(sorted(HOST_OPTIONS))
            )
        self.metric, self.reduction = _resolve_budget(flops_reduction, params_reduction)
        integer("iterative_steps", iterative_steps, minimum=1)
        fraction("max_pruning_ratio", max_pruning_ratio, one=True)
        optional_integer("round_to", round_to, minimum=1)
        integer("calibration_batches", calibration_batches, minimum=2)
        if finetune_fn is not None:
            function("finetune_fn", finetune_fn, call="finetune_fn(model, step)")
        if calibration_loss_fn is not None:
            function("calibration_loss_fn", calibration_loss_fn, call="loss_fn(outputs, targets)")
            if calibration_data is None:
                raise ValueError(
                    "calibration_loss_fn scores calibration candidates: give calibration_data too"
                )
        tune_steps = integer("calibration_finetune_steps", calibration_finetune_steps, minimum=0)
        flag("calibration_progress", calibration_progress)
        if tune_steps and calibration_data is None:
            raise ValueError(
                "calibration_finetune_steps fine-tunes calibration candidates: give "
                "calibration_data too"
            )
        heads = _head_options(
            num_heads,
            prune_num_heads,
            prune_head_dims,
            head_pruning_ratio,
            uniform_layers,
            hidden_divisible_by_heads,
        )
        isomorphic = flag("isomorphic", host_options.pop("isomorphic", False))
        caps = _layer_caps(host_options.pop("pruning_ratio_dict", None))
        if importance is None:
            importance = CPMCImportance(example_inputs)
        if not callable(importance):
            raise TypeError(
                f"importance must be a torch-pruning Importance, got {type(importance).__name__}"
            )
        if calibration_data is not None and not isinstance(importance, CPMCImportance):
            raise TypeError(
                "calibration_data chooses CPMCImportance's options, but importance is "
                f"{type(importance).__name__}: pass importance=None or a CPMCImportance"
            )
        _check_finite(model)
        if ignored_layers is not None or output_layers is not None:
            ignored = layers_of(model, ignored_layers)
            outputs = layers_of(model, output_layers, name="output_layers")
            ignored_layers = ignored + [m for m in outputs if all(m is not i for i in ignored)]
        if torch.is_inference_mode_enabled():
            raise ValueError(
                "CPMCPruner cannot prune inside torch.inference_mode(): the weights it "
                "would make there are inference tensors, which no fine-tune can train. "
                "Build the pruner and step outside the block (torch.no_grad() is fine)"
            )

        self._attention = True  # until the first forward has shown whether there is any
        was_training = model.training
        model.eval()  # probing and tracing never touch BatchNorm statistics
        try:
            try:
                # the host's tracing forward also records the sizes of every call (with
                # its autograd node), the outputs every step must keep, and the count
                with (
                    record_calls(model) as calls,
                    recording_signature(model) as traced,
                    host_counter(model) as tally,
                    remembering_groups() as seen,  # the groups the host reads to count
                    fixed_graphs(),  # RoPE's negative-dim concat would hang the grouping
                    shapes_only_autograd(),  # the traced graph keeps no activations
                    eager_attention(model),  # a fused kernel hides grouped-query heads
                ):
                    super().__init__(
                        model,
                        example_inputs,
                        importance=importance,
                        global_pruning=True,
                        max_pruning_ratio=max_pruning_ratio,
                        iterative_steps=iterative_steps,
                        ignored_layers=list(ignored_layers) if ignored_layers is not None else None,
                        round_to=round_to,
                        num_heads=dict(heads.num_heads),
                        prune_num_heads=heads.prune_num_heads,
                        prune_head_dims=heads.prune_head_dims,
                        **host_options,
                    )
            except Exception as error:
                signature(model, example_inputs)  # a ValueError if the inputs do not fit
                raise ValueError(describe_host_failure(error)) from error
            if (
                traced.signature is not None
                and traced.called_as(example_inputs)
                and "forward_fn" not in host_options
                and not opaque_layers(self.DG)
            ):
                self._signature: RunSignature = traced.signature
                probe = _Probe(calls, {}, tally, shape_signature(model))
            else:  # traced on unbatched samples, through forward_fn, or with measured layers:
                # one forward called as the model is called
                with self._probing() as probe:
                    self._signature = signature(model, example_inputs)
        finally:
            model.train(was_training)
        own_calls, initial = probe.calls, probe.counts()
        # attention written as functions was seen in the first forward, or never will be:
        # later forwards skip recording it (it costs every op a Python call)
        self._attention = bool(initial.attention)
        self.example_inputs = example_inputs
        self.finetune_fn = finetune_fn
        self.isomorphic = isomorphic
        self._heads = heads
        self._tied_pairs = _tied_weights(model, self.DG)
        self._head_dims = {  # channels per head in each projection (3 x head_dim if packed)
            m: m.out_features // n for m, n in heads.num_heads.items() if isinstance(m, nn.Linear)
        }
        self._caps = caps
        self._units_cache: tuple[Any, list[GroupUnits]] | None = None
        self._granularity = 0.0
        self._model_cache: tuple[Any, Any] | None = None
        self._host_groups = next(
            (
                record.groups
                for record in seen
                if record.graph is self.DG
                and record.finished
                and record.ignored_layers is self.ignored_layers
                and record.root_module_types is self.root_module_types
            ),
            None,
        )
        self._sites = map_calls(self.DG, calls)
        self._probe: _Probe | None = probe
        self._initial_shapes = shape_signature(model)  # the shapes the host's groups saw
        self._positions = positions_by_module(own_calls)  # the trace may see an unbatched call
        self._initial = initial
        self._latest: _Counts | None = initial  # None: pruned since the last count
        self._pruned_step = 0
        self._corrected_target: float | None = None  # the planning target while correcting
        self._initial_layers = [
            (name, type(m).__name__, self.DG.get_out_channels(m))
            for name, m in model.named_modules()
            if isinstance(m, ROOT_TYPES) and m in self.DG.module2node
        ]
        self._check_reachable()
        #: the report of ``calibration_data``'s calibration (``None`` without it)
        self.calibration: CalibrationReport | None = None
        if calibration_data is not None:
            self.importance = calibrate_pruner(
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
        initial = self._metric_of(self._initial)
        return initial * (1.0 - self.reduction * step / self.iterative_steps)

    def _planning_target(self, step: int) -> float:
        """The cost the planner aims at: the target, or its correction against a count."""
        if self._corrected_target is not None:
            return self._corrected_target
        return self.target_cost(step)

    def _units(self) -> list[GroupUnits]:
        signature = shape_signature(self.model)
        if self._units_cache is not None and self._units_cache[0] == signature:
            return self._units_cache[1]
        repaired = repair_concat_mappings(self.DG)  # before groups are read: see its docstring
        groups = self._host_groups  # those the host read while constructing, if still valid
        self._host_groups = None
        if groups is None or repaired or signature != self._initial_shapes:
            groups = list(
                self.DG.get_all_groups(
                    ignored_layers=self.ignored_layers, root_module_types=self.root_module_types
                )
            )
        calls: dict[nn.Module, int] = {}
        for site in self._sites:
            calls[site.module] = calls.get(site.module, 0) + 1
        reused = {m for m, n in calls.items() if n > 1}
        units = []
        self._unprunable: list[str] = []  # groups left whole, for the error messages
        for group in groups:
            n = len(group[0].idxs)
            if self._heads.num_heads and is_attention(self.DG, group, self.num_heads):
                layout = head_layout(self.DG, group, self.num_heads)
                if self._heads.prune_num_heads:  # whole heads, or the group stays whole
                    if layout is not None:
                        units.append(GroupUnits(group, layout.head_dim, layout.heads, heads=layout))
                    continue
                if not self._heads.prune_head_dims or layout is None:
                    continue
            ch_groups = self._get_channel_groups(group)
            if ch_groups < 1 or n % ch_groups:
                ch_groups = 1
            conv = misaligned_grouped_conv(group, ch_groups, n // ch_groups)
            if conv is not None:  # the host cannot prune this group without breaking `conv`
                name = module_name(self.DG, group[0].dep.target.module, "?")
                self._unprunable.append(
                    f"{name} (its channels reach the grouped conv "
                    f"{module_name(self.DG, conv, '?')} out of its groups' order)"
                )
                continue
            size = n // ch_groups
            labels = hidden_coupling(self.DG, group, reused)
            alias = None
            if labels is not None:  # root channels the host removes together: one unit each
                alias = torch.arange(size)
                for p, q in enumerate((labels % size).tolist()):
                    a, b = int(alias[p % size]), int(alias[q])
                    alias[alias == max(a, b)] = min(a, b)
            units.append(GroupUnits(group=group, ch_groups=ch_groups, size=size, alias=alias))
        self._units_cache = (signature, units)
        return units

    def _max_ratio(self, module: nn.Module) -> float:
        """The most of ``module``'s initial channels that may go: its ``pruning_ratio_dict``
        entry, else ``max_pruning_ratio``."""
        return self._caps.get(module, float(self.max_pruning_ratio))

    def _floor(self, unit: GroupUnits | nn.Module) -> int:
        """The fewest units a group keeps, or the fewest channels a layer keeps."""
        if isinstance(unit, nn.Module):
            initial = self.layer_init_out_ch.get(unit) or self.DG.get_out_channels(unit) or 1
            return max(1, math.ceil(initial * (1 - self._max_ratio(unit)) - 1e-9))
        module = unit.group[0].dep.target.module
        if unit.heads is not None:  # in heads, capped by head_pruning_ratio
            initial_heads = self.init_num_heads.get(module, unit.size)
            cap = self._max_ratio(module) if self._heads.cap is None else self._heads.cap
            return min(max(1, math.ceil(initial_heads * (1 - cap) - 1e-9)), unit.size)
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
            with eager_attention(self.model):  # counted as the trace counted it
                self._latest = _count(self.model, self.example_inputs, self._attention)
            self._warn_if_off_target(self._latest)
        return self._latest

    def _cost_model(self, units: list[GroupUnits]) -> Any:
        key = (shape_signature(self.model), tuple(id(u.group) for u in units))
        if self._model_cache is not None and self._model_cache[0] == key:
            return self._model_cache[1]
        counts = self._current
        layer = counts.layer_macs if self.metric == "macs" else counts.layer_params
        total = counts.macs if self.metric == "macs" else counts.params
        opaque = opaque_layers(self.DG)  # layers whose costs are measured on pruned copies
        calls: dict[nn.Module, list[Any]] = {m: [] for m in opaque}  # parameters need none
        sites = self._sites
        if self.metric == "macs":
            # a forward called as the model is called: the inputs of the measured layers
            # and each call's size per sample (see remeasure_sites); the last check's
            # forward recorded them when the shapes are still those it saw
            probe = self._probe
            if probe is None or probe.shapes != key[0]:
                with self._probing() as probe:
                    forward_once(self.model, self.example_inputs)
            calls = {m: found for m, found in probe.opaque.items() if found}
            sites = remeasure_sites(sites, probe.calls)
        model = build_cost_model(
            self.DG, units, sites, layer, total, self.metric, calls, counts.attention
        )
        self._model_cache = (key, model)
        return model

    @contextlib.contextmanager
    def _probing(self) -> Iterator[_Probe]:
        """Record during the forward of the block what planning and counting read: each
        leaf call's sizes, the measured layers' inputs, and the host's MAC count."""
        model = self.model
        with (
            eager_attention(model),  # run and counted as the trace ran it
            record_calls(model) as calls,
            opaque_call_hooks(opaque_layers(self.DG)) as opaque,
            host_counter(model, attention=self._attention) as tally,
        ):
            yield (probe := _Probe(calls, opaque, tally))
        probe.shapes = shape_signature(model)

    def _check_reachable(self) -> None:
        units = self._units()
        model = self._cost_model(units)
        scores = [torch.zeros(u.size) for u in units]
        floors = [self._floor(u) for u in units]
        groups = model.channel_groups(units, scores, floors, self._rounding, self._floor)
        groups = self._tied(units, groups).groups
        best = lowest_cost(groups, dim_sizes=model.dim_sizes, terms=model.terms)
        if best > self.target_cost():
            error = self._unreachable(best)
            if self._unprunable:
                shown = "; ".join(self._unprunable[:3])
                more = len(self._unprunable) - 3
                shown += f"; and {more} more" if more > 0 else ""
                error = UnreachableBudgetError(
                    f"{error}. Left whole because torch-pruning cannot prune them: {shown}",
                    best,
                )
            raise error

    @property
    def _rounding(self) -> int:
        return int(self.round_to) if self.round_to else 1

    def _unreachable(self, best_cost: float) -> UnreachableBudgetError:
        initial = self._metric_of(self._initial)
        best = 1.0 - best_cost / initial
        name = "flops_reduction" if self.metric == "macs" else "params_reduction"
        return UnreachableBudgetError(
            f"{name}={self.reduction} cannot be met under max_pruning_ratio="
            f"{self.max_pruning_ratio}: at most {100 * best:.2f} % is reachable "
            "(raise max_pruning_ratio, remove ignored layers, or lower the budget)",
            best_cost,
        )

    # ------------------------------------------------------------------ scoring
    def _score(self, units: list[GroupUnits]) -> tuple[list[GroupUnits], list[torch.Tensor]]:
        set_scope = getattr(self.importance, "set_scope", None)
        if callable(set_scope):  # CPMC, or any importance that opts in
            scope = RankingScope(
                tuple(u.group for u in units),
                self._positions,
                tuple(self.ignored_layers),
                metric=self.metric,
            )
            set_scope(self.DG, scope)
        kept, scores = [], []
        for unit in units:
            imp = self.estimate_importance(unit.group)
            if imp is None:
                continue
            imp = torch.as_tensor(imp).detach().float().cpu().flatten()
            if len(imp) != unit.channels:
                raise ValueError(
                    f"the importance returned {len(imp)} scores for a group of "
                    f"{unit.channels} channels"
                )
            if not torch.isfinite(imp).all():
                raise ValueError(
                    "the importance gave non-finite scores for the group of "
                    f"{module_name(self.DG, unit.group[0].dep.target.module, '?')}"
                )
            kept.append(unit)
            scores.append(unit.unit_scores(imp))
        if self.isomorphic:
            scores = _isomorphic_quantiles(self.DG, kept, scores)
        return kept, scores

    # ------------------------------------------------------------------ pruning
    def _warn_done(self) -> None:
        warnings.warn(
            f"CPMCPruner: all {self.iterative_steps} steps are done; step() prunes nothing",
            stacklevel=4,
        )

    def _tolerance(self) -> float:
        initial = self._metric_of(self._initial)
        return max(TOLERANCE * initial, self._granularity)

    def _metric_of(self, counts: _Counts) -> float:
        return counts.macs if self.metric == "macs" else counts.params

    @torch.no_grad()
    def _apply_step(self, step: int) -> None:
        """Plan, apply, check and count step ``step``; re-plan against the measured count
        while it is off target; restore the model and raise on any failure."""
        snapshot = prune_snapshot(self.DG, after_restore=self._shapes_changed)
        before = self._current
        target = self.target_cost(step)
        tried: list[tuple[float, float]] = []  # (planning target, measured cost)
        planning = target
        try:
            for _ in range(MAX_CORRECTIONS + 1):
                self._corrected_target = planning
                try:
                    plan = self.plan(step)
                except UnreachableBudgetError as error:
                    if not tried or planning >= error.best_cost:
                        raise
                    planning = error.best_cost  # as low as the model says the floor allows
                    continue
                self._apply(plan)
                with self._probing() as probe:  # the check's forward also counts
                    self._check_runs()
                self._latest, self._probe = probe.counts(), probe
                now = self._metric_of(self._latest)
                if abs(now - target) <= self._tolerance():
                    self._pruned_step = step
                    return
                tried.append((planning, now))
                snapshot.restore()
                self._latest = before
                following = _next_planning_target(tried, target, self._metric_of(before))
                if following is None:
                    break
                planning = following
            raise self._missed(target, tried)
        except BaseException:
            snapshot.restore()
            self._latest = before
            raise
        finally:
            self._corrected_target = None

    def _apply(self, plan: Plan) -> None:
        """Prune the plan's groups; a plan that reaches the output is refused once it is
        all applied (the caller restores), so that one refusal names every output."""
        self._reaching: list[nn.Module] = []  # layers of groups that reach the output
        for _, group in groups_in_order(self.DG, plan.removals, self._check_group):
            group.prune()
            self._latest = None  # counted when next needed
        self._shapes_changed()
        if self._reaching:
            self._check_runs()  # raises, with the outputs' shapes when they changed
            raise output_refusal(self.DG, self._reaching, None)

    def _kept_layers(self, unit: GroupUnits) -> tuple[nn.Module, ...]:
        """Layers of ``unit``'s group that its prune leaves alone: grouped-query attention's
        key/value projections, and layers whose weight follows a tied one."""
        kept = unit.heads.kept if unit.heads is not None else ()
        inside = {item.dep.target.module for item in unit.group}
        followers = tuple(f for o, f in self._tied_pairs if f in inside and o in inside)
        return tuple(kept) + followers

    def _shapes_changed(self) -> None:
        """After a prune or a restore: tied weights tied again, the host's head counts and
        the model's own shape attributes (ViT's ``hidden_dim``, a Hugging Face config, ...)
        follow the layers."""
        for owner, follower in self._tied_pairs:
            if follower.weight is not owner.weight:
                follower.weight = owner.weight
        for module, per_head in self._head_dims.items():
            self.num_heads[module] = module.out_features // per_head
            self.out_channel_groups[module] = self.num_heads[module]
        sync_shape_attributes(self.model)

    def _check_group(self, removal: Removal, group: tp.Group) -> None:
        """Note a planned group that reaches the model's output (``_apply`` refuses the
        plan once all of it is known); refuse one that would empty a layer."""
        reaching = reaching_output(self.DG, group)
        self._reaching.extend(reaching)
        # (the host counts an output's channels by its shape: a [N, C] output has one)
        if not reaching and not self.DG.check_pruning_group(group):
            raise RuntimeError(f"internal error: the plan would empty a layer ({group})")

    def _check_runs(self) -> None:
        """Run the pruned model once; a ``ValueError`` (the caller restores) if it fails or
        changes the output shapes, naming every output and layer at once (see refusals)."""
        try:
            with eager_attention(self.model):
                check_still_runs(self.model, self.example_inputs, self._signature)
        except RunFailure as failure:
            if failure.shapes_changed or self._reaching:
                raise output_refusal(self.DG, self._reaching, failure) from failure.error
            raise run_refusal(failure) from failure.error

    def _missed(self, target: float, tried: list[tuple[float, float]]) -> ValueError:
        initial = self._metric_of(self._initial)
        closest = min(tried, key=lambda t: abs(t[1] - target))[1] if tried else target
        odd = sorted(
            {
                type(m).__name__
                for m in self.model.modules()
                if next(m.children(), None) is None and not isinstance(m, _MODELLED)
            }
        )
        name = "flops_reduction" if self.metric == "macs" else "params_reduction"
        return ValueError(
            f"CPMCPruner cannot meet {name}={self.reduction}: after {len(tried)} plans "
            f"corrected against the measured count, the closest left "
            f"{100 * (1 - closest / initial):.2f} % removed against "
            f"{100 * (1 - target / initial):.2f} % asked (tolerance "
            f"{100 * self._tolerance() / initial:.2f} pp). The planner cannot model how the "
            "cost of some operation scales with channels"
            + (f" (layer types it does not model: {', '.join(odd)})" if odd else "")
            + ". The model is unchanged; try another budget, or put those layers in "
            "ignored_layers"
        )

    @torch.no_grad()
    def _prune(self) -> Generator[tp.Group, None, None]:
        """Interactive steps: yield the plan's groups; check the model after the last one.

        The whole plan is tried first (applied, run, checked, undone), so a plan the
        model cannot take is refused before the caller prunes its first group."""
        if self.current_step > self.iterative_steps:
            self._warn_done()
            return
        snapshot = prune_snapshot(self.DG, after_restore=self._shapes_changed)
        before = self._latest
        try:
            plan = self.plan(self.current_step)
            try:
                self._apply(plan)
                self._check_runs()
            finally:
                snapshot.restore()
                self._latest = before
        except Exception:
            self.current_step -= 1  # nothing was pruned: the step did not happen
            raise
        try:
            for _, group in groups_in_order(self.DG, plan.removals, self._check_group):
                yield group
                self._latest = None  # counted when next needed: report() or the next step
                self._pruned_step = self.current_step
            self._shapes_changed()
            self._check_runs()
        except GeneratorExit:
            raise  # the caller stopped early: what it pruned stays pruned
        except BaseException:
            snapshot.restore()
            self._latest = before
            self.current_step -= 1
            raise

    def _tied(self, units: list[GroupUnits], groups: list[Any]) -> TiedGroups:
        """The planner's groups with grouped-query attention's key/value groups and
        ``uniform_layers`` tied (see :mod:`cpmc_plugin.core.ties`)."""
        members: list[list[tuple[int, torch.Tensor]]] = []
        for i, unit in enumerate(units):
            if unit.heads is not None and unit.heads.classes > 1:
                members.append(class_members(unit.heads, i))
            else:
                members.append([(i, torch.arange(unit.size))])
        ties = [m for m in members if len(m) > 1]
        if self._heads.uniform:
            merged: list[list[tuple[int, torch.Tensor]]] = []
            taken: set[int] = set()
            for indices in uniform_members(self._heads.uniform, [u.group for u in units], self.DG):
                indices = [i for i in indices if i not in taken]
                taken.update(indices)
                if len(indices) > 1:
                    merged.append([m for i in indices for m in members[i]])
            ties = [m for m in ties if m[0][0] not in taken] + merged
        return tie_groups(groups, ties)

    def plan(self, step: int | None = None) -> Plan:
        """Plan step ``step`` (default: the next one) on the model as it is now.

        Nothing is pruned: the :class:`~cpmc_plugin.torch_pruning.planning.plan.Plan` lists
        the removals ``step()`` would apply first (before any correction against the
        measured count) and the cost the planner predicts for them.

        Raises:
            UnreachableBudgetError: the caps leave the step's target out of reach.
        """
        step = self.current_step + 1 if step is None else step
        units, scores = self._score(self._units())
        model = self._cost_model(units)
        floors = [self._floor(u) for u in units]
        groups = model.channel_groups(units, scores, floors, self._rounding, self._floor)
        target = self._planning_target(step)
        pins: dict[int, torch.Tensor] = {}
        for _ in range(4):  # re-planned while the hidden width is no multiple of the heads
            pinned, sizes, terms = pin_removal(groups, model.dim_sizes, model.terms, pins)
            tied = self._tied(units, pinned)
            try:
                budget = plan_removal(tied.groups, dim_sizes=sizes, terms=terms, target_cost=target)
            except UnreachableBudgetError as error:
                raise self._unreachable(error.best_cost) from None
            removed, cost = budget.removed, budget.cost
            if self._heads.num_heads:  # heads and tied widths are coarse units: meet the
                # budget around them with the fine ones (see refine_plan)
                initial = self._metric_of(self._initial)
                removed, cost = refine_plan(
                    tied.groups, sizes, terms, target, budget, tolerance=0.8 * TOLERANCE * initial
                )
            removed_units = tied.expand(removed)
            for index, units_gone in pins.items():
                removed_units[index] = torch.sort(units_gone).values
            pin = (
                _hidden_pin(units, groups, removed_units) if self._heads.hidden_divisible else None
            )
            if pin is None:
                break
            pins = dict([pin])
        self._granularity = budget.granularity
        removals = []
        for unit, gone, floor in zip(units, removed_units, floors, strict=True):
            if len(gone) == 0:
                continue
            if unit.size - len(gone) < floor:
                raise RuntimeError("internal error: the plan breaks a per-layer floor")
            # with the units the host removes with them
            positions = unit.positions(unit.members(gone))
            roots = torch.as_tensor(unit.group[0].root_idxs)[positions]
            pairs = sorted(zip(roots.tolist(), positions.tolist(), strict=True))
            root = unit.group[0].dep
            removals.append(
                Removal(
                    root.target.module,
                    root.handler,
                    tuple(int(r) for r, _ in pairs),
                    tuple(int(p) for _, p in pairs),
                    module_name(self.DG, root.target.module, ""),
                    self._kept_layers(unit),
                )
            )
        return Plan(
            removals=tuple(removals),
            metric=self.metric,
            target_cost=float(target),
            cost=float(cost),
            base_cost=float(budget.base_cost),
            granularity=float(budget.granularity),
        )

    def _warn_if_off_target(self, counts: _Counts) -> None:
        initial = self._metric_of(self._initial)
        now = self._metric_of(counts)
        target = self.target_cost(self._pruned_step)
        if abs(now - target) > self._tolerance():
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
