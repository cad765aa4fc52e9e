"""Moved to :mod:`cpmc_plugin.torch_pruning.criteria`; this path stays for existing imports."""

from .torch_pruning.criteria import CRITERIA, make_importance, needs_gradients

__all__ = ["CRITERIA", "make_importance", "needs_gradients"]
