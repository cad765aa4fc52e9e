"""The CPMC formulas as plain tensor functions (no torch-pruning or NNI import).

Every host adapter (the torch-pruning importance, the NNI pruner) calls these, so
each formula of ``docs/methods.md`` lives in exactly one place:

- eq. 3: :func:`channel_norm` gives ``||W||_p^p`` per channel of one weight slice;
- eq. 4: :func:`normalize` is the per-layer (per-group) normalization of E;
- eq. 6 and 7: :func:`combine_criteria` divides P and F by their global maxima and
  forms ``I = E_hat + alpha * (1 - P/P_max) + beta * (1 - F/F_max)`` (``"additive"``);
  ``"per-cost"`` forms ``I = E_hat / (C/C_max)`` instead, where C is the budgeted cost
  (F under a FLOPs budget, P under a parameter budget): weight value per unit of cost.
- data-aware CPMC: ``taylor`` (the group's first-order loss term, normalized per layer
  as E is) joins the sum with weight ``gamma``: ``I = E_hat + gamma * T_hat + ...``.

Example:
    >>> import torch
    >>> normalize(torch.tensor([1.0, 3.0, 2.0]), "max-min")
    tensor([0.0000, 1.0000, 0.5000])
    >>> combine_criteria(torch.tensor([0.0, 1.0]), torch.tensor([10.0, 5.0]),
    ...                  torch.tensor([4.0, 4.0]), params_max=10.0, macs_max=8.0,
    ...                  alpha=1.0, beta=1.0)
    tensor([0.5000, 2.0000])
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from .validate import number, one_of

__all__ = [
    "COMBINES",
    "COSTS",
    "NORMALIZERS",
    "Combine",
    "Normalizer",
    "channel_norm",
    "combine_criteria",
    "normalize",
    "validate_criterion_options",
]

Normalizer = Literal["max-min", "l2", "max", "mean"]
NORMALIZERS: tuple[str | None, ...] = (*get_args(Normalizer), None)
Combine = Literal["additive", "per-cost"]
#: how the weight value and the costs combine: eq. 7's sum, or value per unit of cost
COMBINES: tuple[str, ...] = get_args(Combine)
#: the cost a ``"per-cost"`` score divides by: MACs (a FLOPs budget) or parameters
COSTS: tuple[str, ...] = ("macs", "params")
#: a channel that costs (almost) nothing scores as if it cost this share of the maximum
_MIN_COST_SHARE = 1e-6


def validate_criterion_options(
    *,
    alpha: float,
    beta: float,
    p: float,
    normalizer: str | None,
    combine: str = "additive",
    cost: str = "macs",
    gamma: float = 0.0,
) -> None:
    """Raise unless the CPMC options are usable (a wrong type: ``TypeError``, else ``ValueError``).

    Example:
        >>> validate_criterion_options(alpha=0.1, beta=0.1, p=1, normalizer="l2")
        >>> validate_criterion_options(alpha=-1, beta=0, p=1, normalizer="l2")
        Traceback (most recent call last):
        ...
        ValueError: alpha must be a finite number >= 0, got -1
        >>> validate_criterion_options(alpha=0.1, beta=0, p=1, normalizer=None,
        ...                            combine="per-cost")
        Traceback (most recent call last):
        ...
        ValueError: combine='per-cost' divides the weight value by the budgeted cost ...
    """
    number("alpha", alpha, minimum=0)
    number("beta", beta, minimum=0)
    number("gamma", gamma, minimum=0)
    number("p", p, minimum=0, low_open=True)
    one_of("normalizer", normalizer, NORMALIZERS)
    one_of("combine", combine, COMBINES)
    one_of("cost", cost, COSTS)
    if combine == "per-cost" and (alpha or beta):
        raise ValueError(
            "combine='per-cost' divides the weight value by the budgeted cost and takes no "
            f"cost weights: leave alpha and beta at 0 (got alpha={alpha}, beta={beta})"
        )


def channel_norm(weight: torch.Tensor, p: float, dim: int | tuple[int, ...] = 0) -> torch.Tensor:
    """``||W_c||_p^p`` for every index ``c`` along ``dim`` of ``weight`` (summing all others).

    Example:
        >>> channel_norm(torch.tensor([[1.0, -2.0], [3.0, 0.0]]), p=1)
        tensor([3., 3.])
        >>> channel_norm(torch.tensor([[1.0, -2.0], [3.0, 0.0]]), p=2, dim=1)
        tensor([10.,  4.])
    """
    keep = (dim,) if isinstance(dim, int) else dim
    keep = tuple(d % weight.dim() for d in keep) if weight.dim() else ()
    others = tuple(d for d in range(weight.dim()) if d not in keep)
    magnitude = weight.detach().abs()
    if p == 2:
        magnitude = magnitude.square()
    elif p != 1:
        magnitude = magnitude.pow(p)
    return (magnitude.sum(dim=others) if others else magnitude).float()


def normalize(values: torch.Tensor, method: str | None) -> torch.Tensor:
    """Normalize one layer's (one group's) weight values E (methods.md eq. 4).

    ``"max-min"``: ``(E - min) / (max - min)``; ``"l2"``: ``E / ||E||_2``;
    ``"max"``: ``E / max``; ``"mean"``: ``E / mean`` (as torch-pruning's magnitude
    criteria normalize); ``None``: unchanged. A layer whose values are all equal (or all
    zero) maps to zeros under ``"max-min"``, and a layer of zeros to zeros under every
    method, never to NaN or Inf.
    """
    values = values.float()
    if method is None:
        return values.clone()
    if method == "max-min":
        low = values.min()
        span = values.max() - low
        if not torch.isfinite(span) or span <= 0:
            return torch.zeros_like(values)
        return (values - low) / span
    if method == "l2":
        norm = torch.linalg.vector_norm(values)
        return values / norm if norm > 0 else torch.zeros_like(values)
    if method == "max":
        top = values.abs().max()
        return values / top if top > 0 else torch.zeros_like(values)
    if method == "mean":
        mean = values.abs().mean()
        return values / mean if mean > 0 else torch.zeros_like(values)
    one_of("normalizer", method, NORMALIZERS)  # raises: every known method returned above
    raise AssertionError(f"normalizer {method!r} has no branch")


def combine_criteria(
    weight_value: torch.Tensor,
    params: torch.Tensor,
    macs: torch.Tensor,
    *,
    params_max: float,
    macs_max: float,
    alpha: float,
    beta: float,
    combine: str = "additive",
    cost: str = "macs",
    taylor: torch.Tensor | None = None,
    gamma: float = 0.0,
) -> torch.Tensor:
    """Final CPMC importance ``I = E_hat + gamma*T_hat + alpha*(1 - P/P_max) + beta*(1 - F/F_max)``.

    ``weight_value`` is the normalized E of each channel; ``params`` and ``macs`` are
    what removing each channel saves; ``params_max``/``macs_max`` are the largest such
    values over all prunable channels of the model (methods.md eq. 6 and 7). A zero
    maximum (nothing costs anything) leaves that criterion at its neutral value 1.

    ``combine="per-cost"`` ranks by weight value per unit of the budgeted cost instead:
    ``I = E_hat / (C / C_max)`` with ``C`` the ``macs`` (``cost="macs"``) or the
    ``params`` (``cost="params"``) and alpha = beta = 0. A channel whose cost is (almost)
    zero scores as if it cost a millionth of the maximum, so its score stays finite.

    Example:
        >>> combine_criteria(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 1.0]),
        ...                  torch.tensor([2.0, 8.0]), params_max=1.0, macs_max=8.0,
        ...                  alpha=0, beta=0, combine="per-cost")
        tensor([2., 1.])
    """
    value = weight_value.float().clone()
    if gamma and taylor is not None:
        value += gamma * taylor.float()
    if combine == "per-cost":
        spent, top = (macs, macs_max) if cost == "macs" else (params, params_max)
        if top <= 0:
            return value
        share = (spent.float() / top).clamp_min(_MIN_COST_SHARE)
        return value / share
    if combine != "additive":
        one_of("combine", combine, COMBINES)
    score = value
    if alpha:
        p_hat = params.float() / params_max if params_max > 0 else torch.zeros_like(score)
        score += alpha * (1.0 - p_hat)
    if beta:
        f_hat = macs.float() / macs_max if macs_max > 0 else torch.zeros_like(score)
        score += beta * (1.0 - f_hat)
    return score
