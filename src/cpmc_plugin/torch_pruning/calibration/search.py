"""Pick CPMC's cost weights from data (``cpmc-auto``): :func:`calibrate`.

Each candidate (a set of :class:`~cpmc_plugin.CPMCImportance` options: alpha, beta,
normalizer, combine) is turned into the plan :class:`~cpmc_plugin.CPMCPruner` would
apply at the budget. The plan is applied to the model itself, BatchNorm statistics are
re-measured on half of the calibration batches, the accuracy and loss on the other
half are the candidate's proxy score, and the model is restored exactly (the same
tensor objects, the same values). The candidate with the highest held-out accuracy
wins (then the lowest loss).

With ``finetune_steps``, the best ``finetune_top`` distinct plans of that first pass
are applied again and fine-tuned for a few SGD steps on the re-estimation batches, and
the lowest held-out loss after those steps wins: a proxy for the accuracy after a
fine-tune rather than right after the prune (docs/benchmarks.md, "Does the proxy
predict?"). Parameter values are then copied once, and put back after every trial.

The candidates differ only in how they combine the same channel statistics, so the
statistics are computed once and shared, and candidates whose plans coincide are
evaluated once.

The search works on a :class:`CalibrationTarget` (``CPMCPruner`` is one): it plans
through ``plan(step, importance=...)`` and tries each plan in ``trial(plan)``, which
puts the model back; it never touches the pruner's own state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ...core.batchnorm import recalibrate_bn
from ...core.proxy import BatchSplit, finetune_briefly, move_to, proxy_score, split_batches
from ...core.torch_private import BatchNormBase
from ...core.validate import flag, function, integer, number
from ..cost.counting import Counts
from ..importance import CPMCImportance
from ..planning.plan import Plan
from .grid import candidate_importances
from .report import CalibrationReport, CandidateScore, final_key, rank_key

__all__ = ["CalibrationTarget", "calibrate"]


class CalibrationTarget(Protocol):
    """What the calibration needs of a pruner (``CPMCPruner`` has it all)."""

    model: nn.Module
    importance: Any
    metric: str
    reduction: float
    iterative_steps: int

    @property
    def initial_counts(self) -> Counts: ...

    def plan(self, step: int | None = None, *, importance: Any = None) -> Plan: ...

    def trial(self, plan: Plan, *, train: bool = False) -> AbstractContextManager[nn.Module]: ...


def _needs_recalibration(model: nn.Module) -> bool:
    return any(isinstance(m, BatchNormBase) for m in model.modules())


def _device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@dataclass(frozen=True)
class _Finetune:
    """The calibration's short fine-tune: ``steps`` SGD steps for the best ``top`` plans."""

    steps: int = 0
    top: int = 8
    lr: float = 0.01


def _finetune_options(steps: int, top: int, lr: float) -> _Finetune:
    integer("finetune_steps", steps, minimum=0)
    integer("finetune_top", top, minimum=1)
    return _Finetune(steps, top, number("finetune_lr", lr, minimum=0, low_open=True))


def calibrate(
    pruner: CalibrationTarget,
    data: Iterable[Any],
    *,
    candidates: Sequence[Any] | None = None,
    batches: int = 8,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    finetune_steps: int = 0,
    finetune_top: int = 8,
    finetune_lr: float = 0.01,
    progress: bool = False,
) -> CPMCImportance:
    """Calibrate on ``pruner``'s own model and graph; the winner carries ``.calibration``.

    The pruner's model is pruned and restored once per distinct plan; on return (or on
    any error) it is exactly as before, and the pruner's importance is unchanged.
    """
    if loss_fn is not None:
        function("loss_fn", loss_fn, call="loss_fn(outputs, targets)")
    tune = _finetune_options(finetune_steps, finetune_top, finetune_lr)
    base = pruner.importance
    if not isinstance(base, CPMCImportance):
        raise TypeError(
            "calibration chooses CPMCImportance's options; the pruner's importance is "
            f"{type(base).__name__} (pass importance=None or a CPMCImportance)"
        )
    model = pruner.model
    device = _device(model)
    split = split_batches(data, batches=batches, needs_recalibration=_needs_recalibration(model))
    split = BatchSplit(
        recalibration=tuple(move_to(b, device) for b in split.recalibration),
        held_out=tuple(move_to(b, device) for b in split.held_out),
    )
    if tune.steps and not split.recalibration:
        raise ValueError(
            "finetune_steps trains on the BatchNorm re-estimation batches, and this model "
            "has no BatchNorm (every batch is held out): use finetune_steps=0"
        )
    named = candidate_importances(base, candidates)
    shared: dict[tuple[Any, ...], Any] = {}
    for _, imp in named:
        imp.share_statistics(shared)  # the same statistics for every candidate
    started = time.perf_counter()
    scores = _score_candidates(pruner, named, split, loss_fn, tune, flag("progress", progress))
    chosen = min(range(len(scores)), key=lambda i: final_key(scores[i], i))
    if scores[chosen].error is not None:
        raise ValueError(
            "calibration failed: no candidate's plan could be applied and run; the first "
            f"error: {scores[0].error}"
        )
    initial = pruner.initial_counts
    report = CalibrationReport(
        metric=pruner.metric,
        reduction=float(pruner.reduction),
        candidates=tuple(scores),
        chosen=chosen,
        recalibration_samples=split.recalibration_samples,
        held_out_samples=split.held_out_samples,
        seconds=round(time.perf_counter() - started, 3),
        base_params=int(initial.params),
        base_macs=float(initial.macs),
        options={
            "batches": batches,
            "loss": getattr(loss_fn, "__name__", "cross_entropy"),
            **(
                {"finetune_steps": tune.steps, "finetune_top": tune.top, "finetune_lr": tune.lr}
                if tune.steps
                else {}
            ),
        },
    )
    winner = CPMCImportance(base.example_inputs, **named[chosen][1].options())
    winner.calibration = report
    return winner


def _score_candidates(
    pruner: CalibrationTarget,
    named: list[tuple[dict[str, Any], CPMCImportance]],
    split: BatchSplit,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    tune: _Finetune,
    progress: bool = False,
) -> list[CandidateScore]:
    model = pruner.model
    was_training = model.training
    params_before = sum(p.numel() for p in model.parameters())
    seen: dict[tuple[Any, ...], int] = {}
    plans: dict[int, Any] = {}
    scores: list[CandidateScore] = []
    try:
        shown = tqdm(named, desc="calibration", unit="candidate", disable=not progress)
        for i, (options, imp) in enumerate(shown):
            plan = pruner.plan(pruner.iterative_steps, importance=imp)
            key = tuple((r.name, r.idxs) for r in plan.removals)
            if key in seen:
                scores.append(
                    CandidateScore(
                        **{**vars(scores[seen[key]]), "options": options, "same_plan_as": seen[key]}
                    )
                )
                continue
            seen[key], plans[i] = i, plan
            macs_removed = plan.base_cost - plan.cost if plan.metric == "macs" else 0.0
            try:  # BN statistics change in place: the trial puts them back
                with pruner.trial(plan) as pruned, torch.no_grad():
                    params = params_before - sum(p.numel() for p in pruned.parameters())
                    recalibrate_bn(pruned, split.recalibration, batches=len(split.recalibration))
                    score = proxy_score(pruned, split.held_out, loss_fn)
                scores.append(
                    CandidateScore(options, score.loss, score.accuracy, int(params), macs_removed)
                )
            except Exception as error:  # this candidate's plan does not run: it loses
                scores.append(
                    CandidateScore(
                        options,
                        float("inf"),
                        None,
                        0,
                        macs_removed,
                        error=f"{type(error).__name__}: {error}",
                    )
                )
        if tune.steps:
            _finetune_best(pruner, plans, scores, split, loss_fn, tune)
    finally:
        model.train(was_training)
    return scores


def _finetune_best(
    pruner: CalibrationTarget,
    plans: dict[int, Any],
    scores: list[CandidateScore],
    split: BatchSplit,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    tune: _Finetune,
) -> None:
    """Re-score the best ``tune.top`` distinct plans after ``tune.steps`` SGD steps.

    The steps change parameters in place: each trial copies their values first
    (``train=True``) and puts them back. The gradients are put back as they were.
    """
    model = pruner.model
    ranked = sorted(
        (i for i in plans if scores[i].error is None), key=lambda i: rank_key(scores[i], i)
    )
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        for i in ranked[: tune.top]:
            try:
                with pruner.trial(plans[i], train=True) as pruned:
                    with torch.no_grad():
                        recalibrate_bn(
                            pruned, split.recalibration, batches=len(split.recalibration)
                        )
                    finetune_briefly(
                        pruned, split.recalibration, steps=tune.steps, lr=tune.lr, loss_fn=loss_fn
                    )
                    after = proxy_score(pruned, split.held_out, loss_fn)
            except Exception as error:  # the plan ran in the first pass: the training failed
                raise ValueError(
                    f"calibration's fine-tune of candidate {i} ({scores[i].options}) failed: "
                    f"{type(error).__name__}: {error}. The model is unchanged; check loss_fn "
                    "(it must be differentiable) or use finetune_steps=0"
                ) from error
            loss = after.loss if math.isfinite(after.loss) else float("inf")  # diverged: last
            scores[i] = replace(scores[i], finetuned_loss=loss, finetuned_accuracy=after.accuracy)
    finally:
        for param, grad in grads:
            param.grad = grad
    for j, score in enumerate(scores):  # candidates that share a plan share its scores
        if score.same_plan_as is not None:
            first = scores[score.same_plan_as]
            scores[j] = replace(
                score,
                finetuned_loss=first.finetuned_loss,
                finetuned_accuracy=first.finetuned_accuracy,
            )
