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

import torch.nn as nn
import torch_pruning as tp

from ..core.atomic import RunFailure
from ..core.layers import ROOT_TYPES
from .host import module_name

__all__ = ["RUN_HINT", "output_refusal", "reaching_output", "run_refusal"]

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
