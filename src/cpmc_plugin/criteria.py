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
    >>> needs_calibration("cpmc-auto"), needs_calibration("cpmc")
    (True, False)
    >>> needs_data("cpmc-data"), needs_data("cpmc")
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core.registry import Registry
from .sparse.oicsr import OICSRImportance
from .sparse.ssr import SSRImportance
from .torch_pruning import host
from .torch_pruning.importance import CPMCImportance

__all__ = [
    "CRITERIA",
    "CRITERIA_REGISTRY",
    "Criterion",
    "make_importance",
    "DATA_AWARE_GAMMA",
    "needs_calibration",
    "needs_data",
    "needs_gradients",
]


@dataclass(frozen=True)
class Criterion:
    """How to build one criterion.

    Attributes:
        build: ``build(example_inputs, family, **options)`` -> the importance.
        takes_options: whether it takes CPMC's ``family`` / ``alpha`` / ``beta`` / ... options.
        needs_gradients: whether it reads ``.grad`` (run a backward pass before pruning).
        needs_calibration: whether it is calibrated on data before pruning (pass
            ``calibration_data`` to :class:`~cpmc_plugin.CPMCPruner`); ``build`` gives
            the base importance the calibration starts from.
        needs_data: whether it measures the model on data batches (data-aware CPMC):
            ``build(example_inputs, family, data=batches, **options)``.
    """

    build: Callable[..., host.Importance]
    takes_options: bool = False
    needs_gradients: bool = False
    needs_calibration: bool = False
    needs_data: bool = False


def _cpmc(example_inputs: Any, family: str | None, **options: Any) -> host.Importance:
    if family is not None:
        return CPMCImportance.preset(family, example_inputs, **options)
    return CPMCImportance(example_inputs, **options)


#: the fixed data-aware setting ``"cpmc-data"`` names: activation-weighted E and the
#: Taylor term at equal weight (both normalized per layer to [0, 1])
DATA_AWARE_GAMMA = 1.0


def _cpmc_data(
    example_inputs: Any, family: str | None, data: Any = None, **options: Any
) -> host.Importance:
    if data is None:
        raise ValueError(
            "criterion 'cpmc-data' measures the model on data: pass data= (training "
            "batches of (inputs, targets))"
        )
    return _cpmc(example_inputs, family, data=data, **{"gamma": DATA_AWARE_GAMMA, **options})


def _oicsr(example_inputs: Any, family: str | None) -> host.Importance:

    return OICSRImportance()


def _ssr(example_inputs: Any, family: str | None) -> host.Importance:

    return SSRImportance()


#: the criteria by name (case and outer spaces folded), CPMC's first
CRITERIA_REGISTRY: Registry[Criterion] = Registry("criterion", "criteria")
for _name, _criterion in (
    ("cpmc", Criterion(_cpmc, takes_options=True)),
    (
        "cpmc-a",
        Criterion(
            lambda x, family, **o: _cpmc(x, family, weight_dependency=False, **o),
            takes_options=True,
        ),
    ),
    # activation-weighted weight dependency and the Taylor term, on data batches
    ("cpmc-data", Criterion(_cpmc_data, takes_options=True, needs_data=True)),
    # alpha, beta, normalizer and combine chosen from data at the budget (calibrate_importance)
    (
        "cpmc-auto",
        Criterion(lambda x, family: CPMCImportance(x), needs_calibration=True),
    ),
    ("oicsr", Criterion(_oicsr)),
    ("ssr", Criterion(_ssr)),
    ("l1", Criterion(lambda x, family: host.GroupMagnitudeImportance(p=1))),
    ("l2", Criterion(lambda x, family: host.GroupMagnitudeImportance(p=2))),
    ("bn-scale", Criterion(lambda x, family: host.BNScaleImportance())),
    # raw |gamma| compared across layers, as network slimming and BN-FISTA prune; finite
    # when a layer's scales are all zero (the per-layer mean of "bn-scale" is then 0)
    ("slimming", Criterion(lambda x, family: host.BNScaleImportance(normalizer=None))),
    ("lamp", Criterion(lambda x, family: host.LAMPImportance(p=2))),
    (
        "taylor",
        Criterion(lambda x, family: host.GroupTaylorImportance(), needs_gradients=True),
    ),
    ("random", Criterion(lambda x, family: host.RandomImportance())),
):
    CRITERIA_REGISTRY.register(_name, _criterion)
del _name, _criterion

#: criterion names, CPMC's first
CRITERIA: tuple[str, ...] = tuple(CRITERIA_REGISTRY.names())


def needs_gradients(name: str) -> bool:
    """Whether the criterion reads ``.grad`` (run a backward pass on a batch before pruning).

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: unknown criterion; the message lists the known ones.
    """
    return CRITERIA_REGISTRY.get(name).needs_gradients


def needs_data(name: str) -> bool:
    """Whether the criterion measures the model on data batches (``"cpmc-data"``): pass
    ``data=`` to :func:`make_importance`.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: unknown criterion; the message lists the known ones.
    """
    return CRITERIA_REGISTRY.get(name).needs_data


def needs_calibration(name: str) -> bool:
    """Whether the criterion is calibrated on data before pruning (``"cpmc-auto"``).

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: unknown criterion; the message lists the known ones.
    """
    return CRITERIA_REGISTRY.get(name).needs_calibration


def make_importance(
    name: str,
    example_inputs: Any = None,
    *,
    family: str | None = None,
    data: Any = None,
    **options: Any,
) -> host.Importance:
    """The importance called ``name``; ``family``/``options`` (alpha, beta, ...) are CPMC's.

    ``family`` picks a measured preset ("vgg", "resnet", "densenet"); explicit
    ``alpha``/``beta`` override it. Other criteria take no options. ``data`` (training
    batches) is for the criteria that measure the model on data (:func:`needs_data`).

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: unknown criterion (the message lists the known ones), or options
            given to a criterion that takes none.
    """
    criterion = CRITERIA_REGISTRY.get(name)
    if criterion.needs_data:
        return criterion.build(example_inputs, family, data=data, **options)
    if data is not None:
        key = CRITERIA_REGISTRY.canonical(name)
        raise ValueError(f"criterion {key!r} takes no data (only {_data_criteria()} do)")
    if not criterion.takes_options:
        if options:
            key = CRITERIA_REGISTRY.canonical(name)
            raise ValueError(f"criterion {key!r} takes no options, got {sorted(options)}")
        return criterion.build(example_inputs, family)
    return criterion.build(example_inputs, family, **options)


def _data_criteria() -> str:
    return ", ".join(repr(n) for n in CRITERIA_REGISTRY.names() if needs_data(n))
