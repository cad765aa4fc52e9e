"""Pick CPMC's cost weights from data: :func:`calibrate_importance` (``cpmc-auto``).

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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ...core.atomic import ModelSnapshot
from ...core.batchnorm import recalibrate_bn
from ...core.proxy import BatchSplit, finetune_briefly, move_to, proxy_score, split_batches
from ...core.torch_private import BatchNormBase
from ...core.validate import flag, function, integer, number
from ..graph.snapshot import prune_snapshot
from ..importance import CPMCImportance

if TYPE_CHECKING:
    from ..pruner import CPMCPruner

__all__ = [
    "DEFAULT_CANDIDATES",
    "CalibrationReport",
    "CandidateScore",
    "calibrate_importance",
    "calibrate_pruner",
]

#: options a candidate may set (the others come from the base importance)
CANDIDATE_OPTIONS = frozenset({"alpha", "beta", "normalizer", "combine", "p", "weight_dependency"})

_MAX_MIN_WEIGHTS = (0.0, 0.1, 0.25, 0.5)
_MEAN_WEIGHTS = (0.0, 0.05, 0.1, 0.25)
_SQUARED_WEIGHTS = (0.0, 0.05, 0.1)

#: the default grid (41 candidates): eq. 7 with the paper's max-min normalizer and
#: alpha, beta in {0, 0.1, 0.25, 0.5} (every preset and the default are in it); eq. 7
#: with the mean normalizer of torch-pruning's magnitude criteria, whose values average
#: 1, with smaller weights {0, 0.05, 0.1, 0.25}; and the same with squared weights
#: (p=2) and weights {0, 0.05, 0.1}. ``combine="per-cost"`` is not in it: no
#: calibration of the Fashion-MNIST benchmark chose it on any model or budget
#: (docs/methods.md, "Why additive"); pass it in ``candidates=`` to compare again.
DEFAULT_CANDIDATES: tuple[dict[str, Any], ...] = (
    *({"alpha": a, "beta": b} for a in _MAX_MIN_WEIGHTS for b in _MAX_MIN_WEIGHTS),
    *({"alpha": a, "beta": b, "normalizer": "mean"} for a in _MEAN_WEIGHTS for b in _MEAN_WEIGHTS),
    *(
        {"p": 2, "alpha": a, "beta": b, "normalizer": "mean"}
        for a in _SQUARED_WEIGHTS
        for b in _SQUARED_WEIGHTS
    ),
)


@dataclass(frozen=True)
class CandidateScore:
    """One candidate: its options, its proxy score and what its plan removes.

    Attributes:
        options: the candidate's CPMC options (as given, over the base importance's).
        loss: mean held-out loss after the prune and BatchNorm re-estimation.
        accuracy: held-out top-1 accuracy (``None`` if the outputs are not logits).
        params_removed: parameters the plan removes (counted on the pruned model).
        macs_removed: MACs the plan removes, as the planner predicts them.
        same_plan_as: index of an earlier candidate with the very same plan (not
            evaluated again), or ``None``.
        error: why the plan could not be applied or run (the candidate then loses).
        finetuned_loss: held-out loss after the calibration's short fine-tune (only
            for the candidates it fine-tuned, else ``None``).
        finetuned_accuracy: held-out accuracy after it (``None`` as for ``accuracy``).
    """

    options: dict[str, Any]
    loss: float
    accuracy: float | None
    params_removed: int
    macs_removed: float
    same_plan_as: int | None = None
    error: str | None = None
    finetuned_loss: float | None = None
    finetuned_accuracy: float | None = None


@dataclass(frozen=True)
class CalibrationReport:
    """Every candidate's proxy score; ``chosen`` indexes the winner.

    ``str(report)`` (and :meth:`table`) is a markdown table, best first.
    """

    metric: str
    reduction: float
    candidates: tuple[CandidateScore, ...]
    chosen: int
    recalibration_samples: int
    held_out_samples: int
    seconds: float
    base_params: int = 0
    base_macs: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> CandidateScore:
        """The winning candidate."""
        return self.candidates[self.chosen]

    def table(self) -> str:
        """A markdown table of the candidates, best proxy score first."""
        order = sorted(range(len(self.candidates)), key=lambda i: _final_key(self.candidates[i], i))
        steps = self.options.get("finetune_steps", 0)
        tuned = (
            f"; the best {self.options.get('finetune_top')} fine-tuned {steps} steps"
            if steps
            else ""
        )
        lines = [
            f"CPMC calibration at {100 * self.reduction:g} % fewer {self.metric}: "
            f"{len(self.candidates)} candidates, BatchNorm re-measured on "
            f"{self.recalibration_samples} samples, scored on {self.held_out_samples} "
            f"held-out samples{tuned} in {self.seconds:.1f} s",
            "",
            "| # | options | held-out loss | accuracy | params removed | MACs removed |"
            + (" loss after fine-tune | accuracy after |" if steps else ""),
            "|---:|---|---:|---:|---:|---:|" + ("---:|---:|" if steps else ""),
        ]
        for i in order:
            c = self.candidates[i]
            mark = " (chosen)" if i == self.chosen else ""
            options = ", ".join(f"{k}={v!r}" for k, v in c.options.items()) or "(base)"
            if c.error is not None:
                lines.append(
                    f"| {i} | {options} | failed: {c.error} | | | |" + (" | |" if steps else "")
                )
                continue
            params = _share(c.params_removed, self.base_params)
            macs = _share(c.macs_removed, self.base_macs)
            acc = _percent(c.accuracy)
            row = f"| {i} | {options}{mark} | {c.loss:.4f} | {acc} | {params} | {macs} |"
            if steps:
                loss = "" if c.finetuned_loss is None else f"{c.finetuned_loss:.4f}"
                acc = "" if c.finetuned_loss is None else _percent(c.finetuned_accuracy)
                row += f" {loss} | {acc} |"
            lines.append(row)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for JSON)."""
        return {
            "metric": self.metric,
            "reduction": self.reduction,
            "chosen": self.chosen,
            "chosen_options": self.best.options,
            "recalibration_samples": self.recalibration_samples,
            "held_out_samples": self.held_out_samples,
            "seconds": self.seconds,
            "candidates": [vars(c) for c in self.candidates],
        }


def _percent(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{100 * accuracy:.2f} %"


def _share(removed: float, base: float) -> str:
    count = f"{removed / 1e6:.3f} M" if removed >= 1e5 else f"{removed:g}"
    return f"{count} ({100 * removed / base:.1f} %)" if base else count


def _rank_key(c: CandidateScore, index: int) -> tuple[float, float, int]:
    """Best first: the highest held-out accuracy, then the lowest loss, then grid order.

    Accuracy leads because it is what the pruned model is judged by; held-out accuracy
    and loss ranked the candidates about equally well on Fashion-MNIST
    (docs/benchmarks.md, "Does the proxy predict?"). Without accuracy (outputs that
    are not class logits) the loss decides.
    """
    accuracy = c.accuracy if c.accuracy is not None else float("-inf")
    return (-accuracy, c.loss, index)


def _final_key(c: CandidateScore, index: int) -> tuple[Any, ...]:
    """Best first: the fine-tuned candidates by their loss after the steps, then the rest.

    After a short fine-tune the loss leads: a few hundred held-out samples resolve
    accuracy in steps of a fraction of a percent, the loss continuously, and on
    Fashion-MNIST the loss after the steps picked the better plans
    (docs/benchmarks.md, "Does the proxy predict?").
    """
    if c.finetuned_loss is not None:
        return (0, c.finetuned_loss, *_rank_key(c, index))
    return (1, *_rank_key(c, index))


def _candidate_importances(
    base: CPMCImportance, candidates: Sequence[Any] | None
) -> list[tuple[dict[str, Any], CPMCImportance]]:
    """``(options as given, importance)`` per candidate, over ``base``'s options."""
    given = DEFAULT_CANDIDATES if candidates is None else candidates
    if isinstance(given, (str, bytes, Mapping)) or not isinstance(given, Iterable):
        raise TypeError(
            "candidates must be a sequence of option dicts (or CPMCImportance objects), got "
            f"{type(given).__name__}"
        )
    out = []
    for i, candidate in enumerate(given):
        if isinstance(candidate, CPMCImportance):
            options = candidate.options()
        elif isinstance(candidate, Mapping):
            options = dict(candidate)
            unknown = sorted(set(options) - CANDIDATE_OPTIONS)
            if unknown:
                raise ValueError(
                    f"candidate {i} sets {', '.join(map(str, unknown))}: a candidate may set "
                    + ", ".join(sorted(CANDIDATE_OPTIONS))
                )
        else:
            raise TypeError(
                f"candidate {i} must be a dict of CPMC options or a CPMCImportance, got "
                f"{type(candidate).__name__}"
            )
        merged = {**base.options(), **options}
        if "combine" not in options and ({"alpha", "beta"} & set(options)):
            merged["combine"] = "additive"  # cost weights given: eq. 7
        if merged["combine"] == "per-cost":  # takes no cost weights
            merged["alpha"], merged["beta"] = options.get("alpha", 0.0), options.get("beta", 0.0)
        try:
            imp = CPMCImportance(base.example_inputs, **merged)
        except (TypeError, ValueError) as error:
            raise type(error)(f"candidate {i} ({options}): {error}") from None
        out.append((options, imp))
    if not out:
        raise ValueError("candidates is empty: give at least one set of CPMC options")
    return out


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


def calibrate_pruner(
    pruner: CPMCPruner,
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
    named = _candidate_importances(base, candidates)
    shared: dict[tuple[Any, ...], Any] = {}
    for _, imp in named:
        imp._shared_stats = shared  # the same statistics for every candidate
    started = time.perf_counter()
    scores = _score_candidates(pruner, named, split, loss_fn, tune, flag("progress", progress))
    chosen = min(range(len(scores)), key=lambda i: _final_key(scores[i], i))
    if scores[chosen].error is not None:
        raise ValueError(
            "calibration failed: no candidate's plan could be applied and run; the first "
            f"error: {scores[0].error}"
        )
    initial = pruner._initial
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
    pruner: CPMCPruner,
    named: list[tuple[dict[str, Any], CPMCImportance]],
    split: BatchSplit,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    tune: _Finetune,
    progress: bool = False,
) -> list[CandidateScore]:
    model = pruner.model
    original = pruner.importance
    was_training = model.training
    latest, granularity = pruner._latest, pruner._granularity
    params_before = sum(p.numel() for p in model.parameters())
    snapshot = prune_snapshot(  # BN statistics change in place, and a fine-tune's weights
        pruner.DG, clone=tune.steps > 0, clone_buffers=True, after_restore=pruner._shapes_changed
    )
    seen: dict[tuple[Any, ...], int] = {}
    plans: dict[int, Any] = {}
    scores: list[CandidateScore] = []
    try:
        shown = tqdm(named, desc="calibration", unit="candidate", disable=not progress)
        for i, (options, imp) in enumerate(shown):
            pruner.importance = imp
            plan = pruner.plan(pruner.iterative_steps)
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
            try:
                with torch.no_grad():
                    pruner._apply(plan)
                    params = params_before - sum(p.numel() for p in model.parameters())
                    recalibrate_bn(model, split.recalibration, batches=len(split.recalibration))
                    score = proxy_score(model, split.held_out, loss_fn)
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
            finally:
                snapshot.restore()
                pruner._latest = latest
        if tune.steps:
            _finetune_best(pruner, snapshot, plans, scores, split, loss_fn, tune)
    finally:
        snapshot.restore()
        pruner.importance = original
        pruner._latest, pruner._granularity = latest, granularity
        model.train(was_training)
    return scores


def _finetune_best(
    pruner: CPMCPruner,
    snapshot: ModelSnapshot,
    plans: dict[int, Any],
    scores: list[CandidateScore],
    split: BatchSplit,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    tune: _Finetune,
) -> None:
    """Re-score the best ``tune.top`` distinct plans after ``tune.steps`` SGD steps.

    The steps change parameters in place: ``snapshot`` must hold copies of their values
    (``clone=True``). The gradients are put back as they were.
    """
    model = pruner.model
    ranked = sorted(
        (i for i in plans if scores[i].error is None), key=lambda i: _rank_key(scores[i], i)
    )
    grads = [(p, p.grad) for p in model.parameters()]
    latest = pruner._latest
    try:
        for i in ranked[: tune.top]:
            try:
                with torch.no_grad():
                    pruner._apply(plans[i])
                    recalibrate_bn(model, split.recalibration, batches=len(split.recalibration))
                finetune_briefly(
                    model, split.recalibration, steps=tune.steps, lr=tune.lr, loss_fn=loss_fn
                )
                after = proxy_score(model, split.held_out, loss_fn)
            except Exception as error:  # the plan ran in the first pass: the training failed
                raise ValueError(
                    f"calibration's fine-tune of candidate {i} ({scores[i].options}) failed: "
                    f"{type(error).__name__}: {error}. The model is unchanged; check loss_fn "
                    "(it must be differentiable) or use finetune_steps=0"
                ) from error
            finally:
                snapshot.restore()
                pruner._latest = latest
            loss = after.loss if math.isfinite(after.loss) else float("inf")  # diverged: last
            scores[i] = replace(scores[i], finetuned_loss=loss, finetuned_accuracy=after.accuracy)
    finally:
        snapshot.restore()
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


def calibrate_importance(
    model: nn.Module,
    example_inputs: Any,
    data: Iterable[Any],
    *,
    flops_reduction: float | None = None,
    params_reduction: float | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
    candidates: Sequence[Any] | None = None,
    batches: int = 8,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    finetune_steps: int = 0,
    finetune_top: int = 8,
    finetune_lr: float = 0.01,
    progress: bool = False,
    **pruner_options: Any,
) -> CPMCImportance:
    """The :class:`~cpmc_plugin.CPMCImportance` whose prune at this budget scores best.

    For each candidate the plan :class:`~cpmc_plugin.CPMCPruner` would apply is applied
    to ``model`` (then restored exactly), BatchNorm statistics are re-measured on the
    first half of ``batches`` batches of ``data``, and the other half scores it: the
    held-out accuracy, then the mean loss (which decides alone when the outputs are not
    class logits). The returned importance has the winning options and a
    ``.calibration`` :class:`CalibrationReport` (every candidate, its loss, accuracy and
    the parameters and MACs it would remove). ``model`` is left exactly as it was.

    Args:
        model: the trained network (not changed).
        example_inputs: inputs for tracing and counting, as for ``CPMCPruner``.
        data: ``(inputs, targets)`` batches, e.g. a training ``DataLoader`` (a few
            hundred samples are enough).
        flops_reduction: fraction of MACs to remove (default 0.5), or
        params_reduction: fraction of parameters to remove.
        ignored_layers: layers kept whole (e.g. the classifier).
        candidates: option dicts (``alpha``, ``beta``, ``normalizer``, ``combine``, ``p``,
            ``weight_dependency``) or ``CPMCImportance`` objects; default
            :data:`DEFAULT_CANDIDATES`.
        batches: how many batches of ``data`` to use (>= 2).
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss (default: cross entropy).
        finetune_steps: then fine-tune the best ``finetune_top`` distinct plans for this
            many SGD steps (momentum 0.9, learning rate ``finetune_lr``) on the
            re-estimation batches, and pick the lowest held-out loss after them
            (0: no fine-tune; needs BatchNorm, whose batches it trains on). Costs
            ``finetune_top * finetune_steps`` training steps and one copy of the
            parameters.
        finetune_top: how many plans the short fine-tune re-scores (>= 1).
        finetune_lr: its learning rate (> 0).
        progress: show a progress bar over the candidates (tqdm).
        **pruner_options: further ``CPMCPruner`` options (``max_pruning_ratio``,
            ``round_to``, host options).

    Raises:
        TypeError: an option of the wrong type.
        ValueError: a bad value, too few batches, or a budget that cannot be met.

    Example:
        >>> import torch
        >>> from cpmc_plugin.models import resnet20
        >>> _ = torch.manual_seed(0)
        >>> net, x = resnet20(num_classes=3), torch.randn(1, 3, 16, 16)
        >>> data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))) for _ in range(4)]
        >>> imp = calibrate_importance(net, x, data, flops_reduction=0.5,
        ...                            ignored_layers=[net.classifier],
        ...                            candidates=[{"alpha": 0, "beta": 0}, {"beta": 1.0}])
        >>> len(imp.calibration.candidates), imp.calibration.held_out_samples
        (2, 16)
        >>> net.layer1[0].conv1.out_channels  # the model is unchanged
        16
    """
    from ..pruner import CPMCPruner  # the pruner calibrates through this module

    pruner = CPMCPruner(
        model,
        example_inputs,
        CPMCImportance(example_inputs),
        flops_reduction=flops_reduction,
        params_reduction=params_reduction,
        ignored_layers=ignored_layers,
        **pruner_options,
    )
    return calibrate_pruner(
        pruner,
        data,
        candidates=candidates,
        batches=batches,
        loss_fn=loss_fn,
        finetune_steps=finetune_steps,
        finetune_top=finetune_top,
        finetune_lr=finetune_lr,
        progress=progress,
    )
