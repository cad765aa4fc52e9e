"""``calibrate_importance``: ``cpmc-auto`` on a model, without pruning it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..importance import CPMCImportance
from ..pruner import CPMCPruner
from .search import calibrate

__all__ = ["calibrate_importance"]


def calibrate_importance(
    model: nn.Module,
    example_inputs: Any,
    data: Iterable[Any],
    *,
    flops_reduction: float | None = None,
    params_reduction: float | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
    candidates: Sequence[Any] | None = None,
    batches: int = 8,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    finetune_steps: int = 0,
    finetune_top: int = 8,
    finetune_lr: float = 0.01,
    progress: bool = False,
    **pruner_options: Any,
) -> CPMCImportance:
    """The :class:`~cpmc_plugin.CPMCImportance` whose prune at this budget scores best.

    For each candidate the plan :class:`~cpmc_plugin.CPMCPruner` would apply is applied
    to ``model`` (then restored exactly), BatchNorm statistics are re-measured on the
    first half of ``batches`` batches of ``data``, and the other half scores it: the
    held-out accuracy, then the mean loss (which decides alone when the outputs are not
    class logits). The returned importance has the winning options and a
    ``.calibration`` :class:`CalibrationReport` (every candidate, its loss, accuracy and
    the parameters and MACs it would remove). ``model`` is left exactly as it was.

    Args:
        model: the trained network (not changed).
        example_inputs: inputs for tracing and counting, as for ``CPMCPruner``.
        data: ``(inputs, targets)`` batches, e.g. a training ``DataLoader`` (a few
            hundred samples are enough).
        flops_reduction: fraction of MACs to remove (default 0.5), or
        params_reduction: fraction of parameters to remove.
        ignored_layers: layers kept whole (e.g. the classifier).
        candidates: option dicts (``alpha``, ``beta``, ``normalizer``, ``combine``, ``p``,
            ``weight_dependency``) or ``CPMCImportance`` objects; default
            :data:`DEFAULT_CANDIDATES`.
        batches: how many batches of ``data`` to use (>= 2).
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss (default: cross entropy).
        finetune_steps: then fine-tune the best ``finetune_top`` distinct plans for this
            many SGD steps (momentum 0.9, learning rate ``finetune_lr``) on the
            re-estimation batches, and pick the lowest held-out loss after them
            (0: no fine-tune; needs BatchNorm, whose batches it trains on). Costs
            ``finetune_top * finetune_steps`` training steps and one copy of the
            parameters.
        finetune_top: how many plans the short fine-tune re-scores (>= 1).
        finetune_lr: its learning rate (> 0).
        progress: show a progress bar over the candidates (tqdm).
        **pruner_options: further ``CPMCPruner`` options (``max_pruning_ratio``,
            ``round_to``, host options).

    Raises:
        TypeError: an option of the wrong type.
        ValueError: a bad value, too few batches, or a budget that cannot be met.

    Example:
        >>> import torch
        >>> from cpmc_plugin.models import resnet20
        >>> _ = torch.manual_seed(0)
        >>> net, x = resnet20(num_classes=3), torch.randn(1, 3, 16, 16)
        >>> data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))) for _ in range(4)]
        >>> imp = calibrate_importance(net, x, data, flops_reduction=0.5,
        ...                            ignored_layers=[net.classifier],
        ...                            candidates=[{"alpha": 0, "beta": 0}, {"beta": 1.0}])
        >>> len(imp.calibration.candidates), imp.calibration.held_out_samples
        (2, 16)
        >>> net.layer1[0].conv1.out_channels  # the model is unchanged
        16
    """

    pruner = CPMCPruner(
        model,
        example_inputs,
        CPMCImportance(example_inputs),
        flops_reduction=flops_reduction,
        params_reduction=params_reduction,
        ignored_layers=ignored_layers,
        **pruner_options,
    )
    return calibrate(
        pruner,
        data,
        candidates=candidates,
        batches=batches,
        loss_fn=loss_fn,
        finetune_steps=finetune_steps,
        finetune_top=finetune_top,
        finetune_lr=finetune_lr,
        progress=progress,
    )
