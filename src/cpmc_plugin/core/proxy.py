"""The cheap proxy that calibration scores a planned prune by (torch only, no host).

A few hundred labelled samples are split once: the first half of the batches
re-measures BatchNorm statistics of the pruned model, the second half is held out
and gives the proxy, the mean loss (and top-1 accuracy where the outputs are class
logits). :func:`split_batches` makes the split, :func:`proxy_score` evaluates.

Example:
    >>> import torch
    >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])) for _ in range(4)]
    >>> split = split_batches(data, batches=4, needs_recalibration=True)
    >>> len(split.recalibration), len(split.held_out), split.held_out_samples
    (2, 2, 8)
    >>> net = torch.nn.Linear(3, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.zero_(), net.bias.copy_(torch.tensor([1.0, 0.0]))
    >>> score = proxy_score(net, split.held_out)
    >>> round(score.loss, 4), score.accuracy
    (0.8133, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from .validate import integer

__all__ = [
    "BatchSplit",
    "ProxyScore",
    "finetune_briefly",
    "move_to",
    "proxy_score",
    "split_batches",
]

Batch = tuple[Any, Any]
LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass(frozen=True)
class BatchSplit:
    """Batches for re-measuring BatchNorm statistics, and held-out batches to score on."""

    recalibration: tuple[Batch, ...]
    held_out: tuple[Batch, ...]

    @property
    def held_out_samples(self) -> int:
        return sum(_size(targets) for _, targets in self.held_out)

    @property
    def recalibration_samples(self) -> int:
        return sum(_size(targets) for _, targets in self.recalibration)


@dataclass(frozen=True)
class ProxyScore:
    """Mean loss per held-out sample (lower is better) and top-1 accuracy (or ``None``)."""

    loss: float
    accuracy: float | None


def _size(targets: Any) -> int:
    return len(targets) if hasattr(targets, "__len__") else 1


def move_to(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (nested tuples, lists, dicts) on ``device``."""
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)


def split_batches(data: Iterable[Any], *, batches: int, needs_recalibration: bool) -> BatchSplit:
    """The first ``batches`` ``(inputs, targets)`` batches of ``data``, split in two.

    With ``needs_recalibration`` (the model has BatchNorm) the first half of them
    (rounded up) re-measures statistics and the rest is held out; otherwise all of them
    are held out.

    Raises:
        TypeError: ``batches`` is not an int, or a batch is not an ``(inputs, targets)`` pair.
        ValueError: ``batches`` < 2, or ``data`` has too few batches for the split.
    """
    integer("batches", batches, minimum=2)
    taken: list[Batch] = []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            kind = type(batch).__name__
            raise TypeError(
                "calibration data must yield (inputs, targets) batches, got "
                + (f"a {kind} of {len(batch)}" if isinstance(batch, (tuple, list)) else kind)
            )
        taken.append((batch[0], batch[1]))
        if len(taken) == batches:
            break
    need = 2 if needs_recalibration else 1
    if len(taken) < need:
        raise ValueError(
            f"calibration data gave {len(taken)} batch(es); at least {need} are needed "
            + (
                "(BatchNorm statistics are re-measured on some, the rest is held out)"
                if needs_recalibration
                else ""
            )
        )
    if not needs_recalibration:
        return BatchSplit(recalibration=(), held_out=tuple(taken))
    half = math.ceil(len(taken) / 2)
    return BatchSplit(recalibration=tuple(taken[:half]), held_out=tuple(taken[half:]))


@torch.no_grad()
def proxy_score(
    model: nn.Module, held_out: Iterable[Batch], loss_fn: LossFn | None = None
) -> ProxyScore:
    """Mean ``loss_fn`` per sample over ``held_out`` (eval mode), and top-1 accuracy.

    ``loss_fn(outputs, targets)`` returns the mean loss of a batch (default: cross
    entropy). Accuracy is reported when the outputs are ``(batch, classes)`` logits and
    the targets integer class labels, else it is ``None``.
    """
    model.eval()
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    total = correct = 0.0
    count = 0
    classified = True
    for inputs, targets in held_out:
        outputs = model(inputs)
        n = _size(targets)
        total += float(loss_fn(outputs, targets)) * n
        count += n
        if (
            isinstance(outputs, torch.Tensor)
            and isinstance(targets, torch.Tensor)
            and outputs.dim() == 2
            and targets.dim() == 1
            and not targets.is_floating_point()
        ):
            correct += float((outputs.argmax(1) == targets).sum())
        else:
            classified = False
    count = max(count, 1)
    return ProxyScore(loss=total / count, accuracy=correct / count if classified else None)


def finetune_briefly(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    steps: int,
    lr: float,
    loss_fn: LossFn | None = None,
) -> None:
    """``steps`` SGD steps (momentum 0.9, weight decay 5e-4) over ``batches``, in place.

    The batches are taken in order and cycled; the model trains in train mode (BatchNorm
    statistics follow the batches) and is left in eval mode. The gradients it made are
    cleared (``grad`` set to ``None``), so nothing of the steps is left but the weights.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(2, 2)
        >>> data = [(torch.randn(16, 2), torch.randint(0, 2, (16,)))]
        >>> before = proxy_score(net, data).loss
        >>> finetune_briefly(net, data, steps=20, lr=0.1)
        >>> proxy_score(net, data).loss < before, net.weight.grad is None
        (True, True)
    """
    integer("steps", steps, minimum=1)
    if not batches:
        raise ValueError("finetune_briefly needs at least one batch")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    try:
        with torch.enable_grad():
            for step in range(steps):
                inputs, targets = batches[step % len(batches)]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(inputs), targets).backward()
                optimizer.step()
    finally:
        for param in trained:
            param.grad = None
        model.eval()
