"""Plan a FLOPs or parameter budget without pruning: :func:`plan_budget` and :class:`Plan`.

:class:`~cpmc_plugin.CPMCPruner` and the NNI pruner both plan through here: the pruner's
``plan(step)`` returns a :class:`Plan`, and :func:`plan_budget` is the one public entry
point that plans the single step ``CPMCPruner(...).step()`` would apply, on a model it
leaves unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..graph.removal import Removal

__all__ = ["Plan", "plan_budget"]


@dataclass(frozen=True)
class Plan:
    """One planned step: what goes, and the cost the planner's model says it leaves.

    Attributes:
        removals: one :class:`~cpmc_plugin.torch_pruning.graph.removal.Removal` per pruned
            group: its root module, the host's pruning function, the sorted root
            channel indices and their positions in the group's root order.
        metric: ``"macs"`` or ``"params"``.
        target_cost: the cost the plan aimed at (the step's target or its correction).
        cost: the cost the planner's model predicts after the removals.
        base_cost: the cost the planner's model gives the model as it is (nothing removed).
        granularity: the cost of the last ranked unit the plan stopped at.
    """

    removals: tuple[Removal, ...]
    metric: str
    target_cost: float
    cost: float
    base_cost: float
    granularity: float


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
    from ..pruner import CPMCPruner  # the pruner plans through this module: imported late

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
