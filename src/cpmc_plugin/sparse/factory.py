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

``reg.regularize()`` between ``backward()`` and ``step()`` (torch-pruning's
convention) and ``loss = reg.add_penalty(loss)`` are the alternatives.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
    ...                           torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> reg = make_regularizer("bn-fista", net, torch.randn(1, 1, 8, 8), strength=1e-3)
    >>> isinstance(reg, SparseRegularizer)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from .bn_fista import BNFISTARegularizer
from .oicsr import OICSRRegularizer
from .protocol import SparseRegularizer
from .ssr import SSRRegularizer

__all__ = ["SPARSE_METHODS", "make_regularizer"]


#: sparse-training methods by name (``cpmc-prune train --sparse``)
SPARSE_METHODS: tuple[str, ...] = ("oicsr", "bn-fista", "ssr-l21", "ssr-l20")


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
    ``ValueError``.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in SPARSE_METHODS:
        raise ValueError(f"unknown sparse method {name!r}; known: {', '.join(SPARSE_METHODS)}")
    if not key.startswith("ssr") and (rho is not None or keep is not None or update_every != 1):
        raise ValueError(f"rho, keep and update_every are SSR's options, not {key!r}'s")
    if key != "bn-fista" and momentum is not None:
        raise ValueError(f"momentum is bn-fista's option, not {key!r}'s")
    lam = 1e-4 if strength is None else strength
    if key == "oicsr":
        return OICSRRegularizer(model, example_inputs, lam=lam, ignored_layers=ignored_layers)
    if key == "bn-fista":
        return BNFISTARegularizer(model, lam=lam, momentum=momentum, ignored_layers=ignored_layers)
    if key == "ssr-l20" and strength is not None:
        raise ValueError("ssr-l20 takes keep, not strength")
    return SSRRegularizer(
        model,
        example_inputs,
        rho=1e-3 if rho is None else rho,
        kind="l21" if key == "ssr-l21" else "l20",
        keep=keep,
        lam=lam if key == "ssr-l21" else None,
        update_every=update_every,
        ignored_layers=ignored_layers,
    )
