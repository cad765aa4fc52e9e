"""One :class:`~cpmc_plugin.CPMCPruner` step to a budget: planned only (:func:`plan_budget`)
or applied (:func:`prune_to_budget`, with gradients when the criterion reads them).

The CLI's ``prune`` and ``report`` commands prune this way. A gradient criterion (``"taylor"``)
gets a fresh backward pass on ``grad_batch`` before every step, so that it ranks the shapes
that step sees; the gradients are cleared afterwards.

Example:
    >>> import torch
    >>> from cpmc_plugin.models import resnet20
    >>> from cpmc_plugin.criteria import make_importance
    >>> _ = torch.manual_seed(0)
    >>> model, x = resnet20(num_classes=3), torch.randn(1, 3, 16, 16)
    >>> pruner = prune_to_budget(model, x, make_importance("l1"), flops_reduction=0.5)
    >>> 0.45 < pruner.report().macs_reduction < 0.55
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.validate import integer
from .host import Importance
from .planning.plan import Plan
from .pruner import CPMCPruner

__all__ = ["plan_budget", "prune_to_budget"]


def prune_to_budget(
    model: nn.Module,
    example_inputs: Any,
    importance: Importance,
    *,
    flops_reduction: float | None = None,
    params_reduction: float | None = None,
    steps: int = 1,
    needs_gradients: bool = False,
    grad_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
    calibration_data: Iterable[Any] | None = None,
    calibration_batches: int = 8,
    calibration_finetune_steps: int = 0,
) -> CPMCPruner:
    """Prune ``model`` in place to the budget with ``importance``; return the pruner.

    Args:
        model: the model, changed in place.
        example_inputs: what ``model`` is traced with.
        importance: ranks the channels (any torch-pruning importance).
        flops_reduction: fraction of MACs to remove (or ``params_reduction``).
        params_reduction: fraction of parameters to remove.
        steps: iterative steps.
        needs_gradients: the importance reads ``.grad`` (a cross-entropy backward pass on
            ``grad_batch = (images, labels)`` runs before every step).
        grad_batch: the batch of a gradient criterion.
        ignored_layers: layers kept whole; default: the model's ``classifier`` if it has one
            (pass ``()`` to keep nothing whole).
        calibration_data: ``(inputs, targets)`` batches to calibrate a CPMC importance on
            at this budget (``"cpmc-auto"``); see :func:`~cpmc_plugin.calibrate_importance`.
        calibration_batches: how many of those batches to use.
        calibration_finetune_steps: the calibration's short fine-tune of its best plans
            (``CPMCPruner(calibration_finetune_steps=...)``; 0: none).

    Raises:
        ValueError: a gradient criterion without ``grad_batch``, or what
            :class:`~cpmc_plugin.CPMCPruner` refuses (the model is then unchanged).
    """
    steps = integer("steps", steps, minimum=1)
    if needs_gradients and grad_batch is None:
        raise ValueError(
            "this criterion reads gradients: pass grad_batch=(images, labels) to compute them"
        )
    if ignored_layers is None:
        classifier = getattr(model, "classifier", None)
        ignored_layers = [classifier] if isinstance(classifier, nn.Module) else None
    pruner = CPMCPruner(
        model,
        example_inputs,
        importance=importance,
        flops_reduction=flops_reduction,
        params_reduction=params_reduction,
        iterative_steps=steps,
        ignored_layers=list(ignored_layers) if ignored_layers is not None else None,
        calibration_data=calibration_data,
        calibration_batches=calibration_batches,
        calibration_finetune_steps=calibration_finetune_steps,
    )
    if needs_gradients:
        assert grad_batch is not None
        images, labels = grad_batch
        for _ in range(steps):  # gradients of the current shapes before every step
            model.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            pruner.step()
        model.zero_grad()
    else:
        pruner.prune()
    return pruner


def plan_budget(
    model: nn.Module,
    example_inputs: Any,
    importance: Any = None,
    *,
    flops_reduction: float | None = None,
    params_reduction: float | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
    max_pruning_ratio: float = 0.9,
    pruning_ratio_dict: Mapping[Any, float] | None = None,
    round_to: int | None = None,
    **host_options: Any,
) -> Plan:
    """The single step ``CPMCPruner(...).step()`` would apply, planned without pruning.

    The model's parameters, buffers and modules are left as they are (it is traced,
    counted and scored in eval mode, and its mode is restored). The options are those of
    :class:`~cpmc_plugin.CPMCPruner` with ``iterative_steps=1``; ``pruning_ratio_dict``
    maps a layer (or a container of layers) to its own cap in (0, 1], used instead of
    ``max_pruning_ratio`` for it.

    Raises:
        TypeError: an option of the wrong type, or an option the pruner does not take.
        ValueError: a bad value, or a budget the caps make unreachable
            (:class:`~cpmc_plugin.UnreachableBudgetError`).

    Example:
        >>> import torch
        >>> conv, head = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 2, 1)
        >>> net = torch.nn.Sequential(conv, torch.nn.ReLU(), head)
        >>> plan = plan_budget(net, torch.randn(1, 3, 12, 12), params_reduction=0.4,
        ...                    ignored_layers=[head])
        >>> [(r.name, len(r.idxs)) for r in plan.removals], conv.out_channels
        ([('0', 3)], 8)
    """
    pruner = CPMCPruner(
        model,
        example_inputs,
        importance,
        flops_reduction=flops_reduction,
        params_reduction=params_reduction,
        ignored_layers=ignored_layers,
        max_pruning_ratio=max_pruning_ratio,
        pruning_ratio_dict=pruning_ratio_dict,
        round_to=round_to,
        **host_options,
    )
    return pruner.plan(1)
