"""The model's counts and cost model, measured again only when its shapes change.

A :class:`Meter` keeps the latest count of a model (MACs, parameters, per layer) and
the cost model the planner ranks against. Both come from forwards that record what
they need in one go (:meth:`Meter.probing`): every leaf call's sizes, the inputs of
the layers whose cost is measured on pruned copies, and the host's MAC count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn
import torch_pruning as tp

from ...attention.eager import eager_attention
from ...core.atomic import shape_signature
from ...core.probe import ModuleCall, forward_once, record_calls
from .counting import Counts, HostTally, count_model, host_counter
from .measured import OpaqueCall, opaque_call_hooks, opaque_layers
from .model import build_cost_model, remeasure_sites
from .types import CallSite, CostModel, GroupUnits

__all__ = ["Meter", "Probe", "probing"]


@dataclass
class Probe:
    """What one forward of the model recorded (see :func:`probing`)."""

    calls: list[ModuleCall]
    opaque: dict[nn.Module, list[OpaqueCall]]
    tally: HostTally
    shapes: tuple[tuple[int, ...], ...] = ()

    def counts(self) -> Counts:
        """The forward's MAC and parameter counts."""
        return self.tally.counts()


@contextlib.contextmanager
def probing(model: nn.Module, graph: tp.DependencyGraph, attention: bool) -> Iterator[Probe]:
    """Record, during the forward of the block, what planning and counting read: each leaf
    call's sizes, the measured layers' inputs and the host's MAC count (with attention
    matmuls when ``attention``). The model runs with eager attention, as it was traced."""
    with (
        eager_attention(model),
        record_calls(model) as calls,
        opaque_call_hooks(opaque_layers(graph)) as opaque,
        host_counter(model, attention=attention) as tally,
    ):
        yield (probe := Probe(calls, opaque, tally))
    probe.shapes = shape_signature(model)


class Meter:
    """The counts and cost model of ``graph.model`` as it is now.

    Args:
        graph: the host's graph of the model.
        example_inputs: the inputs the model is counted on.
        metric: ``"macs"`` or ``"params"`` (what the cost model prices).
        sites: the traced calls, tied to graph nodes.
        initial: the count before pruning.
        probe: the forward that gave ``initial``, if it recorded calls as the model
            is called (reused for the first cost model).
        attention: whether the model showed attention written as functions (its
            matmuls are then counted; recording them costs every op a Python call).
        on_count: called with every new count (e.g. to warn when it is off target).
    """

    def __init__(
        self,
        graph: tp.DependencyGraph,
        example_inputs: Any,
        *,
        metric: str,
        sites: Sequence[CallSite],
        initial: Counts,
        probe: Probe | None,
        attention: bool,
        on_count: Callable[[Counts], None] | None = None,
    ) -> None:
        self.graph = graph
        self.model = graph.model
        self.example_inputs = example_inputs
        self.metric = metric
        self.sites = list(sites)
        self.initial = initial
        self.attention = attention
        self.on_count = on_count
        self.latest: Counts | None = initial  # None: changed since the last count
        self.probe = probe
        self._cost_model: tuple[Any, CostModel] | None = None

    def cost(self, counts: Counts) -> float:
        """The metric's total in ``counts``."""
        return counts.macs if self.metric == "macs" else counts.params

    def current(self) -> Counts:
        """The counts of the model as it is now (counted again only after a change)."""
        if self.latest is None:
            with eager_attention(self.model):  # counted as the trace counted it
                self.latest = count_model(self.model, self.example_inputs, self.attention)
            if self.on_count is not None:
                self.on_count(self.latest)
        return self.latest

    def changed(self) -> None:
        """The model was pruned: count it again when next asked."""
        self.latest = None

    def measured(self, probe: Probe) -> None:
        """Take the counts of ``probe``, a forward of the model as it is now."""
        self.latest, self.probe = probe.counts(), probe

    @contextlib.contextmanager
    def probing(self) -> Iterator[Probe]:
        """:func:`probing` on this model."""
        with probing(self.model, self.graph, self.attention) as probe:
            yield probe

    def cost_model(self, units: list[GroupUnits]) -> CostModel:
        """The planner's cost model of the model as it is now, for ``units``."""
        key = (shape_signature(self.model), tuple(id(u.group) for u in units))
        if self._cost_model is not None and self._cost_model[0] == key:
            return self._cost_model[1]
        counts = self.current()
        layer = counts.layer_macs if self.metric == "macs" else counts.layer_params
        opaque = opaque_layers(self.graph)  # layers whose costs are measured on pruned copies
        calls: dict[nn.Module, list[OpaqueCall]] = {m: [] for m in opaque}  # params need none
        sites = self.sites
        if self.metric == "macs":
            # a forward called as the model is called: the inputs of the measured layers
            # and each call's size per sample (see remeasure_sites); the last check's
            # forward recorded them when the shapes are still those it saw
            probe = self.probe
            if probe is None or probe.shapes != key[0]:
                with self.probing() as probe:
                    forward_once(self.model, self.example_inputs)
            calls = {m: found for m, found in probe.opaque.items() if found}
            sites = remeasure_sites(sites, probe.calls)
        model = build_cost_model(
            self.graph,
            units,
            sites,
            layer,
            self.cost(counts),
            self.metric,
            calls,
            counts.attention,
        )
        self._cost_model = (key, model)
        return model
