"""The calibration's report: every candidate's proxy scores, and the order that picks
the winner (:func:`final_key`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CalibrationReport", "CandidateScore", "final_key", "rank_key"]


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
        order = sorted(range(len(self.candidates)), key=lambda i: final_key(self.candidates[i], i))
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


def rank_key(c: CandidateScore, index: int) -> tuple[float, float, int]:
    """Best first: the highest held-out accuracy, then the lowest loss, then grid order.

    Accuracy leads because it is what the pruned model is judged by; held-out accuracy
    and loss ranked the candidates about equally well on Fashion-MNIST
    (docs/benchmarks.md, "Does the proxy predict?"). Without accuracy (outputs that
    are not class logits) the loss decides.
    """
    accuracy = c.accuracy if c.accuracy is not None else float("-inf")
    return (-accuracy, c.loss, index)


def final_key(c: CandidateScore, index: int) -> tuple[Any, ...]:
    """Best first: the fine-tuned candidates by their loss after the steps, then the rest.

    After a short fine-tune the loss leads: a few hundred held-out samples resolve
    accuracy in steps of a fraction of a percent, the loss continuously, and on
    Fashion-MNIST the loss after the steps picked the better plans
    (docs/benchmarks.md, "Does the proxy predict?").
    """
    if c.finetuned_loss is not None:
        return (0, c.finetuned_loss, *rank_key(c, index))
    return (1, *rank_key(c, index))
