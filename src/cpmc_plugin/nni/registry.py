"""Pruners by name: CPMC and NNI's built-ins, for trials that read their choice from NNI."""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn
from nni.compression import pruning as nni_pruning
from nni.compression.base.compressor import Pruner

from ..core.registry import Registry
from .pruner import CPMCPruner

__all__ = ["NNI_BUILTINS", "PRUNERS", "build_pruner", "list_pruners", "register_pruner"]

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

#: the pruners :func:`build_pruner` knows, by name (case-insensitive, listed sorted)
PRUNERS: Registry[type[Pruner]] = Registry("pruner", sort=True)
PRUNERS.register("CPMCPruner", CPMCPruner)
for _name in NNI_BUILTINS:
    if hasattr(nni_pruning, _name):  # an older NNI may lack some
        PRUNERS.register(_name, getattr(nni_pruning, _name))


def list_pruners() -> list[str]:
    """Names :func:`build_pruner` knows, sorted.

    Example:
        >>> {"CPMCPruner", "L1NormPruner", "FPGMPruner"} <= set(list_pruners())
        True
    """
    return PRUNERS.names()


def register_pruner(name: str, cls: type[Pruner], *, replace: bool = False) -> None:
    """Make ``cls`` (a subclass of NNI's ``Pruner``) available to :func:`build_pruner`.

    A name is taken whatever its case (``build_pruner`` folds it); ``replace=True``
    replaces the pruner of that name.

    Raises:
        TypeError: ``name`` is not a str, or ``cls`` is not a subclass of NNI's ``Pruner``.
        ValueError: ``name`` is empty or has surrounding spaces, or is taken and
            ``replace`` is not set.

    Example:
        >>> register_pruner("cpmcpruner", CPMCPruner)
        Traceback (most recent call last):
        ...
        ValueError: a pruner named 'cpmcpruner' is registered already (pass replace=True)
    """
    if not (isinstance(cls, type) and issubclass(cls, Pruner)):
        raise TypeError(
            f"cls must be a subclass of nni.compression.base.compressor.Pruner, got {cls!r}"
        )
    PRUNERS.register(name, cls, replace=replace)


def build_pruner(name: str, model: nn.Module, config_list: list[dict], **kwargs: Any) -> Pruner:
    """Build the pruner called ``name`` (case-insensitive) on ``model``.

    ``kwargs`` go to its constructor. ``example_inputs`` is passed only to pruners
    that take it, so one trial can hand the same arguments to CPMC and to NNI's
    own pruners; ``flops_reduction`` is for CPMC only.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: no pruner is called ``name`` (the message lists them), or
            ``flops_reduction`` is given to a pruner that does not take it.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 3))
        >>> pruner = build_pruner("l1normpruner", net, [{"op_names": ["0"], "sparse_ratio": 0.5}],
        ...                       example_inputs=torch.randn(1, 3, 8, 8))
        >>> type(pruner).__name__
        'L1NormPruner'
    """
    key = PRUNERS.canonical(name)
    cls = PRUNERS.get(key)
    accepted = inspect.signature(cls.__init__).parameters
    if "example_inputs" not in accepted:
        kwargs.pop("example_inputs", None)
    if "flops_reduction" in kwargs and "flops_reduction" not in accepted:
        raise ValueError(f"flops_reduction is a CPMCPruner option; {key} takes sparse_ratio")
    return cls(model, config_list, **kwargs)
