"""The host's trace of the model, recorded once: :func:`trace_with_host`.

torch-pruning's ``BasePruner.__init__`` traces the model to build its graph. The same
forward also records every call's sizes (with its autograd node), the outputs a step
must keep (the run signature), the MAC count, and the groups the host reads to count
channels, so that ``CPMCPruner`` needs no forward of its own before the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch.nn as nn
import torch_pruning as tp

from ..attention.eager import eager_attention
from ..core.atomic import RunSignature, recording_signature, shape_signature, signature
from ..core.probe import ModuleCall, record_calls
from .cost.counting import host_counter
from .cost.measured import opaque_layers
from .cost.meter import Probe, probing
from .graph.build import describe_host_failure, remembering_groups, shapes_only_autograd
from .graph.negative_concat import fixed_graphs

__all__ = ["HostInit", "Traced", "tied_weights", "trace_with_host"]


class HostInit(Protocol):
    """What the host's construction leaves: its graph and the groups' arguments."""

    DG: tp.DependencyGraph
    ignored_layers: Any
    root_module_types: Any


@dataclass(frozen=True)
class Traced:
    """What the trace recorded.

    Attributes:
        calls: every leaf call of the traced forward, with its sizes.
        signature: the outputs (shapes, structure) every pruned model must keep.
        probe: a forward called as the model is called (the trace's own when it was).
        host_groups: the groups the host read while constructing (``None`` if none).
    """

    calls: list[ModuleCall]
    signature: RunSignature
    probe: Probe
    host_groups: list[tp.Group] | None


def trace_with_host(
    model: nn.Module,
    example_inputs: Any,
    init_host: Callable[[], HostInit],
    *,
    through_forward_fn: bool = False,
) -> Traced:
    """Run ``init_host()`` (the host pruner's construction) with recorders on.

    The model is traced in eval mode (BatchNorm statistics stay) and its mode is put
    back. When the trace did not call the model as the caller does (unbatched samples,
    ``forward_fn``, layers whose cost is measured), one more forward does.

    Raises:
        ValueError: the host cannot trace the model (with advice that fits the cause),
            or ``example_inputs`` do not fit it.
    """
    was_training = model.training
    model.eval()
    try:
        try:
            with (
                record_calls(model) as calls,
                recording_signature(model) as recorded,
                host_counter(model) as tally,
                remembering_groups() as seen,  # the groups the host reads to count
                fixed_graphs(),  # RoPE's negative-dim concat would hang the grouping
                shapes_only_autograd(),  # the traced graph keeps no activations
                eager_attention(model),  # a fused kernel hides grouped-query heads
            ):
                host = init_host()
        except Exception as error:
            signature(model, example_inputs)  # a ValueError if the inputs do not fit
            raise ValueError(describe_host_failure(error)) from error
        graph = host.DG
        if (
            recorded.signature is not None
            and recorded.called_as(example_inputs)
            and not through_forward_fn
            and not opaque_layers(graph)
        ):
            run, probe = recorded.signature, Probe(calls, {}, tally, shape_signature(model))
        else:  # one forward called as the model is called
            with probing(model, graph, attention=True) as probe:
                run = signature(model, example_inputs)
    finally:
        model.train(was_training)
    host_groups = next(
        (
            record.groups
            for record in seen
            if record.graph is graph
            and record.finished
            and record.ignored_layers is host.ignored_layers
            and record.root_module_types is host.root_module_types
        ),
        None,
    )
    return Traced(calls, run, probe, host_groups)


def tied_weights(model: nn.Module, graph: tp.DependencyGraph) -> list[tuple[nn.Module, nn.Module]]:
    """``(owner, follower)`` for layers sharing one ``weight`` (tied embeddings): pruning
    leaves the follower out and ties it to the owner's pruned weight again, so that the
    pruned model keeps one tensor (and one copy in memory while it is pruned)."""
    owners: dict[int, nn.Module] = {}
    pairs = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or module not in graph.module2node:
            continue
        owner = owners.setdefault(id(weight), module)
        if owner is not module:
            pairs.append((owner, module))
    return pairs
