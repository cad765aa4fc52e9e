"""Re-measure BatchNorm statistics after pruning: :func:`recalibrate_bn`.

A pruned network's BatchNorm layers keep the running statistics of the channels that
fed them before; measuring them again on a few training batches (no weight changes)
recovers much of the accuracy lost to the prune. The benchmarks, the CLI's report and
the calibration of CPMC's cost weights all call this one function.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    >>> batches = [(torch.full((4, 1, 2, 2), 3.0), torch.zeros(4))]
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(1.0), net[0].bias.zero_()
    >>> recalibrate_bn(net, batches)
    >>> net[1].running_mean.tolist(), net.training
    ([3.0, 3.0], False)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from .torch_private import BatchNormBase

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], batches: int = 20
) -> None:
    """Measure BatchNorm statistics again on a few training batches (no weights change).

    ``loader``: a DataLoader or any iterable of ``(images, labels)`` batches; the first
    ``batches`` of them are used, and the running statistics become their plain average.
    The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, BatchNormBase)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches
    model.train()
    try:
        for i, (images, _) in enumerate(loader):
            if i >= batches:
                break
            model(images)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
