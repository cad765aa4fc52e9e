"""The messages of ``CPMCPruner``'s refusals: everything a caller must change, at once.

A step is refused when its plan would change the shape of the model's output (a
group that torch-pruning's graph shows reaching the output, or an output whose shape
the check forward sees change) or when the pruned model no longer runs. The output
refusal names every output that would change, by position (and path), with its shape
before and after, and the convolution or Linear layer that makes each, not the
BatchNorm after it: putting exactly those layers in ``ignored_layers`` lets the same
step through, in one round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn
import torch_pruning as tp

from ..core.atomic import RunFailure
from ..core.layers import ROOT_TYPES
from .host import module_name
from .options import MODELLED

__all__ = [
    "RUN_HINT",
    "Budget",
    "missed_budget",
    "off_target",
    "output_refusal",
    "reaching_output",
    "run_refusal",
]

#: what to try when a pruned model no longer runs
RUN_HINT = (
    "put the layer (or the layers that feed the failing operation) in ignored_layers; "
    "for a transformer, pass its head options (num_heads=...) and let the model's own "
    "shape attributes follow (e.g. torchvision ViT's hidden_dim)"
)


def reaching_output(graph: tp.DependencyGraph, group: tp.Group) -> list[nn.Module]:
    """The convolution or Linear layers whose output channels ``group`` prunes, when
    the group reaches the model's output (those channels are the output); else ``[]``.
    A reaching group without such a layer (an embedding's) gives its root layer."""
    if not any(item.dep.target.type == tp.ops.OPTYPE.OUTPUT for item in group):
        return []
    found = [
        item.dep.target.module
        for item in group
        if isinstance(item.dep.target.module, ROOT_TYPES)
        and graph.is_out_channel_pruning_fn(item.dep.handler)
    ]
    return list(dict.fromkeys(found)) or [group[0].dep.target.module]


def _named(graph: tp.DependencyGraph, layers: Sequence[nn.Module]) -> str:
    return ", ".join(f"'{module_name(graph, m, '?')}' ({type(m).__name__})" for m in layers)


def output_refusal(
    graph: tp.DependencyGraph, reaching: Sequence[nn.Module], failure: RunFailure | None
) -> ValueError:
    """The refusal of a plan that changes the model's output shape.

    Args:
        graph: the pruner's dependency graph (for the layers' names).
        reaching: layers of the plan's groups that reach the output
            (:func:`reaching_output`), in plan order.
        failure: what the check forward of the pruned model found (``None``: it ran
            with the same output shapes).
    """
    # the makers of the changed outputs in output order, then the rest the graph saw
    layers = dict.fromkeys(failure.layers if failure is not None else ())
    layers.update(dict.fromkeys(reaching))
    parts = ["CPMCPruner refused the step"]
    if reaching:
        parts.append(
            f": removing channels of {_named(graph, reaching)} would change the shape of "
            "the model's output (those channels are the output)"
        )
    if failure is not None:
        parts.append(f"{'; after pruning,' if reaching else ':'} {failure}")
    names = ", ".join(f"'{module_name(graph, m, '?')}'" for m in layers)
    if not names:
        names = failure.where if failure is not None else "the layers that make the outputs"
    parts.append(
        f". The model's outputs must keep their shape: put {names} in ignored_layers (all "
        "of them at once). The model is unchanged"
    )
    return ValueError("".join(parts))


def run_refusal(failure: RunFailure) -> ValueError:
    """The refusal of a plan after which the model no longer runs (or its output is not
    finite)."""
    return ValueError(
        f"CPMCPruner refused the step: after pruning, {failure}. The model is unchanged. "
        f"To prune it, {RUN_HINT}"
    )


@dataclass(frozen=True)
class Budget:
    """A step's budget as the refusal reports it."""

    metric: str
    reduction: float
    initial: float
    target: float
    tolerance: float


def missed_budget(
    model: nn.Module, budget: Budget, tried: Sequence[tuple[float, float]]
) -> ValueError:
    """The refusal of a step whose corrected plans all missed the target: how close the
    closest came, and the layer types whose cost the planner does not model."""
    initial, target = budget.initial, budget.target
    closest = min(tried, key=lambda t: abs(t[1] - target))[1] if tried else target
    odd = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if next(m.children(), None) is None and not isinstance(m, MODELLED)
        }
    )
    name = "flops_reduction" if budget.metric == "macs" else "params_reduction"
    return ValueError(
        f"CPMCPruner cannot meet {name}={budget.reduction}: after {len(tried)} plans "
        f"corrected against the measured count, the closest left "
        f"{100 * (1 - closest / initial):.2f} % removed against "
        f"{100 * (1 - target / initial):.2f} % asked (tolerance "
        f"{100 * budget.tolerance / initial:.2f} pp). The planner cannot model how the "
        "cost of some operation scales with channels"
        + (f" (layer types it does not model: {', '.join(odd)})" if odd else "")
        + ". The model is unchanged; try another budget, or put those layers in "
        "ignored_layers"
    )


def off_target(budget: Budget, now: float, step: int) -> str:
    """The warning for a count that left step ``step`` off its target."""
    off = 100 * abs(now - budget.target) / budget.initial
    return (
        f"CPMCPruner: step {step} left {now:.6g} {budget.metric} against a target of "
        f"{budget.target:.6g} ({off:.2f} pp off); were all groups of step(interactive=True) "
        "pruned? Otherwise a layer type whose cost the planner cannot scale may be involved"
    )
