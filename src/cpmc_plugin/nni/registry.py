"""Pruners by name: CPMC and NNI's built-ins, for trials that read their choice from NNI."""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn
from nni.compression import pruning as nni_pruning
from nni.compression.base.compressor import Pruner

from .pruner import CPMCPruner

__all__ = ["build_pruner", "list_pruners", "register_pruner"]

NNI_BUILTINS = (
    "L1NormPruner",
    "L2NormPruner",
    "FPGMPruner",
    "LevelPruner",
    "SlimPruner",
    "TaylorPruner",
    "LinearPruner",
    "AGPPruner",
    "MovementPruner",
)

_REGISTRY: dict[str, type[Pruner]] = {
    "CPMCPruner": CPMCPruner,
    **{n: getattr(nni_pruning, n) for n in NNI_BUILTINS if hasattr(nni_pruning, n)},
}


def list_pruners() -> list[str]:
    """Names :func:`build_pruner` knows, sorted.

    Example:
        >>> {"CPMCPruner", "L1NormPruner", "FPGMPruner"} <= set(list_pruners())
        True
    """
    return sorted(_REGISTRY)


def register_pruner(name: str, cls: type[Pruner], *, replace: bool = False) -> None:
    """Make ``cls`` (a subclass of NNI's ``Pruner``) available to :func:`build_pruner`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a pruner name must be a non-empty str, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Pruner)):
        raise ValueError(f"{cls!r} is not a subclass of nni.compression.base.compressor.Pruner")
    if _lookup(name) is not None and not replace:
        raise ValueError(f"a pruner named {name!r} is registered already (pass replace=True)")
    _REGISTRY[name] = cls


def _lookup(name: str) -> str | None:
    folded = {n.lower(): n for n in _REGISTRY}
    return folded.get(name.strip().lower()) if isinstance(name, str) else None


def build_pruner(name: str, model: nn.Module, config_list: list[dict], **kwargs: Any) -> Pruner:
    """Build the pruner called ``name`` (case-insensitive) on ``model``.

    ``kwargs`` go to its constructor. ``example_inputs`` is passed only to pruners
    that take it, so one trial can hand the same arguments to CPMC and to NNI's
    own pruners; ``flops_reduction`` is for CPMC only.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 3))
        >>> pruner = build_pruner("l1normpruner", net, [{"op_names": ["0"], "sparse_ratio": 0.5}],
        ...                       example_inputs=torch.randn(1, 3, 8, 8))
        >>> type(pruner).__name__
        'L1NormPruner'
    """
    key = _lookup(name)
    if key is None:
        raise ValueError(f"unknown pruner {name!r}; known pruners: {', '.join(list_pruners())}")
    cls = _REGISTRY[key]
    accepted = inspect.signature(cls.__init__).parameters
    if "example_inputs" not in accepted:
        kwargs.pop("example_inputs", None)
    if "flops_reduction" in kwargs and "flops_reduction" not in accepted:
        raise ValueError(f"flops_reduction is a CPMCPruner option; {key} takes sparse_ratio")
    return cls(model, config_list, **kwargs)
