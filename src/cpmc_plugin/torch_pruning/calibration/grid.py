"""The candidates ``cpmc-auto`` chooses from: :data:`DEFAULT_CANDIDATES` and the
options a candidate may set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..importance import CPMCImportance

__all__ = ["CANDIDATE_OPTIONS", "DEFAULT_CANDIDATES", "candidate_importances"]

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


def candidate_importances(
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
