"""Pruning criteria by name: CPMC's and torch-pruning's, for the CLI and the benchmarks.

Every criterion is a torch-pruning importance, so any of them can rank channels for
:class:`~cpmc_plugin.CPMCPruner`'s exact FLOPs budget and be compared fairly.

Example:
    >>> import torch
    >>> imp = make_importance("cpmc", example_inputs=torch.randn(1, 3, 8, 8), family="vgg")
    >>> imp.alpha, imp.beta
    (0.1, 0.25)
    >>> needs_gradients("taylor"), needs_gradients("l1")
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch_pruning as tp

from ..sparse.oicsr import OICSRImportance
from ..sparse.ssr import SSRImportance
from .importance import CPMCImportance

__all__ = ["CRITERIA", "make_importance", "needs_gradients"]


def _cpmc(example_inputs: Any, family: str | None, **options: Any) -> tp.importance.Importance:
    if family is not None:
        return CPMCImportance.preset(family, example_inputs, **options)
    return CPMCImportance(example_inputs, **options)


_BUILDERS: dict[str, Callable[..., tp.importance.Importance]] = {
    "cpmc": _cpmc,
    "cpmc-a": lambda x, family, **o: _cpmc(x, family, weight_dependency=False, **o),
    "oicsr": lambda x, family: OICSRImportance(),
    "ssr": lambda x, family: SSRImportance(),
    "l1": lambda x, family: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda x, family: tp.importance.GroupMagnitudeImportance(p=2),
    "bn-scale": lambda x, family: tp.importance.BNScaleImportance(),
    # raw |gamma| compared across layers, as network slimming and BN-FISTA prune; finite
    # when a layer's scales are all zero (the per-layer mean of "bn-scale" is then 0)
    "slimming": lambda x, family: tp.importance.BNScaleImportance(normalizer=None),
    "lamp": lambda x, family: tp.importance.LAMPImportance(p=2),
    "taylor": lambda x, family: tp.importance.GroupTaylorImportance(),
    "random": lambda x, family: tp.importance.RandomImportance(),
}
#: criterion names, CPMC's first
CRITERIA: tuple[str, ...] = tuple(_BUILDERS)


def needs_gradients(name: str) -> bool:
    """Whether the criterion reads ``.grad`` (run a backward pass on a batch before pruning)."""
    return _check(name) == "taylor"


def _check(name: str) -> str:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _BUILDERS:
        raise ValueError(f"unknown criterion {name!r}; known criteria: {', '.join(CRITERIA)}")
    return str(key)


def make_importance(
    name: str, example_inputs: Any = None, *, family: str | None = None, **options: Any
) -> tp.importance.Importance:
    """The importance called ``name``; ``family``/``options`` (alpha, beta, ...) are CPMC's.

    ``family`` picks a measured preset ("vgg", "resnet", "densenet"); explicit
    ``alpha``/``beta`` override it. Other criteria take no options.
    """
    key = _check(name)
    if not key.startswith("cpmc"):
        if options:
            raise ValueError(f"criterion {key!r} takes no options, got {sorted(options)}")
        return _BUILDERS[key](example_inputs, family)
    return _BUILDERS[key](example_inputs, family, **options)
