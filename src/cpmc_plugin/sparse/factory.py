"""The interface the sparse-training regularizers share, and a factory by name.

Every regularizer (:class:`~cpmc_plugin.OICSRRegularizer`,
:class:`~cpmc_plugin.BNFISTARegularizer`, :class:`~cpmc_plugin.SSRRegularizer`) fits
one training loop::

    for images, labels in loader:
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()
        reg.proximal_step(lr)        # the learning rate of this step
    reg.finalize()                   # the model now holds exact zeros
    reg.prune_zeros()                # and loses the zeroed channels

``reg.regularize()`` between ``backward()`` and ``step()`` (torch-pruning's
convention) and ``loss = reg.add_penalty(loss)`` are the alternatives.

The methods are the rows of :data:`SPARSE`, a :class:`~cpmc_plugin.core.registry.Registry`
of :class:`SparseMethod`; :data:`SPARSE_METHODS` holds their names.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
    ...                           torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> reg = make_regularizer("bn-fista", net, torch.randn(1, 1, 8, 8), strength=1e-3)
    >>> isinstance(reg, SparseRegularizer)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..core.registry import Registry
from .bn_fista import BNFISTARegularizer
from .oicsr import OICSRRegularizer
from .protocol import SparseRegularizer
from .ssr import SSRRegularizer

__all__ = ["SPARSE", "SPARSE_METHODS", "SparseMethod", "SparseOptions", "make_regularizer"]

#: the default ``strength`` (``lam``)
DEFAULT_STRENGTH = 1e-4
#: SSR's default ``rho``
DEFAULT_RHO = 1e-3
_SSR_OPTIONS = frozenset({"rho", "keep", "update_every"})


@dataclass(frozen=True)
class SparseOptions:
    """What :func:`make_regularizer` was given (``None``: not given)."""

    strength: float | None = None
    rho: float | None = None
    keep: float | int | None = None
    update_every: int = 1
    momentum: float | None = None
    ignored_layers: Sequence[nn.Module] | None = None

    @property
    def lam(self) -> float:
        """``strength``, or its default."""
        return DEFAULT_STRENGTH if self.strength is None else self.strength

    def given(self) -> frozenset[str]:
        """The options a method must accept, because they were set."""
        return frozenset(
            name
            for name, unset in (
                ("strength", self.strength is None),
                ("rho", self.rho is None),
                ("keep", self.keep is None),
                ("update_every", self.update_every == 1),
                ("momentum", self.momentum is None),
            )
            if not unset
        )


@dataclass(frozen=True)
class SparseMethod:
    """One row of :data:`SPARSE`: how to build the regularizer, and which options it takes."""

    build: Callable[[nn.Module, Any, SparseOptions], SparseRegularizer]
    options: frozenset[str]
    #: the option that sets the method's strength (named when ``strength`` is refused)
    strength_option: str = "strength"


def _oicsr(model: nn.Module, example_inputs: Any, o: SparseOptions) -> SparseRegularizer:
    return OICSRRegularizer(model, example_inputs, lam=o.lam, ignored_layers=o.ignored_layers)


def _bn_fista(model: nn.Module, example_inputs: Any, o: SparseOptions) -> SparseRegularizer:
    return BNFISTARegularizer(
        model,
        lam=o.lam,
        momentum=o.momentum,
        ignored_layers=o.ignored_layers,
        example_inputs=example_inputs,
    )


def _ssr(kind: str) -> Callable[[nn.Module, Any, SparseOptions], SparseRegularizer]:
    def build(model: nn.Module, example_inputs: Any, o: SparseOptions) -> SparseRegularizer:
        return SSRRegularizer(
            model,
            example_inputs,
            rho=DEFAULT_RHO if o.rho is None else o.rho,
            kind="l21" if kind == "l21" else "l20",
            keep=o.keep,
            lam=o.lam if kind == "l21" else None,
            update_every=o.update_every,
            ignored_layers=o.ignored_layers,
        )

    return build


#: the sparse-training methods by name (``cpmc-prune train --sparse``)
SPARSE: Registry[SparseMethod] = Registry("sparse method")
SPARSE.register("oicsr", SparseMethod(_oicsr, frozenset({"strength"})))
SPARSE.register("bn-fista", SparseMethod(_bn_fista, frozenset({"strength", "momentum"})))
SPARSE.register("ssr-l21", SparseMethod(_ssr("l21"), frozenset({"strength"}) | _SSR_OPTIONS))
SPARSE.register("ssr-l20", SparseMethod(_ssr("l20"), _SSR_OPTIONS, strength_option="keep"))

#: the names of :data:`SPARSE`, in registration order
SPARSE_METHODS: tuple[str, ...] = tuple(SPARSE.names())


def make_regularizer(
    name: str,
    model: nn.Module,
    example_inputs: Any,
    *,
    strength: float | None = None,
    rho: float | None = None,
    keep: float | int | None = None,
    update_every: int = 1,
    momentum: float | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
) -> SparseRegularizer:
    """The regularizer called ``name``; ``strength`` is ``lam`` (oicsr, bn-fista, ssr-l21).

    ``rho`` (default 1e-3), ``keep`` and ``update_every`` are SSR's; ``keep`` is required
    for ``"ssr-l20"``; ``momentum`` is BN-FISTA's fixed extrapolation (default: FISTA's
    sequence). Defaults: ``strength`` 1e-4. Options a method does not take give a
    ``ValueError``; a name that is not a str a ``TypeError``.
    """
    method = SPARSE.get(name)
    key = SPARSE.canonical(name)
    options = SparseOptions(strength, rho, keep, update_every, momentum, ignored_layers)
    refused = options.given() - method.options
    if refused & _SSR_OPTIONS:
        raise ValueError(f"rho, keep and update_every are SSR's options, not {key!r}'s")
    if "momentum" in refused:
        raise ValueError(f"momentum is bn-fista's option, not {key!r}'s")
    if "strength" in refused:
        raise ValueError(f"{key} takes {method.strength_option}, not strength")
    return method.build(model, example_inputs, options)
