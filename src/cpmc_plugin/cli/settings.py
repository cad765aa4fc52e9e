"""What a ``cpmc-prune`` command runs with: threads, seeds, and the criterion's settings.

Every command resolves these before anything random happens, prints them in its
header, and records the criterion settings in the checkpoints and ``report.json``,
so that a run can be repeated and its numbers read for what they are.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..core.presets import DEFAULT_ALPHA, DEFAULT_BETA, get_preset
from ..core.validate import integer
from ..criteria import (
    DATA_AWARE_GAMMA,
    make_importance,
    needs_calibration,
    needs_data,
    needs_gradients,
)
from ..torch_pruning.host import Importance
from ..torch_pruning.importance import CPMCImportance
from ..torch_pruning.oneshot import prune_to_budget
from ..torch_pruning.pruner import CPMCPruner

__all__ = [
    "DEMO_MAX_THREADS",
    "CriterionSettings",
    "describe_threads",
    "resolve_threads",
    "seed_everything",
]

#: the demo's thread cap when neither --threads nor OMP_NUM_THREADS says otherwise: its
#: models are small, and one thread ran the demo in 17 s where two took 74 s on a 2-core
#: machine that other jobs kept busy
DEMO_MAX_THREADS = 1


def resolve_threads(requested: int | None, *, cap: int | None = None) -> tuple[int, str]:
    """The intra-op thread count to use and where it came from.

    ``--threads`` wins; else ``OMP_NUM_THREADS`` (its first entry, if it is a list);
    else torch's current setting, at most ``cap`` when given.

    Raises:
        TypeError: ``requested`` is not an int.
        ValueError: ``requested`` or ``OMP_NUM_THREADS`` is not an integer >= 1.
    """
    if requested is not None:
        return integer("--threads", requested, minimum=1), "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        first = env.split(",")[0].strip()
        count = int(first) if first.isdigit() else 0
        if count < 1:
            raise ValueError(
                f"OMP_NUM_THREADS={env!r} is not a thread count (an integer >= 1): "
                "set it to one, unset it, or pass --threads N"
            )
        return count, "OMP_NUM_THREADS"
    count = torch.get_num_threads()
    if cap is not None and count > cap:
        return cap, f"the demo's default: at most {cap}"
    return count, "torch's default"


def describe_threads(count: int, source: str) -> str:
    """``'1 thread (--threads)'``."""
    return f"{count} thread{'' if count == 1 else 's'} ({source})"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every device) with ``seed``.

    Called at the start of every command, before the model is built and before any
    data is drawn, so that a command repeated with the same seed and thread count
    gives the same numbers on the CPU.

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` is negative.
    """
    seed = integer("--seed", seed, minimum=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: how many training samples ``cpmc-auto`` calibrates on in the CLI (half of them
#: re-measure BatchNorm statistics, half are held out): 8 batches of 128
CALIBRATION_SAMPLES = 1024


def _batches_for(data: Any, samples: int) -> int:
    """Batches of ``data`` (a DataLoader, or a list of batches) that hold ``samples``."""
    size = getattr(data, "batch_size", None)
    if size is None and isinstance(data, (list, tuple)) and data:
        size = len(data[0][1])
    return max(2, -(-samples // size)) if size else 8


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class CriterionSettings:
    """A criterion with the exact options it ranks channels with.

    ``alpha``/``beta`` are the effective CPMC weights (``None`` for the other
    criteria, and for ``cpmc-auto``, which chooses them from data at each budget);
    ``preset`` names the family preset they came from, and ``given`` the ones set
    explicitly, which override the preset's.
    """

    criterion: str
    preset: str | None = None
    alpha: float | None = None
    beta: float | None = None
    given: tuple[str, ...] = ()

    @property
    def is_cpmc(self) -> bool:
        return self.criterion.startswith("cpmc")

    @property
    def needs_data(self) -> bool:
        """Whether its importance measures the model on training batches (``cpmc-data``)."""
        return needs_data(self.criterion)

    @property
    def uses_training_data(self) -> bool:
        """Whether pruning reads training batches (calibrated, or data-aware)."""
        return self.is_calibrated or self.needs_data

    @property
    def is_calibrated(self) -> bool:
        """Whether its options are chosen from data before each prune (``cpmc-auto``)."""
        return needs_calibration(self.criterion)

    @classmethod
    def resolve(
        cls,
        criterion: str,
        *,
        preset: str | None = None,
        alpha: float | None = None,
        beta: float | None = None,
    ) -> CriterionSettings:
        """Settings of ``criterion``: explicit ``alpha``/``beta`` win over the ``preset``'s.

        Raises:
            ValueError: ``preset``/``alpha``/``beta`` for a criterion other than CPMC's,
                or an unknown criterion or preset.
        """
        options = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None}
        if needs_calibration(criterion):
            given = [f"--{k}" for k in options] + (["--preset"] if preset else [])
            if given:
                raise ValueError(
                    f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not for "
                    f"{criterion!r}: it chooses alpha and beta from data at each budget "
                    "(use --criterion cpmc for fixed weights)"
                )
            return cls(criterion)
        if not criterion.startswith("cpmc"):
            given = [f"--{k}" for k in options] + (["--preset"] if preset else [])
            if given:
                raise ValueError(
                    f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for the cpmc "
                    f"criteria, not {criterion!r}"
                )
            make_importance(criterion)  # an unknown name fails here, with the known ones
            return cls(criterion)
        # alpha and beta resolve as for "cpmc" (a data-aware criterion measures later)
        base = "cpmc" if needs_data(criterion) else criterion
        importance = make_importance(base, family=preset, **options)
        assert isinstance(importance, CPMCImportance)
        return cls(
            criterion,
            preset=preset,
            alpha=importance.alpha,
            beta=importance.beta,
            given=tuple(options),
        )

    def importance(
        self, example_inputs: Any, data: Any = None, data_batches: int = 8
    ) -> Importance:
        """The torch-pruning importance these settings describe (``cpmc-auto``: the base
        that calibration starts from; ``cpmc-data``: measured on ``data_batches`` batches
        of ``data``)."""
        if not self.is_cpmc or self.is_calibrated:
            return make_importance(self.criterion, example_inputs)
        extra: dict[str, Any] = {"data": data, "data_batches": data_batches}
        return make_importance(
            self.criterion,
            example_inputs,
            family=self.preset,
            alpha=self.alpha,
            beta=self.beta,
            **(extra if self.needs_data else {}),
        )

    def calibration_finetune_steps(self, steps: int) -> int:
        """``steps`` if these settings may fine-tune their calibration (``cpmc-auto``).

        Raises:
            TypeError: ``steps`` is not an int.
            ValueError: ``steps`` < 0, or > 0 for a criterion that is not calibrated.
        """
        steps = integer("--calibration-finetune-steps", steps, minimum=0)
        if steps and not self.is_calibrated:
            raise ValueError(
                "--calibration-finetune-steps is for cpmc-auto, whose calibration it "
                f"fine-tunes; criterion {self.criterion!r} is not calibrated"
            )
        return steps

    def prune(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        flops_reduction: float | None = None,
        params_reduction: float | None = None,
        steps: int = 1,
        grad_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
        calibration_data: Iterable[Any] | None = None,
        calibration_samples: int = CALIBRATION_SAMPLES,
        calibration_finetune_steps: int = 0,
    ) -> CPMCPruner:
        """Prune ``model`` in place to the budget, ranked as these settings say.

        The model's ``classifier`` is kept whole. A gradient criterion needs
        ``grad_batch = (images, labels)``; ``cpmc-auto`` needs ``calibration_data``
        (training batches, of which it uses enough for ``calibration_samples``
        samples; ``calibration_finetune_steps`` re-scores its best plans after that
        many SGD steps), and the pruner's ``calibration`` says what it chose.

        Raises:
            ValueError: a gradient criterion without ``grad_batch``, ``cpmc-auto``
                without ``calibration_data``, ``calibration_finetune_steps`` for a
                criterion that is not calibrated, or a budget the pruner refuses (the
                model is then unchanged).
        """
        gradients = needs_gradients(self.criterion)
        if gradients and grad_batch is None:
            raise ValueError(f"criterion {self.criterion!r} needs a batch to compute gradients")
        if self.is_calibrated and calibration_data is None:
            raise ValueError(
                f"criterion {self.criterion!r} needs calibration_data (training batches) to "
                "choose its options from"
            )
        if self.needs_data and calibration_data is None:
            raise ValueError(
                f"criterion {self.criterion!r} needs calibration_data (training batches) to "
                "measure the model on"
            )
        steps_of_tune = self.calibration_finetune_steps(calibration_finetune_steps)
        data_batches = _batches_for(calibration_data, calibration_samples)
        return prune_to_budget(
            model,
            example_inputs,
            self.importance(
                example_inputs,
                calibration_data,
                _batches_for(calibration_data, calibration_samples),
            ),
            flops_reduction=flops_reduction,
            params_reduction=params_reduction,
            steps=steps,
            needs_gradients=gradients,
            grad_batch=grad_batch,
            calibration_data=calibration_data if self.is_calibrated else None,
            calibration_batches=data_batches,
            calibration_finetune_steps=steps_of_tune,
        )

    @property
    def label(self) -> str:
        """The name a plot or table gives it: ``'cpmc (resnet preset: alpha=0, beta=0)'``."""
        if not self.is_cpmc:
            return self.criterion
        if self.is_calibrated:
            return f"{self.criterion} (calibrated at each budget)"
        assert self.alpha is not None and self.beta is not None
        if self.given and self.preset:
            origin = f"{self.preset} preset, {' and '.join(self.given)} set"
        elif self.given:
            origin = "custom"
        elif self.preset:
            origin = f"{self.preset} preset"
        else:
            origin = "default"
        weights = f"alpha={_number(self.alpha)}, beta={_number(self.beta)}"
        if self.needs_data:
            weights += f", gamma={_number(DATA_AWARE_GAMMA)}"
        return f"{self.criterion} ({origin}: {weights})"

    def describe(self) -> str:
        """One line saying where each weight came from (for a command's header)."""
        if not self.is_cpmc:
            return f"criterion {self.criterion}"
        if self.is_calibrated:
            return (
                f"criterion {self.criterion}: alpha, beta, normalizer and combine chosen "
                "from training batches at the budget (calibrate_importance)"
            )
        parts = []
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if name in self.given:
                source = f"--{name}"
                if self.preset:
                    preset_value = getattr(get_preset(self.preset), name)
                    source += f", overrides the {self.preset} preset's {_number(preset_value)}"
            elif self.preset:
                source = f"the {self.preset} preset"
            else:
                default = DEFAULT_ALPHA if name == "alpha" else DEFAULT_BETA
                source = f"CPMC's default {_number(default)}"
            parts.append(f"{name}={_number(value)} ({source})")
        if self.needs_data:
            parts.append(
                f"gamma={_number(DATA_AWARE_GAMMA)}: the weight value weighted by activations "
                "and the Taylor term, measured on training batches"
            )
        return f"criterion {self.criterion}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints and ``report.json``."""
        return {
            "criterion": self.criterion,
            "label": self.label,
            "preset": self.preset,
            "alpha": self.alpha,
            "beta": self.beta,
            "given": list(self.given),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CriterionSettings:
        """The settings :meth:`to_dict` wrote."""
        return cls(
            str(data["criterion"]),
            preset=data.get("preset"),
            alpha=data.get("alpha"),
            beta=data.get("beta"),
            given=tuple(data.get("given", ())),
        )
