"""Applying a plan to the model through the host's groups, and checking the result.

:class:`Applier` prunes a plan's groups in an order the host can follow, keeps what
derives from the shapes in step (tied weights, the host's head counts, the model's own
shape attributes), runs the pruned model once and refuses, with every output and
layer named at once, a plan that changes the output or breaks the model. Its
:meth:`~Applier.snapshot` puts all of it back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch.nn as nn
import torch_pruning as tp

from ..attention.eager import eager_attention
from ..attention.shapes import sync_shape_attributes
from ..core.atomic import ModelSnapshot, RunFailure, RunSignature, check_still_runs
from .cost.meter import Meter
from .graph.removal import Removal, groups_in_order
from .graph.snapshot import prune_snapshot
from .planning.plan import Plan
from .refusals import output_refusal, reaching_output, run_refusal

__all__ = ["Applier", "HeadCounts"]


class HeadCounts(Protocol):
    """The host pruner's per-layer head counts, which follow the layers' widths."""

    model: nn.Module
    num_heads: dict[nn.Module, int]
    out_channel_groups: dict[nn.Module, int]


class Applier:
    """Applies plans to ``graph.model`` and checks that it still runs as before.

    Args:
        host: the host pruner (its model and head counts).
        graph: the host's graph.
        example_inputs: what the model is run on after a prune.
        signature: the outputs (shapes, structure) the model must keep.
        meter: told whenever the model changed.
        tied_pairs: ``(owner, follower)`` layers that share one weight.
        head_dims: channels per head of each projection (3 x head_dim if packed).
    """

    def __init__(
        self,
        host: HeadCounts,
        graph: tp.DependencyGraph,
        example_inputs: Any,
        signature: RunSignature,
        meter: Meter,
        tied_pairs: Sequence[tuple[nn.Module, nn.Module]] = (),
        head_dims: dict[nn.Linear, int] | None = None,
    ) -> None:
        self.host = host
        self.graph = graph
        self.example_inputs = example_inputs
        self.signature = signature
        self.meter = meter
        self.tied_pairs = list(tied_pairs)
        self.head_dims = dict(head_dims or {})
        self.reaching: list[nn.Module] = []  # layers of planned groups that reach the output

    def snapshot(self, *, clone: bool = False, clone_buffers: bool = False) -> ModelSnapshot:
        """A snapshot of the model and graph; restoring it also re-syncs the shapes."""
        return prune_snapshot(
            self.graph, clone=clone, clone_buffers=clone_buffers, after_restore=self.shapes_changed
        )

    def groups(self, plan: Plan) -> Iterator[tp.Group]:
        """The plan's groups in an order the host can prune them (each checked)."""
        for _, group in groups_in_order(self.graph, plan.removals, self.check_group):
            yield group

    def apply(self, plan: Plan) -> None:
        """Prune the plan's groups; a plan that reaches the output is refused once it is
        all applied (the caller restores), so that one refusal names every output."""
        self.reaching = []
        for _, group in groups_in_order(self.graph, plan.removals, self.check_group):
            group.prune()
            self.meter.changed()  # counted when next needed
        self.shapes_changed()
        if self.reaching:
            self.check_runs()  # raises, with the outputs' shapes when they changed
            raise output_refusal(self.graph, self.reaching, None)

    def shapes_changed(self) -> None:
        """After a prune or a restore: tied weights tied again, the host's head counts and
        the model's own shape attributes (ViT's ``hidden_dim``, a Hugging Face config, ...)
        follow the layers."""
        for owner, follower in self.tied_pairs:
            if follower.weight is not owner.weight:
                follower.weight = owner.weight
        for module, per_head in self.head_dims.items():
            self.host.num_heads[module] = module.out_features // per_head
            self.host.out_channel_groups[module] = self.host.num_heads[module]
        sync_shape_attributes(self.host.model)

    def check_group(self, removal: Removal, group: tp.Group) -> None:
        """Note a planned group that reaches the model's output (:meth:`apply` refuses the
        plan once all of it is known); refuse one that would empty a layer."""
        reaching = reaching_output(self.graph, group)
        self.reaching.extend(reaching)
        # (the host counts an output's channels by its shape: a [N, C] output has one)
        if not reaching and not self.graph.check_pruning_group(group):
            raise RuntimeError(f"internal error: the plan would empty a layer ({group})")

    def check_runs(self) -> None:
        """Run the pruned model once; a ``ValueError`` (the caller restores) if it fails or
        changes the output shapes, naming every output and layer at once (see refusals)."""
        try:
            with eager_attention(self.host.model):
                check_still_runs(self.host.model, self.example_inputs, self.signature)
        except RunFailure as failure:
            if failure.shapes_changed or self.reaching:
                raise output_refusal(self.graph, self.reaching, failure) from failure.error
            raise run_refusal(failure) from failure.error
