"""Group norms and proximal maps for sparse training, as plain tensor functions.

The regularizers (OICSR's group lasso, and the sparse-training methods built on
the same interface) reduce their weights to one squared norm per group and call
these; no torch-pruning or NNI import here.

- group lasso ``R(W) = sum_g w_g * ||W_g||_2``: :func:`group_lasso`, its gradient
  coefficients :func:`group_lasso_coefficients` (``dR/dW = w_g * W / ||W_g||``);
- group soft-thresholding (the proximal map of ``t * R``): :func:`group_shrink_factors`;
- keeping the ``k`` groups of largest norm (the projection onto ``||W||_{2,0} <= k``):
  :func:`top_k_factors`;
- element-wise soft-thresholding (the proximal map of ``t * ||x||_1``): :func:`soft_threshold`.

Zero-norm groups contribute zero value, zero (sub)gradient and stay zero: nothing
here divides by zero or takes the square root of zero under autograd.

Example:
    >>> import torch
    >>> sq = torch.tensor([9.0, 16.0, 0.0])   # ||W_g||^2 of three groups
    >>> group_lasso(sq, torch.tensor([1.0, 2.0, 5.0]))
    tensor(11.)
    >>> group_shrink_factors(sq, torch.tensor([1.0, 8.0, 1.0]))
    tensor([0.6667, 0.0000, 0.0000])
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "check_finite_nonnegative",
    "group_lasso",
    "group_lasso_coefficients",
    "group_norms",
    "group_shrink_factors",
    "group_size_weights",
    "soft_threshold",
    "top_k_factors",
]


def check_finite_nonnegative(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float, or ``ValueError`` naming ``name`` and what is allowed.

    Example:
        >>> check_finite_nonnegative("lam", 1e-4)
        0.0001
        >>> check_finite_nonnegative("lr", 0, positive=True)
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number > 0, got 0
    """
    allowed = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {allowed}, got {value}")
    return float(value)


def group_norms(sq_norms: torch.Tensor) -> torch.Tensor:
    """``||W_g||_2`` from ``||W_g||_2^2``, with a zero (not NaN) gradient at zero."""
    positive = sq_norms > 0
    return torch.where(positive, torch.where(positive, sq_norms, 1.0).sqrt(), 0.0)


def group_size_weights(sizes: torch.Tensor, scale_by_group_size: bool) -> torch.Tensor:
    """The group-lasso weights: ``sqrt(|g|)`` per group, or ones.

    Example:
        >>> group_size_weights(torch.tensor([4, 9]), True)
        tensor([2., 3.])
    """
    sizes = sizes.to(torch.float32)
    return sizes.sqrt() if scale_by_group_size else torch.ones_like(sizes)


def group_lasso(sq_norms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_g w_g * ||W_g||_2``, differentiable, finite gradient at zero-norm groups."""
    return (weights.to(sq_norms.dtype) * group_norms(sq_norms)).sum()


def group_lasso_coefficients(sq_norms: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``w_g / ||W_g||_2`` per group (0 for zero-norm groups).

    The gradient of :func:`group_lasso` with respect to a weight ``x`` of group ``g``
    is ``coefficient_g * x``, summed over the groups that hold ``x``.

    Example:
        >>> group_lasso_coefficients(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 1.0]))
        tensor([0.5000, 0.0000])
    """
    norms = group_norms(sq_norms)
    safe = torch.where(norms > 0, norms, 1.0)
    return torch.where(norms > 0, weights.to(norms.dtype) / safe, 0.0)


def group_shrink_factors(sq_norms: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Group soft-thresholding: ``max(0, 1 - t_g / ||W_g||_2)`` per group.

    Multiplying group ``g`` by its factor is the proximal map of ``t_g * ||W_g||_2``:
    groups whose norm is at most ``t_g`` become exactly zero, the others shrink
    toward zero by ``t_g`` in norm. Zero-norm groups get factor 0.
    """
    norms = group_norms(sq_norms)
    safe = torch.where(norms > 0, norms, 1.0)
    factors = (1.0 - thresholds.to(norms.dtype) / safe).clamp_min(0.0)
    return torch.where(norms > 0, factors, 0.0)


def soft_threshold(x: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """``sign(x) * max(|x| - t, 0)``: the proximal map of ``t * ||x||_1``.

    Example:
        >>> soft_threshold(torch.tensor([-3.0, 0.5, 2.0]), 1.0)
        tensor([-2.,  0.,  1.])
    """
    return x.sign() * (x.abs() - threshold).clamp_min(0.0)


def top_k_factors(sq_norms: torch.Tensor, k: int) -> torch.Tensor:
    """1 for the ``k`` groups of largest norm, 0 for the others.

    Multiplying group ``g`` by its factor is the Euclidean projection onto
    ``{W : at most k groups non-zero}`` (the proximal map of the L2,0 constraint).
    Ties go to the lower index.

    Example:
        >>> top_k_factors(torch.tensor([4.0, 1.0, 9.0, 4.0]), 2)
        tensor([1., 0., 1., 0.])
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(sq_norms):
        raise ValueError(f"k must be an integer in [0, {len(sq_norms)}], got {k!r}")
    order = torch.sort(sq_norms, descending=True, stable=True).indices
    factors = torch.zeros_like(sq_norms)
    factors[order[:k]] = 1.0
    return factors
