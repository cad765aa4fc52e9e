"""Autograd on for a trace, whatever the caller switched off.

torch-pruning follows channels through the autograd graph of one forward. A caller's
``torch.no_grad()`` block, or a model frozen with ``requires_grad_(False)`` (as
inference scripts leave it), builds no graph, and the host then refuses the model.
:func:`autograd_on` turns gradients on for the block and lets every parameter of the
model record its uses, then puts each flag back.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 2).requires_grad_(False)
    >>> with torch.no_grad(), autograd_on(net):
    ...     traced = net(torch.ones(1, 2)).grad_fn is not None
    >>> traced, net.weight.requires_grad, torch.is_grad_enabled()
    (True, False, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

__all__ = ["autograd_on"]


@contextlib.contextmanager
def autograd_on(model: nn.Module) -> Iterator[None]:
    """Inside the block gradients are on and every floating-point parameter of ``model``
    requires them; each parameter's ``requires_grad`` is restored afterwards."""
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for parameter in frozen:
        parameter.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)
