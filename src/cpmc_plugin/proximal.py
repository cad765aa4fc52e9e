"""Moved to :mod:`cpmc_plugin.core.proximal`; this path stays for existing imports."""

from .core.proximal import (
    check_finite_nonnegative,
    group_lasso,
    group_lasso_coefficients,
    group_norms,
    group_shrink_factors,
    group_size_weights,
    soft_threshold,
    top_k_factors,
)

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
